//! Errors returned by this crate.

use std::io;

/// Why a connection ended abnormally, or why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// Socket (or export) I/O failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The peer broke the protocol; the connection is closed.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Binding the listening socket failed.
    #[error("cannot bind {what}: {source}")]
    Bind {
        /// The address or path.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
}

impl From<NbdError> for io::Error {
    fn from(e: NbdError) -> Self {
        match e {
            NbdError::Io(e) => e,
            NbdError::Protocol(m) => io::Error::new(io::ErrorKind::InvalidData, m),
            NbdError::Bind { what, source } => {
                io::Error::new(source.kind(), format!("cannot bind {what}: {source}"))
            }
        }
    }
}
