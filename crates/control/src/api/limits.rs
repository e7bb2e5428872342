//! What a request may be: a body of at most [`MAX_BODY_BYTES`] (a larger one gets 413 before
//! it is read, when its length is declared), that arrives within its deadline (408), to a
//! method the route has (405). Each refusal is the API's JSON error.

use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::rejection::JsonRejection;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::{ApiError, ApiState};

/// The largest request body the API reads (its bodies are small JSON documents).
pub const MAX_BODY_BYTES: usize = 2 << 20;

/// A request body that did not arrive whole in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} s of its headers", .0.as_secs_f64())]
pub struct BodyTimedOut(Duration);

/// `router` with a deadline on every request body: it must arrive whole within `timeout` of the
/// request's headers, else the request gets 408 (and its connection is closed).
pub fn with_body_timeout(router: Router, timeout: Duration) -> Router {
    router.layer(axum::middleware::map_request(
        move |req: Request| async move { body_deadline(req, timeout) },
    ))
}

fn body_deadline(req: Request, timeout: Duration) -> Request {
    if req.body().is_end_stream() {
        return req;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    req.map(|body| {
        let frames = body.into_data_stream();
        Body::from_stream(futures::stream::unfold(
            Some(frames),
            move |frames| async move {
                let mut frames = frames?;
                match tokio::time::timeout_at(deadline, frames.next()).await {
                    Ok(Some(frame)) => Some((frame, Some(frames))),
                    Ok(None) => None,
                    Err(_) => Some((Err(axum::Error::new(BodyTimedOut(timeout))), None)),
                }
            },
        ))
    })
}

/// Refuse a body whose declared length is over the limit before reading any of it.
pub(crate) async fn refuse_large_body(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > MAX_BODY_BYTES as u64 => too_large(Some(len)).into_response(),
        _ => next.run(req).await,
    }
}

fn too_large(declared: Option<u64>) -> ApiError {
    let size = declared
        .map(|n| format!(" of {n} bytes"))
        .unwrap_or_default();
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the request body{size} is over the limit of {MAX_BODY_BYTES} bytes; the API takes \
             small JSON documents"
        ),
    )
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return too_large(None);
        }
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(c) = cause {
            if let Some(t) = c.downcast_ref::<BodyTimedOut>() {
                return ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("{t}; send the whole body at once"),
                );
            }
            cause = c.source();
        }
        ApiError::bad_request(format!("invalid request body: {}", e.body_text()))
    }
}

/// A route asked with a method it does not have: 405 naming those it has (axum adds `Allow`).
pub(crate) async fn method_not_allowed(
    State(s): State<ApiState>,
    method: Method,
    path: Option<MatchedPath>,
) -> ApiError {
    let path = path.as_ref().map_or("", MatchedPath::as_str);
    let allowed: Vec<String> = s.openapi["paths"][path]
        .as_object()
        .map(|ops| ops.keys().map(|m| m.to_uppercase()).collect())
        .unwrap_or_default();
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not allowed on {path}; use {}",
            if allowed.is_empty() {
                "another method".to_string()
            } else {
                allowed.join(" or ")
            }
        ),
    )
}
