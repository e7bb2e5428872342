//! What a token holder or a local user can do to the host through ferry: every escape is
//! refused with a 400 that says what to do and leaves the file system as it was; the data
//! directory is private; scripts run unprivileged; nonsense settings are refused.

mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

/// Every path under `dir` (relative), plus the entries of `/`: what a refused request must
/// leave as it was.
fn snapshot(dir: &Path) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for e in std::fs::read_dir("/").unwrap() {
        all.insert(format!("/{}", e.unwrap().file_name().to_string_lossy()));
    }
    for p in walk(dir) {
        all.insert(p.strip_prefix(dir).unwrap().display().to_string());
    }
    all
}

/// Every path under `dir`, directories included, symlinks not followed.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            }
            out.push(e.path());
        }
    }
    out
}

#[test]
fn every_escape_is_refused_with_a_400_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start(&data);
    s.base_resources(None);
    let import = data.join("import");
    assert!(import.is_dir() && data.join("scripts").is_dir() && data.join("storage").is_dir());
    // A link in the import directory to the admin token.
    std::os::unix::fs::symlink(data.join("admin-token"), import.join("token.img")).unwrap();
    let d = data.display().to_string();
    let token = format!("{d}/admin-token");
    let storage = "/v1/groups/rg1/storage";
    let vms = "/v1/groups/rg1/vms";
    let vm = |extra: &str| {
        format!(
            r#"{{"name": "v1", "network": "vnet1", "subnet": "default", "disks": [{{"size_bytes": 16777216, "storage": "sa1"}}]{extra}}}"#
        )
    };
    let cases: Vec<(&str, String, String, u16, &str)> = vec![
        // Storage accounts outside the roots, hidden by encoding, or in memory.
        ("POST", storage.into(), r#"{"name": "x1", "url": "file:relative"}"#.into(), 400, "file:///ABSOLUTE/DIR"),
        ("POST", storage.into(), r#"{"name": "x2", "url": "file:///A/B/a%2F..%2F..%2Fetc"}"#.into(), 400, "not a plain directory path"),
        ("POST", storage.into(), r#"{"name": "x3", "url": "file:///etc"}"#.into(), 400, "is not under a storage root"),
        ("POST", storage.into(), r#"{"name": "x4", "url": "file:///"}"#.into(), 400, "not a plain directory path"),
        ("POST", storage.into(), r#"{"name": "x5", "url": "file:///proc/self"}"#.into(), 400, "is not under a storage root"),
        ("POST", storage.into(), format!(r#"{{"name": "x6", "url": "file://{d}"}}"#), 400, "holds the server's data directory"),
        ("POST", storage.into(), format!(r#"{{"name": "x7", "url": "file://{d}/regions/east/x7"}}"#), 400, "is not under a storage root"),
        ("POST", storage.into(), r#"{"name": "x8", "url": "memory://"}"#.into(), 400, "allow_memory_accounts"),
        // A duplicate name conflicts before its directory is made.
        ("POST", storage.into(), format!(r#"{{"name": "sa1", "url": "file://{d}/storage/dup"}}"#), 409, "already exists"),
        // Images only from the import directory; scripts only by name.
        ("POST", vms.into(), vm(&format!(r#", "image": "{token}""#)), 400, "is not in the import directory"),
        ("POST", vms.into(), vm(r#", "image": "../admin-token""#), 400, "is not in the import directory"),
        ("POST", vms.into(), vm(&format!(r#", "compute": "qemu", "kernel": "{token}""#)), 400, "--kernel"),
        ("POST", vms.into(), vm(r#", "compute": "qemu", "kernel": "/boot/../etc/shadow""#), 400, "is not in the import directory"),
        ("POST", vms.into(), vm(r#", "image": "token.img""#), 400, "is not in the import directory"),
        ("POST", vms.into(), vm(r#", "pre_freeze_script": "cat /etc/shadow""#), 400, "must be the name of a script"),
        ("POST", vms.into(), vm(r#", "post_thaw_script": "../../admin-token""#), 400, "must be the name of a script"),
        ("POST", vms.into(), vm(r#", "pre_freeze_script": "missing.sh""#), 400, "there is no script"),
        // Sizes and addresses.
        ("POST", vms.into(), r#"{"name": "v1", "network": "vnet1", "subnet": "default", "disks": [{"size_bytes": 9223372036854775808}]}"#.into(), 400, "larger than the largest disk, 64 TiB"),
        ("POST", vms.into(), vm(r#", "ip": "10.1.0.0""#), 400, "network address"),
        ("POST", vms.into(), vm(r#", "ip": "10.1.0.1""#), 400, "gateway address"),
        ("POST", vms.into(), vm(r#", "ip": "10.1.0.255""#), 400, "broadcast address"),
        // Bodies, durations and webhooks.
        ("POST", vms.into(), "[]".into(), 400, "the body must be a JSON object"),
        ("POST", "/v1/policies".into(), r#"[{"name": "p"}]"#.into(), 400, "the body must be a JSON object"),
        ("POST", "/v1/policies".into(), r#"{"name": "p", "retention_seconds": 60, "crash_consistent_every_seconds": 120}"#.into(), 400, "shorter than the crash-consistent cadence"),
        ("POST", "/v1/policies".into(), r#"{"name": "p", "rpo_critical_seconds": 1e308}"#.into(), 400, "between 0 and 30 days"),
        ("POST", "/v1/policies".into(), r#"{"name": "p", "no_point_warning_seconds": 1e308}"#.into(), 400, "between 0 and 30 days"),
        ("POST", "/v1/alerts".into(), r#"{"name": "a", "url": "http://"}"#.into(), 400, "use http://HOST"),
        ("POST", "/v1/alerts".into(), r#"{"name": "a", "url": "http://h/x\r\nX-Evil: 1"}"#.into(), 400, "control characters"),
        // Messages.
        ("GET", "/v1/groups/rg1/vms/nope/replication".into(), String::new(), 404, "VM rg1/nope does not exist"),
    ];
    let before = snapshot(dir.path());
    for (method, path, body, status, says) in &cases {
        let body = (!body.is_empty()).then_some(body.as_str());
        let (got, answer) = s.http(method, path, body, true);
        assert_eq!(got, *status, "{method} {path} {body:?}: {answer}");
        assert!(
            answer.contains(says),
            "{method} {path} {body:?}: {answer} does not say {says:?}"
        );
    }
    assert_eq!(
        before,
        snapshot(dir.path()),
        "a refused request changed the file system"
    );
    for gone in ["/relative", "/A", "/etc/a"] {
        assert!(!Path::new(gone).exists(), "{gone} was created");
    }
    assert_eq!(s.json(&["vm", "list"]).as_array().unwrap().len(), 0);
    assert_eq!(s.json(&["storage", "list"]).as_array().unwrap().len(), 2);
    assert_eq!(s.json(&["policy", "list"]).as_array().unwrap().len(), 1);

    // What is allowed still works: an account under the storage root, an imported image.
    s.ok(&[
        "storage",
        "create",
        "rg1/sa3",
        "--url",
        &format!("file://{d}/storage/sa3"),
    ]);
    assert!(data.join("storage/sa3").is_dir());
    std::fs::write(import.join("ok.img"), vec![0x42u8; 1 << 20]).unwrap();
    s.ok(&[
        "vm",
        "create",
        "rg1/v2",
        "--network",
        "vnet1",
        "--subnet",
        "default",
        "--disk",
        "16MiB@sa3",
        "--image",
        "ok.img",
    ]);
    assert!(qemu_io(&s.disk_uri("rg1/v2", 0), "read -P 0x42 0 1M"));

    // A size within the bound that this file system cannot hold (ext4: 16 TiB per file) is a
    // 400 too, and leaves no image behind; where it fits, the VM is made.
    let before = snapshot(dir.path());
    let huge = format!(
        r#"{{"name": "v3", "network": "vnet1", "subnet": "default", "disks": [{{"size_bytes": {}, "storage": "sa1"}}]}}"#,
        60u64 << 40
    );
    let (status, answer) = s.http("POST", vms, Some(&huge), true);
    match status {
        400 => {
            assert!(answer.contains("cannot hold"), "{answer}");
            assert_eq!(before, snapshot(dir.path()), "a refused disk left files");
        }
        201 => s.ok(&["vm", "delete", "rg1/v3"]).truncate(0),
        _ => panic!("a 60 TiB disk: {status} {answer}"),
    }
}

fn id(flag: &str) -> String {
    let out = Command::new("id").args([flag, "nobody"]).output().unwrap();
    assert!(out.status.success(), "the user nobody must exist");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn an_unprivileged_user_reads_no_file_of_the_data_directory() {
    assert!(
        running_as_root(),
        "this test checks what another user can read: run it as root (as CI does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let shared = shared_dir(dir.path());
    let data = dir.path().join("data");
    // An older server left the data directory open to all.
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Its state in the data directory too (state.db), to check that file's mode.
    let s = Server::start_with(&data, free_port(), vec![embedded_state()]);
    s.base_resources(None);
    // The server made its scripts directory; the operator puts private scripts there.
    let scripts = data.join("scripts");
    let report = shared.join("who");
    for (name, text) in [
        ("freeze", format!("id -u > {}", report.display())),
        ("thaw", "true".into()),
    ] {
        let path = scripts.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    s.ok(&[
        "policy",
        "create",
        "app",
        "--crash-consistent-every",
        "2s",
        "--app-consistent-every",
        "2s",
    ]);
    s.ok(&[
        "vm",
        "create",
        "rg1/db1",
        "--network",
        "vnet1",
        "--subnet",
        "default",
        "--disk",
        "16MiB@sa1",
        "--pre-freeze-script",
        "freeze",
        "--post-thaw-script",
        "thaw",
    ]);
    assert!(qemu_io(&s.disk_uri("rg1/db1", 0), "write -P 0x11 0 1M"));
    s.ok(&[
        "replication",
        "enable",
        "rg1/db1",
        "--target-region",
        "west",
        "--policy",
        "app",
    ]);
    s.wait_protected("rg1/db1", 120);
    wait_until(60, "an app-consistent point", || {
        s.points("rg1/db1")
            .iter()
            .any(|p| p["kind"] == "app-consistent")
    });
    // The freeze script ran as nobody.
    assert_eq!(std::fs::read_to_string(&report).unwrap().trim(), id("-u"));

    // A new VM's disk never defaults to the cache account (`cache-east` sorts first).
    s.ok(&[
        "vm",
        "create",
        "rg1/web2",
        "--network",
        "vnet1",
        "--subnet",
        "default",
        "--disk",
        "16MiB",
    ]);
    assert_eq!(
        s.json(&["vm", "show", "rg1/web2"])["disks"][0]["storage"],
        "sa1"
    );

    // Every directory is 0700 and every file 0600.
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the data directory is private");
    let mut files = Vec::new();
    for p in walk(&data) {
        let t = std::fs::symlink_metadata(&p).unwrap().file_type();
        if t.is_dir() || t.is_file() {
            assert_eq!(
                mode(&p) & 0o077,
                0,
                "{} is open to others: {:o}",
                p.display(),
                mode(&p)
            );
        }
        if t.is_file() {
            files.push(p);
        }
    }
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    for wanted in [
        "state.db",
        "admin-token",
        "disk0.raw",
        ".seg",
        "scripts/freeze",
    ] {
        assert!(
            names.iter().any(|n| n.contains(wanted)),
            "no {wanted} among {names:?}"
        );
    }
    // As nobody, opening any of them fails with EACCES.
    let check = r#"for f; do
        if err=$(cat -- "$f" 2>&1 >/dev/null); then echo "READ $f";
        else case "$err" in *"Permission denied"*) ;; *) echo "OTHER $f: $err";; esac; fi
    done"#;
    let out = Command::new("setpriv")
        .args(["--reuid", &id("-u"), "--regid", &id("-g"), "--clear-groups"])
        .args(["sh", "-c", check, "sh"])
        .args(&files)
        .output()
        .expect("run setpriv (util-linux)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found = String::from_utf8_lossy(&out.stdout);
    assert!(
        found.is_empty(),
        "nobody could open files of the data directory:\n{found}"
    );
}

fn running_as_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}
