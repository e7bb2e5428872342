//! Errors of the control plane, each of a kind the API maps to a status code.

use ferry_replica::ReplicaError;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The request is malformed or asks for something impossible (4xx: 400).
    #[error("{0}")]
    Invalid(String),
    /// A named thing does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// The caller's credential is missing, unknown, expired, used or revoked (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The caller is known but may not act on this (403).
    #[error("{0}")]
    Forbidden(String),
    /// A service ferry depends on (the state database) cannot be reached or did not answer
    /// in time (503): try again once it is back.
    #[error("{0}")]
    Unavailable(String),
    /// Something failed inside ferry (500); the message says what.
    #[error("{0}")]
    Internal(String),
}

impl ControlError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        ControlError::Invalid(msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        ControlError::NotFound(msg.into())
    }
    pub fn conflict(msg: impl Into<String>) -> Self {
        ControlError::Conflict(msg.into())
    }
    pub fn unauthorized(msg: impl Into<String>) -> Self {
        ControlError::Unauthorized(msg.into())
    }
    pub fn forbidden(msg: impl Into<String>) -> Self {
        ControlError::Forbidden(msg.into())
    }
}

impl From<crate::model::IllegalMove> for ControlError {
    fn from(e: crate::model::IllegalMove) -> Self {
        ControlError::Conflict(e.to_string())
    }
}

impl From<rusqlite::Error> for ControlError {
    fn from(e: rusqlite::Error) -> Self {
        ControlError::Internal(format!("state database: {e}"))
    }
}

impl From<ReplicaError> for ControlError {
    fn from(e: ReplicaError) -> Self {
        match e {
            ReplicaError::UnknownPoint(_)
            | ReplicaError::NoPoints
            | ReplicaError::UnknownDisk { .. } => ControlError::NotFound(e.to_string()),
            ReplicaError::NotRecoverable { .. } => ControlError::Conflict(e.to_string()),
            other => ControlError::Internal(other.to_string()),
        }
    }
}

impl From<ferry_storage::StoreError> for ControlError {
    fn from(e: ferry_storage::StoreError) -> Self {
        ControlError::Internal(e.to_string())
    }
}

impl From<ferry_agent::AgentError> for ControlError {
    fn from(e: ferry_agent::AgentError) -> Self {
        match e {
            ferry_agent::AgentError::CatchingUp { .. } => ControlError::Conflict(e.to_string()),
            ferry_agent::AgentError::Io { ref source, .. }
                if source.raw_os_error() == Some(libc::EFBIG) =>
            {
                ControlError::Invalid(format!(
                    "{e}: the file system cannot hold a file this large; pick a smaller disk"
                ))
            }
            other => ControlError::Internal(other.to_string()),
        }
    }
}

pub type Result<T, E = ControlError> = std::result::Result<T, E>;
