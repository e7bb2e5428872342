//! The REST API: JSON over HTTP, every route but `/healthz` behind a bearer token.

mod auth;
mod error;
mod handlers;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use crate::Control;

pub use auth::{load_or_create_token, token_matches};
pub use error::ApiError;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct ApiState {
    pub control: Arc<Control>,
    pub token: Arc<String>,
}

/// The API's routes.
pub fn router(control: Arc<Control>, token: String) -> Router {
    use handlers::*;
    let state = ApiState {
        control,
        token: Arc::new(token),
    };
    let api = Router::new()
        .route("/v1/regions", get(regions))
        .route("/v1/groups", get(groups).post(create_group))
        .route("/v1/groups/{g}", get(group))
        .route("/v1/networks", get(networks))
        .route(
            "/v1/groups/{g}/networks",
            axum::routing::post(create_network),
        )
        .route("/v1/groups/{g}/networks/{n}", get(network))
        .route("/v1/storage", get(storage_accounts))
        .route(
            "/v1/groups/{g}/storage",
            axum::routing::post(create_storage),
        )
        .route("/v1/groups/{g}/storage/{a}", get(storage))
        .route("/v1/availability-sets", get(availability_sets))
        .route(
            "/v1/groups/{g}/availability-sets",
            axum::routing::post(create_availability_set),
        )
        .route(
            "/v1/groups/{g}/availability-sets/{s}",
            get(availability_set),
        )
        .route("/v1/policies", get(policies).post(create_policy))
        .route("/v1/policies/{p}", get(policy))
        .route("/v1/vms", get(vms))
        .route("/v1/groups/{g}/vms", axum::routing::post(create_vm))
        .route("/v1/groups/{g}/vms/{vm}", get(vm).delete(delete_vm))
        .route("/v1/replications", get(replications))
        .route(
            "/v1/groups/{g}/vms/{vm}/replication",
            get(replication)
                .post(enable_replication)
                .delete(disable_replication),
        )
        .route(
            "/v1/groups/{g}/vms/{vm}/recovery-points",
            get(recovery_points),
        )
        .route("/v1/groups/{g}/vms/{vm}/disks/{n}/export", get(export_disk))
        .route(
            "/v1/groups/{g}/vms/{vm}/replication/verify",
            axum::routing::post(verify_replication),
        )
        .route(
            "/v1/groups/{g}/vms/{vm}/replication/repair",
            axum::routing::post(repair_replication),
        )
        .route(
            "/v1/groups/{g}/vms/{vm}/start",
            axum::routing::post(start_vm),
        )
        .route("/v1/groups/{g}/vms/{vm}/stop", axum::routing::post(stop_vm))
        .route("/v1/groups/{g}/vms/{vm}/console", get(vm_console))
        .route(
            "/v1/groups/{g}/vms/{vm}/failover",
            axum::routing::post(failover),
        )
        .route(
            "/v1/groups/{g}/vms/{vm}/failover/commit",
            axum::routing::post(commit_failover),
        )
        .route(
            "/v1/groups/{g}/vms/{vm}/test-failover",
            axum::routing::post(test_failover).delete(test_failover_cleanup),
        )
        .route(
            "/v1/groups/{g}/vms/{vm}/reprotect",
            axum::routing::post(reprotect),
        )
        .route("/v1/jobs", get(jobs))
        .route("/v1/events", get(events))
        .route("/v1/alerts", get(alerts).post(create_alert))
        .route("/v1/alerts/{name}", axum::routing::delete(delete_alert))
        .route("/v1/jobs/{id}", get(job))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(api)
        .with_state(state)
}
