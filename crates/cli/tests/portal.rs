//! The web portal in headless Chromium (Playwright, `tests/portal/portal.js`) against a running
//! server: a wrong token shows nothing; with the right one, enable replication, see the item
//! protected, run a test failover and its cleanup with their steps, and save a screenshot of
//! the VM page (`target/test-artifacts/portal-vm.png`). A dialog closed with Esc runs nothing
//! later; a refresh that keeps failing shows one error, gone once a refresh succeeds. Without a
//! token the API refuses the portal's calls, and the page and its assets hold no data.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

/// Playwright's module and the browser, as `scripts/test` sets them (see
/// scripts/install-test-tools).
fn browser() -> (PathBuf, PathBuf) {
    let module = PathBuf::from(peer_env("FERRY_TEST_PLAYWRIGHT", "chromium"));
    let chromium = PathBuf::from(peer_env("FERRY_TEST_CHROMIUM", "chromium"));
    for (var, path) in [
        ("FERRY_TEST_PLAYWRIGHT", &module),
        ("FERRY_TEST_CHROMIUM", &chromium),
    ] {
        assert!(
            path.exists(),
            "{var} names {}, which does not exist: run scripts/install-test-tools",
            path.display()
        );
    }
    (module, chromium)
}

#[test]
fn the_portal_protects_a_vm_and_runs_a_test_failover() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));

    // The page and its assets need no token and hold no data; the API refuses the portal's
    // calls without one.
    for (path, kind) in [
        ("/", "text/html"),
        ("/portal/app.js", "text/javascript"),
        ("/portal/app.css", "text/css"),
    ] {
        let out = Command::new("curl")
            .args(["-s", "-D", "-", &format!("{}{path}", s.url)])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("HTTP/1.1 200"), "{path}: {text}");
        assert!(text.contains(kind), "{path}: {text}");
        assert!(text.contains("default-src 'self'"), "{path}: {text}");
    }
    let (code, body) = s.http("GET", "/v1/replications", None, false);
    assert_eq!(code, 401, "{body}");
    assert!(!body.contains("rg1"), "{body}");

    let (module, chromium) = browser();
    s.base_resources(None);
    s.create_vm("rg1/app1", "default", &["16MiB@sa1"]);
    assert!(qemu_io(&s.disk_uri("rg1/app1", 0), "write -P 0x5a 0 2M"));

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("portal-vm.png");
    let _ = std::fs::remove_file(&shot);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/portal/portal.js");
    let out = Command::new("node")
        .arg(&script)
        .env("FERRY_TEST_PLAYWRIGHT", &module)
        .env("FERRY_TEST_CHROMIUM", &chromium)
        .env("FERRY_URL", &s.url)
        .env("FERRY_TOKEN", &s.token)
        .env("FERRY_SCREENSHOT", &shot)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "the browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("portal: ok"), "{stdout}");
    let png = std::fs::read(&shot).expect("the screenshot of the VM page");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );

    // What the browser did is what the API says.
    let r = s.replication("rg1/app1");
    assert_eq!(r["state"], "protected", "{r}");
    assert!(
        r["test_failover"].is_null(),
        "the test failover was cleaned up: {r}"
    );
    assert!(!r["last_test_failover"].is_null(), "{r}");
    // The disable dialog closed with Esc ran nothing, then or later: one job of each kind the
    // browser confirmed, and the verify its script ran.
    let mut kinds: Vec<String> = s
        .json(&["job", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["kind"].as_str().unwrap().to_string())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "enable-replication",
            "test-failover",
            "test-failover-cleanup",
            "verify-replication"
        ],
    );
}
