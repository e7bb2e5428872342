//! Two servers on one PostgreSQL database: an item's work runs where its lease is held; the
//! VMs on the first server's own agents stay its own; and a server stopped past its lease
//! (SIGSTOP) finds the lease lost when it wakes (SIGCONT), and takes its item back one
//! generation on.

mod support;

use std::process::Command;

use serde_json::Value;
use support::*;

/// The lease of `item` as `server` lists it.
fn lease(server: &Server, item: &str) -> Value {
    let name = format!("item:{item}");
    server
        .json(&["lease", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no lease of {item}"))
}

fn signal(server: &Server, sig: &str) {
    let pid = server.child.as_ref().expect("a running server").id();
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[test]
fn a_second_server_leaves_the_first_ones_vms_and_a_stalled_server_takes_its_items_back() {
    let dir = tempfile::tempdir().unwrap();
    let data_a = dir.path().join("a");
    let url = test_database(&data_a, &[]).unwrap_or_else(|| {
        panic!(
            "FERRY_TEST_POSTGRES_URL is not set: this test runs two servers on one PostgreSQL \
             database. Run it with scripts/test (or `source .ci/postgres.sh` first)"
        )
    });
    let a = Server::start(&data_a);
    let uri = a.protected_db1(Some("write -P 0x11 0 1M"));
    let held = lease(&a, "rg1/db1");
    assert_eq!(held["this_server"], true, "{held}");
    let generation = held["generation"].as_i64().unwrap();

    // A second server on the same database: the VMs on A's own agents stay A's.
    let b = Server::start_with(
        &dir.path().join("b"),
        free_port(),
        vec![("FERRY_DATABASE".into(), url)],
    );
    let seen = lease(&b, "rg1/db1");
    assert_eq!(seen["this_server"], false, "{seen}");
    assert_eq!(seen["holder"], held["holder"]);
    let e = b.fails(&[
        "vm",
        "create",
        "rg1/web9",
        "--network",
        "vnet1",
        "--subnet",
        "db",
        "--disk",
        "16MiB@sa1",
    ]);
    assert!(e.contains("serves joined hosts only"), "{e}");

    // A stalls past its lease (SIGSTOP, 15 s): B sees the item free, but cannot serve its
    // source, so it leaves the lease alone.
    signal(&a, "-STOP");
    wait_until(
        60,
        "the second server to find it cannot start the item",
        || {
            b.log_tail(400).contains("serves joined hosts only")
                && lease(&b, "rg1/db1")["expires"]
                    .as_str()
                    .is_some_and(|t| epoch(t) < now())
        },
    );
    let l = lease(&b, "rg1/db1");
    assert_eq!(l["holder"], held["holder"], "{l}");
    assert_eq!(l["generation"].as_i64(), Some(generation), "{l}");

    // A wakes: its lease lapsed, so its processor may publish nothing under it; it records
    // the loss, takes the item back one generation on, and goes on publishing points.
    signal(&a, "-CONT");
    let woke_at = now();
    wait_until(60, "the woken server to find its lease lost", || {
        a.events_text().contains("item-lease-lost")
    });
    assert!(qemu_io(&uri, "write -P 0x33 0 1M"));
    let point = a.wait_point_after("rg1/db1", woke_at + 0.5, 60);
    let l = lease(&a, "rg1/db1");
    assert_eq!(l["this_server"], true, "{l}");
    assert_eq!(l["generation"].as_i64(), Some(generation + 1), "{l}");
    let out = dir.path().join("after.raw");
    a.export("rg1/db1", 0, point["id"].as_str().unwrap(), &out);
    let bytes = std::fs::read(&out).unwrap();
    assert!(
        bytes[..1 << 20].iter().all(|&b| b == 0x33),
        "the point after the wake holds the write made after it"
    );
}
