//! Bearer-token authentication and the admin token file.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::{ApiError, ApiState};

/// Refuse every request without the right `Authorization: Bearer TOKEN` header.
pub(crate) async fn require_token(
    State(state): State<ApiState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if token_matches(t, &state.token) => Ok(next.run(req).await),
        Some(_) => Err(ApiError::unauthorized(
            "the API token is wrong; use the token in DATA/admin-token (FERRY_TOKEN)",
        )),
        None => Err(ApiError::unauthorized(
            "an API token is required: send `Authorization: Bearer TOKEN` (FERRY_TOKEN)",
        )),
    }
}

/// Compare tokens in time independent of where they differ.
pub fn token_matches(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Read the admin token from `path`, or create one (random, mode 0600).
pub fn load_or_create_token(path: &Path) -> std::io::Result<String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(token)
}

/// The joined host an agent request comes from.
// Interim identity until per-agent credentials: the admin token, and the host's name and
// region in `X-Ferry-Host` / `X-Ferry-Region`.
pub(crate) async fn agent_identity(
    state: &ApiState,
    headers: &axum::http::HeaderMap,
) -> Result<crate::hosts::link::AgentIdentity, ApiError> {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !given.is_some_and(|t| token_matches(t, &state.token)) {
        return Err(ApiError::unauthorized("an agent credential is required"));
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| ApiError::bad_request(format!("{name} is missing")))
    };
    Ok(crate::hosts::link::AgentIdentity {
        name: header("x-ferry-host")?,
        region: header("x-ferry-region")?,
    })
}
