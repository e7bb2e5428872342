//! The routes of agent identity: join tokens and agents (admin token), the join itself (the
//! join token is its credential), and an agent's check of its own credential.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;

use super::ApiState;
use super::handlers::{JsonBody, R, created, ok};
use crate::hosts::identity::DEFAULT_JOIN_TTL;
use crate::hosts::{CreateJoinToken, JoinRequest};

pub(crate) async fn create_join_token(
    State(s): State<ApiState>,
    JsonBody(b): JsonBody<CreateJoinToken>,
) -> R {
    let ttl = b.ttl_seconds.map_or(DEFAULT_JOIN_TTL, Duration::from_secs);
    created(s.control.create_join_token(&b.region, ttl)?)
}

/// Outside the admin token: the join token in the body is what authenticates it.
pub(crate) async fn join(State(s): State<ApiState>, JsonBody(b): JsonBody<JoinRequest>) -> R {
    created(s.control.join_agent(b)?)
}

pub(crate) async fn agents(State(s): State<ApiState>) -> R {
    ok(s.control.agents()?)
}

pub(crate) async fn revoke(State(s): State<ApiState>, Path(name): Path<String>) -> R {
    ok(s.control.revoke_agent(&name)?)
}

/// Outside the admin token: the agent's credential authenticates it.
pub(crate) async fn identity(State(s): State<ApiState>, headers: HeaderMap) -> R {
    ok(super::auth::agent_identity(&s.control, &headers).await?)
}
