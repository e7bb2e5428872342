//! Bearer-token authentication and the admin token file.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;

use super::{ApiError, ApiState};
use crate::Control;
use crate::hosts::AgentIdentity;
use crate::hosts::identity::AGENT_PREFIX;

/// Refuse every request without the right `Authorization: Bearer TOKEN` header.
pub(crate) async fn require_token(
    State(state): State<ApiState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match bearer(req.headers()) {
        Some(t) if token_matches(t, &state.token) => Ok(next.run(req).await),
        Some(t) if t.starts_with(AGENT_PREFIX) => Err(ApiError::unauthorized(
            "an agent credential is not accepted here: this route needs the admin token (DATA/admin-token, FERRY_TOKEN)",
        )),
        Some(_) => Err(ApiError::unauthorized(
            "the API token is wrong; use the token in DATA/admin-token (FERRY_TOKEN)",
        )),
        None => Err(ApiError::unauthorized(
            "an API token is required: send `Authorization: Bearer TOKEN` (FERRY_TOKEN)",
        )),
    }
}

/// The token of an `Authorization: Bearer TOKEN` header, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// The agent a request of the agent link comes from: `Authorization: Bearer ferry-agent-...`
/// with a credential that is known and not revoked (401 otherwise). The admin token is not an
/// agent credential.
pub(crate) async fn agent_identity(
    control: &Control,
    headers: &HeaderMap,
) -> Result<AgentIdentity, ApiError> {
    let Some(given) = bearer(headers) else {
        return Err(ApiError::unauthorized(
            "an agent credential is required: send `Authorization: Bearer ferry-agent-...` (the agent's credential file)",
        ));
    };
    Ok(control.authenticate_agent(given)?)
}

/// Compare tokens in time independent of where they differ.
pub fn token_matches(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Read the admin token from `path`, or create one (random, mode 0600).
pub fn load_or_create_token(path: &Path) -> std::io::Result<String> {
    load_or_create_private(path, || {
        format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        )
    })
}

/// Read the one-line value kept in `path`, or store a new one from `make` (mode 0600, synced,
/// put in place by a rename so a crash leaves the old file or the new one whole).
pub(crate) fn load_or_create_private(
    path: &Path,
    make: impl FnOnce() -> String,
) -> std::io::Result<String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let value = make();
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(value.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(value)
}
