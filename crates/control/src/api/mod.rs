//! The REST API: JSON over HTTP, every route behind the admin bearer token but `/healthz`, the
//! web portal, and the agents' routes (which carry a join token or an agent's credential).
//!
//! The routes are declared once, in [`router`], each with a one-line summary and the types of
//! its request and response bodies: the same table builds the router and the OpenAPI
//! description served at `/openapi.json`, so the description lists exactly the routes the
//! server has, with the JSON Schemas of the types it reads and writes.

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

pub(crate) use auth::load_or_create_private;
pub use auth::{load_or_create_token, token_matches};
pub use error::ApiError;
pub use limits::{BodyTimedOut, MAX_BODY_BYTES, with_body_timeout};
pub use openapi::{Body, Op, Request, RequestBody, Route, op};

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
    /// Add `path` served by `handler`, with an [`Op`] per method (`op("get", summary)` and
    /// the types of its bodies).
    fn add<O: Into<Op> + Copy>(
        mut self,
        path: &'static str,
        methods: &[O],
        handler: MethodRouter<ApiState>,
    ) -> Self {
        self.router = self.router.route(path, handler);
        for m in methods {
            let op: Op = (*m).into();
            self.table.push(op.at(path));
        }
        self
    }
}

/// Every route the server has, with its summary (those without the admin token last:
/// `/healthz`, the agents' join and identity, the portal's page and assets, then the agents'
/// link).
pub fn routes() -> Vec<Route> {
    let mut table = declare().table;
    table.extend(openapi::PUBLIC);
    table.extend(agent_link::ROUTES);
    table
}

fn declare() -> Routes {
    use crate::model::{
        AvailabilitySet, Event, Group, Job, Network, Policy, Region, StorageAccount, Vm,
    };
    use crate::replication::{PointView, ReplicationView, RpoSample};
    use crate::requests::*;
    use handlers::*;
    type Verified = ferry_replica::verify::VerifyReport;
    type DisablePlan = crate::replication::disable::DisablePlan;
    let r = Routes {
        router: Router::new(),
        table: Vec::new(),
    };
    r.add(
        "/v1/regions",
        &[op("get", "List the regions").ok::<Vec<Region>>()],
        get(regions),
    )
    .add(
        "/v1/leases",
        &[op(
            "get",
            "List the leases by which servers on one database share the items' work",
        )
        .ok::<Vec<crate::leases::LeaseView>>()],
        get(leases),
    )
    .add(
        "/v1/hosts",
        &[op(
            "get",
            "List the hosts: each region's own agent in the server and the joined hosts",
        )
        .ok::<Vec<crate::hosts::HostView>>()],
        get(hosts),
    )
    .add(
        "/v1/groups",
        &[
            op("get", "List resource groups").ok::<Vec<Group>>(),
            op("post", "Create a resource group")
                .body::<CreateGroup>()
                .created::<Group>(),
        ],
        get(groups).post(create_group),
    )
    .add(
        "/v1/groups/{g}",
        &[op("get", "Show a resource group").ok::<Group>()],
        get(group),
    )
    .add(
        "/v1/networks",
        &[op("get", "List networks").ok::<Vec<Network>>()],
        get(networks),
    )
    .add(
        "/v1/groups/{g}/networks",
        &[op("post", "Create a network with its subnets")
            .body::<CreateNetwork>()
            .created::<Network>()],
        post(create_network),
    )
    .add(
        "/v1/groups/{g}/networks/{n}",
        &[op("get", "Show a network").ok::<Network>()],
        get(network),
    )
    .add(
        "/v1/storage",
        &[op("get", "List storage accounts").ok::<Vec<StorageAccount>>()],
        get(storage_accounts),
    )
    .add(
        "/v1/groups/{g}/storage",
        &[op("post", "Create a storage account")
            .body::<CreateStorage>()
            .created::<StorageAccount>()],
        post(create_storage),
    )
    .add(
        "/v1/groups/{g}/storage/{a}",
        &[op("get", "Show a storage account").ok::<StorageAccount>()],
        get(storage),
    )
    .add(
        "/v1/availability-sets",
        &[op("get", "List availability sets").ok::<Vec<AvailabilitySet>>()],
        get(availability_sets),
    )
    .add(
        "/v1/groups/{g}/availability-sets",
        &[op("post", "Create an availability set")
            .body::<CreateAvailabilitySet>()
            .created::<AvailabilitySet>()],
        post(create_availability_set),
    )
    .add(
        "/v1/groups/{g}/availability-sets/{s}",
        &[op("get", "Show an availability set").ok::<AvailabilitySet>()],
        get(availability_set),
    )
    .add(
        "/v1/policies",
        &[
            op("get", "List replication policies").ok::<Vec<Policy>>(),
            op("post", "Create a replication policy")
                .body::<CreatePolicy>()
                .created::<Policy>(),
        ],
        get(policies).post(create_policy),
    )
    .add(
        "/v1/policies/{p}",
        &[op("get", "Show a replication policy").ok::<Policy>()],
        get(policy),
    )
    .add(
        "/v1/vms",
        &[op("get", "List VMs").ok::<Vec<Vm>>()],
        get(vms),
    )
    .add(
        "/v1/groups/{g}/vms",
        &[op("post", "Create a VM").body::<CreateVm>().created::<Vm>()],
        post(create_vm),
    )
    .add(
        "/v1/groups/{g}/vms/{vm}",
        &[
            op("get", "Show a VM (disks, NBD URIs, hydration)").ok::<Vm>(),
            op("delete", "Delete a VM").no_body().ok::<Deleted>(),
        ],
        get(vm).delete(delete_vm),
    )
    .add(
        "/v1/replications",
        &[op(
            "get",
            "List protected items with health and RPO (?state=&health=&after=&limit=)",
        )
        .query::<ReplicationQuery>()
        .ok::<Vec<ReplicationView>>()],
        get(replications),
    )
    .add(
        "/v1/groups/{g}/vms/{vm}/replication",
        &[
            op("get", "Show a protected item: state, health, RPO, stats").ok::<ReplicationView>(),
            op("post", "Enable replication to another region (a job)")
                .body::<EnableReplication>()
                .accepted::<Job>(),
            op(
                "delete",
                "Disable replication (a job; ?dry_run=true shows the plan)",
            )
            .no_body()
            .query::<DisableQuery>()
            .ok::<DisablePlan>()
            .accepted::<Job>(),
        ],
        get(replication)
            .post(enable_replication)
            .delete(disable_replication),
    )
    .add(
        "/v1/groups/{g}/vms/{vm}/replication/rpo-history",
        &[op(
            "get",
            "The item's RPO, sampled every 30 s and kept 7 days (?since_seconds=, default a day)",
        )
        .query::<RpoHistoryQuery>()
        .ok::<Vec<RpoSample>>()],
        get(rpo_history),
    )
    .add(
        "/v1/groups/{g}/vms/{vm}/recovery-points",
        &[op("get", "List recovery points").ok::<Vec<PointView>>()],
        get(recovery_points),
    )
    .add(
        "/v1/groups/{g}/vms/{vm}/disks/{n}/export",
        &[op("get", "Export a disk at a recovery point (raw bytes)")
            .query::<ExportQuery>()
            .bytes()],
        get(export_disk),
    )
    .add(
        "/v1/groups/{g}/vms/{vm}/replication/verify",
        &[op(
            "post",
            "Verify every chunk and map page behind the retained points (a job)",
        )
        .body::<VerifyBody>()
        .ok::<Verified>()],
        post(verify_replication),
    )
    .add(
        "/v1/groups/{g}/vms/{vm}/replication/repair",
        &[op(
            "post",
            "Repair: compare every block, send those that differ (a job)",
        )
        .no_body()
        .accepted::<Job>()],
        post(repair_replication),
    )
    .add(
        "/v1/groups/{g}/vms/{vm}/start",
        &[op("post", "Start a VM").no_body().ok::<Vm>()],
        post(start_vm),
    )
    .add(
        "/v1/groups/{g}/vms/{vm}/stop",
        &[op("post", "Stop a VM").no_body().ok::<Vm>()],
        post(stop_vm),
    )
    .add(
        "/v1/groups/{g}/vms/{vm}/console",
        &[op("get", "A VM's serial console log").text("text/plain; charset=utf-8")],
        get(vm_console),
    )
    .add(
        "/v1/groups/{g}/vms/{vm}/failover",
        &[op("post", "Fail over to a recovery point (a job)")
            .body::<crate::failover::FailoverRequest>()
            .accepted::<Job>()],
        post(failover),
    )
    .add(
        "/v1/groups/{g}/vms/{vm}/failover/commit",
        &[op("post", "Commit a failover (a job)")
            .no_body()
            .accepted::<Job>()],
        post(commit_failover),
    )
    .add(
        "/v1/groups/{g}/vms/{vm}/test-failover",
        &[
            op(
                "post",
                "Start a test failover in an isolated network (a job)",
            )
            .body::<crate::failover::FailoverRequest>()
            .accepted::<Job>(),
            op("delete", "Clean up a test failover (a job)")
                .no_body()
                .accepted::<Job>(),
        ],
        post(test_failover).delete(test_failover_cleanup),
    )
    .add(
        "/v1/groups/{g}/vms/{vm}/reprotect",
        &[op("post", "Replicate a failed-over VM back (a job)")
            .no_body()
            .accepted::<Job>()],
        post(reprotect),
    )
    .add(
        "/v1/jobs",
        &[op("get", "List jobs, oldest first (?state=&after=&limit=)")
            .query::<JobListQuery>()
            .ok::<Vec<Job>>()],
        get(jobs),
    )
    .add(
        "/v1/jobs/{id}",
        &[op("get", "Show a job with its steps").ok::<Job>()],
        get(job),
    )
    .add(
        "/v1/orphans",
        &[op(
            "get",
            "What no record owns, looked for now (deleted after the grace period)",
        )
        .ok::<Vec<crate::Orphan>>()],
        get(orphans),
    )
    .add(
        "/v1/events",
        &[op(
            "get",
            "List events (?target=&kind=&severity=&after=&limit=)",
        )
        .query::<EventQuery>()
        .ok::<Vec<Event>>()],
        get(events),
    )
    .add(
        "/v1/alerts",
        &[
            op("get", "List alert rules").ok::<Vec<crate::AlertRule>>(),
            op("post", "Create an alert rule (webhook)")
                .body::<crate::CreateAlert>()
                .created::<crate::AlertRule>(),
        ],
        get(alerts).post(create_alert),
    )
    .add(
        "/v1/alerts/{name}",
        &[op("delete", "Delete an alert rule")
            .no_body()
            .ok::<Deleted>()],
        delete(delete_alert),
    )
    .add(
        "/v1/agent-tokens",
        &[op(
            "post",
            "Create a one-time join token for a region (ttl_seconds: default 15 min, 1 min to 24 h)",
        )
        .body::<crate::hosts::CreateJoinToken>()
        .created::<crate::hosts::JoinToken>()],
        post(agents::create_join_token),
    )
    .add(
        "/v1/agents",
        &[op("get", "List the agents that joined, revoked ones too")
            .ok::<Vec<crate::hosts::AgentRecord>>()],
        get(agents::agents),
    )
    .add(
        "/v1/agents/{name}/revoke",
        &[op(
            "post",
            "Revoke an agent: its credential is refused and its link closed from now on",
        )
        .no_body()
        .ok::<crate::hosts::AgentRecord>()],
        post(agents::revoke),
    )
    .add(
        "/metrics",
        &[op("get", "Metrics in the Prometheus text format")
            .text("text/plain; version=0.0.4; charset=utf-8")],
        get(metrics),
    )
    .add(
        "/openapi.json",
        &[op("get", "This API's OpenAPI 3.1 description")
            .ok::<serde_json::Map<String, serde_json::Value>>()],
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
        .route("/v1/agent/commands", get(agent_link::commands))
        .route("/v1/agent/answers", post(agent_link::answer))
        .route("/v1/agent/report", post(agent_link::report))
        .route(
            "/v1/agent/restore/present",
            post(agent_link::restore_present),
        )
        .route("/v1/agent/restore/blocks", post(agent_link::restore_blocks))
        .route("/v1/agent/seed/blocks", post(agent_link::seed_blocks))
        .route("/", get(portal::index))
        .route("/portal/app.js", get(portal::script))
        .route("/portal/app.css", get(portal::style))
        .merge(api)
        .method_not_allowed_fallback(limits::method_not_allowed)
        .layer(axum::middleware::from_fn(limits::refuse_large_body))
        .layer(axum::extract::DefaultBodyLimit::max(limits::MAX_BODY_BYTES))
        .with_state(state)
}
