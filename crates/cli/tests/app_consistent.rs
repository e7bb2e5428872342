//! App-consistent points on external compute: the VM's pre-freeze script runs, the marker is
//! cut while the guest is quiesced (so what the script flushed is in the point), the post-thaw
//! script runs; a script that fails or hangs yields a crash-consistent point and a warning.
//! Scripts are files in the server's scripts directory, named by the VM.

mod support;

use support::*;

/// Resources, a policy with app-consistent points every 2 s, a VM with the given scripts
/// (written to the scripts directory; `before_enable` runs once the VM exists), and
/// replication until protected.
fn setup(s: &Server, vm: &str, pre: &str, post: &str, before_enable: impl FnOnce()) {
    let scripts = s.data.join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    std::fs::write(scripts.join("pre-freeze.sh"), pre).unwrap();
    std::fs::write(scripts.join("post-thaw.sh"), post).unwrap();
    s.base_resources(None);
    s.ok(&[
        "policy",
        "create",
        "app",
        "--crash-consistent-every",
        "1h",
        "--app-consistent-every",
        "2s",
    ]);
    s.ok(&[
        "vm",
        "create",
        vm,
        "--network",
        "vnet1",
        "--subnet",
        "default",
        "--disk",
        "16MiB@sa1",
        "--pre-freeze-script",
        "pre-freeze.sh",
        "--post-thaw-script",
        "post-thaw.sh",
    ]);
    before_enable();
    s.ok(&[
        "replication",
        "enable",
        vm,
        "--target-region",
        "west",
        "--policy",
        "app",
    ]);
    s.wait_protected(vm, 120);
}

#[test]
fn quiesced_writes_are_in_the_app_consistent_point() {
    let dir = tempfile::tempdir().unwrap();
    // The script writes the VM's disk through its NBD socket, in the private data directory:
    // only the server's own user can reach it.
    let s = Server::start_with_config(
        &dir.path().join("data"),
        Vec::new(),
        r#"{"scripts_user": "root"}"#,
    );
    let log = dir.path().join("hooks.log");
    let uri_file = dir.path().join("uri");
    // The "application" flushes its buffer (0xAA at 1 MiB) when asked to quiesce.
    let pre = format!(
        "echo freeze >> {log} && qemu-io -f raw -c 'write -P 0xaa 1M 64k' \"$(cat {uri})\" >/dev/null",
        log = log.display(),
        uri = uri_file.display()
    );
    let post = format!("echo thaw >> {}", log.display());
    setup(&s, "rg1/db1", &pre, &post, || {
        std::fs::write(&uri_file, s.disk_uri("rg1/db1", 0)).unwrap()
    });
    let mut app = None;
    wait_until(60, "an app-consistent point", || {
        app = s
            .points("rg1/db1")
            .into_iter()
            .find(|p| p["kind"] == "app-consistent");
        app.is_some()
    });
    let app = app.unwrap();
    let out = dir.path().join("app.raw");
    s.export("rg1/db1", 0, app["id"].as_str().unwrap(), &out);
    assert!(
        qemu_io(out.to_str().unwrap(), "read -P 0xaa 1M 64k"),
        "the write made while quiescing is not in the app-consistent point"
    );
    let hooks = std::fs::read_to_string(&log).unwrap();
    assert!(hooks.starts_with("freeze\nthaw\n"), "{hooks}");
    let exported = s.json(&[
        "disk",
        "export",
        "rg1/db1",
        "--disk",
        "0",
        "--recovery-point",
        "latest-app-consistent",
        "--out",
        out.to_str().unwrap(),
    ]);
    let app_ids: Vec<_> = s
        .points("rg1/db1")
        .into_iter()
        .filter(|p| p["kind"] == "app-consistent")
        .map(|p| p["id"].clone())
        .collect();
    assert!(
        app_ids.contains(&exported["recovery_point"]),
        "latest-app-consistent exported {exported}, not an app-consistent point"
    );
    let rep = s.replication("rg1/db1");
    assert_eq!(rep["health"], "healthy", "{rep}");
}

#[test]
fn a_guest_that_does_not_quiesce_gives_a_crash_consistent_point_and_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    // The first attempt fails, every later one hangs past the deadline. The script runs as
    // `nobody`: its flag lives where anyone may write.
    let shared = shared_dir(dir.path());
    let flag = shared.join("failed-once");
    let pre = format!(
        "if [ -e {f} ]; then sleep 60; else touch {f}; exit 3; fi",
        f = flag.display()
    );
    setup(&s, "rg1/stuck1", &pre, "true", || {});
    let start = now();
    let mut rep = serde_json::Value::Null;
    wait_until(60, "a warning about the guest", || {
        rep = s.replication("rg1/stuck1");
        rep["health_reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().contains("did not quiesce"))
    });
    assert_eq!(rep["health"], "warning", "{rep}");
    assert!(
        rep["health_reasons"].to_string().contains("exited"),
        "{rep}"
    );
    // The fallback points are crash-consistent, and they keep coming while the script hangs.
    let p = s.wait_point_after("rg1/stuck1", start, 60);
    assert_eq!(p["kind"], "crash-consistent");
    wait_until(60, "the hanging script to be reported", || {
        s.replication("rg1/stuck1")["health_reasons"]
            .to_string()
            .contains("did not finish")
    });
    let later = now();
    let p = s.wait_point_after("rg1/stuck1", later, 60);
    assert_eq!(p["kind"], "crash-consistent");
    assert!(
        s.points("rg1/stuck1")
            .iter()
            .all(|p| p["kind"] != "app-consistent"),
        "a point claims app-consistency the guest never gave"
    );
}
