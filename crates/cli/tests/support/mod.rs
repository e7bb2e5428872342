//! Running the real `ferry` binary against real peers: a server on a temp dir, the CLI, qemu-io
//! and qemu-img. Waits are on conditions with deadlines, never bare sleeps.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// A directory under `parent` that any user may write (a script run as `nobody` reports
/// there); `parent` becomes traversable by all.
pub fn shared_dir(parent: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = parent.join("shared");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    dir
}

/// Wait until `f` holds, polling, or panic naming `what` after `secs`.
pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Say that this test runs against the real `name` (Azurite, S3, Chromium, qemu-io, ...):
/// `scripts/test` counts the tests that print `peer: NAME`.
pub fn peer(name: &str) {
    println!("peer: {name}");
}

/// The value of `var`, which `scripts/test` sets so that a test reaches the real `name`. Without
/// it the test fails, saying what to run: a test never passes by skipping its peer.
pub fn peer_env(var: &str, name: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => {
            peer(name);
            v
        }
        _ => panic!(
            "{var} is not set: this test runs against {name}. Run it with scripts/test, which \
             installs and starts every peer the tests need (or `source .ci/object-stores.sh` \
             for the object stores)"
        ),
    }
}

/// The environment that arms failpoints, e.g. `failpoints("agent-log-append=error-after:3")`.
pub fn failpoints(list: &str) -> Vec<(String, String)> {
    vec![("FERRY_FAILPOINTS".to_string(), list.to_string())]
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Seconds since the epoch of an RFC 3339 time as ferry prints it.
pub fn epoch(rfc3339: &str) -> f64 {
    let t = humantime::parse_rfc3339_weak(rfc3339.trim_end_matches('Z')).expect("RFC 3339 time");
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Keep a test server's state in SQLite in its data directory even where `scripts/test` puts
/// test servers on PostgreSQL: pass it in the server's environment.
pub fn embedded_state() -> (String, String) {
    ("FERRY_TEST_STATE".to_string(), "sqlite".to_string())
}

/// The database a test server on `data` keeps its state in: where `scripts/test` started a
/// PostgreSQL cluster (`FERRY_TEST_POSTGRES_URL`, as in CI), a database of its own there, the
/// same for every start on `data` so that a restarted server finds its state again; else (or
/// with [`embedded_state`] in `env`) none: SQLite in the data directory.
pub fn test_database(data: &Path, env: &[(String, String)]) -> Option<String> {
    use std::hash::{Hash, Hasher};
    if env.contains(&embedded_state()) {
        return None;
    }
    let base = std::env::var("FERRY_TEST_POSTGRES_URL")
        .ok()
        .filter(|v| !v.is_empty())?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    let name = format!("ferry_{:016x}", h.finish());
    let out = Command::new("psql")
        .arg(&base)
        .args([
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            &format!("CREATE DATABASE {name}"),
        ])
        .output()
        .expect("run psql (scripts/install-test-tools installs it)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || err.contains("already exists"),
        "create the test database {name}: {err}"
    );
    peer("postgres");
    let (cluster, _) = base.rsplit_once('/').expect("a URL with a database");
    Some(format!("{cluster}/{name}"))
}

/// A `ferry server` process on its own data dir and port.
pub struct Server {
    pub child: Option<Child>,
    pub data: PathBuf,
    pub port: u16,
    pub url: String,
    pub token: String,
    pub env: Vec<(String, String)>,
    /// The server's `--config` file, if any.
    pub config: Option<PathBuf>,
}

impl Server {
    pub fn start(data: &Path) -> Server {
        Self::start_with(data, free_port(), Vec::new())
    }

    pub fn start_with(data: &Path, port: u16, env: Vec<(String, String)>) -> Server {
        Self::start_full(data, port, env, None)
    }

    /// Start listening on every address with `config` (hosts in other network namespaces
    /// reach it over TLS); the CLI still talks to it over loopback.
    pub fn start_on_all_addresses(data: &Path, config: &str) -> Server {
        let env = vec![("FERRY_TEST_LISTEN_ALL".to_string(), "1".to_string())];
        let path = data.with_extension("config.json");
        std::fs::write(&path, config).unwrap();
        Self::start_full(data, free_port(), env, Some(path))
    }

    /// Start with a `--config` file holding `json`.
    pub fn start_with_config(data: &Path, env: Vec<(String, String)>, json: &str) -> Server {
        let path = data.with_extension("config.json");
        std::fs::write(&path, json).unwrap();
        Self::start_full(data, free_port(), env, Some(path))
    }

    fn start_full(
        data: &Path,
        port: u16,
        env: Vec<(String, String)>,
        config: Option<PathBuf>,
    ) -> Server {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.with_extension("log"))
            .unwrap();
        let mut cmd = Command::new(FERRY);
        if let Some(url) = test_database(data, &env) {
            cmd.env("FERRY_DATABASE", url);
        }
        let child = cmd
            .args(["server", "--data"])
            .arg(data)
            .args(["--listen", &format!("{}:{port}", listen_host(&env))])
            .args(config.iter().flat_map(|c| [Path::new("--config"), c]))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("FERRY_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start ferry server");
        let url = format!("http://127.0.0.1:{port}");
        let token_path = data.join("admin-token");
        wait_until(60, "the admin token", || token_path.exists());
        let token = std::fs::read_to_string(&token_path)
            .unwrap()
            .trim()
            .to_string();
        let s = Server {
            child: Some(child),
            data: data.to_path_buf(),
            port,
            url,
            token,
            env,
            config,
        };
        wait_until(60, "the API to answer", || {
            s.http("GET", "/healthz", None, true).0 == 200
        });
        s
    }

    /// Kill the server with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Stop the server cleanly (SIGTERM), waiting until it has exited.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let ok = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "send SIGTERM to the server");
            let mut exited = false;
            wait_until(60, "the server to exit after SIGTERM", || {
                exited = c.try_wait().unwrap().is_some();
                exited
            });
        }
    }

    /// Wait until the server process has died by itself (e.g. at a failpoint).
    pub fn wait_died(&mut self, secs: u64) {
        let child = self.child.as_mut().expect("a running server");
        let mut dead = false;
        wait_until(secs, "the server to stop at its failpoint", || {
            dead = child.try_wait().unwrap().is_some();
            dead
        });
        self.child = None;
    }

    /// Start again on the same data dir and port with another environment.
    pub fn restart_with(&mut self, env: Vec<(String, String)>) {
        self.env = env;
        self.restart();
    }

    /// Start again (with `env`) while a client writes `cmd` to the NBD `uri`: the client
    /// tries from before the server is back, so its write arrives as soon as the disk is
    /// served. Returns how long the attempt that was acknowledged took.
    pub fn restart_while_writing(
        &mut self,
        env: Vec<(String, String)>,
        uri: &str,
        cmd: &str,
    ) -> Duration {
        self.kill9();
        let (uri, cmd) = (uri.to_string(), cmd.to_string());
        let writer = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                let started = Instant::now();
                if qemu_io(&uri, &cmd) {
                    return Some(started.elapsed());
                }
                if Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        self.restart_with(env);
        writer
            .join()
            .unwrap()
            .expect("the write to be acknowledged within 90 s of the restart")
    }

    /// Start again on the same data dir and port.
    pub fn restart(&mut self) {
        self.kill9();
        let s = Server::start_full(&self.data, self.port, self.env.clone(), self.config.clone());
        *self = s;
    }

    pub fn ferry(&self, args: &[&str]) -> Output {
        Command::new(FERRY)
            .args(args)
            .env("FERRY_URL", &self.url)
            .env("FERRY_TOKEN", &self.token)
            .output()
            .expect("run ferry")
    }

    /// Run a CLI command that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.ferry(args);
        assert!(
            out.status.success(),
            "ferry {args:?} failed: {}{}\nthe server's events:\n{}\nthe end of the server's log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.events_text(),
            self.log_tail(40)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The server's events, as `ferry event list` prints them (for failure messages).
    pub fn events_text(&self) -> String {
        let out = self.ferry(&["event", "list"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The last `lines` lines of the server's log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Run a CLI command that must fail; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.ferry(args);
        assert!(!out.status.success(), "ferry {args:?} should have failed");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("JSON output")
    }

    /// A raw HTTP/1.1 request; returns status and body (status 0: no answer within 5 min).
    pub fn http(&self, method: &str, path: &str, body: Option<&str>, auth: bool) -> (u16, String) {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return (0, String::new());
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(300)));
        let body = body.unwrap_or("");
        let auth = if auth {
            format!("Authorization: Bearer {}\r\n", self.token)
        } else {
            String::new()
        };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(req.as_bytes()).is_err() {
            return (0, String::new());
        }
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        let status = resp
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    pub fn replication(&self, item: &str) -> Value {
        self.json(&["replication", "show", item])
    }

    pub fn points(&self, item: &str) -> Vec<Value> {
        self.json(&["recovery-point", "list", item])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The first point whose time is after `t` (epoch seconds), waiting up to `secs`.
    pub fn wait_point_after(&self, item: &str, t: f64, secs: u64) -> Value {
        let mut found = None;
        wait_until(
            secs,
            &format!("a recovery point of {item} after {t}"),
            || {
                found = self
                    .points(item)
                    .into_iter()
                    .find(|p| epoch(p["time"].as_str().unwrap()) > t);
                found.is_some()
            },
        );
        found.unwrap()
    }

    pub fn disk_uri(&self, vm: &str, disk: usize) -> String {
        self.json(&["vm", "show", vm])["disks"][disk]["nbd_uri"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn export(&self, item: &str, disk: usize, point: &str, out: &Path) {
        self.ok(&[
            "disk",
            "export",
            item,
            "--disk",
            &disk.to_string(),
            "--recovery-point",
            point,
            "--out",
            out.to_str().unwrap(),
        ]);
    }

    /// The resources most tests start from: group rg1 in east, vnet1 with two subnets, accounts
    /// sa1 and sa2 (at `urls` when given), availability set avset1, policy `fast` (every 2 s).
    pub fn base_resources(&self, urls: Option<(&str, &str)>) {
        self.ok(&["group", "create", "rg1", "--region", "east"]);
        self.ok(&[
            "network",
            "create",
            "rg1/vnet1",
            "--address-space",
            "10.1.0.0/16",
            "--subnet",
            "default=10.1.0.0/24",
            "--subnet",
            "db=10.1.1.0/24",
        ]);
        match urls {
            Some((a, b)) => {
                self.ok(&["storage", "create", "rg1/sa1", "--url", a]);
                self.ok(&["storage", "create", "rg1/sa2", "--url", b]);
            }
            None => {
                self.ok(&["storage", "create", "rg1/sa1"]);
                self.ok(&["storage", "create", "rg1/sa2"]);
            }
        }
        self.ok(&["availability-set", "create", "rg1/avset1"]);
        self.ok(&[
            "policy",
            "create",
            "fast",
            "--crash-consistent-every",
            "2s",
            "--retention",
            "1h",
        ]);
    }

    /// Enable replication of `item` to west under the `fast` policy and wait until protected.
    pub fn protect(&self, item: &str) {
        self.ok(&[
            "replication",
            "enable",
            item,
            "--target-region",
            "west",
            "--policy",
            "fast",
        ]);
        self.wait_protected(item, 120);
    }

    /// Write the data the point checks expect before replication: 0x11 in disk 0's first MiB,
    /// 0x22 in disk 1's second MiB.
    pub fn seed_two_disks(&self, item: &str) {
        assert!(qemu_io(&self.disk_uri(item, 0), "write -P 0x11 0 1M"));
        assert!(qemu_io(&self.disk_uri(item, 1), "write -P 0x22 1M 1M"));
    }

    /// Create a VM on network vnet1 (from `base_resources`) with the given `--disk` specs.
    /// With the base resources, `rg1/db1`: one 16 MiB disk, written by the qemu-io `fill`
    /// first (if any), protected, with a first point. Returns the disk's NBD URI.
    pub fn protected_db1(&self, fill: Option<&str>) -> String {
        self.base_resources(None);
        self.create_vm("rg1/db1", "db", &["16MiB@sa1"]);
        let uri = self.disk_uri("rg1/db1", 0);
        if let Some(cmd) = fill {
            assert!(qemu_io(&uri, cmd));
        }
        self.protect("rg1/db1");
        self.wait_point_after("rg1/db1", now(), 60);
        uri
    }

    pub fn create_vm(&self, name: &str, subnet: &str, disks: &[&str]) {
        let mut args = vec![
            "vm",
            "create",
            name,
            "--network",
            "vnet1",
            "--subnet",
            subnet,
        ];
        for d in disks {
            args.extend(["--disk", d]);
        }
        self.ok(&args);
    }

    pub fn wait_protected(&self, item: &str, secs: u64) {
        wait_until(secs, &format!("{item} to be protected"), || {
            self.replication(item)["state"] == "protected"
        });
    }
}

/// The address a test server listens on: loopback, or every address when its environment
/// asks (`FERRY_TEST_LISTEN_ALL`, read by the test harness only).
fn listen_host(env: &[(String, String)]) -> &'static str {
    if env.iter().any(|(k, _)| k == "FERRY_TEST_LISTEN_ALL") {
        "0.0.0.0"
    } else {
        "127.0.0.1"
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        kill_vms(&self.data);
    }
}

/// Stop every qemu VM a server under `data` started (they outlive the server by design).
pub fn kill_vms(data: &Path) {
    fn walk(dir: &Path) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p);
            } else if p.file_name().is_some_and(|n| n == "qemu.pid")
                && let Ok(pid) = std::fs::read_to_string(&p)
            {
                let _ = Command::new("kill").args(["-9", pid.trim()]).status();
            }
        }
    }
    walk(&data.join("regions"));
}

/// Run qemu-io on a target; true when it exits 0.
pub fn qemu_io(target: &str, cmd: &str) -> bool {
    peer("qemu-io");
    Command::new("qemu-io")
        .args(["-f", "raw", "-c", cmd, target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run qemu-io (install qemu-utils)")
        .success()
}

/// Copy a whole disk over NBD to a file.
pub fn read_disk(uri: &str, out: &Path) {
    peer("qemu-img");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", uri])
        .arg(out)
        .status()
        .unwrap();
    assert!(st.success(), "qemu-img convert {uri}");
}

/// `qemu-img compare`: true when the two raw images hold the same bytes.
pub fn same_image(a: &Path, b: &Path) -> bool {
    peer("qemu-img");
    Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "raw"])
        .arg(a)
        .arg(b)
        .status()
        .unwrap()
        .success()
}

pub fn sha(path: &Path) -> String {
    blake3::hash(&std::fs::read(path).unwrap())
        .to_hex()
        .to_string()
}

/// The point-in-time check shared by the replication tests, on a VM whose disk 0 holds 0x11 in
/// its first MiB: write A, wait for a point after it, write B (on both disks), wait for a point
/// after B. Point A must hold A and the initial data but not B; both disks at point B must equal
/// the source. Exports land in `dir` (`a0.raw`, `b0.raw`, `b1.raw`); returns both points.
pub fn check_points_between_writes(s: &Server, item: &str, dir: &Path) -> (Value, Value) {
    let (u0, u1) = (s.disk_uri(item, 0), s.disk_uri(item, 1));
    assert!(qemu_io(&u0, "write -P 0x33 0 512k"));
    let pa = s.wait_point_after(item, now(), 60);
    assert!(qemu_io(&u0, "write -P 0x44 0 512k"));
    assert!(qemu_io(&u1, "write -P 0x55 4M 64k"));
    let pb = s.wait_point_after(item, now(), 60);
    let a0 = dir.join("a0.raw");
    s.export(item, 0, pa["id"].as_str().unwrap(), &a0);
    let a0 = a0.to_str().unwrap();
    assert!(qemu_io(a0, "read -P 0x33 0 512k"), "point A lacks write A");
    assert!(
        qemu_io(a0, "read -P 0x11 512k 512k"),
        "point A lost the initial data"
    );
    assert!(!qemu_io(a0, "read -P 0x44 0 512k"), "point A holds write B");
    for (disk, uri) in [u0, u1].iter().enumerate() {
        let (src, out) = (
            dir.join(format!("src{disk}.raw")),
            dir.join(format!("b{disk}.raw")),
        );
        s.export(item, disk, pb["id"].as_str().unwrap(), &out);
        read_disk(uri, &src);
        assert!(
            same_image(&src, &out),
            "disk {disk} at point B differs from the source"
        );
    }
    (pa, pb)
}
