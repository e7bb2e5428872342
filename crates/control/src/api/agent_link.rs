//! The routes a joined host's agent calls, with its own credential (never the admin token):
//! its command stream (server-sent events), its answers, and its heartbeat.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use ferry_agent::command::{Answer, PROTOCOL_VERSION, Report};
use ferry_agent::restore::{BlocksRequest, Present, RestoreDisk, SeedRange};
use futures::Stream;
use serde::Deserialize;

use super::handlers::JsonBody;
use super::{ApiError, ApiState};
use crate::hosts::AgentIdentity;

/// The agent's routes: outside the admin token, each checks the agent's own credential.
pub const ROUTES: [super::Route; 6] = [
    super::op(
        "get",
        "A joined host's command stream: server-sent events, one `command` event per command (agent credential)",
    )
    .query::<LinkQuery>()
    .text("text/event-stream")
    .at("/v1/agent/commands"),
    super::op("post", "A joined host's answer to a command (agent credential)")
        .body::<Answer>()
        .no_content()
        .at("/v1/agent/answers"),
    super::op("post", "A joined host's heartbeat and report (agent credential)")
        .body::<Report>()
        .no_content()
        .at("/v1/agent/report"),
    super::op(
        "post",
        "Which blocks of a point's disk hold data, for a VM the host restores (agent credential)",
    )
    .body::<RestoreDisk>()
    .ok::<Present>()
    .at("/v1/agent/restore/present"),
    super::op(
        "post",
        "Blocks of a point's disk, for a VM the host restores: per block its number (u64 LE), length (u32 LE) and bytes (agent credential)",
    )
    .body::<BlocksRequest>()
    .bytes()
    .at("/v1/agent/restore/blocks"),
    super::op(
        "post",
        "A range of a disk the host sends to seed a replica from: its non-zero blocks, each as its number (u64 LE), length (u32 LE) and bytes (agent credential)",
    )
    .query::<SeedRange>()
    .body_bytes()
    .no_content()
    .at("/v1/agent/seed/blocks"),
];

/// How often an idle command stream carries a comment, so both ends see a dead link.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Who is opening the command stream.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LinkQuery {
    /// The agent's version.
    version: String,
    /// The agent protocol's version (`docs/agent-protocol.md`).
    protocol: u32,
}

/// `GET /v1/agent/commands`: the agent's command stream.
pub(crate) async fn commands(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<LinkQuery>,
) -> Result<Response, ApiError> {
    let who = super::auth::agent_identity(&state.control, &headers).await?;
    if q.protocol != PROTOCOL_VERSION {
        return Err(ApiError::bad_request(format!(
            "agent protocol {} is not this server's ({PROTOCOL_VERSION}); run an agent of the \
             server's version",
            q.protocol
        )));
    }
    let session = state.control.host_connected(&who, &q.version)?;
    let stream = futures::stream::unfold(session, |mut session| async move {
        let envelope = session.commands.recv().await?;
        let event = Event::default()
            .event("command")
            .json_data(&envelope)
            .unwrap_or_else(|_| Event::default().comment("unencodable command"));
        Some((Ok::<_, Infallible>(event), session))
    });
    Ok(sse(stream).into_response())
}

fn sse<S>(stream: S) -> impl IntoResponse
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("alive"))
}

/// `POST /v1/agent/answers`: the answer to one command.
pub(crate) async fn answer(
    State(state): State<ApiState>,
    headers: HeaderMap,
    JsonBody(answer): JsonBody<Answer>,
) -> Result<Response, ApiError> {
    let who: AgentIdentity = super::auth::agent_identity(&state.control, &headers).await?;
    state.control.host_answer(&who, answer);
    Ok(axum::http::StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/agent/report`: the heartbeat, with the state of every VM the host serves.
pub(crate) async fn report(
    State(state): State<ApiState>,
    headers: HeaderMap,
    JsonBody(report): JsonBody<Report>,
) -> Result<Response, ApiError> {
    let who = super::auth::agent_identity(&state.control, &headers).await?;
    state.control.host_report(&who, report)?;
    Ok(axum::http::StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/agent/restore/present`: the blocks of a point's disk that hold data.
pub(crate) async fn restore_present(
    State(state): State<ApiState>,
    headers: HeaderMap,
    JsonBody(disk): JsonBody<RestoreDisk>,
) -> Result<Response, ApiError> {
    let who = super::auth::agent_identity(&state.control, &headers).await?;
    let present = state.control.restore_present(&who, disk).await?;
    Ok(axum::Json(present).into_response())
}

/// `POST /v1/agent/restore/blocks`: the contents of some blocks of a point's disk.
pub(crate) async fn restore_blocks(
    State(state): State<ApiState>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<BlocksRequest>,
) -> Result<Response, ApiError> {
    let who = super::auth::agent_identity(&state.control, &headers).await?;
    let body = state.control.restore_blocks(&who, req).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        body,
    )
        .into_response())
}

/// `POST /v1/agent/seed/blocks`: one range of a disk a host sends for a replica's seed.
pub(crate) async fn seed_blocks(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(range): Query<SeedRange>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let who = super::auth::agent_identity(&state.control, &headers).await?;
    state.control.seed_blocks(&who, range, &body).await?;
    Ok(axum::http::StatusCode::NO_CONTENT.into_response())
}
