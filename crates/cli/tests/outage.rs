//! The cache account on Azurite goes away for a minute while the VM keeps writing: health shows
//! the outage while it lasts, the ship buffer fills and the writes past it are tracked as dirty
//! blocks, and once Azurite is back replication catches up without a full resync; the latest
//! point then equals the source disk.
//!
//! This test runs its own Azurite (so stopping it disturbs no other test): `scripts/test`
//! exports FERRY_TEST_AZURITE_BIN (see .ci/object-stores.sh).

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const DISK: u64 = 32 << 20;

struct Azurite {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Azurite {
    fn start(bin: PathBuf, data: PathBuf) -> Azurite {
        let mut a = Azurite {
            bin,
            data,
            port: free_port(),
            child: None,
        };
        a.resume();
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../.ci/azurite-container.py"
        );
        let ok = Command::new("python3")
            .args([script, &a.port.to_string(), "outage"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "create the container in Azurite");
        a
    }

    /// Start (again) on the same port and data.
    fn resume(&mut self) {
        std::fs::create_dir_all(&self.data).unwrap();
        let child = Command::new(&self.bin)
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &self.port.to_string(),
            ])
            .arg("--location")
            .arg(&self.data)
            .args([
                "--disableTelemetry",
                "--skipApiVersionCheck",
                "--loose",
                "--silent",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start azurite");
        self.child = Some(child);
        let port = self.port;
        wait_until(60, "Azurite to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// Stop it as an outage would, but let it save its metadata first: Azurite keeps it in
    /// memory and saves it only now and then, not at all while requests keep coming, so a
    /// `kill -9` would lose the container itself (not an outage any store has).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let mut exited = false;
            wait_until(30, "Azurite to save and exit", || {
                exited = c.try_wait().unwrap().is_some();
                exited
            });
        }
        let port = self.port;
        wait_until(30, "Azurite to stop", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        });
    }

    fn env(&self) -> Vec<(String, String)> {
        [
            ("AZURE_STORAGE_USE_EMULATOR", "true".to_string()),
            ("AZURE_STORAGE_ACCOUNT_NAME", "devstoreaccount1".into()),
            (
                "AZURE_STORAGE_ACCOUNT_KEY",
                "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
                    .into(),
            ),
            (
                "AZURITE_BLOB_STORAGE_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A local webhook receiver: every POST body it gets, as JSON.
struct Hook {
    port: u16,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Hook {
    fn start() -> Hook {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = bodies.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; len];
                if reader.read_exact(&mut body).is_ok()
                    && let Ok(v) = serde_json::from_slice(&body)
                {
                    sink.lock().unwrap().push(v);
                }
                let _ = conn.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
            }
        });
        Hook { port, bodies }
    }

    fn received(&self) -> Vec<serde_json::Value> {
        self.bodies.lock().unwrap().clone()
    }
}

/// The Azurite binary `.ci/object-stores.sh` installed (this test runs its own).
fn azurite_bin() -> PathBuf {
    let bin = PathBuf::from(peer_env("FERRY_TEST_AZURITE_BIN", "azurite"));
    assert!(
        bin.exists(),
        "FERRY_TEST_AZURITE_BIN names {}, which does not exist: run scripts/test",
        bin.display()
    );
    bin
}

/// Write 64 KiB with its own pattern at slot `n`.
fn write_slot(uri: &str, n: u64) -> bool {
    let pattern = (n % 250) + 1;
    qemu_io(
        uri,
        &format!("write -P {pattern} {} 64k", (n * 64 * 1024) % DISK),
    )
}

#[test]
fn a_minute_without_the_cache_account_is_caught_up_without_a_full_resync() {
    let bin = azurite_bin();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut azurite = Azurite::start(bin, d.join("azurite"));
    // A small ship buffer, so a minute of writes overflows it.
    let s = Server::start_with_config(
        &d.join("data"),
        azurite.env(),
        r#"{"ship_buffer_bytes": 1048576, "seal_interval_seconds": 0.5}"#,
    );
    s.base_resources(None);
    s.ok(&[
        "storage",
        "create",
        "rg1/cache-az",
        "--url",
        "az://outage/cache",
    ]);
    s.create_vm("rg1/app1", "default", &["32MiB@sa1"]);
    let uri = s.disk_uri("rg1/app1", 0);
    assert!(qemu_io(&uri, "write -P 0x5a 0 4M"));
    s.ok(&[
        "replication",
        "enable",
        "rg1/app1",
        "--target-region",
        "west",
        "--policy",
        "fast",
        "--cache-storage",
        "cache-az",
    ]);
    s.wait_protected("rg1/app1", 120);
    s.wait_point_after("rg1/app1", now(), 60);
    let hook = Hook::start();
    s.ok(&[
        "alert",
        "create",
        "oncall",
        "--url",
        &format!("http://127.0.0.1:{}/hook", hook.port),
        "--severity",
        "critical",
    ]);
    let initial_sent = s.replication("rg1/app1")["initial_replication"]["sent_bytes"].clone();

    // The outage: a minute of writes with the cache account gone.
    azurite.stop();
    let stopped = Instant::now();
    let (mut n, mut saw_unhealthy, mut saw_overflow) = (0u64, None, false);
    let mut reasons_seen = std::collections::BTreeSet::new();
    while stopped.elapsed() < Duration::from_secs(60) {
        assert!(
            write_slot(&uri, n),
            "the VM's write {n} fails during the outage"
        );
        n += 1;
        let r = s.replication("rg1/app1");
        if r["health"] == "critical" && saw_unhealthy.is_none() {
            saw_unhealthy = Some(stopped.elapsed());
        }
        for reason in r["health_reasons"].as_array().unwrap() {
            reasons_seen.insert(reason.as_str().unwrap().to_string());
        }
        saw_overflow |= r["stats"]["tracking"] == "overflow";
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = saw_unhealthy.expect("health never showed the outage");
    eprintln!("health critical {after:?} into the outage; reasons: {reasons_seen:#?}");
    assert!(
        reasons_seen
            .iter()
            .any(|r| r.contains("az://outage/cache") && r.contains("unreachable")),
        "a reason names the unreachable account: {reasons_seen:#?}"
    );
    assert!(
        reasons_seen.iter().any(|r| r.contains("ship buffer")),
        "a reason says the ship buffer is full: {reasons_seen:#?}"
    );
    assert!(
        saw_overflow,
        "{n} writes of 64 KiB overflowed the 1 MiB buffer"
    );
    let r = s.replication("rg1/app1");
    assert_eq!(r["health"], "critical", "still critical at the end: {r}");

    // Azurite is back: the buffer ships, the catch-up copies the dirty blocks, points resume.
    azurite.resume();
    let back = now();
    wait_until(180, "the catch-up to complete and health to return", || {
        let r = s.replication("rg1/app1");
        r["stats"]["tracking"] == "ordered" && r["health"] == "healthy"
    });
    let point = s.wait_point_after("rg1/app1", back, 60);
    let r = s.replication("rg1/app1");
    let copied = r["stats"]["catch_up_copied_bytes"].as_u64().unwrap();
    assert!(
        copied > 0 && copied <= n * 64 * 1024,
        "only the dirty blocks were copied ({copied} bytes for {n} writes of 64 KiB)"
    );
    assert_eq!(
        r["initial_replication"]["sent_bytes"], initial_sent,
        "no second initial replication"
    );

    // The outage is in the events: the buffer overflowed, health went critical, the catch-up
    // completed and health came back (the monitor records a change within its 250 ms tick).
    let events = || s.json(&["event", "list", "--target", "rg1/app1", "--limit", "10000"]);
    wait_until(30, "the health-changed event back to healthy", || {
        events().as_array().unwrap().iter().any(|e| {
            e["kind"] == "health-changed" && e["message"].as_str().unwrap().ends_with("→ healthy")
        })
    });
    let events = events();
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for kind in ["ship-buffer-overflow", "catch-up-done", "health-changed"] {
        assert!(kinds.contains(&kind), "no {kind} event: {events:#}");
    }
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "health-changed"
                && e["message"].as_str().unwrap().ends_with("→ healthy")),
        "health came back: {events:#}"
    );

    // The webhook fired when health turned critical, and again when it was resolved.
    wait_until(60, "the resolved alert", || {
        hook.received().iter().any(|b| b["status"] == "resolved")
    });
    let got = hook.received();
    let firing = got
        .iter()
        .find(|b| b["status"] == "firing")
        .unwrap_or_else(|| panic!("no firing alert: {got:#?}"));
    assert_eq!(firing["item"], "rg1/app1");
    assert_eq!(firing["health"], "critical");
    assert_eq!(firing["rule"], "oncall");
    assert!(!firing["reasons"].as_array().unwrap().is_empty());
    let resolved = got.iter().find(|b| b["status"] == "resolved").unwrap();
    assert_ne!(resolved["health"], "critical", "{resolved:#}");

    // The latest point equals the source disk.
    let id = point["id"].as_str().unwrap();
    s.export("rg1/app1", 0, id, &d.join("point.raw"));
    read_disk(&uri, &d.join("source.raw"));
    assert!(
        same_image(&d.join("point.raw"), &d.join("source.raw")),
        "the point after the catch-up differs from the source disk"
    );
}
