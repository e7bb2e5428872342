//! The API describes itself: `/metrics` is valid Prometheus text carrying the items' RPO,
//! health, backlog and the NBD and apply latencies; `/openapi.json` lists every route the server
//! has (each one it lists answers, none is left out by construction), and both need the token.

mod support;

use support::*;

#[test]
fn metrics_parse_and_the_openapi_document_lists_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    s.base_resources(None);
    s.create_vm("rg1/app1", "default", &["16MiB@sa1"]);
    assert!(qemu_io(&s.disk_uri("rg1/app1", 0), "write -P 0x11 0 1M"));
    s.protect("rg1/app1");
    s.wait_point_after("rg1/app1", now(), 60);

    // Metrics: refused without the token, then parsed by a Prometheus text-format parser.
    let (code, body) = s.http("GET", "/metrics", None, false);
    assert_eq!(code, 401, "{body}");
    assert!(
        !body.contains("ferry_"),
        "no data without the token: {body}"
    );
    let (code, text) = s.http("GET", "/metrics", None, true);
    assert_eq!(code, 200, "{text}");
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let sample = |name: &str, label: (&str, &str)| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
            .unwrap_or_else(|| panic!("no {name}{{{}={}}} in:\n{text}", label.0, label.1))
    };
    let gauge = |name: &str, label: (&str, &str)| match sample(name, label).value {
        prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name} is not a number: {other:?}"),
    };
    let rpo = gauge("ferry_rpo_seconds", ("item", "rg1/app1"));
    assert!((0.0..60.0).contains(&rpo), "rpo {rpo}");
    assert_eq!(gauge("ferry_health", ("health", "healthy")), 1.0);
    assert!(gauge("ferry_written_bytes_total", ("item", "rg1/app1")) >= 0.0);
    assert!(gauge("ferry_shipped_segments_total", ("item", "rg1/app1")) >= 1.0);
    assert!(gauge("ferry_jobs", ("state", "succeeded")) >= 1.0);
    for (name, label) in [
        ("ferry_nbd_request_seconds", ("command", "write")),
        ("ferry_segment_apply_seconds", ("", "")),
    ] {
        let h = scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == name && (label.0.is_empty() || s.labels.get(label.0) == Some(label.1))
            })
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
        match &h.value {
            prometheus_parse::Value::Histogram(buckets) => {
                let inf = buckets.last().expect("buckets");
                assert!(
                    inf.less_than.is_infinite() && inf.count >= 1.0,
                    "{name}: {buckets:?}"
                );
            }
            other => panic!("{name} is not a histogram: {other:?}"),
        }
    }

    // The OpenAPI document: refused without the token; every operation it lists exists (the
    // router answers it, not its fallback or a 405), with dummy path parameters.
    let (code, _) = s.http("GET", "/openapi.json", None, false);
    assert_eq!(code, 401);
    let (code, body) = s.http("GET", "/openapi.json", None, true);
    assert_eq!(code, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for required in [
        "/metrics",
        "/openapi.json",
        "/healthz",
        "/v1/events",
        "/v1/groups/{g}/vms/{vm}/failover",
    ] {
        assert!(paths.contains_key(required), "{required} is not described");
    }
    let mut operations = 0;
    for (path, ops) in paths {
        let concrete = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "nosuch" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for method in ops.as_object().unwrap().keys() {
            operations += 1;
            let body = (method == "post").then_some("{}");
            let (code, resp) = s.http(&method.to_uppercase(), &concrete, body, true);
            assert!(
                code != 405 && !resp.contains("no such API route") && code != 0,
                "{method} {path}: {code} {resp}"
            );
        }
    }
    assert!(operations >= 40, "only {operations} operations described");
    // A route the server does not have is not described and gets the fallback.
    let (code, body) = s.http("GET", "/v1/nothing-here", None, true);
    assert_eq!(code, 404);
    assert!(body.contains("no such API route"), "{body}");
}

/// The schema of the success body of `method path` in the document (status 200, 201 or 202).
fn answer_schema(
    doc: &serde_json::Value,
    method: &str,
    path: &str,
    status: u16,
) -> serde_json::Value {
    let op = &doc["paths"][path][method];
    let schema = &op["responses"][status.to_string()]["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path}: the document gives no JSON schema for {status}: {op}"
    );
    schema.clone()
}

/// The document's schemas, made strict for the check: an object may hold only the fields its
/// schema names, so a field the server sends and the schema leaves out fails too.
fn strict(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            if m.contains_key("properties") && !m.contains_key("additionalProperties") {
                m.insert("additionalProperties".into(), false.into());
            }
            m.values_mut().for_each(strict);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strict),
        _ => {}
    }
}

/// Why `body` does not match `schema` (whose `$ref`s point into `components`); empty when it
/// does.
fn mismatches(
    components: &serde_json::Value,
    schema: &serde_json::Value,
    body: &str,
) -> Vec<String> {
    let value: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    let mut root = serde_json::json!({ "allOf": [schema], "components": components });
    root["$schema"] = "https://json-schema.org/draft/2020-12/schema".into();
    let validator = jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("the schema {schema} does not compile: {e}"));
    validator
        .iter_errors(&value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn every_json_answer_matches_its_schema_in_the_openapi_document() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    let (code, body) = s.http("GET", "/openapi.json", None, true);
    assert_eq!(code, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut components = doc["components"].clone();
    strict(&mut components);
    for (name, schema) in components["schemas"].as_object().unwrap() {
        assert!(
            jsonschema::draft202012::meta::is_valid(schema),
            "{name} is not a valid JSON Schema 2020-12: {schema}"
        );
    }
    let mut checked = std::collections::BTreeSet::new();
    let mut check = |method: &str, path: &str, concrete: &str, body: Option<&str>, status: u16| {
        let (code, answer) = s.http(&method.to_uppercase(), concrete, body, true);
        assert_eq!(code, status, "{method} {concrete}: {answer}");
        let schema = answer_schema(&doc, method, path, status);
        let wrong = mismatches(&components, &schema, &answer);
        assert!(
            wrong.is_empty(),
            "{method} {concrete} answers what its schema {schema} refuses:\n{}\n{answer}",
            wrong.join("\n")
        );
        checked.insert(format!("{method} {path}"));
        answer
    };

    // Create through the API, checking each created resource against its schema.
    check(
        "post",
        "/v1/groups",
        "/v1/groups",
        Some(r#"{"name":"rg1","region":"east"}"#),
        201,
    );
    check(
        "post",
        "/v1/groups/{g}/networks",
        "/v1/groups/rg1/networks",
        Some(
            r#"{"name":"vnet1","address_space":"10.1.0.0/16","subnets":[{"name":"default","cidr":"10.1.0.0/24"}]}"#,
        ),
        201,
    );
    for account in ["sa1", "sa2"] {
        let body = format!(r#"{{"name":"{account}"}}"#);
        check(
            "post",
            "/v1/groups/{g}/storage",
            "/v1/groups/rg1/storage",
            Some(&body),
            201,
        );
    }
    check(
        "post",
        "/v1/groups/{g}/availability-sets",
        "/v1/groups/rg1/availability-sets",
        Some(r#"{"name":"avset1"}"#),
        201,
    );
    check(
        "post",
        "/v1/policies",
        "/v1/policies",
        Some(r#"{"name":"fast","crash_consistent_every_seconds":2,"retention_seconds":3600}"#),
        201,
    );
    check(
        "post",
        "/v1/groups/{g}/vms",
        "/v1/groups/rg1/vms",
        Some(
            r#"{"name":"app1","network":"vnet1","subnet":"default","availability_set":"avset1","disks":[{"size_bytes":16777216,"storage":"sa1"}]}"#,
        ),
        201,
    );
    check(
        "post",
        "/v1/alerts",
        "/v1/alerts",
        Some(r#"{"name":"pager","url":"http://127.0.0.1:9/hook","severity":"critical"}"#),
        201,
    );
    assert!(qemu_io(&s.disk_uri("rg1/app1", 0), "write -P 0x11 0 1M"));
    let job = check(
        "post",
        "/v1/groups/{g}/vms/{vm}/replication",
        "/v1/groups/rg1/vms/app1/replication",
        Some(r#"{"target_region":"west","policy":"fast"}"#),
        202,
    );
    let job: serde_json::Value = serde_json::from_str(&job).unwrap();
    s.wait_protected("rg1/app1", 120);
    s.wait_point_after("rg1/app1", now(), 60);
    check(
        "post",
        "/v1/groups/{g}/vms/{vm}/replication/verify",
        "/v1/groups/rg1/vms/app1/replication/verify",
        Some("{}"),
        200,
    );
    check(
        "delete",
        "/v1/groups/{g}/vms/{vm}/replication",
        "/v1/groups/rg1/vms/app1/replication?dry_run=true",
        None,
        200,
    );

    // Every JSON GET the document lists, with the names made above.
    let job_id = job["id"].to_string();
    let value_of = |param: &str| -> Option<&str> {
        Some(match param {
            "g" => "rg1",
            "vm" => "app1",
            "n" => "vnet1",
            "a" => "sa1",
            "s" => "avset1",
            "p" => "fast",
            "id" => &job_id,
            _ => return None,
        })
    };
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let Some(get) = ops.get("get") else { continue };
        // An agent's routes take its credential, not the admin token (agent_identity.rs).
        if get["security"] == serde_json::json!([{"agent": []}]) {
            continue;
        }
        if get["responses"]["200"]["content"]
            .get("application/json")
            .is_none()
        {
            continue;
        }
        let concrete: String = path
            .split('/')
            .map(
                |seg| match seg.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    Some(param) => value_of(param).unwrap_or_else(|| {
                        panic!("GET {path}: no value for the path parameter {param}: add one above")
                    }),
                    None => seg,
                },
            )
            .collect::<Vec<_>>()
            .join("/");
        check("get", path, &concrete, None, 200);
    }
    for listed in [
        "get /v1/vms",
        "get /v1/groups/{g}/vms/{vm}",
        "get /v1/replications",
        "get /v1/groups/{g}/vms/{vm}/replication",
        "get /v1/groups/{g}/vms/{vm}/recovery-points",
        "get /v1/jobs/{id}",
        "get /v1/events",
        "get /v1/orphans",
        "get /openapi.json",
    ] {
        assert!(
            checked.contains(listed),
            "{listed} not checked: {checked:?}"
        );
    }

    // The check is live: a schema that leaves out a field the server sends fails it.
    let mut wrong = components.clone();
    wrong["schemas"]["Vm"]["properties"]
        .as_object_mut()
        .unwrap()
        .remove("disks");
    let (_, vm) = s.http("GET", "/v1/groups/rg1/vms/app1", None, true);
    let schema = answer_schema(&doc, "get", "/v1/groups/{g}/vms/{vm}", 200);
    let found = mismatches(&wrong, &schema, &vm);
    assert!(
        found.iter().any(|m| m.contains("disks")),
        "a schema without `disks` accepted {vm}: {found:?}"
    );
}
