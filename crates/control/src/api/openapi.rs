//! The OpenAPI 3.1 description of the API, built from the same table as the router.

use serde::Serialize;
use serde_json::{Value, json};

/// One method of one route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Route {
    /// Lowercase HTTP method: `get`, `post`, `delete`.
    pub method: &'static str,
    /// Axum path syntax, which is also OpenAPI's: `/v1/groups/{g}`.
    pub path: &'static str,
    pub summary: &'static str,
}

/// The route outside the token: the liveness probe.
pub const HEALTHZ: Route = Route {
    method: "get",
    path: "/healthz",
    summary: "Liveness probe (no token)",
};

/// An agent's join: the join token in the body is its credential.
pub const JOIN: Route = Route {
    method: "post",
    path: "/v1/agents/join",
    summary: "Join: exchange a one-time join token for an agent's credential (no admin token)",
};

/// An agent's check of its credential (`Authorization: Bearer ferry-agent-...`).
pub const AGENT_IDENTITY: Route = Route {
    method: "get",
    path: "/v1/agent/identity",
    summary: "The agent the credential belongs to (an agent's credential, not the admin token)",
};

/// Routes without the admin token: the liveness probe, the agents' join and identity (which
/// carry a join token or an agent's credential) and the portal (which holds no data).
pub const PUBLIC: [Route; 6] = [
    HEALTHZ,
    JOIN,
    AGENT_IDENTITY,
    super::portal::ROUTES[0],
    super::portal::ROUTES[1],
    super::portal::ROUTES[2],
];

/// The document for `routes` (plus the routes without a token).
pub fn document(routes: &[Route]) -> Value {
    let mut paths = serde_json::Map::new();
    for r in routes
        .iter()
        .chain(PUBLIC.iter())
        .chain(super::agent_link::ROUTES.iter())
    {
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| {
                json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
            })
            .collect();
        let mut op = json!({
            "summary": r.summary,
            "operationId": operation_id(r),
            "parameters": params,
            "responses": {
                "200": {"description": "Success (JSON, except the export's raw bytes, the console's text and the metrics' text)"},
                "4XX": {"description": "A client error: `{\"error\": message}` saying what is wrong and what to do", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "5XX": {"description": "A server error: `{\"error\": message}`", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        });
        if r.path == AGENT_IDENTITY.path {
            op["security"] = json!([{"agent": []}]);
        } else if PUBLIC.iter().any(|p| p.path == r.path) {
            op["security"] = json!([]);
        }
        if r.method == "post" {
            op["requestBody"] = json!({"required": false, "content": {"application/json": {"schema": {"type": "object"}}}});
        }
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        entry[r.method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "ferry",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Disaster recovery for virtual machines: continuous replication between regions, recovery points, failover and failback. Every route but /healthz, the agents' /v1/agents/join and /v1/agent/identity (which carry a join token or an agent's credential) and the web portal (/ and /portal/*, which hold no data) needs `Authorization: Bearer TOKEN` (the admin token is in DATA/admin-token).",
        },
        "components": {
            "securitySchemes": {
                "token": {"type": "http", "scheme": "bearer", "description": "The admin token (DATA/admin-token)"},
                "agent": {"type": "http", "scheme": "bearer", "description": "An agent's credential, `ferry-agent-...`, from its join"},
            },
            "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}},
        },
        "security": [{"token": []}],
        "paths": paths,
    })
}

/// `get /v1/groups/{g}/vms` → `get_v1_groups_g_vms`.
fn operation_id(r: &Route) -> String {
    let path: String = r
        .path
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut id = format!("{}_{}", r.method, path.trim_matches('_'));
    while id.contains("__") {
        id = id.replace("__", "_");
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_and_method_is_described_once_with_its_path_parameters() {
        let routes = super::super::routes();
        let doc = document(&routes[..routes.len() - 1]);
        let paths = doc["paths"].as_object().unwrap();
        let described: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(
            described,
            routes.len(),
            "one operation per route and method"
        );
        let op = &doc["paths"]["/v1/groups/{g}/vms/{vm}/disks/{n}/export"]["get"];
        let names: Vec<&str> = op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["g", "vm", "n"]);
        let mut ids: Vec<&str> = paths
            .values()
            .flat_map(|p| p.as_object().unwrap().values())
            .map(|o| o["operationId"].as_str().unwrap())
            .collect();
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n, "operation ids are unique");
    }
}
