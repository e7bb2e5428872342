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
