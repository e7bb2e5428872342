//! Bad requests get a 4xx with a message that says what is wrong, no token gets 401, and
//! nothing is half-written afterwards.

mod support;

use support::*;

#[test]
fn bad_requests_are_refused_clearly_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    s.base_resources(None);
    s.create_vm("rg1/web1", "default", &["8MiB@sa1"]);

    // No token, wrong token: 401 and no data.
    let (st, body) = s.http("GET", "/v1/vms", None, false);
    assert_eq!(st, 401, "{body}");
    assert!(body.contains("token") && !body.contains("web1"), "{body}");
    let out = std::process::Command::new(FERRY)
        .args(["vm", "list"])
        .env("FERRY_URL", &s.url)
        .env("FERRY_TOKEN", "wrong")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));

    // Unknown fields.
    let (st, body) = s.http(
        "POST",
        "/v1/groups",
        Some(r#"{"name":"rg9","region":"east","colour":"red"}"#),
        true,
    );
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("colour"), "{body}");
    // Invalid CIDR, via the CLI: one line on stderr, non-zero exit.
    let err = s.fails(&[
        "network",
        "create",
        "rg1/bad",
        "--address-space",
        "10.300.0.0/16",
        "--subnet",
        "a=10.300.0.0/24",
    ]);
    assert!(
        err.contains("invalid CIDR") && err.trim().lines().count() == 1,
        "{err}"
    );
    let err = s.fails(&[
        "network",
        "create",
        "rg1/bad",
        "--address-space",
        "10.2.0.0/16",
        "--subnet",
        "a=10.3.0.0/24",
    ]);
    assert!(err.contains("outside the address space"), "{err}");
    // A disk of size zero.
    let err = s.fails(&[
        "vm",
        "create",
        "rg1/zero",
        "--network",
        "vnet1",
        "--subnet",
        "default",
        "--disk",
        "0@sa1",
    ]);
    assert!(
        err.contains("larger than zero") && err.contains("400"),
        "{err}"
    );
    // Unknown VM, unknown item, unknown job, unknown point.
    let err = s.fails(&["vm", "show", "rg1/nope"]);
    assert!(
        err.contains("does not exist") && err.contains("404"),
        "{err}"
    );
    let err = s.fails(&[
        "replication",
        "enable",
        "rg1/nope",
        "--target-region",
        "west",
    ]);
    assert!(err.contains("404"), "{err}");
    let err = s.fails(&["recovery-point", "list", "rg1/web1"]);
    assert!(
        err.contains("not replicated") && err.contains("404"),
        "{err}"
    );
    let err = s.fails(&["job", "show", "999"]);
    assert!(err.contains("404"), "{err}");
    // Same region as the source, unknown region, unknown policy.
    let err = s.fails(&[
        "replication",
        "enable",
        "rg1/web1",
        "--target-region",
        "east",
    ]);
    assert!(err.contains("must differ"), "{err}");
    let err = s.fails(&[
        "replication",
        "enable",
        "rg1/web1",
        "--target-region",
        "mars",
    ]);
    assert!(err.contains("mars"), "{err}");
    let err = s.fails(&[
        "replication",
        "enable",
        "rg1/web1",
        "--target-region",
        "west",
        "--policy",
        "nope",
    ]);
    assert!(err.contains("policy nope"), "{err}");
    // Duplicates conflict.
    let err = s.fails(&["group", "create", "rg1", "--region", "east"]);
    assert!(err.contains("409"), "{err}");
    // Malformed JSON.
    let (st, _) = s.http("POST", "/v1/policies", Some("{not json"), true);
    assert_eq!(st, 400);

    // Nothing half-written: the failed requests left no resources behind.
    let nets = s.json(&["network", "list"]);
    assert_eq!(nets.as_array().unwrap().len(), 1, "{nets}");
    let vms = s.json(&["vm", "list"]);
    assert_eq!(vms.as_array().unwrap().len(), 1, "{vms}");
    assert_eq!(s.json(&["group", "list"]).as_array().unwrap().len(), 1);
    assert_eq!(
        s.json(&["replication", "list"]).as_array().unwrap().len(),
        0
    );
    assert_eq!(s.json(&["storage", "list"]).as_array().unwrap().len(), 2);
}
