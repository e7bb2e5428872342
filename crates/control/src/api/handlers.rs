//! One small function per route: decode, call the control plane, encode.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{ApiError, ApiState};
use crate::error::ControlError;
use crate::model::Severity;
use crate::requests::*;

pub(super) type R = Result<Response, ApiError>;

pub(super) fn ok<T: serde::Serialize>(v: T) -> R {
    Ok(Json(v).into_response())
}

pub(super) fn created<T: serde::Serialize>(v: T) -> R {
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// A JSON body whose decoding errors are 400s with the serde message (e.g. unknown fields), 413
/// when it is too large, 408 when it is too slow (`From<JsonRejection> for ApiError`).
pub(crate) struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T>
where
    axum::Json<serde_json::Value>: FromRequest<S, Rejection = JsonRejection>,
{
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let value = match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(Json(v)) => v,
            Err(e) => return Err(e.into()),
        };
        if !value.is_object() {
            return Err(ApiError::bad_request(
                "invalid request body: the body must be a JSON object ({\"field\": value, ...}), \
                 not an array, a string, a number or null",
            ));
        }
        T::deserialize(value)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
    }
}

/// What a DELETE answers: the name of what is gone.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub(crate) struct Deleted {
    pub deleted: String,
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such API route; see the README for the API",
    )
}

pub(crate) async fn regions(State(s): State<ApiState>) -> R {
    ok(s.control.regions())
}

pub(crate) async fn hosts(State(s): State<ApiState>) -> R {
    ok(s.control.hosts()?)
}

pub(crate) async fn leases(State(s): State<ApiState>) -> R {
    ok(s.control.lease_views()?)
}

pub(crate) async fn groups(State(s): State<ApiState>) -> R {
    ok(s.control.groups()?)
}

pub(crate) async fn create_group(
    State(s): State<ApiState>,
    JsonBody(b): JsonBody<CreateGroup>,
) -> R {
    created(s.control.create_group(b)?)
}

pub(crate) async fn group(State(s): State<ApiState>, Path(g): Path<String>) -> R {
    ok(s.control.group(&g)?)
}

pub(crate) async fn networks(State(s): State<ApiState>) -> R {
    ok(s.control.networks()?)
}

pub(crate) async fn create_network(
    State(s): State<ApiState>,
    Path(g): Path<String>,
    JsonBody(b): JsonBody<CreateNetwork>,
) -> R {
    created(s.control.create_network(&g, b)?)
}

pub(crate) async fn network(State(s): State<ApiState>, Path((g, n)): Path<(String, String)>) -> R {
    ok(s.control.network(&g, &n)?)
}

pub(crate) async fn storage_accounts(State(s): State<ApiState>) -> R {
    ok(s.control.storage_accounts()?)
}

pub(crate) async fn create_storage(
    State(s): State<ApiState>,
    Path(g): Path<String>,
    JsonBody(b): JsonBody<CreateStorage>,
) -> R {
    created(s.control.create_storage(&g, b)?)
}

pub(crate) async fn storage(State(s): State<ApiState>, Path((g, a)): Path<(String, String)>) -> R {
    ok(s.control.storage(&g, &a)?)
}

pub(crate) async fn availability_sets(State(s): State<ApiState>) -> R {
    ok(s.control.availability_sets()?)
}

pub(crate) async fn create_availability_set(
    State(s): State<ApiState>,
    Path(g): Path<String>,
    JsonBody(b): JsonBody<CreateAvailabilitySet>,
) -> R {
    created(s.control.create_availability_set(&g, b)?)
}

pub(crate) async fn availability_set(
    State(s): State<ApiState>,
    Path((g, n)): Path<(String, String)>,
) -> R {
    ok(s.control.availability_set(&g, &n)?)
}

pub(crate) async fn policies(State(s): State<ApiState>) -> R {
    ok(s.control.policies()?)
}

pub(crate) async fn create_policy(
    State(s): State<ApiState>,
    JsonBody(b): JsonBody<CreatePolicy>,
) -> R {
    created(s.control.create_policy(b)?)
}

pub(crate) async fn policy(State(s): State<ApiState>, Path(p): Path<String>) -> R {
    ok(s.control.policy(&p)?)
}

pub(crate) async fn vms(State(s): State<ApiState>) -> R {
    ok(s.control.vms()?)
}

pub(crate) async fn create_vm(
    State(s): State<ApiState>,
    Path(g): Path<String>,
    JsonBody(b): JsonBody<CreateVm>,
) -> R {
    created(s.control.create_vm(&g, b).await?)
}

pub(crate) async fn vm(State(s): State<ApiState>, Path((g, v)): Path<(String, String)>) -> R {
    ok(s.control.vm(&g, &v)?)
}

pub(crate) async fn delete_vm(
    State(s): State<ApiState>,
    Path((g, v)): Path<(String, String)>,
) -> R {
    s.control.delete_vm(&g, &v).await?;
    ok(Deleted {
        deleted: format!("{g}/{v}"),
    })
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplicationQuery {
    /// Only items in this state, e.g. `protected`.
    state: Option<String>,
    /// Only items of this health: `healthy`, `warning` or `critical`.
    health: Option<String>,
    /// Only items whose `GROUP/VM` sorts after this one: the last item of the previous page.
    after: Option<String>,
    /// At most this many (all when left out).
    limit: Option<usize>,
}

/// A query value naming a variant of `T`; an unknown name gets a 400 with `hint`.
fn parse_name<T: std::str::FromStr<Err = crate::model::UnknownName>>(
    value: Option<String>,
    hint: &str,
) -> Result<Option<T>, ControlError> {
    value
        .map(|v| {
            v.parse::<T>()
                .map_err(|e| ControlError::invalid(format!("{e}: {hint}")))
        })
        .transpose()
}

/// Protected items in `GROUP/VM` order, filtered, a page at a time.
pub(crate) async fn replications(
    State(s): State<ApiState>,
    query: Result<Query<ReplicationQuery>, axum::extract::rejection::QueryRejection>,
) -> R {
    let Query(q) =
        query.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    let all: Vec<&str> = crate::model::ItemState::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    let state = parse_name(q.state, &format!("use one of {}", all.join(", ")))?;
    let health = parse_name(q.health, "use healthy, warning or critical")?;
    if q.limit == Some(0) {
        return Err(ControlError::invalid("limit must be at least 1").into());
    }
    ok(s.control.list_replications(&crate::ReplicationFilter {
        state,
        health,
        after: q.after,
        limit: q.limit,
    })?)
}

pub(crate) async fn replication(
    State(s): State<ApiState>,
    Path((g, v)): Path<(String, String)>,
) -> R {
    ok(s.control.show_replication(&g, &v)?)
}

pub(crate) async fn enable_replication(
    State(s): State<ApiState>,
    Path((g, v)): Path<(String, String)>,
    JsonBody(b): JsonBody<EnableReplication>,
) -> R {
    let job = s.control.enable_replication(&g, &v, b).await?;
    Ok((StatusCode::ACCEPTED, Json(job)).into_response())
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DisableQuery {
    /// Show what would be deleted, and do nothing.
    #[serde(default)]
    dry_run: bool,
}

pub(crate) async fn disable_replication(
    State(s): State<ApiState>,
    Path((g, v)): Path<(String, String)>,
    query: Result<Query<DisableQuery>, axum::extract::rejection::QueryRejection>,
) -> R {
    let Query(q) =
        query.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    if q.dry_run {
        return ok(s.control.disable_plan(&g, &v).await?);
    }
    let job = s.control.disable_replication(&g, &v).await?;
    Ok((StatusCode::ACCEPTED, Json(job)).into_response())
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RpoHistoryQuery {
    /// How far back, in seconds (default one day).
    #[serde(default)]
    since_seconds: Option<u64>,
}

pub(crate) async fn rpo_history(
    State(s): State<ApiState>,
    Path((g, v)): Path<(String, String)>,
    query: Result<Query<RpoHistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> R {
    let Query(q) =
        query.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    ok(s.control
        .rpo_history(&g, &v, q.since_seconds.unwrap_or(86_400))?)
}

pub(crate) async fn recovery_points(
    State(s): State<ApiState>,
    Path((g, v)): Path<(String, String)>,
) -> R {
    ok(s.control.recovery_points(&g, &v).await?)
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExportQuery {
    /// `latest`, `latest-processed`, `latest-app-consistent`, a point id or an RFC 3339 time.
    recovery_point: String,
}

pub(crate) async fn export_disk(
    State(s): State<ApiState>,
    Path((g, v, n)): Path<(String, String, String)>,
    query: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> R {
    let Query(q) =
        query.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    let disk: usize = n.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "invalid disk number {n:?}: disks are numbered from 0"
        ))
    })?;
    let (layout, point) = s.control.resolve_point(&g, &v, &q.recovery_point).await?;
    let size = point.disks.get(disk).map(|d| d.size).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "disk {disk} does not exist (the VM has {} disks)",
                point.disks.len()
            ),
        )
    })?;
    let stream = ferry_replica::export::disk_bytes(&layout, &point, disk)
        .await
        .map_err(crate::ControlError::from)?;
    let info = ferry_replica::PointInfo::from_record(&point);
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, size)
        .header("x-ferry-recovery-point", info.id)
        .header("x-ferry-recovery-point-time", info.time.to_string())
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventQuery {
    /// Only events about this item (`GROUP/VM`) or job (`job/ID`).
    target: Option<String>,
    /// Only events of this kind, e.g. `state-changed`.
    kind: Option<String>,
    /// Only events of this severity or worse: `info`, `warning` or `critical`.
    severity: Option<String>,
    /// Only events after this id.
    after: Option<u64>,
    /// At most this many, the newest (default 100).
    limit: Option<usize>,
}

pub(crate) async fn alerts(State(s): State<ApiState>) -> R {
    ok(s.control.alerts()?)
}

pub(crate) async fn create_alert(
    State(s): State<ApiState>,
    JsonBody(b): JsonBody<crate::CreateAlert>,
) -> R {
    created(s.control.create_alert(b)?)
}

pub(crate) async fn delete_alert(State(s): State<ApiState>, Path(name): Path<String>) -> R {
    s.control.delete_alert(&name)?;
    ok(Deleted { deleted: name })
}

/// Events, oldest first, filtered.
pub(crate) async fn orphans(State(s): State<ApiState>) -> R {
    ok(s.control.check_orphans(false).await?)
}

pub(crate) async fn events(
    State(s): State<ApiState>,
    query: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> R {
    let Query(q) =
        query.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    let severity = parse_name::<Severity>(q.severity, "use info, warning or critical")?;
    ok(s.control.events(&crate::EventFilter {
        target: q.target,
        kind: q.kind,
        severity,
        after: q.after,
        limit: q.limit,
    })?)
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobListQuery {
    /// Only jobs in this state: `running`, `succeeded` or `failed`.
    state: Option<String>,
    /// Only jobs with a higher id: the last job of the previous page.
    after: Option<u64>,
    /// At most this many (all when left out).
    limit: Option<usize>,
}

/// Jobs, oldest first, filtered, a page at a time.
pub(crate) async fn jobs(
    State(s): State<ApiState>,
    query: Result<Query<JobListQuery>, axum::extract::rejection::QueryRejection>,
) -> R {
    let Query(q) =
        query.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    let state = parse_name(q.state, "use running, succeeded or failed")?;
    if q.limit == Some(0) {
        return Err(ControlError::invalid("limit must be at least 1").into());
    }
    ok(s.control.jobs_page(&crate::JobQuery {
        after: q.after.unwrap_or(0),
        state,
        limit: q.limit,
    })?)
}

pub(crate) async fn job(State(s): State<ApiState>, Path(id): Path<String>) -> R {
    let id: u64 = id.parse().map_err(|_| {
        ApiError::bad_request(format!("invalid job id {id:?}: job ids are numbers"))
    })?;
    ok(s.control.job(id)?)
}

pub(crate) async fn start_vm(State(s): State<ApiState>, Path((g, v)): Path<(String, String)>) -> R {
    ok(s.control.start_vm(&g, &v).await?)
}

pub(crate) async fn stop_vm(State(s): State<ApiState>, Path((g, v)): Path<(String, String)>) -> R {
    ok(s.control.stop_vm(&g, &v).await?)
}

pub(crate) async fn vm_console(
    State(s): State<ApiState>,
    Path((g, v)): Path<(String, String)>,
) -> R {
    let text = s.control.vm_console(&g, &v).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

fn accepted(job: crate::model::Job) -> R {
    Ok((StatusCode::ACCEPTED, Json(job)).into_response())
}

pub(crate) async fn failover(
    State(s): State<ApiState>,
    Path((g, v)): Path<(String, String)>,
    JsonBody(b): JsonBody<crate::failover::FailoverRequest>,
) -> R {
    accepted(s.control.failover(&g, &v, b).await?)
}

pub(crate) async fn commit_failover(
    State(s): State<ApiState>,
    Path((g, v)): Path<(String, String)>,
) -> R {
    accepted(s.control.commit_failover(&g, &v).await?)
}

pub(crate) async fn test_failover(
    State(s): State<ApiState>,
    Path((g, v)): Path<(String, String)>,
    JsonBody(b): JsonBody<crate::failover::FailoverRequest>,
) -> R {
    accepted(s.control.test_failover(&g, &v, b).await?)
}

pub(crate) async fn test_failover_cleanup(
    State(s): State<ApiState>,
    Path((g, v)): Path<(String, String)>,
) -> R {
    accepted(s.control.test_failover_cleanup(&g, &v).await?)
}

pub(crate) async fn reprotect(
    State(s): State<ApiState>,
    Path((g, v)): Path<(String, String)>,
) -> R {
    accepted(s.control.reprotect(&g, &v).await?)
}

/// Start a repair (hash-compare delta resync under a new generation).
pub(crate) async fn repair_replication(
    State(s): State<ApiState>,
    Path((g, v)): Path<(String, String)>,
) -> R {
    accepted(s.control.repair_replication(&g, &v).await?)
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct VerifyBody {
    #[serde(default)]
    repair: bool,
}

/// Check the replica's objects (and repair from the source); answers when done.
pub(crate) async fn verify_replication(
    State(s): State<ApiState>,
    Path((g, v)): Path<(String, String)>,
    JsonBody(b): JsonBody<VerifyBody>,
) -> R {
    ok(s.control.verify_replication(&g, &v, b.repair).await?)
}

pub(crate) async fn metrics(State(s): State<ApiState>) -> R {
    let text = super::metrics::render(&s.control)?;
    Ok(([(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)], text).into_response())
}

pub(crate) async fn openapi_document(State(s): State<ApiState>) -> R {
    ok(s.openapi.as_ref())
}
