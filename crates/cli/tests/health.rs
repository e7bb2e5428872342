//! Health follows the item's policy: its RPO thresholds and how long an item may go without a
//! new point are user settings, `replication show` explains them with churn per disk, the
//! backlogs and the RPO of the last hour, and the RPO history is kept. A job that moves data
//! reports its percent and bytes, and `--wait` on a terminal draws a progress bar.

mod support;

use std::process::Command;

use support::*;

#[test]
fn health_thresholds_come_from_the_policy_and_show_explains_them() {
    let dir = tempfile::tempdir().unwrap();
    // Every segment takes 3 s to reach the cache account: the RPO and the points lag.
    let slow = failpoints("agent-before-segment-put=delay:3000");
    let s = Server::start_with(&dir.path().join("data"), free_port(), slow);
    s.base_resources(None);

    let refused = s.fails(&[
        "policy",
        "create",
        "upside-down",
        "--rpo-warning",
        "10m",
        "--rpo-critical",
        "5m",
    ]);
    assert!(refused.contains("below the critical"), "{refused}");
    let refused = s.fails(&[
        "policy",
        "create",
        "eager",
        "--crash-consistent-every",
        "1m",
        "--no-point-warning",
        "10s",
    ]);
    assert!(refused.contains("crash-consistent cadence"), "{refused}");
    s.ok(&[
        "policy",
        "create",
        "tight",
        "--crash-consistent-every",
        "2s",
        "--rpo-warning",
        "2s",
        "--rpo-critical",
        "1h",
        "--no-point-warning",
        "2s",
    ]);
    let p = s.json(&["policy", "show", "tight"]);
    assert_eq!(p["rpo_warning_seconds"], 2.0);
    assert_eq!(p["rpo_critical_seconds"], 3600.0);
    assert_eq!(p["no_point_warning_seconds"], 2.0);

    s.create_vm("rg1/db1", "db", &["16MiB@sa1"]);
    let uri = s.disk_uri("rg1/db1", 0);
    s.ok(&[
        "replication",
        "enable",
        "rg1/db1",
        "--target-region",
        "west",
        "--policy",
        "tight",
    ]);
    s.wait_protected("rg1/db1", 120);

    // Writes keep coming; the RPO passes the policy's 2 s, and the points come late.
    let mut n = 0;
    let mut reasons = String::new();
    wait_until(90, "health to warn about the RPO and the points", || {
        n += 1;
        assert!(qemu_io(
            &uri,
            &format!("write -P 0x{:x} {}M 64k", n % 250, n % 16)
        ));
        let r = s.replication("rg1/db1");
        reasons = r["health_reasons"].to_string();
        r["health"] == "warning"
            && reasons.contains("over the warning threshold of 2 s")
            && reasons.contains("no recovery point for")
    });
    assert!(!reasons.contains("critical threshold"), "{reasons}");
    wait_until(30, "churn to show the writes", || {
        n += 1;
        assert!(qemu_io(
            &uri,
            &format!("write -P 0x{:x} {}M 64k", n % 250, n % 16)
        ));
        s.replication("rg1/db1")["churn"]["mb_per_second"]
            .as_f64()
            .is_some_and(|c| c > 0.0)
    });

    let v = s.json(&["replication", "show", "rg1/db1"]);
    assert_eq!(v["rpo_warning_seconds"], 2.0, "{v}");
    assert_eq!(v["rpo_critical_seconds"], 3600.0);
    let churn = &v["churn"];
    assert_eq!(
        churn["per_disk_mb_per_second"].as_array().map(Vec::len),
        Some(1),
        "churn per disk: {v}"
    );
    assert!(churn["mb_per_second"].as_f64().unwrap() > 0.0, "{churn}");
    assert!(v["stats"]["cache_backlog_segments"].is_u64(), "{v}");
    let history = v["rpo_history"].as_array().expect("the last hour's RPO");
    assert!(
        history.iter().any(|h| h["rpo_seconds"].is_f64()),
        "{history:?}"
    );

    let text = s.ok(&["replication", "show", "rg1/db1"]);
    for want in [
        "rg1/db1  protected  warning",
        "(warning over 2 s, critical over 3600 s)",
        "RPO last hour",
        "churn MB/s",
        "disk 0 ",
        "cache backlog",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }

    let history = s.json(&["replication", "rpo-history", "rg1/db1", "--since", "1h"]);
    let history = history.as_array().unwrap();
    assert!(!history.is_empty());
    assert!(history.iter().all(|h| h["time"].is_string()), "{history:?}");
    let refused = s.fails(&["replication", "rpo-history", "rg1/db9"]);
    assert!(refused.contains("rg1/db9"), "{refused}");

    // On a terminal (`script` gives the CLI one), `--wait` draws a progress bar.
    s.create_vm("rg1/db2", "db", &["8MiB@sa1"]);
    let cmd =
        format!("{FERRY} replication enable rg1/db2 --target-region west --policy tight --wait");
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("FERRY_URL", &s.url)
        .env("FERRY_TOKEN", &s.token)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("\r\x1b[2Kjob ") && text.contains("%") && text.contains("] "),
        "a progress bar: {text:?}"
    );
    assert!(text.contains(": succeeded"), "{text:?}");

    // The job carries its percent, and the bytes its data-moving step moved.
    let jobs = s.json(&["job", "list"]);
    let job = jobs
        .as_array()
        .unwrap()
        .iter()
        .rfind(|j| j["target"] == "rg1/db2")
        .unwrap()
        .clone();
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["percent"], 100.0, "{job}");
    assert_eq!(job["bytes_total"], 8 << 20, "{job}");
    let moved = job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["percent"].is_number())
        .expect("a step with a percent");
    assert_eq!(moved["percent"], 100.0, "{job}");
}
