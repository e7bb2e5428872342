//! The OpenAPI 3.1 description of the API, built from the same table as the router.
//!
//! Each route names the type of its request body and of its success response; their JSON
//! Schemas (2020-12, which OpenAPI 3.1 takes as is) are derived from those types with
//! `schemars`, so they follow the serde attributes the server encodes and decodes with:
//! renamed fields and enum variants, defaults, `deny_unknown_fields` (as
//! `additionalProperties: false`). Request bodies are described as the server reads them,
//! responses as it writes them.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Where the schemas of the bodies go, and so where their `$ref`s point.
const SCHEMAS: &str = "/components/schemas";

/// How a body is described: JSON of a type, raw bytes or text.
#[derive(Debug, Clone, Copy)]
pub enum Body {
    /// JSON of a type: its schema (a `$ref` into `components.schemas` for a named type).
    Json(fn(&mut SchemaGenerator) -> Schema),
    /// Raw bytes (`application/octet-stream`).
    Bytes,
    /// Text of this media type.
    Text(&'static str),
    /// No body (204).
    Empty,
}

/// A JSON request body: its schema, and the server's own decoding of it (the tests check the
/// schema against it).
#[derive(Debug, Clone, Copy)]
pub struct RequestBody {
    pub schema: fn(&mut SchemaGenerator) -> Schema,
    /// Decode a value as the handler does; the error says why it is refused.
    pub decode: fn(Value) -> Result<(), String>,
}

/// What a route takes in its body.
#[derive(Debug, Clone, Copy)]
pub enum Request {
    /// The route does not say (a route declared without bodies; a test refuses it).
    Unspecified,
    /// No body is read.
    None,
    Json(RequestBody),
    /// Raw bytes (`application/octet-stream`).
    Bytes,
}

/// One method of one route, as declared: what it does and what its bodies are.
#[derive(Debug, Clone, Copy)]
pub struct Op {
    /// Lowercase HTTP method: `get`, `post`, `delete`.
    pub method: &'static str,
    pub summary: &'static str,
    pub request: Request,
    /// The query string's fields (an object schema), if it has any.
    pub query: Option<fn(&mut SchemaGenerator) -> Schema>,
    /// Success statuses and their bodies (most routes have one; `None` slots are unused).
    pub responses: [Option<(u16, Body)>; 2],
}

/// `op("get", "List VMs")`, then what it takes and answers: `.ok::<Vec<Vm>>()`.
pub const fn op(method: &'static str, summary: &'static str) -> Op {
    Op {
        method,
        summary,
        request: Request::Unspecified,
        query: None,
        responses: [None, None],
    }
}

/// A method declared as `(method, summary)` alone: described without bodies, which the test of
/// the document refuses until the route names them.
impl From<(&'static str, &'static str)> for Op {
    fn from((method, summary): (&'static str, &'static str)) -> Op {
        op(method, summary)
    }
}

fn decode<T: DeserializeOwned>(v: Value) -> Result<(), String> {
    serde_json::from_value::<T>(v)
        .map(drop)
        .map_err(|e| e.to_string())
}

impl Op {
    /// The request body is JSON of type `T`.
    pub const fn body<T: JsonSchema + DeserializeOwned>(mut self) -> Op {
        self.request = Request::Json(RequestBody {
            schema: SchemaGenerator::subschema_for::<T>,
            decode: decode::<T>,
        });
        self
    }

    /// The request body is raw bytes.
    pub const fn body_bytes(mut self) -> Op {
        self.request = Request::Bytes;
        self
    }

    /// The route reads no body.
    pub const fn no_body(mut self) -> Op {
        self.request = Request::None;
        self
    }

    /// The query string's fields are those of `T` (a struct).
    pub const fn query<T: JsonSchema>(mut self) -> Op {
        self.query = Some(T::json_schema);
        self
    }

    /// 200 with JSON of type `T`.
    pub const fn ok<T: JsonSchema>(self) -> Op {
        self.answers(200, Body::Json(SchemaGenerator::subschema_for::<T>))
    }

    /// 201 with JSON of type `T` (the created resource).
    pub const fn created<T: JsonSchema>(self) -> Op {
        self.answers(201, Body::Json(SchemaGenerator::subschema_for::<T>))
    }

    /// 202 with JSON of type `T` (the job that carries the request out).
    pub const fn accepted<T: JsonSchema>(self) -> Op {
        self.answers(202, Body::Json(SchemaGenerator::subschema_for::<T>))
    }

    /// 204, no body.
    pub const fn no_content(self) -> Op {
        self.answers(204, Body::Empty)
    }

    /// 200 with raw bytes.
    pub const fn bytes(self) -> Op {
        self.answers(200, Body::Bytes)
    }

    /// 200 with text of `media_type`.
    pub const fn text(self, media_type: &'static str) -> Op {
        self.answers(200, Body::Text(media_type))
    }

    const fn answers(mut self, status: u16, body: Body) -> Op {
        if self.responses[0].is_none() {
            self.responses[0] = Some((status, body));
        } else {
            self.responses[1] = Some((status, body));
        }
        self
    }

    /// This method at `path`.
    pub const fn at(self, path: &'static str) -> Route {
        Route { path, op: self }
    }
}

/// One method of one route.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// Axum path syntax, which is also OpenAPI's: `/v1/groups/{g}`.
    pub path: &'static str,
    pub op: Op,
}

/// The route outside the token: the liveness probe.
pub const HEALTHZ: Route = op("get", "Liveness probe (no token)")
    .text("text/plain; charset=utf-8")
    .at("/healthz");

/// An agent's join: the join token in the body is its credential.
pub const JOIN: Route = op(
    "post",
    "Join: exchange a one-time join token for an agent's credential (no admin token)",
)
.body::<crate::hosts::JoinRequest>()
.created::<crate::hosts::Joined>()
.at("/v1/agents/join");

/// An agent's check of its credential (`Authorization: Bearer ferry-agent-...`).
pub const AGENT_IDENTITY: Route = op(
    "get",
    "The agent the credential belongs to (an agent's credential, not the admin token)",
)
.ok::<crate::hosts::AgentIdentity>()
.at("/v1/agent/identity");

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

/// The generator of the schemas of bodies the server reads (requests) or writes (responses).
fn generator(read: bool) -> SchemaGenerator {
    let settings = SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = SCHEMAS.into();
        s.meta_schema = None;
    });
    if read {
        settings.for_deserialize().into_generator()
    } else {
        settings.for_serialize().into_generator()
    }
}

/// The `content` of a body.
fn content(body: Body, generator: &mut SchemaGenerator) -> Value {
    match body {
        Body::Json(schema) => json!({"application/json": {"schema": schema(generator)}}),
        Body::Bytes => json!({"application/octet-stream": {}}),
        Body::Text(media_type) => json!({ media_type: {"schema": {"type": "string"}} }),
        Body::Empty => json!({}),
    }
}

/// The query parameters of an object schema: one per property, required as the object says.
fn query_parameters(schema: &Schema) -> Vec<Value> {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    props
        .iter()
        .map(|(name, s)| {
            let mut p = json!({"name": name, "in": "query", "required": required.contains(&name.as_str()), "schema": s});
            if let Some(d) = s.get("description") {
                p["description"] = d.clone();
            }
            p
        })
        .collect()
}

/// The document for `routes` (plus the routes without a token).
pub fn document(routes: &[Route]) -> Value {
    let mut reads = generator(true);
    let mut writes = generator(false);
    let mut paths = serde_json::Map::new();
    for r in routes
        .iter()
        .chain(PUBLIC.iter())
        .chain(super::agent_link::ROUTES.iter())
    {
        let o = &r.op;
        let mut params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| {
                json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
            })
            .collect();
        if let Some(query) = o.query {
            params.extend(query_parameters(&query(&mut reads)));
        }
        let mut responses = serde_json::Map::new();
        for (status, body) in o.responses.iter().flatten() {
            let description = match status {
                201 => "Created",
                204 => "Done, no body",
                202 => "Accepted: the job that carries the request out",
                _ => "Success",
            };
            let mut answer = json!({"description": description});
            if !matches!(body, Body::Empty) {
                answer["content"] = content(*body, &mut writes);
            }
            responses.insert(status.to_string(), answer);
        }
        responses.insert("4XX".into(), json!({"description": "A client error: `{\"error\": message}` saying what is wrong and what to do", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}));
        responses.insert("5XX".into(), json!({"description": "A server error: `{\"error\": message}`", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}));
        let mut op = json!({
            "summary": o.summary,
            "operationId": operation_id(r),
            "parameters": params,
            "responses": responses,
        });
        let agents = super::agent_link::ROUTES.iter().chain([&AGENT_IDENTITY]);
        if agents.clone().any(|p| p.path == r.path) {
            op["security"] = json!([{"agent": []}]);
        } else if PUBLIC.iter().any(|p| p.path == r.path) {
            op["security"] = json!([]);
        }
        match o.request {
            Request::Json(body) => {
                op["requestBody"] = json!({"required": true, "content": content(Body::Json(body.schema), &mut reads)});
            }
            Request::Bytes => {
                op["requestBody"] =
                    json!({"required": true, "content": content(Body::Bytes, &mut reads)});
            }
            Request::None | Request::Unspecified => {}
        }
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        entry[o.method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "ferry",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Disaster recovery for virtual machines: continuous replication between regions, recovery points, failover and failback. Every route but /healthz, the agents' routes (/v1/agents/join with a join token; /v1/agent/* with an agent's credential) and the web portal (/ and /portal/*, which hold no data) needs `Authorization: Bearer TOKEN` (the admin token is in DATA/admin-token).",
        },
        "components": {
            "securitySchemes": {
                "token": {"type": "http", "scheme": "bearer", "description": "The admin token (DATA/admin-token)"},
                "agent": {"type": "http", "scheme": "bearer", "description": "An agent's credential, `ferry-agent-...`, from its join"},
            },
            "schemas": schemas(reads, writes),
        },
        "security": [{"token": []}],
        "paths": paths,
    })
}

/// The named schemas of the requests and the responses, and the error body's. A type that is
/// both read and written has one schema (a test checks both contracts give the same one).
fn schemas(mut reads: SchemaGenerator, mut writes: SchemaGenerator) -> Value {
    let mut all = writes.take_definitions(true);
    for (name, schema) in reads.take_definitions(true) {
        all.entry(name).or_insert(schema);
    }
    all.insert(
        "Error".into(),
        json!({"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}),
    );
    Value::Object(all)
}

/// `get /v1/groups/{g}/vms` → `get_v1_groups_g_vms`.
fn operation_id(r: &Route) -> String {
    let path: String = r
        .path
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut id = format!("{}_{}", r.op.method, path.trim_matches('_'));
    while id.contains("__") {
        id = id.replace("__", "_");
    }
    id
}

#[cfg(test)]
mod tests;
