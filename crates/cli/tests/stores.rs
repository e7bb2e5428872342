//! The replication story with the cache and target accounts on Azure Blob Storage (Azurite)
//! and on S3 (a local S3 server). `scripts/test` starts both and exports
//! FERRY_TEST_AZURE_URL / FERRY_TEST_S3_URL; without them these tests fail.

mod support;

use support::*;

fn scenario(base: &str) {
    let unique = format!("e2e-{}-{}", std::process::id(), (now() * 1000.0) as u64);
    let url = |n: &str| format!("{base}/{unique}/{n}");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = Server::start(&d.join("data"));
    s.base_resources(Some((&url("sa1"), &url("sa2"))));
    // Target and cache accounts on the remote store; `replication enable` reuses them.
    s.ok(&["group", "create", "rg1-asr", "--region", "west"]);
    s.ok(&[
        "storage",
        "create",
        "rg1-asr/sa1-asr",
        "--url",
        &url("sa1-asr"),
    ]);
    s.ok(&[
        "storage",
        "create",
        "rg1-asr/sa2-asr",
        "--url",
        &url("sa2-asr"),
    ]);
    s.ok(&[
        "storage",
        "create",
        "rg1/cache-east",
        "--url",
        &url("cache"),
    ]);
    s.create_vm("rg1/web1", "default", &["16MiB@sa1", "8MiB@sa2"]);
    // Data present before replication is enabled: initial replication must carry it.
    s.seed_two_disks("rg1/web1");
    s.protect("rg1/web1");
    let rep = s.replication("rg1/web1");
    assert_eq!(rep["target"]["cache_storage"], "rg1/cache-east");
    assert_eq!(rep["target"]["storage"]["sa2"], "sa2-asr");

    check_points_between_writes(&s, "rg1/web1", d);
    assert_eq!(s.replication("rg1/web1")["health"], "healthy");
    // Disabling deletes the cache and replica data from the remote store.
    s.ok(&["replication", "disable", "rg1/web1", "--wait"]);
    assert_eq!(
        s.json(&["replication", "list"]).as_array().unwrap().len(),
        0
    );
}

#[test]
fn replicates_with_accounts_on_azurite() {
    scenario(&peer_env("FERRY_TEST_AZURE_URL", "azurite"));
}

#[test]
fn replicates_with_accounts_on_s3() {
    scenario(&peer_env("FERRY_TEST_S3_URL", "s3"));
}
