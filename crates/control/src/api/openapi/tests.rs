//! The document is complete (every route names its bodies), true to the types (a value built
//! from a request schema is what the server decodes) and well formed (every `$ref` resolves,
//! every path parameter is declared).

use std::collections::BTreeSet;

use super::*;

/// The table and its document (the document adds the public routes itself).
fn table() -> (Vec<Route>, Value) {
    let routes = super::super::routes();
    let doc = document(&routes[..routes.len() - PUBLIC.len()]);
    (routes, doc)
}

/// The schema `$ref` points at, or `schema` itself.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let target = doc
                .pointer(r.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("$ref {r} resolves to nothing"));
            resolve(doc, target)
        }
        None => schema,
    }
}

/// A value `schema` accepts: every property of every object (`full`), or only the required.
fn sample(doc: &Value, schema: &Value, full: bool) -> Value {
    let s = resolve(doc, schema);
    if let Some(v) = s.get("const") {
        return v.clone();
    }
    if let Some(v) = s.get("enum").and_then(Value::as_array) {
        return v[0].clone();
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(branches) = s.get(key).and_then(Value::as_array) {
            let branch = branches
                .iter()
                .find(|b| b.get("type") != Some(&json!("null")))
                .unwrap_or(&branches[0]);
            return sample(doc, branch, full);
        }
    }
    let ty = match s.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ => "string",
    };
    match ty {
        "string" if s.get("format") == Some(&json!("date-time")) => json!("2026-01-02T03:04:05Z"),
        "string" => json!("x"),
        "integer" => json!(1),
        "number" => json!(1.5),
        "boolean" => json!(true),
        "null" => Value::Null,
        "array" => match s.get("items") {
            Some(items) => json!([sample(doc, items, full)]),
            None => json!([]),
        },
        "object" => {
            let required = required(s);
            let mut out = serde_json::Map::new();
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                for (name, p) in props {
                    if full || required.contains(name.as_str()) {
                        out.insert(name.clone(), sample(doc, p, full));
                    }
                }
            }
            if let Some(extra @ Value::Object(_)) = s.get("additionalProperties") {
                out.insert("key".into(), sample(doc, extra, full));
            }
            Value::Object(out)
        }
        other => panic!("no sample for type {other} in {s}"),
    }
}

fn required(s: &Value) -> BTreeSet<&str> {
    s.get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn every_route_and_method_is_described_once_with_its_path_parameters() {
    let (routes, doc) = table();
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
    assert_eq!(names, ["g", "vm", "n", "recovery_point"]);
    assert_eq!(op["parameters"][3]["in"], "query");
    assert_eq!(op["parameters"][3]["required"], true);
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

#[test]
fn every_route_names_its_response_and_every_post_or_delete_its_request_body() {
    let (routes, _) = table();
    let mut missing = Vec::new();
    for r in &routes {
        let (method, path) = (r.op.method, r.path);
        if r.op.responses[0].is_none() {
            missing.push(format!(
                "{method} {path} names no success response: declare it with \
                 op(..).ok::<T>() (or .created, .accepted, .bytes(), .text(MEDIA_TYPE))"
            ));
        }
        if method != "get" && matches!(r.op.request, Request::Unspecified) {
            missing.push(format!(
                "{method} {path} does not say what its body is: declare it with \
                 op(..).body::<T>() or .no_body()"
            ));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn a_plain_method_and_summary_is_described_without_bodies_and_refused() {
    let plain: Op = ("post", "Create a thing").into();
    assert!(matches!(plain.request, Request::Unspecified));
    assert!(plain.responses.iter().all(Option::is_none));
    let doc = document(&[plain.at("/v1/things")]);
    let op = &doc["paths"]["/v1/things"]["post"];
    assert!(op.get("requestBody").is_none());
    assert_eq!(
        op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["4XX", "5XX"]
    );
}

#[test]
fn every_json_request_schema_is_an_object_with_the_fields_the_server_decodes() {
    let (routes, doc) = table();
    let mut checked = BTreeSet::new();
    for r in &routes {
        let Request::Json(body) = r.op.request else {
            continue;
        };
        if r.path.starts_with("/v1/agent/") {
            // The agent protocol's messages: an answer is a tagged union, and a command's
            // unknown fields are ignored by design (docs/agent-protocol.md).
            continue;
        }
        let what = format!("{} {}", r.op.method, r.path);
        let schema = &doc["paths"][r.path][r.op.method]["requestBody"]["content"]["application/json"]
            ["schema"];
        let reference = schema["$ref"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: the request schema is not a $ref: {schema}"));
        assert!(
            reference.starts_with("#/components/schemas/"),
            "{what}: {reference}"
        );
        let object = resolve(&doc, schema);
        assert_eq!(object["type"], "object", "{what}: {object}");
        assert_eq!(
            object["additionalProperties"], false,
            "{what}: request bodies refuse unknown fields: {object}"
        );
        let props = object["properties"].as_object().unwrap();

        // Every property the schema names is one the type reads (unknown ones are refused),
        // with a value of the type the schema gives.
        let full = sample(&doc, schema, true);
        assert_eq!(full.as_object().unwrap().len(), props.len());
        (body.decode)(full.clone()).unwrap_or_else(|e| panic!("{what}: {full} refused: {e}"));
        // The required fields are enough...
        let minimal = sample(&doc, schema, false);
        (body.decode)(minimal.clone()).unwrap_or_else(|e| panic!("{what}: {minimal} refused: {e}"));
        // ...and each is needed.
        for name in required(object) {
            let mut less = minimal.clone();
            less.as_object_mut().unwrap().remove(name);
            let err = (body.decode)(less)
                .expect_err(&format!("{what}: decoded without required field {name}"));
            assert!(err.contains(name), "{what}: {err}");
        }
        // A field the schema does not name is refused, as the schema says.
        let mut more = minimal.clone();
        more["no_such_field"] = json!(1);
        let err = (body.decode)(more).expect_err(&format!("{what}: an unknown field was read"));
        assert!(err.contains("unknown field"), "{what}: {err}");
        checked.insert(reference.to_string());
    }
    for name in [
        "CreateGroup",
        "CreateNetwork",
        "CreateStorage",
        "CreateAvailabilitySet",
        "CreatePolicy",
        "CreateVm",
        "EnableReplication",
        "FailoverRequest",
        "VerifyBody",
        "CreateAlert",
    ] {
        assert!(
            checked.contains(&format!("#/components/schemas/{name}")),
            "{name} is not checked: {checked:?}"
        );
    }
}

#[test]
fn schemas_follow_the_serde_attributes() {
    let (_, doc) = table();
    let schemas = &doc["components"]["schemas"];
    // rename_all = "kebab-case" on a state enum.
    let states = resolve(&doc, &schemas["ItemState"]);
    let alone = [states.clone()];
    let names: Vec<&str> = states["oneOf"]
        .as_array()
        .map_or(&alone[..], Vec::as_slice)
        .iter()
        .flat_map(|b| match (b.get("enum"), b.get("const")) {
            (Some(Value::Array(all)), _) => all.iter().filter_map(Value::as_str).collect(),
            (_, Some(Value::String(one))) => vec![one.as_str()],
            _ => Vec::new(),
        })
        .collect();
    assert!(
        names.contains(&"initial-replication") && names.contains(&"failed-over"),
        "{states}"
    );
    // A request's `default` fields are optional; a response's are always written.
    let vm_request = &schemas["CreateVm"];
    assert_eq!(
        required(vm_request),
        BTreeSet::from(["name", "network", "subnet", "disks"])
    );
    let policy = &schemas["Policy"];
    assert!(required(policy).contains("journal_seconds"), "{policy}");
    // skip_serializing_if: written only when set.
    let vm = &schemas["Vm"];
    assert!(!required(vm).contains("hydration"), "{vm}");
    assert!(required(vm).contains("disks"), "{vm}");
    // Times are RFC 3339 strings, stream ids 32 hex digits.
    assert_eq!(vm["properties"]["created"]["format"], "date-time");
    let stream = &schemas["ReplicationView"]["properties"]["stream"];
    assert_eq!(stream["pattern"], "^[0-9a-f]{32}$", "{stream}");
}

#[test]
fn a_type_read_and_written_has_one_schema() {
    let (routes, _) = table();
    let mut reads = generator(true);
    let mut writes = generator(false);
    for r in &routes {
        if let Request::Json(body) = r.op.request {
            (body.schema)(&mut reads);
        }
        for (_, body) in r.op.responses.iter().flatten() {
            if let Body::Json(schema) = body {
                schema(&mut writes);
            }
        }
    }
    let (read, written) = (reads.take_definitions(true), writes.take_definitions(true));
    for (name, schema) in &read {
        if let Some(w) = written.get(name) {
            assert_eq!(
                schema, w,
                "{name} is read and written with different schemas: give one of them its own type"
            );
        }
    }
}

/// Every `$ref` under `v`.
fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn the_document_is_well_formed_openapi() {
    let (_, doc) = table();
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 40, "{} refs", all.len());
    for r in all {
        assert!(
            r.starts_with("#/") && doc.pointer(&r[1..]).is_some(),
            "$ref {r} resolves to nothing"
        );
    }
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let in_path: BTreeSet<&str> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for (method, op) in ops.as_object().unwrap() {
            let params = op["parameters"].as_array().unwrap();
            let declared: Vec<&str> = params
                .iter()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            assert_eq!(
                declared.iter().copied().collect::<BTreeSet<_>>(),
                in_path,
                "{method} {path}: path parameters"
            );
            assert_eq!(
                declared.len(),
                in_path.len(),
                "{method} {path}: declared twice"
            );
            for p in params {
                assert!(p["schema"].is_object(), "{method} {path}: {p}");
                assert!(p["required"].is_boolean(), "{method} {path}: {p}");
            }
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{method} {path}: no success response"
            );
            for (status, r) in responses {
                assert!(r["description"].is_string(), "{method} {path} {status}");
                // A 204 has no content.
                let content = r["content"].as_object().cloned().unwrap_or_default();
                for (media, m) in &content {
                    if media == "application/json" {
                        assert!(m["schema"].is_object(), "{method} {path} {status}");
                    }
                }
            }
        }
    }
}
