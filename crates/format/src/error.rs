//! Why a stored object could not be decoded.

/// What is wrong with an object. Every variant names the format, so a message read alone in a
/// log says which kind of object failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("{format}: too short ({len} bytes); the object is truncated")]
    Truncated { format: &'static str, len: usize },
    #[error("{format}: bad magic; this is not a {format} object")]
    BadMagic { format: &'static str },
    #[error("{format}: version {version} is not supported (this build reads version {supported})")]
    UnsupportedVersion {
        format: &'static str,
        version: u16,
        supported: u16,
    },
    #[error("{format}: checksum mismatch; the object is corrupt")]
    Checksum { format: &'static str },
    #[error("{format}: {what}")]
    Invalid { format: &'static str, what: String },
}

impl FormatError {
    pub(crate) fn invalid(format: &'static str, what: impl Into<String>) -> Self {
        FormatError::Invalid {
            format,
            what: what.into(),
        }
    }
}
