//! The replication story as a user drives it, on the embedded default: two disks on two
//! accounts, `-asr` targets, writes through NBD, points that export exactly the disks at their
//! instant, and cache segments that are removed once applied.

mod support;

use support::*;

fn setup(dir: &std::path::Path) -> Server {
    let s = Server::start(&dir.join("data"));
    s.base_resources(None);
    s.ok(&[
        "vm",
        "create",
        "rg1/web1",
        "--network",
        "vnet1",
        "--subnet",
        "default",
        "--availability-set",
        "avset1",
        "--disk",
        "64MiB@sa1",
        "--disk",
        "32MiB@sa2",
        "--compute",
        "external",
    ]);
    s
}

#[test]
fn replicates_two_disks_to_west_with_exact_points() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path());
    let u0 = s.disk_uri("rg1/web1", 0);
    // Data present before replication is enabled: initial replication must carry it.
    s.seed_two_disks("rg1/web1");
    s.protect("rg1/web1");

    let rep = s.replication("rg1/web1");
    assert_eq!(rep["target"]["group"], "rg1-asr");
    assert_eq!(rep["target"]["network"], "vnet1-asr");
    assert_eq!(rep["target"]["availability_set"], "avset1-asr");
    assert_eq!(rep["target"]["region"], "west");
    assert_eq!(rep["target"]["storage"]["sa1"], "sa1-asr");
    let src = s.json(&["network", "show", "rg1/vnet1"]);
    let dst = s.json(&["network", "show", "rg1-asr/vnet1-asr"]);
    assert_eq!(dst["region"], "west");
    assert_eq!(src["address_space"], dst["address_space"]);
    assert_eq!(src["subnets"], dst["subnets"]);
    let job_id = rep["job"].to_string();
    wait_until(30, "the enable job to succeed", || {
        s.json(&["job", "show", &job_id])["state"] == "succeeded"
    });
    let job = s.json(&["job", "show", &job_id]);
    assert!(
        job["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|st| st["state"] == "succeeded"),
        "{job}"
    );

    // Write A, a point after it; write B, a point after B: each exports exactly its instant.
    let d = dir.path();
    check_points_between_writes(&s, "rg1/web1", d);
    read_disk(&u0, &d.join("src0.raw"));
    assert!(!same_image(&d.join("a0.raw"), &d.join("b0.raw")));

    // `latest` exports the newest point; both disks equal the source (no writes since B).
    s.export("rg1/web1", 0, "latest", &d.join("l0.raw"));
    assert!(same_image(&d.join("src0.raw"), &d.join("l0.raw")));

    // Segments went through the cache account and none is left once applied.
    let rep = s.replication("rg1/web1");
    assert!(
        rep["stats"]["segments_shipped"].as_u64().unwrap() > 0,
        "{rep}"
    );
    let cache = s.data.join("regions/east/storage/rg1/cache-east");
    wait_until(30, "the cache account to be empty", || {
        count_files(&cache) == 0
    });
    assert_eq!(rep["health"], "healthy", "{rep}");
}

fn count_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        count_files(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn the_list_filters_by_state_and_health_and_pages_in_item_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    s.base_resources(None);
    for vm in ["rg1/c", "rg1/a", "rg1/b"] {
        s.create_vm(vm, "default", &["8MiB@sa1"]);
        s.protect(vm);
    }
    let names = |args: &[&str]| -> Vec<String> {
        let mut a = vec!["replication", "list"];
        a.extend(args);
        s.json(&a)
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&[]), ["rg1/a", "rg1/b", "rg1/c"]);
    assert_eq!(
        names(&["--state", "protected"]),
        ["rg1/a", "rg1/b", "rg1/c"]
    );
    assert!(names(&["--state", "failed-over"]).is_empty());
    assert!(names(&["--health", "critical"]).is_empty());
    assert_eq!(names(&["--limit", "2"]), ["rg1/a", "rg1/b"]);
    assert_eq!(names(&["--limit", "2", "--after", "rg1/b"]), ["rg1/c"]);
    assert!(names(&["--after", "rg1/c"]).is_empty());
    // A full page names the next one.
    let out = s.ferry(&["replication", "list", "--limit", "1"]);
    assert!(out.status.success());
    let hint = String::from_utf8_lossy(&out.stderr);
    assert!(
        hint.contains("--after rg1/a"),
        "no next-page hint in {hint:?}"
    );

    let err = s.fails(&["replication", "list", "--state", "sleeping"]);
    assert!(
        err.contains("unknown item state \"sleeping\"") && err.contains("protected"),
        "{err}"
    );
    let err = s.fails(&["replication", "list", "--health", "fine"]);
    assert!(err.contains("use healthy, warning or critical"), "{err}");
    let err = s.fails(&["replication", "list", "--limit", "0"]);
    assert!(err.contains("limit must be at least 1"), "{err}");
}
