//! The whole story with a real Linux guest under `--compute qemu`: the guest writes files with
//! their checksums and keeps running; a test failover boots the replica in an isolated network,
//! where the guest verifies every file; a failover to the latest app-consistent point boots in
//! west and verifies; commit; reprotect back to east; the failed-over guest writes more; a
//! planned failback boots the VM in east, which sees every file.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

const ITEM: &str = "rg1/g1";
const WEST: &str = "rg1-asr/g1";
const TEST_VM: &str = "rg1-asr/g1-test";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The guest kernel and initramfs (scripts/guest-kit), built once, for qemu-system.
fn guest_kit() -> (PathBuf, PathBuf) {
    peer("qemu-system");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest-kit");
    let st = Command::new(repo_root().join("scripts/guest-kit"))
        .arg(&dir)
        .status()
        .expect("run scripts/guest-kit");
    assert!(
        st.success(),
        "scripts/guest-kit failed: run scripts/install-test-tools first"
    );
    (dir.join("vmlinuz"), dir.join("initrd.gz"))
}

fn mkfs(img: &Path, size: &str) {
    let st = Command::new(repo_root().join("scripts/guest-kit"))
        .arg("mkfs")
        .arg(img)
        .arg(size)
        .status()
        .unwrap();
    assert!(st.success(), "scripts/guest-kit mkfs");
}

fn console(s: &Server, vm: &str) -> String {
    s.ok(&["vm", "console", vm])
}

/// Wait for a console line; panics with the console when it does not come.
fn wait_console(s: &Server, vm: &str, needle: &str, secs: u64) -> String {
    let mut text = String::new();
    let what = format!("{needle:?} on the console of {vm}");
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(secs, &what, || {
            text = console(s, vm);
            text.contains(needle)
        })
    }));
    assert!(found.is_ok(), "no {what}; console:\n{text}");
    text
}

/// The `files=N` of the guest's "verify ok" line; panics on a failed verify.
fn verified(s: &Server, vm: &str) -> u64 {
    let text = wait_console(s, vm, "ferry-guest: verify ", 180);
    assert!(
        !text.contains("verify FAILED"),
        "{vm} failed to verify:\n{text}"
    );
    let text = wait_console(s, vm, "ferry-guest: verify ok files=", 10);
    let line = text
        .lines()
        .find(|l| l.contains("verify ok files="))
        .unwrap();
    line.rsplit('=').next().unwrap().trim().parse().unwrap()
}

/// How many files the guest's write loop reports having written since boot.
fn written(s: &Server, vm: &str) -> u64 {
    console(s, vm)
        .lines()
        .filter_map(|l| l.split("ferry-guest: wrote ").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

fn wait_written(s: &Server, vm: &str, at_least: u64) {
    let what = format!("{vm} to write {at_least} files");
    wait_until(240, &what, || written(s, vm) >= at_least);
}

/// The well-formed lines of /data/SUMS in a stopped VM's ext4 disk image.
fn sums(image: &str) -> Vec<String> {
    let out = Command::new("debugfs")
        .args(["-R", "cat /data/SUMS", image])
        .output()
        .expect("run debugfs (e2fsprogs)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.len() > 66 && l.contains("  f-"))
        .map(String::from)
        .collect()
}

fn job(s: &Server, args: &[&str]) {
    let mut a = args.to_vec();
    a.push("--wait");
    s.ok(&a);
}

#[test]
fn a_real_guest_fails_over_and_back_without_losing_a_file() {
    let (kernel, initrd) = guest_kit();
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    // Images and boot files are imported from the server's import directory.
    let import = s.data.join("import");
    std::fs::create_dir_all(&import).unwrap();
    std::fs::copy(&kernel, import.join("vmlinuz")).unwrap();
    std::fs::copy(&initrd, import.join("initrd.gz")).unwrap();
    let fs = import.join("fs.img");
    mkfs(&fs, "64M");
    s.base_resources(None);
    s.ok(&[
        "policy",
        "create",
        "guest",
        "--crash-consistent-every",
        "2s",
        "--app-consistent-every",
        "5s",
    ]);
    s.ok(&[
        "vm",
        "create",
        ITEM,
        "--network",
        "vnet1",
        "--subnet",
        "default",
        "--disk",
        "64MiB@sa1",
        "--image",
        "fs.img",
        "--compute",
        "qemu",
        "--kernel",
        "vmlinuz",
        "--initrd",
        "initrd.gz",
        "--append",
        "quiet ferry.job=verify ferry.then=write-loop",
    ]);
    wait_console(&s, ITEM, "ferry-guest: ip 10.1.0.4/24", 120);
    assert_eq!(verified(&s, ITEM), 0);
    wait_written(&s, ITEM, 1);

    s.ok(&[
        "replication",
        "enable",
        ITEM,
        "--target-region",
        "west",
        "--policy",
        "guest",
        "--wait",
    ]);
    wait_written(&s, ITEM, 10);

    // Test failover: the replica boots in an isolated network and verifies every file.
    job(&s, &["failover", "test", ITEM]);
    assert_eq!(s.replication(ITEM)["state"], "protected");
    let tv = s.json(&["vm", "show", TEST_VM]);
    assert_eq!(tv["region"], "west");
    assert_eq!(tv["nics"][0]["network"], "vnet1-asr-test");
    let n = verified(&s, TEST_VM);
    assert!(n >= 5, "the test VM verified only {n} files");
    job(&s, &["failover", "test-cleanup", ITEM]);
    assert!(s.fails(&["vm", "show", TEST_VM]).contains("does not exist"));

    // The guest writes more; fail over to the latest app-consistent point.
    let before = written(&s, ITEM);
    wait_written(&s, ITEM, before + 5);
    let t = now();
    let mut app = serde_json::Value::Null;
    wait_until(120, "an app-consistent point", || {
        app = s
            .points(ITEM)
            .into_iter()
            .rev()
            .find(|p| p["kind"] == "app-consistent" && epoch(p["time"].as_str().unwrap()) > t)
            .unwrap_or_default();
        !app.is_null()
    });
    job(
        &s,
        &[
            "failover",
            "run",
            ITEM,
            "--recovery-point",
            "latest-app-consistent",
        ],
    );
    let rep = s.replication(ITEM);
    assert_eq!(rep["failover"]["point"]["kind"], "app-consistent");
    let fv = s.json(&["vm", "show", WEST]);
    assert_eq!(fv["region"], "west");
    assert_eq!(fv["nics"][0]["private_ip"], "10.1.0.4");
    let n_west = verified(&s, WEST);
    assert!(
        n_west > n,
        "west verified {n_west} files, the test failover {n}"
    );

    // Commit, reprotect back to east; the guest in west writes more.
    job(&s, &["failover", "commit", ITEM]);
    job(&s, &["reprotect", ITEM]);
    let rep = s.replication(ITEM);
    assert_eq!(rep["state"], "protected");
    assert_eq!(rep["target"]["region"], "east");
    assert_eq!(s.json(&["vm", "show", ITEM])["state"], "stopped");
    wait_written(&s, WEST, 10);

    // Failback: a planned failover home; the guest in east sees every file west wrote.
    job(&s, &["failover", "run", ITEM, "--shutdown-source"]);
    let west_sums = sums(fv["disks"][0]["image"].as_str().unwrap());
    assert!(west_sums.len() as u64 >= n_west + 10, "{}", west_sums.len());
    let east = s.json(&["vm", "show", ITEM]);
    assert_eq!(east["state"], "running");
    assert_eq!(verified(&s, ITEM), west_sums.len() as u64);
    job(&s, &["failover", "commit", ITEM]);
    job(&s, &["reprotect", ITEM]);
    let rep = s.replication(ITEM);
    assert_eq!(rep["state"], "protected");
    assert_eq!(rep["source_vm"], ITEM);
    assert_eq!(rep["target"]["region"], "west");
}
