//! Errors returned by this crate.

use std::io;
use std::path::PathBuf;

/// Why a connection ended abnormally, or why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// Socket (or export) I/O failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The peer broke the protocol; the connection is closed.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The server answered a request with an NBD error (client side).
    #[error("{command} failed on the server: {name} (errno {errno})")]
    Remote {
        /// The request's command, e.g. `write`.
        command: &'static str,
        /// The NBD error number from the reply.
        errno: u32,
        /// Its symbolic name, e.g. `EINVAL`.
        name: &'static str,
    },
    /// The server refused an option during the handshake (client side).
    #[error("server refused option {option}: reply {code:#x}: {message}")]
    Refused {
        /// The option number, e.g. `NBD_OPT_GO` (7).
        option: u32,
        /// The option error reply type.
        code: u32,
        /// The server's message.
        message: String,
    },
    /// Binding the listening socket failed.
    #[error("cannot bind {what}: {source}")]
    Bind {
        /// The address or path.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A TLS certificate, key or CA file cannot be used.
    #[error("TLS credentials {}: {reason}", path.display())]
    Credentials {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl From<NbdError> for io::Error {
    fn from(e: NbdError) -> Self {
        match e {
            NbdError::Io(e) => e,
            NbdError::Protocol(m) => io::Error::new(io::ErrorKind::InvalidData, m),
            NbdError::Remote { errno, .. } => io::Error::from_raw_os_error(errno as i32),
            e @ NbdError::Refused { .. } => io::Error::new(io::ErrorKind::NotFound, e.to_string()),
            NbdError::Bind { what, source } => {
                io::Error::new(source.kind(), format!("cannot bind {what}: {source}"))
            }
            e @ NbdError::Credentials { .. } => {
                io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
            }
        }
    }
}
