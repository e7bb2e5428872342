//! The failover story on external compute, checked byte for byte through the VMs' NBD exports:
//! test failover and cleanup, failover to the latest point, changing the point, commit,
//! reprotect (sending only blocks that differ), failback and reprotect in the original
//! direction; and the state machine refusing illegal moves.

mod support;

use std::path::Path;

use support::*;

const ITEM: &str = "rg1/app1";
const FAILED_OVER: &str = "rg1-asr/app1";

/// Both disks of two VMs hold the same bytes.
fn same_disks(s: &Server, a: &str, b: &str, dir: &Path) -> bool {
    (0..2).all(|d| {
        let (x, y) = (dir.join(format!("x{d}.raw")), dir.join(format!("y{d}.raw")));
        read_disk(&s.disk_uri(a, d), &x);
        read_disk(&s.disk_uri(b, d), &y);
        same_image(&x, &y)
    })
}

fn job_ok(s: &Server, args: &[&str]) {
    let mut a = args.to_vec();
    a.push("--wait");
    s.ok(&a);
}

#[test]
fn test_failover_failover_commit_reprotect_and_failback() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = Server::start(&dir.join("data"));
    s.base_resources(None);
    s.create_vm(ITEM, "default", &["64MiB@sa1", "32MiB@sa2"]);
    s.seed_two_disks(ITEM);
    s.protect(ITEM);
    let u0 = s.disk_uri(ITEM, 0);

    // Illegal moves are refused with the state and what to do.
    let (code, body) = s.http(
        "POST",
        "/v1/groups/rg1/vms/app1/failover/commit",
        None,
        true,
    );
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("protected"), "{body}");
    let (code, body) = s.http("POST", "/v1/groups/rg1/vms/app1/reprotect", None, true);
    assert_eq!(code, 409, "{body}");
    let (code, body) = s.http(
        "POST",
        "/v1/groups/rg1/vms/app1/failover",
        Some(r#"{"recovery_point": "00000000000fffff"}"#),
        true,
    );
    assert_eq!(code, 404, "{body}");
    assert!(
        s.fails(&["failover", "test-cleanup", ITEM])
            .contains("no test failover")
    );

    // Test failover: a copy boots in an isolated network; replication goes on.
    assert!(qemu_io(&u0, "write -P 0x22 2M 1M"));
    let prod = s.fails(&["failover", "test", ITEM, "--network", "vnet1-asr"]);
    assert!(prod.contains("isolated"), "{prod}");
    job_ok(&s, &["failover", "test", ITEM]);
    let rep = s.replication(ITEM);
    assert_eq!(rep["state"], "protected");
    let test_vm = rep["test_failover"]["vm"].as_str().unwrap().to_string();
    assert_eq!(test_vm, "rg1-asr/app1-test");
    let tv = s.json(&["vm", "show", &test_vm]);
    assert_eq!(tv["region"], "west");
    assert_eq!(tv["nics"][0]["network"], "vnet1-asr-test");
    assert!(qemu_io(&s.disk_uri(&test_vm, 0), "read -P 0x22 2M 1M"));
    assert!(qemu_io(&s.disk_uri(&test_vm, 1), "read -P 0x22 1M 1M"));
    let again = s.fails(&["failover", "test", ITEM]);
    assert!(again.contains("test-cleanup"), "{again}");
    job_ok(&s, &["failover", "test-cleanup", ITEM]);
    let rep = s.replication(ITEM);
    assert!(rep["test_failover"].is_null());
    assert_eq!(rep["last_test_failover"]["outcome"], "succeeded");
    assert!(
        s.fails(&["vm", "show", &test_vm])
            .contains("does not exist")
    );
    assert!(
        s.fails(&["network", "show", "rg1-asr/vnet1-asr-test"])
            .contains("does not exist")
    );

    // Failover to latest: everything acknowledged is there, same private IP.
    let early = s.points(ITEM)[0]["id"].as_str().unwrap().to_string();
    assert!(qemu_io(&u0, "write -P 0x33 3M 1M"));
    job_ok(&s, &["failover", "run", ITEM]);
    let rep = s.replication(ITEM);
    assert_eq!(rep["state"], "failed-over");
    assert_eq!(rep["failover"]["vm"], FAILED_OVER);
    let fv = s.json(&["vm", "show", FAILED_OVER]);
    assert_eq!(fv["region"], "west");
    assert_eq!(fv["state"], "running");
    assert_eq!(fv["nics"][0]["network"], "vnet1-asr");
    let source_ip = s.json(&["vm", "show", ITEM])["nics"][0]["private_ip"].clone();
    assert_eq!(fv["nics"][0]["private_ip"], source_ip);
    assert!(same_disks(&s, ITEM, FAILED_OVER, dir));
    assert!(s.fails(&["reprotect", ITEM]).contains("failover commit"));

    // Change the point while failed over: back to the first point, then forward again.
    job_ok(&s, &["failover", "run", ITEM, "--recovery-point", &early]);
    let fo = s.disk_uri(FAILED_OVER, 0);
    assert!(qemu_io(&fo, "read -P 0x11 0 1M"));
    assert!(
        !qemu_io(&fo, "read -P 0x22 2M 1M"),
        "the first point holds a later write"
    );
    job_ok(
        &s,
        &[
            "failover",
            "run",
            ITEM,
            "--recovery-point",
            "latest-processed",
        ],
    );
    assert!(same_disks(&s, ITEM, FAILED_OVER, dir));

    // Commit keeps only the point failed over to.
    job_ok(&s, &["failover", "commit", ITEM]);
    assert_eq!(s.replication(ITEM)["state"], "failover-committed");
    assert_eq!(s.points(ITEM).len(), 1);

    // The failed-over VM diverges; reprotect sends only what differs.
    let fo = s.disk_uri(FAILED_OVER, 0);
    assert!(qemu_io(&fo, "write -P 0x44 4M 1M"));
    job_ok(&s, &["reprotect", ITEM]);
    let rep = s.replication(ITEM);
    assert_eq!(rep["state"], "protected");
    assert_eq!(rep["source_vm"], FAILED_OVER);
    assert_eq!(rep["target"]["region"], "east");
    assert_eq!(rep["target"]["group"], "rg1");
    let sent = rep["initial_replication"]["sent_bytes"].as_u64().unwrap();
    assert!(
        (1 << 20..=2 << 20).contains(&sent),
        "reprotect sent {sent} bytes for 1 MiB of difference"
    );
    assert_eq!(s.json(&["vm", "show", ITEM])["state"], "stopped");

    // Failback: a planned failover to the original VM, then reprotect in the first direction.
    assert!(qemu_io(&fo, "write -P 0x55 5M 1M"));
    job_ok(&s, &["failover", "run", ITEM, "--shutdown-source"]);
    let rep = s.replication(ITEM);
    assert_eq!(rep["failover"]["vm"], ITEM);
    assert_eq!(s.json(&["vm", "show", FAILED_OVER])["state"], "stopped");
    assert_eq!(s.json(&["vm", "show", ITEM])["state"], "running");
    assert!(same_disks(&s, ITEM, FAILED_OVER, dir));
    assert!(qemu_io(&u0, "read -P 0x55 5M 1M"));
    job_ok(&s, &["failover", "commit", ITEM]);
    job_ok(&s, &["reprotect", ITEM]);
    let rep = s.replication(ITEM);
    assert_eq!(rep["state"], "protected");
    assert_eq!(rep["source_vm"], ITEM);
    assert_eq!(rep["target"]["region"], "west");
    assert_eq!(rep["initial_replication"]["sent_bytes"], 0);

    // Replication goes on in the original direction.
    assert!(qemu_io(&u0, "write -P 0x66 6M 1M"));
    let p = s.wait_point_after(ITEM, now(), 60);
    let out = dir.join("after.raw");
    s.export(ITEM, 0, p["id"].as_str().unwrap(), &out);
    assert!(qemu_io(out.to_str().unwrap(), "read -P 0x66 6M 1M"));
    assert!(qemu_io(out.to_str().unwrap(), "read -P 0x44 4M 1M"));
}

/// The server dies at a named point inside a failover job, and again inside a reprotect job;
/// after each restart the job resumes and finishes, with exactly one failed-over VM.
#[test]
fn failover_and_reprotect_jobs_resume_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Server::start_with(
        &data,
        free_port(),
        failpoints("materialise-after-vm-record,reprotect-after-turn"),
    );
    s.base_resources(None);
    s.create_vm(ITEM, "default", &["64MiB@sa1", "32MiB@sa2"]);
    s.seed_two_disks(ITEM);
    s.protect(ITEM);
    assert!(qemu_io(&s.disk_uri(ITEM, 0), "write -P 0x77 7M 1M"));

    let job = s.json(&["failover", "run", ITEM]);
    s.wait_died(120);
    s.restart_with(failpoints("reprotect-after-turn"));
    let id = job["id"].as_u64().unwrap().to_string();
    s.ok(&["job", "show", &id, "--wait"]);
    assert_eq!(s.replication(ITEM)["state"], "failed-over");
    let vms = s.json(&["vm", "list"]);
    let copies = vms
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["group"] == "rg1-asr" && v["name"] == "app1")
        .count();
    assert_eq!(copies, 1, "{vms}");
    assert!(same_disks(&s, ITEM, FAILED_OVER, dir.path()));

    job_ok(&s, &["failover", "commit", ITEM]);
    let job = s.json(&["reprotect", ITEM]);
    s.wait_died(120);
    s.restart_with(Vec::new());
    let id = job["id"].as_u64().unwrap().to_string();
    s.ok(&["job", "show", &id, "--wait"]);
    let rep = s.replication(ITEM);
    assert_eq!(rep["state"], "protected");
    assert_eq!(rep["source_vm"], FAILED_OVER);
    assert!(qemu_io(&s.disk_uri(FAILED_OVER, 0), "write -P 0x78 8M 1M"));
    let p = s.wait_point_after(ITEM, now(), 60);
    let out = dir.path().join("after.raw");
    s.export(ITEM, 0, p["id"].as_str().unwrap(), &out);
    let out = out.to_str().unwrap();
    assert!(qemu_io(out, "read -P 0x77 7M 1M"));
    assert!(qemu_io(out, "read -P 0x78 8M 1M"));
}

/// Files under a directory (recursively).
fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.flatten()
            .map(|e| {
                if e.path().is_dir() {
                    files_under(&e.path())
                } else {
                    1
                }
            })
            .sum()
    })
}

/// Disable shows its plan first (a dry run changes nothing), then deletes the cache, the replica
/// and the test failover's VM, and leaves the source VM and its data alone.
#[test]
fn disable_plans_then_deletes_all_but_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start(&data);
    s.base_resources(None);
    s.create_vm(ITEM, "default", &["64MiB@sa1", "32MiB@sa2"]);
    s.seed_two_disks(ITEM);
    s.protect(ITEM);
    job_ok(&s, &["failover", "test", ITEM]);
    let replica = data.join("regions/west/storage/rg1-asr");
    let before = files_under(&replica);
    assert!(before > 0);

    let plan = s.json(&["replication", "disable", ITEM, "--dry-run"]);
    let objects: u64 = plan["delete"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["objects"].as_u64().unwrap())
        .sum();
    assert!(objects > 0, "{plan}");
    assert_eq!(plan["delete_vms"], serde_json::json!(["rg1-asr/app1-test"]));
    assert_eq!(plan["keep_vms"], serde_json::json!([ITEM]));
    assert_eq!(s.replication(ITEM)["state"], "protected");
    assert_eq!(
        files_under(&replica),
        before,
        "the dry run deleted something"
    );

    s.ok(&["replication", "disable", ITEM, "--wait"]);
    assert!(
        s.fails(&["replication", "show", ITEM])
            .contains("not replicated")
    );
    assert!(
        s.fails(&["vm", "show", "rg1-asr/app1-test"])
            .contains("does not exist")
    );
    assert_eq!(files_under(&replica), 0, "replica objects are left");
    assert_eq!(s.json(&["vm", "show", ITEM])["state"], "running");
    assert!(qemu_io(&s.disk_uri(ITEM, 0), "read -P 0x11 0 1M"));
}

/// A failover while another runs is refused (409), and so is a test failover or a commit;
/// once it ends, the item is failed over exactly once.
#[test]
fn a_second_failover_while_one_runs_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let env = failpoints("failover-after-select-point=delay:4000");
    let s = Server::start_with(&dir.path().join("data"), free_port(), env);
    s.base_resources(None);
    s.create_vm(ITEM, "default", &["16MiB@sa1"]);
    s.protect(ITEM);
    let job = s.json(&["failover", "run", ITEM]);
    assert_eq!(s.replication(ITEM)["state"], "failing-over");
    let (code, body) = s.http("POST", "/v1/groups/rg1/vms/app1/failover", Some("{}"), true);
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains(&format!("job {} (failover) has been running", job["id"])),
        "the refusal names the running job: {body}"
    );
    let (code, _) = s.http(
        "POST",
        "/v1/groups/rg1/vms/app1/test-failover",
        Some("{}"),
        true,
    );
    assert_eq!(code, 409);
    let (code, _) = s.http(
        "POST",
        "/v1/groups/rg1/vms/app1/failover/commit",
        None,
        true,
    );
    assert_eq!(code, 409);
    s.ok(&["job", "show", &job["id"].to_string(), "--wait"]);
    assert_eq!(s.replication(ITEM)["state"], "failed-over");
}

/// A failed-over VM runs while its disks are restored: it reads the point's data and keeps its
/// writes, and a `kill -9` of the server in the middle of the restore loses none of them.
#[test]
fn a_failed_over_vm_runs_from_disks_still_being_restored_and_survives_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Each restored batch (8 MiB) waits 2 s: the restore takes many seconds.
    let slow = failpoints("agent-hydrate-batch=delay:2000");
    let mut s = Server::start_with(&dir.join("data"), free_port(), slow);
    s.base_resources(None);
    s.create_vm(ITEM, "default", &["64MiB@sa1", "32MiB@sa2"]);
    let u0 = s.disk_uri(ITEM, 0);
    assert!(qemu_io(&u0, "write -P 0x31 0 48M"));
    assert!(qemu_io(&s.disk_uri(ITEM, 1), "write -P 0x32 0 8M"));
    s.protect(ITEM);
    job_ok(
        &s,
        &[
            "failover",
            "run",
            ITEM,
            "--recovery-point",
            "latest-processed",
        ],
    );

    // Served at once: the VM is running and its disks are not whole yet.
    let fv = s.json(&["vm", "show", FAILED_OVER]);
    assert_eq!(fv["state"], "running");
    let h = &fv["hydration"];
    assert!(h["percent"].as_f64().unwrap() < 100.0, "{fv}");
    assert!(h["total_bytes"].as_u64().unwrap() >= 56 << 20, "{fv}");
    let fo = s.disk_uri(FAILED_OVER, 0);
    // Blocks far from where the restore is read right, and a write into part of one stays.
    assert!(qemu_io(&fo, "read -P 0x31 40M 1M"));
    assert!(qemu_io(&fo, "write -P 0x99 44M 4k"));
    assert!(qemu_io(&fo, "read -P 0x31 45060k 60k"));
    assert!(qemu_io(&fo, "read -P 0x99 44M 4k"));

    s.kill9();
    s.restart_with(Vec::new());
    wait_until(120, "the failed-over disks to be whole", || {
        s.json(&["vm", "show", FAILED_OVER])["hydration"].is_null()
    });
    let fo = s.disk_uri(FAILED_OVER, 0);
    assert!(qemu_io(&fo, "read -P 0x31 0 44M"));
    assert!(qemu_io(&fo, "read -P 0x99 44M 4k"));
    assert!(qemu_io(&fo, "read -P 0x31 45060k 4092k"));
    assert!(qemu_io(&fo, "read -P 0 48M 16M"));
    assert!(qemu_io(&s.disk_uri(FAILED_OVER, 1), "read -P 0x32 0 8M"));
    assert!(qemu_io(&s.disk_uri(FAILED_OVER, 1), "read -P 0 8M 24M"));
    let events = s.json(&["event", "list", "--kind", "hydration-complete"]);
    assert!(
        events
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["target"] == FAILED_OVER)),
        "{events}"
    );
}
