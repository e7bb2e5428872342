//! The REST API: JSON over HTTP, every route behind the admin bearer token but `/healthz`, the
//! web portal, and the agents' routes (which carry a join token or an agent's credential).
//!
//! The routes are declared once, in [`router`], each with a one-line summary: the same table
//! builds the router and the OpenAPI description served at `/openapi.json`, so the description
//! lists exactly the routes the server has.

mod agent_link;
mod agents;
mod auth;
mod error;
mod handlers;
mod limits;
mod metrics;
mod openapi;
mod portal;

use std::sync::Arc;

use axum::Router;
use axum::routing::{MethodRouter, delete, get, post};

use crate::Control;

pub use auth::{load_or_create_token, token_matches};
pub use error::ApiError;
pub use limits::{BodyTimedOut, MAX_BODY_BYTES, with_body_timeout};
pub use openapi::Route;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct ApiState {
    pub control: Arc<Control>,
    pub token: Arc<String>,
    /// The OpenAPI document of these routes.
    pub openapi: Arc<serde_json::Value>,
}

/// Routes being declared: the router, and what each route is for.
struct Routes {
    router: Router<ApiState>,
    table: Vec<Route>,
}

impl Routes {
    /// Add `path` served by `handler`, with a `summary` per method (`"get"`, `"post"`, ...).
    fn add(
        mut self,
        path: &'static str,
        methods: &[(&'static str, &'static str)],
        handler: MethodRouter<ApiState>,
    ) -> Self {
        self.router = self.router.route(path, handler);
        for (method, summary) in methods {
            self.table.push(Route {
                method,
                path,
                summary,
            });
        }
        self
    }
}

/// Every route the server has, with its summary (those without the admin token last:
/// `/healthz`, the agents' join and identity, the portal's page and assets).
pub fn routes() -> Vec<Route> {
    let mut table = declare().table;
    table.extend(openapi::PUBLIC);
    table.extend(agent_link::ROUTES);
    table
}

fn declare() -> Routes {
    use handlers::*;
    let r = Routes {
        router: Router::new(),
        table: Vec::new(),
    };
    r.add("/v1/regions", &[("get", "List the regions")], get(regions))
        .add(
            "/v1/hosts",
            &[("get", "List the hosts: each region's own agent and the joined hosts")],
            get(hosts),
        )
        .add(
            "/v1/groups",
            &[
                ("get", "List resource groups"),
                ("post", "Create a resource group"),
            ],
            get(groups).post(create_group),
        )
        .add(
            "/v1/groups/{g}",
            &[("get", "Show a resource group")],
            get(group),
        )
        .add("/v1/networks", &[("get", "List networks")], get(networks))
        .add(
            "/v1/groups/{g}/networks",
            &[("post", "Create a network with its subnets")],
            post(create_network),
        )
        .add(
            "/v1/groups/{g}/networks/{n}",
            &[("get", "Show a network")],
            get(network),
        )
        .add(
            "/v1/storage",
            &[("get", "List storage accounts")],
            get(storage_accounts),
        )
        .add(
            "/v1/groups/{g}/storage",
            &[("post", "Create a storage account")],
            post(create_storage),
        )
        .add(
            "/v1/groups/{g}/storage/{a}",
            &[("get", "Show a storage account")],
            get(storage),
        )
        .add(
            "/v1/availability-sets",
            &[("get", "List availability sets")],
            get(availability_sets),
        )
        .add(
            "/v1/groups/{g}/availability-sets",
            &[("post", "Create an availability set")],
            post(create_availability_set),
        )
        .add(
            "/v1/groups/{g}/availability-sets/{s}",
            &[("get", "Show an availability set")],
            get(availability_set),
        )
        .add(
            "/v1/policies",
            &[
                ("get", "List replication policies"),
                ("post", "Create a replication policy"),
            ],
            get(policies).post(create_policy),
        )
        .add(
            "/v1/policies/{p}",
            &[("get", "Show a replication policy")],
            get(policy),
        )
        .add("/v1/vms", &[("get", "List VMs")], get(vms))
        .add(
            "/v1/groups/{g}/vms",
            &[("post", "Create a VM")],
            post(create_vm),
        )
        .add(
            "/v1/groups/{g}/vms/{vm}",
            &[
                ("get", "Show a VM (disks, NBD URIs, hydration)"),
                ("delete", "Delete a VM"),
            ],
            get(vm).delete(delete_vm),
        )
        .add(
            "/v1/replications",
            &[("get", "List protected items with health and RPO")],
            get(replications),
        )
        .add(
            "/v1/groups/{g}/vms/{vm}/replication",
            &[
                ("get", "Show a protected item: state, health, RPO, stats"),
                ("post", "Enable replication to another region (a job)"),
                (
                    "delete",
                    "Disable replication (a job; ?dry_run=true shows the plan)",
                ),
            ],
            get(replication)
                .post(enable_replication)
                .delete(disable_replication),
        )
        .add(
            "/v1/groups/{g}/vms/{vm}/replication/rpo-history",
            &[(
                "get",
                "The item's RPO, sampled every 30 s and kept 7 days (?since_seconds=, default a day)",
            )],
            get(rpo_history),
        )
        .add(
            "/v1/groups/{g}/vms/{vm}/recovery-points",
            &[("get", "List recovery points")],
            get(recovery_points),
        )
        .add(
            "/v1/groups/{g}/vms/{vm}/disks/{n}/export",
            &[("get", "Export a disk at a recovery point (raw bytes)")],
            get(export_disk),
        )
        .add(
            "/v1/groups/{g}/vms/{vm}/replication/verify",
            &[(
                "post",
                "Verify every chunk and map page behind the retained points (a job)",
            )],
            post(verify_replication),
        )
        .add(
            "/v1/groups/{g}/vms/{vm}/replication/repair",
            &[(
                "post",
                "Repair: compare every block, send those that differ (a job)",
            )],
            post(repair_replication),
        )
        .add(
            "/v1/groups/{g}/vms/{vm}/start",
            &[("post", "Start a VM")],
            post(start_vm),
        )
        .add(
            "/v1/groups/{g}/vms/{vm}/stop",
            &[("post", "Stop a VM")],
            post(stop_vm),
        )
        .add(
            "/v1/groups/{g}/vms/{vm}/console",
            &[("get", "A VM's serial console log")],
            get(vm_console),
        )
        .add(
            "/v1/groups/{g}/vms/{vm}/failover",
            &[("post", "Fail over to a recovery point (a job)")],
            post(failover),
        )
        .add(
            "/v1/groups/{g}/vms/{vm}/failover/commit",
            &[("post", "Commit a failover (a job)")],
            post(commit_failover),
        )
        .add(
            "/v1/groups/{g}/vms/{vm}/test-failover",
            &[
                (
                    "post",
                    "Start a test failover in an isolated network (a job)",
                ),
                ("delete", "Clean up a test failover (a job)"),
            ],
            post(test_failover).delete(test_failover_cleanup),
        )
        .add(
            "/v1/groups/{g}/vms/{vm}/reprotect",
            &[("post", "Replicate a failed-over VM back (a job)")],
            post(reprotect),
        )
        .add("/v1/jobs", &[("get", "List jobs")], get(jobs))
        .add(
            "/v1/jobs/{id}",
            &[("get", "Show a job with its steps")],
            get(job),
        )
        .add(
            "/v1/orphans",
            &[(
                "get",
                "What no record owns, looked for now (deleted after the grace period)",
            )],
            get(orphans),
        )
        .add(
            "/v1/events",
            &[("get", "List events (?target=&kind=&severity=&limit=)")],
            get(events),
        )
        .add(
            "/v1/alerts",
            &[
                ("get", "List alert rules"),
                ("post", "Create an alert rule (webhook)"),
            ],
            get(alerts).post(create_alert),
        )
        .add(
            "/v1/alerts/{name}",
            &[("delete", "Delete an alert rule")],
            delete(delete_alert),
        )
        .add(
            "/v1/agent-tokens",
            &[(
                "post",
                "Create a one-time join token for a region (ttl_seconds: default 15 min, 1 min to 24 h)",
            )],
            post(agents::create_join_token),
        )
        .add(
            "/v1/agents",
            &[("get", "List the agents that joined, revoked ones too")],
            get(agents::agents),
        )
        .add(
            "/v1/agents/{name}/revoke",
            &[("post", "Revoke an agent: its credential is refused from now on")],
            post(agents::revoke),
        )
        .add(
            "/metrics",
            &[("get", "Metrics in the Prometheus text format")],
            get(metrics),
        )
        .add(
            "/openapi.json",
            &[("get", "This API's OpenAPI 3.1 description")],
            get(openapi_document),
        )
}

/// The API's routes.
pub fn router(control: Arc<Control>, token: String) -> Router {
    let Routes { router, table } = declare();
    let state = ApiState {
        control,
        token: Arc::new(token),
        openapi: Arc::new(openapi::document(&table)),
    };
    // The API's 405s are behind the token like the rest of it; the public routes' are not.
    let api = router
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(limits::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(openapi::JOIN.path, post(agents::join))
        .route(openapi::AGENT_IDENTITY.path, get(agents::identity))
        .route("/", get(portal::index))
        .route("/portal/app.js", get(portal::script))
        .route("/portal/app.css", get(portal::style))
        .route("/v1/agent/commands", get(agent_link::commands))
        .route("/v1/agent/answers", post(agent_link::answer))
        .route("/v1/agent/report", post(agent_link::report))
        .merge(api)
        .method_not_allowed_fallback(limits::method_not_allowed)
        .layer(axum::middleware::from_fn(limits::refuse_large_body))
        .layer(axum::extract::DefaultBodyLimit::max(limits::MAX_BODY_BYTES))
        .with_state(state)
}
