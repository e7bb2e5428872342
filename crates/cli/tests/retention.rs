//! Retention and thinning on the clock: with a 20 s retention and a ladder that keeps one point
//! per 5 s slot once points are 5 s old, points past the horizon disappear and older points are
//! thinned, while the newest stays and recent points are all kept.

mod support;

use serde_json::Value;
use support::*;

const ITEM: &str = "rg1/ret1";

/// Whether the listed points obey the policy now (with `slack` seconds for the pruning cadence).
fn obeys(points: &[Value], slack: f64) -> bool {
    let t = now();
    let ages: Vec<f64> = points
        .iter()
        .map(|p| t - epoch(p["time"].as_str().unwrap()))
        .collect();
    // Every point but the newest is within the retention.
    if ages[..ages.len().saturating_sub(1)]
        .iter()
        .any(|a| *a > 20.0 + slack)
    {
        return false;
    }
    let mut slots: Vec<i64> = points
        .iter()
        .take(points.len().saturating_sub(1))
        .filter(|p| t - epoch(p["time"].as_str().unwrap()) > 5.0 + slack)
        .map(|p| (epoch(p["time"].as_str().unwrap()) / 5.0).floor() as i64)
        .collect();
    let n = slots.len();
    slots.dedup();
    slots.len() == n
}

#[test]
fn points_past_retention_go_and_older_points_are_thinned() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    s.base_resources(None);
    s.ok(&[
        "policy",
        "create",
        "short",
        "--retention",
        "20s",
        "--crash-consistent-every",
        "1s",
        "--thin",
        "5s:5s",
    ]);
    s.create_vm(ITEM, "default", &["16MiB@sa1"]);
    s.ok(&[
        "replication",
        "enable",
        ITEM,
        "--target-region",
        "west",
        "--policy",
        "short",
        "--wait",
    ]);
    let u0 = s.disk_uri(ITEM, 0);
    let start = now();
    // Keep writing so points keep coming, for longer than the retention.
    let mut i = 0u32;
    while now() - start < 30.0 {
        assert!(qemu_io(&u0, &format!("write -P {} 0 64k", i % 250)));
        i += 1;
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let mut points = Vec::new();
    wait_until(30, "the points to obey retention and thinning", || {
        points = s.points(ITEM);
        obeys(&points, 6.0)
    });
    assert!(points.len() >= 4, "{points:?}");
    let newest = epoch(points.last().unwrap()["time"].as_str().unwrap());
    assert!(now() - newest < 10.0, "the newest point is gone");
    let recent = points
        .iter()
        .filter(|p| now() - epoch(p["time"].as_str().unwrap()) < 4.0)
        .count();
    assert!(recent >= 2, "recent points were thinned: {points:?}");
    let oldest = epoch(points[0]["time"].as_str().unwrap());
    assert!(now() - oldest < 30.0, "a point past retention is left");
}
