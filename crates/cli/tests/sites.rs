//! Separate sites: the server stands for the target site; the east host's agent runs in its
//! own network namespace that can dial out but accepts no connection (a veth pair and an
//! nftables rule dropping every new inbound connection), with its own data directory, and
//! reaches the server and the cache account (S3) only over the network; the west host's agent
//! is a process of its own as well. Then the east site is lost (`kill -9`, data deleted) and the
//! VM is failed over onto the west host from the latest processed point.

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;

const ITEM: &str = "rg1/db1";

/// A network namespace joined to this one by a veth pair: `host_ip` here, `ns_ip` there. In
/// it, new inbound connections are dropped.
struct Netns {
    name: String,
    link: String,
    host_ip: String,
    ns_ip: String,
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .expect("run a network command (install iproute2 and nftables)");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    fn new() -> Netns {
        peer("network namespace");
        let tag = std::process::id() % 200 + 20;
        let n = Netns {
            name: format!("ferry-site-{}", std::process::id()),
            link: format!("fs{}", std::process::id() % 100000),
            host_ip: format!("10.{tag}.77.1"),
            ns_ip: format!("10.{tag}.77.2"),
        };
        let peer_link = format!("{}p", n.link);
        run(Command::new("ip").args(["netns", "add", &n.name]));
        run(Command::new("ip").args([
            "link", "add", &n.link, "type", "veth", "peer", "name", &peer_link,
        ]));
        run(Command::new("ip").args(["link", "set", &peer_link, "netns", &n.name]));
        run(Command::new("ip").args(["addr", "add", &format!("{}/30", n.host_ip), "dev", &n.link]));
        run(Command::new("ip").args(["link", "set", &n.link, "up"]));
        run(n
            .cmd("ip")
            .args(["addr", "add", &format!("{}/30", n.ns_ip), "dev", &peer_link]));
        run(n.cmd("ip").args(["link", "set", &peer_link, "up"]));
        run(n.cmd("ip").args(["link", "set", "lo", "up"]));
        let rules = "table inet ferry_site {\n\
             chain input {\n\
               type filter hook input priority 0; policy accept;\n\
               ct state established,related accept\n\
               iif lo accept\n\
               ct state new drop\n\
             }\n\
           }\n";
        let mut nft = n
            .cmd("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("run nft (install nftables)");
        nft.stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        assert!(nft.wait().unwrap().success(), "nft rules in {}", n.name);
        n
    }

    /// A command that runs inside the namespace.
    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair too; the link is deleted in case not.
        for args in [["netns", "del", &self.name], ["link", "del", &self.link]] {
            let _ = Command::new("ip").args(args).stderr(Stdio::null()).status();
        }
    }
}

/// Forward TCP connections from `listen` to `to` (the S3 server listens on loopback only).
fn forward(listen: SocketAddr, to: SocketAddr) {
    let l = TcpListener::bind(listen).unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(a) = c else { continue };
            let Ok(b) = TcpStream::connect(to) else {
                continue;
            };
            for (mut from, mut into) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut into);
                    let _ = into.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
}

/// A host's agent process.
struct Agent {
    child: Child,
    data: PathBuf,
}

impl Agent {
    fn socket_uri(&self, vm: &str, disk: usize) -> String {
        format!(
            "nbd+unix:///{}.disk{disk}?socket={}",
            vm.replace('/', "."),
            self.data.join("agent/nbd.sock").display()
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn host(s: &Server, name: &str) -> serde_json::Value {
    s.json(&["host", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == name)
        .cloned()
        .unwrap_or_default()
}

fn fingerprint(s: &Server) -> String {
    std::fs::read_to_string(s.data.join("tls/fingerprint"))
        .expect("the server's certificate fingerprint")
        .trim()
        .to_string()
}

/// Create the test's VM (one 16 MiB disk) on host east-1.
fn create_on_east_1(s: &Server) {
    s.ok(&[
        "vm",
        "create",
        ITEM,
        "--network",
        "vnet1",
        "--subnet",
        "db",
        "--disk",
        "16MiB@sa1",
        "--host",
        "east-1",
    ]);
}

/// A fresh one-time join token for `region`.
fn join_token(s: &Server, region: &str) -> String {
    s.json(&["agent", "token", "create", "--region", region])["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Start `name`'s agent in `ns`, joining with a fresh token; it reaches the server over TLS at
/// the namespace's host address, and S3 through `s3`.
fn start_agent(s: &Server, ns: &Netns, name: &str, data: &Path, s3: SocketAddr) -> Agent {
    let mut cmd = ns.cmd(FERRY);
    cmd.args([
        "agent",
        "--server",
        &format!("https://{}:{}", ns.host_ip, s.port),
    ])
    .args(["--fingerprint", &fingerprint(s)])
    .env("AWS_ENDPOINT", format!("http://{s3}"));
    spawn_agent(s, cmd, "east", name, data)
}

/// Start `name`'s agent of `region` on this host, reaching the server over loopback.
fn start_local_agent(s: &Server, region: &str, name: &str, data: &Path) -> Agent {
    let mut cmd = Command::new(FERRY);
    cmd.args(["agent", "--server", &s.url]);
    spawn_agent(s, cmd, region, name, data)
}

fn spawn_agent(s: &Server, mut cmd: Command, region: &str, name: &str, data: &Path) -> Agent {
    let log = std::fs::File::create(data.with_extension("log")).unwrap();
    let child = cmd
        .args(["--region", region, "--name", name, "--data"])
        .arg(data)
        .args(["--join-token", &join_token(s, region)])
        .env("FERRY_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start ferry agent");
    wait_until(60, &format!("host {name} to be alive"), || {
        host(s, name)["alive"] == true
    });
    Agent {
        child,
        data: data.to_path_buf(),
    }
}

/// The credential an agent keeps in its data directory.
fn credential_of(agent: &Agent) -> String {
    let text = std::fs::read_to_string(agent.data.join("credential")).expect("the credential");
    text.trim().to_string()
}

/// A request with an agent's credential: (status, body).
fn as_agent(s: &Server, credential: &str, path: &str, body: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", "POST"])
        .args(["-H", &format!("Authorization: Bearer {credential}")])
        .args(["-H", "Content-Type: application/json", "--data", body])
        .arg(format!("{}{path}", s.url))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A client that writes 1 MiB blocks to `uri` until `stop`, stopping at its first error;
/// it records when each write was acknowledged.
struct Writer {
    acked: Arc<Mutex<Vec<f64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(uri: &str) -> Writer {
        let acked: Arc<Mutex<Vec<f64>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (acked, stop, uri) = (acked.clone(), stop.clone(), uri.to_string());
            std::thread::spawn(move || {
                let mut k = 1u32;
                while !stop.load(Ordering::Relaxed) {
                    let cmd = format!("write -P {} {}M 1M", k % 250 + 1, k % 16);
                    if !qemu_io(&uri, &cmd) {
                        return;
                    }
                    acked.lock().unwrap().push(now());
                    k += 1;
                }
            })
        };
        Writer {
            acked,
            stop,
            thread: Some(thread),
        }
    }

    fn acked_since(&self, t: f64) -> usize {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .filter(|a| **a > t)
            .count()
    }

    /// Stop; returns when the last write was acknowledged.
    fn stop(mut self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        *self
            .acked
            .lock()
            .unwrap()
            .last()
            .expect("at least one write")
    }
}

#[test]
fn an_east_host_that_accepts_no_connection_replicates_and_its_site_loss_is_failed_over() {
    let s3_url = peer_env("FERRY_TEST_S3_URL", "s3");
    let moto: SocketAddr = std::env::var("AWS_ENDPOINT")
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ns = Netns::new();
    let config = format!(r#"{{"api_tls": {{"names": ["{}"]}}}}"#, ns.host_ip);
    let s = Server::start_on_all_addresses(&dir.join("data"), &config);
    let s3: SocketAddr = format!("{}:{}", ns.host_ip, free_port()).parse().unwrap();
    forward(s3, moto);

    let prefix = format!("{s3_url}/sites-{}", std::process::id());
    s.base_resources(Some((&format!("{prefix}/sa1"), &format!("{prefix}/sa2"))));
    s.ok(&[
        "storage",
        "create",
        "rg1/cache1",
        "--url",
        &format!("{prefix}/cache"),
    ]);
    let east = start_agent(&s, &ns, "east-1", &dir.join("east-1"), s3);
    // West's host is a process of its own too (the server stands for the rest of that site).
    let west = start_local_agent(&s, "west", "west-1", &dir.join("west-1"));

    // The namespace accepts no connection: a listener inside it is unreachable from here.
    let port = free_port();
    let mut listener = ns
        .cmd("python3")
        .args(["-c", &format!(
            "import socket,time; s=socket.socket(); s.bind(('{}',{port})); s.listen(); time.sleep(60)",
            ns.ns_ip
        )])
        .spawn()
        .unwrap();
    let inside = || {
        ns.cmd("python3")
            .args([
                "-c",
                &format!(
                    "import socket; socket.create_connection(('{}',{port}),2)",
                    ns.ns_ip
                ),
            ])
            .status()
            .unwrap()
            .success()
    };
    wait_until(10, "the listener inside the namespace", inside);
    let addr: SocketAddr = format!("{}:{port}", ns.ns_ip).parse().unwrap();
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "a connection into the east namespace was accepted"
    );
    let _ = listener.kill();
    let _ = listener.wait();

    create_on_east_1(&s);
    let vm = s.json(&["vm", "show", ITEM]);
    assert_eq!(vm["host"], "east-1");
    let uri = east.socket_uri(ITEM, 0);
    assert!(qemu_io(&uri, "write -P 0x11 0 1M"));
    s.ok(&[
        "replication",
        "enable",
        ITEM,
        "--target-region",
        "west",
        "--policy",
        "fast",
        "--cache-storage",
        "cache1",
    ]);
    s.wait_protected(ITEM, 120);
    // The host reports its stream with its next heartbeat.
    wait_until(10, "east-1 to report its stream", || {
        host(&s, "east-1")["streams"] == 1
    });
    assert_eq!(host(&s, "east-1")["vms"][0], ITEM);

    let writer = Writer::start(&uri);
    let start = now();
    s.wait_point_after(ITEM, start + 2.0, 60);

    // The disaster: every process of the east site is killed and its data is gone.
    let mut east = east;
    east.child.kill().unwrap();
    east.child.wait().unwrap();
    let last_ack = writer.stop();
    std::fs::remove_dir_all(&east.data).unwrap();

    wait_until(30, "the health to name the lost host", || {
        let rep = s.replication(ITEM);
        rep["health"] == "critical"
            && rep["health_reasons"]
                .to_string()
                .contains("source host east-1 unreachable since")
    });
    let job = s.json(&["failover", "run", ITEM, "--recovery-point", "latest"]);
    let id = job["id"].as_u64().unwrap().to_string();
    s.ok(&["job", "show", &id, "--wait"]);
    let job = s.json(&["job", "show", &id]);
    assert_eq!(job["state"], "succeeded", "{job}");
    let detail = job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["name"] == "Select recovery point")
        .and_then(|st| st["detail"].as_str())
        .unwrap_or_default()
        .to_string();
    let lost: f64 = detail
        .split("leaves out ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no seconds-lost figure in {detail:?}"));
    let rep = s.replication(ITEM);
    let point_id = rep["failover"]["point"]["id"].as_str().unwrap().to_string();
    let point_time = epoch(rep["failover"]["point"]["time"].as_str().unwrap());
    // The newest write the server knows of is at most a heartbeat (2 s) and a report's trip
    // older than the last acknowledged one.
    let seen = last_ack - point_time;
    assert!(
        lost <= seen + 0.3 && lost >= seen - 3.0,
        "reported {lost} s lost; the last acknowledged write came {seen:.1} s after the point"
    );
    assert!(s.events_text().contains("failover-writes-lost"));

    // The VM runs on the west host from that point, its disk restored from the server on
    // demand: it equals the point's.
    let failed_over = rep["failover"]["vm"].as_str().unwrap().to_string();
    let fv = s.json(&["vm", "show", &failed_over]);
    assert_eq!(fv["region"], "west");
    assert_eq!(fv["host"], "west-1");
    assert_eq!(fv["state"], "running");
    let got = dir.join("failed-over.raw");
    read_disk(&west.socket_uri(&failed_over, 0), &got);
    let want = dir.join("point.raw");
    s.export(ITEM, 0, &point_id, &want);
    assert!(
        same_image(&got, &want),
        "the failed-over disk differs from its point"
    );
    // The rest of the disk is restored in the background; then it is a plain disk.
    wait_until(60, "the failed-over disk to be whole", || {
        s.json(&["vm", "show", &failed_over])["hydration"].is_null()
    });
    assert!(s.events_text().contains("hydration-complete"));
    read_disk(&west.socket_uri(&failed_over, 0), &got);
    assert!(
        same_image(&got, &want),
        "the restored disk differs from its point"
    );
    // Writes in the west; then a fresh east host (empty data directory) joins, and reprotect
    // copies the VM back to it: its old host is gone, so every block.
    let wuri = west.socket_uri(&failed_over, 0);
    assert!(qemu_io(&wuri, "write -P 0x77 2M 1M"));
    s.ok(&["failover", "commit", ITEM, "--wait"]);
    let east2 = start_agent(&s, &ns, "east-2", &dir.join("east-2"), s3);
    let job = s.json(&["reprotect", ITEM]);
    let id = job["id"].as_u64().unwrap().to_string();
    s.ok(&["job", "show", &id, "--wait"]);
    let job = s.json(&["job", "show", &id]);
    assert_eq!(job["state"], "succeeded", "{job}");
    let steps = job["steps"].to_string();
    assert!(
        steps.contains("moves from lost host east-1 to east-2") && steps.contains("every block"),
        "{steps}"
    );
    let rep = s.replication(ITEM);
    assert_eq!(rep["state"], "protected");
    assert_eq!(rep["source_vm"], failed_over);
    assert_eq!(s.json(&["vm", "show", ITEM])["host"], "east-2");
    assert!(qemu_io(&wuri, "write -P 0x78 3M 1M"));

    // Failback brings it home onto the new east host with every write made in the west.
    let in_west = dir.join("west.raw");
    s.ok(&["vm", "stop", &failed_over]);
    read_disk(&wuri, &in_west);
    let job = s.json(&["failover", "run", ITEM, "--shutdown-source"]);
    let id = job["id"].as_u64().unwrap().to_string();
    s.ok(&["job", "show", &id, "--wait"]);
    assert_eq!(s.json(&["job", "show", &id])["state"], "succeeded");
    let home = s.json(&["vm", "show", ITEM]);
    assert_eq!(home["host"], "east-2");
    assert_eq!(home["state"], "running");
    let back = dir.join("back.raw");
    read_disk(&east2.socket_uri(ITEM, 0), &back);
    assert!(
        same_image(&back, &in_west),
        "the failed-back disk differs from the west disk"
    );
    assert!(qemu_io(&east2.socket_uri(ITEM, 0), "read -P 0x78 3M 1M"));
}

#[test]
fn a_server_restart_stops_no_vm_on_a_joined_host_and_loses_no_point() {
    const WEST_ITEM: &str = "rg2/app1";
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut s = Server::start(&dir.join("data"));
    s.base_resources(None);
    let east = start_local_agent(&s, "east", "east-1", &dir.join("east-1"));
    let west = start_local_agent(&s, "west", "west-1", &dir.join("west-1"));
    create_on_east_1(&s);
    s.protect(ITEM);
    // A VM on the west host, replicated the other way.
    s.ok(&["group", "create", "rg2", "--region", "west"]);
    s.ok(&[
        "network",
        "create",
        "rg2/vnet2",
        "--address-space",
        "10.2.0.0/16",
        "--subnet",
        "app=10.2.1.0/24",
    ]);
    s.ok(&["storage", "create", "rg2/sa3"]);
    s.ok(&[
        "vm",
        "create",
        WEST_ITEM,
        "--network",
        "vnet2",
        "--subnet",
        "app",
        "--disk",
        "16MiB@sa3",
    ]);
    assert_eq!(s.json(&["vm", "show", WEST_ITEM])["host"], "west-1");
    s.ok(&[
        "replication",
        "enable",
        WEST_ITEM,
        "--target-region",
        "east",
        "--policy",
        "fast",
    ]);
    s.wait_protected(WEST_ITEM, 120);

    let cases = [
        (ITEM, east.socket_uri(ITEM, 0)),
        (WEST_ITEM, west.socket_uri(WEST_ITEM, 0)),
    ];
    let writers: Vec<Writer> = cases.iter().map(|(_, uri)| Writer::start(uri)).collect();
    let before: Vec<Vec<String>> = cases
        .iter()
        .map(|(item, _)| {
            s.wait_point_after(item, now(), 60);
            s.points(item).iter().map(|p| p["id"].to_string()).collect()
        })
        .collect();

    // The server dies; both hosts go on serving their VMs.
    s.kill9();
    let down = now();
    for w in &writers {
        wait_until(30, "writes acknowledged while the server is down", || {
            w.acked_since(down) >= 5
        });
    }
    s.restart();
    for name in ["east-1", "west-1"] {
        wait_until(60, &format!("{name} to link again"), || {
            host(&s, name)["alive"] == true
        });
    }
    let back = now();
    for ((item, uri), (writer, before)) in cases.iter().zip(writers.into_iter().zip(&before)) {
        s.wait_point_after(item, back, 60);
        let last = writer.stop();
        let point = s.wait_point_after(item, last, 60);
        let after: Vec<String> = s.points(item).iter().map(|p| p["id"].to_string()).collect();
        for p in before {
            assert!(
                after.contains(p),
                "point {p} of {item} was lost over the restart"
            );
        }
        let rep = s.replication(item);
        assert_eq!(rep["state"], "protected", "{rep}");
        // The newest point holds every write, those made while the server was down included.
        let want = dir.join("source.raw");
        read_disk(uri, &want);
        let got = dir.join("point.raw");
        s.export(item, 0, point["id"].as_str().unwrap(), &got);
        assert!(
            same_image(&got, &want),
            "the point of {item} after the last write differs from its disk"
        );
    }

    // Another host's credential cannot speak for this VM, and a revoked one is refused.
    let joined: serde_json::Value = {
        let body = format!(
            r#"{{"token":"{}","name":"east-2","region":"east","version":"0.1.0"}}"#,
            join_token(&s, "east")
        );
        let (code, text) = s.http("POST", "/v1/agents/join", Some(&body), false);
        assert_eq!(code, 201, "{text}");
        serde_json::from_str(&text).unwrap()
    };
    let other = joined["credential"].as_str().unwrap();
    let report = format!(r#"{{"version":"0.1.0","vms":{{"{ITEM}":{{"held":false}}}}}}"#);
    let (code, text) = as_agent(&s, other, "/v1/agent/report", &report);
    assert_eq!(code, 403, "{text}");
    assert!(
        text.contains("agent east-2 may act only on the VMs placed on it")
            && text.contains("is on host east-1"),
        "{text}"
    );
    assert_eq!(host(&s, "east-1")["vms"][0], ITEM);
    // Nor read the blocks of a VM that is not its own, restored or not.
    let ask = format!(r#"{{"vm":"{ITEM}","disk":0,"point":"rp-1","blocks":[0]}}"#);
    let (code, text) = as_agent(&s, other, "/v1/agent/restore/blocks", &ask);
    assert_eq!(code, 403, "{text}");
    let mine = credential_of(&east);
    let (code, text) = as_agent(&s, &mine, "/v1/agent/restore/blocks", &ask);
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("is not being restored"), "{text}");
    s.ok(&["agent", "revoke", "east-2"]);
    let (code, text) = as_agent(
        &s,
        other,
        "/v1/agent/report",
        r#"{"version":"0.1.0","vms":{}}"#,
    );
    assert_eq!(code, 401, "{text}");
    assert!(text.contains("east-2 was revoked"), "{text}");
}

/// The guest kernel and initramfs (scripts/guest-kit), built once, for qemu-system.
fn guest_kit() -> (PathBuf, PathBuf) {
    peer("qemu-system");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest-kit");
    let st = Command::new(root.join("scripts/guest-kit"))
        .arg(&dir)
        .status()
        .expect("run scripts/guest-kit");
    assert!(
        st.success(),
        "scripts/guest-kit failed: run scripts/install-test-tools"
    );
    let fs = dir.join("fs.img");
    let st = Command::new(root.join("scripts/guest-kit"))
        .args(["mkfs"])
        .arg(&fs)
        .arg("64M")
        .status()
        .unwrap();
    assert!(st.success(), "scripts/guest-kit mkfs");
    (dir.join("vmlinuz"), dir.join("initrd.gz"))
}

/// The console of a VM, through the server (from whichever host runs it).
fn wait_console(s: &Server, vm: &str, needle: &str, secs: u64) -> String {
    let mut text = String::new();
    let what = format!("{needle:?} on the console of {vm}");
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(secs, &what, || {
            text = s.ok(&["vm", "console", vm]);
            text.contains(needle)
        })
    }));
    assert!(found.is_ok(), "no {what}; console:\n{text}");
    text
}

/// How many files the guest's write loop reports having written since boot.
fn written(s: &Server, vm: &str) -> u64 {
    s.ok(&["vm", "console", vm])
        .lines()
        .filter_map(|l| l.split("ferry-guest: wrote ").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// A real guest on a joined host: it boots on east (in its namespace), writes files and is
/// quiesced for app-consistent points; the east site is killed (agent, guest, data); the guest boots on the west host and finds the files.
#[test]
fn a_real_guest_on_a_lost_site_boots_on_the_west_host_with_its_files() {
    let (kernel, initrd) = guest_kit();
    let s3_url = peer_env("FERRY_TEST_S3_URL", "s3");
    let moto: SocketAddr = std::env::var("AWS_ENDPOINT")
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ns = Netns::new();
    let config = format!(r#"{{"api_tls": {{"names": ["{}"]}}}}"#, ns.host_ip);
    let s = Server::start_on_all_addresses(&dir.join("data"), &config);
    let s3: SocketAddr = format!("{}:{}", ns.host_ip, free_port()).parse().unwrap();
    forward(s3, moto);
    let import = s.data.join("import");
    std::fs::create_dir_all(&import).unwrap();
    std::fs::copy(&kernel, import.join("vmlinuz")).unwrap();
    std::fs::copy(&initrd, import.join("initrd.gz")).unwrap();
    let prefix = format!("{s3_url}/sites-guest-{}", std::process::id());
    s.base_resources(Some((&format!("{prefix}/sa1"), &format!("{prefix}/sa2"))));
    s.ok(&[
        "storage",
        "create",
        "rg1/cache1",
        "--url",
        &format!("{prefix}/cache"),
    ]);
    s.ok(&[
        "policy",
        "create",
        "guest",
        "--crash-consistent-every",
        "2s",
        "--app-consistent-every",
        "5s",
    ]);
    let east = start_agent(&s, &ns, "east-1", &dir.join("east-1"), s3);
    let west = start_local_agent(&s, "west", "west-1", &dir.join("west-1"));

    // The guest's disk gets its file system through its host's NBD socket, then it boots.
    s.ok(&[
        "vm",
        "create",
        ITEM,
        "--network",
        "vnet1",
        "--subnet",
        "db",
        "--disk",
        "64MiB@sa1",
        "--host",
        "east-1",
        "--compute",
        "qemu",
        "--kernel",
        "vmlinuz",
        "--initrd",
        "initrd.gz",
        "--append",
        "quiet ferry.job=verify ferry.then=write-loop",
    ]);
    s.ok(&["vm", "stop", ITEM]);
    let uri = east.socket_uri(ITEM, 0);
    let fs = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest-kit/fs.img");
    let st = Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&fs)
        .arg(&uri)
        .status()
        .unwrap();
    assert!(st.success(), "qemu-img convert onto the east host's disk");
    s.ok(&["vm", "start", ITEM]);
    wait_console(&s, ITEM, "ferry-guest: verify ok files=0", 120);
    s.ok(&[
        "replication",
        "enable",
        ITEM,
        "--target-region",
        "west",
        "--policy",
        "guest",
        "--cache-storage",
        "cache1",
    ]);
    s.wait_protected(ITEM, 180);
    wait_until(240, "the guest to write 5 files", || written(&s, ITEM) >= 5);
    // The east host quiesces its guest for app-consistent points.
    let t = now();
    wait_until(60, "an app-consistent point from the east host", || {
        s.points(ITEM)
            .iter()
            .any(|p| p["kind"] == "app-consistent" && epoch(p["time"].as_str().unwrap()) > t)
    });
    let reasons = s.replication(ITEM)["health_reasons"].to_string();
    assert!(!reasons.contains("did not quiesce"), "{reasons}");
    s.wait_point_after(ITEM, now() + 1.0, 60);

    // The east site dies: its agent, its guest, its data.
    let guest_pid = std::fs::read_to_string(east.data.join("vms/rg1/db1/qemu.pid"))
        .expect("the guest's pid file on the east host");
    let mut east = east;
    east.child.kill().unwrap();
    east.child.wait().unwrap();
    let _ = Command::new("kill").args(["-9", guest_pid.trim()]).status();
    std::fs::remove_dir_all(&east.data).unwrap();
    wait_until(30, "the east host to be lost", || {
        host(&s, "east-1")["alive"] == false
    });

    let job = s.json(&["failover", "run", ITEM, "--recovery-point", "latest"]);
    let id = job["id"].as_u64().unwrap().to_string();
    s.ok(&["job", "show", &id, "--wait"]);
    assert_eq!(s.json(&["job", "show", &id])["state"], "succeeded");
    let failed_over = s.replication(ITEM)["failover"]["vm"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(s.json(&["vm", "show", &failed_over])["host"], "west-1");
    let text = wait_console(&s, &failed_over, "ferry-guest: verify ", 180);
    assert!(!text.contains("verify FAILED"), "{text}");
    let text = wait_console(&s, &failed_over, "ferry-guest: verify ok files=", 10);
    let files: u64 = text
        .lines()
        .find_map(|l| l.split("verify ok files=").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    assert!(files >= 1, "the west guest found {files} files");
    drop(west);
}

/// The east host comes back with its disks after a failover: reprotect seeds the reverse
/// replica from them (its agent sends them to the server) and the west host sends only the
/// blocks that differ; failback brings the VM home with every write made in the west.
#[test]
fn a_host_that_comes_back_with_its_disks_is_reprotected_with_the_blocks_that_differ() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = Server::start(&dir.join("data"));
    s.base_resources(None);
    let east = start_local_agent(&s, "east", "east-1", &dir.join("east-1"));
    let west = start_local_agent(&s, "west", "west-1", &dir.join("west-1"));
    create_on_east_1(&s);
    let uri = east.socket_uri(ITEM, 0);
    // 12 MiB of data, so a full copy and a delta are far apart.
    for m in 0..12 {
        assert!(qemu_io(&uri, &format!("write -P {} {m}M 1M", m + 1)));
    }
    s.protect(ITEM);
    s.wait_point_after(ITEM, now(), 60);

    // A test failover runs on the west host, and its cleanup deletes the copy there.
    s.ok(&["failover", "test", ITEM, "--wait"]);
    let test_vm = s.replication(ITEM)["test_failover"]["vm"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(s.json(&["vm", "show", &test_vm])["host"], "west-1");
    assert!(qemu_io(&west.socket_uri(&test_vm, 0), "read -P 12 11M 1M"));
    let test_image = west.data.join("disks").join(&test_vm).join("disk0.raw");
    assert!(test_image.exists(), "{} is not there", test_image.display());
    s.ok(&["failover", "test-cleanup", ITEM, "--wait"]);
    assert!(
        s.fails(&["vm", "show", &test_vm])
            .contains("does not exist")
    );
    assert!(
        !test_image.exists(),
        "{} is left behind",
        test_image.display()
    );

    // East goes dark (its disks stay), and the VM is failed over to the west host.
    let mut east = east;
    east.child.kill().unwrap();
    east.child.wait().unwrap();
    wait_until(30, "east-1 to be lost", || {
        host(&s, "east-1")["alive"] == false
    });
    let job = s.json(&["failover", "run", ITEM, "--recovery-point", "latest"]);
    let id = job["id"].as_u64().unwrap().to_string();
    s.ok(&["job", "show", &id, "--wait"]);
    assert_eq!(s.json(&["job", "show", &id])["state"], "succeeded");
    let failed_over = s.replication(ITEM)["failover"]["vm"]
        .as_str()
        .unwrap()
        .to_string();
    let wuri = west.socket_uri(&failed_over, 0);
    assert!(qemu_io(&wuri, "write -P 0x77 2M 1M"));
    s.ok(&["failover", "commit", ITEM, "--wait"]);

    // East comes back with its data directory; reprotect compares instead of copying.
    let east = Agent {
        child: Command::new(FERRY)
            .args([
                "agent", "--server", &s.url, "--region", "east", "--name", "east-1",
            ])
            .arg("--data")
            .arg(&east.data)
            .stdout(std::fs::File::create(dir.join("east-1-again.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("east-1-again.err")).unwrap())
            .spawn()
            .unwrap(),
        data: east.data.clone(),
    };
    wait_until(60, "east-1 to be back", || {
        host(&s, "east-1")["alive"] == true
    });
    let job = s.json(&["reprotect", ITEM]);
    let id = job["id"].as_u64().unwrap().to_string();
    s.ok(&["job", "show", &id, "--wait"]);
    let job = s.json(&["job", "show", &id]);
    assert_eq!(job["state"], "succeeded", "{job}");
    let steps = job["steps"].to_string();
    assert!(
        steps.contains("on host east-1: only the blocks that differ are sent"),
        "{steps}"
    );
    let rep = s.replication(ITEM);
    assert_eq!(rep["state"], "protected");
    assert_eq!(s.json(&["vm", "show", ITEM])["host"], "east-1");
    let sent = rep["initial_replication"]["sent_bytes"].as_u64().unwrap();
    assert!(
        sent <= 2 << 20,
        "reprotect sent {sent} bytes for 1 MiB of difference on a 12 MiB disk"
    );

    // Failback: home on east-1 with the west's writes.
    assert!(qemu_io(&wuri, "write -P 0x78 3M 1M"));
    let in_west = dir.join("west.raw");
    s.ok(&["vm", "stop", &failed_over]);
    read_disk(&wuri, &in_west);
    let job = s.json(&["failover", "run", ITEM, "--shutdown-source"]);
    let id = job["id"].as_u64().unwrap().to_string();
    s.ok(&["job", "show", &id, "--wait"]);
    assert_eq!(s.json(&["job", "show", &id])["state"], "succeeded");
    let back = dir.join("back.raw");
    read_disk(&east.socket_uri(ITEM, 0), &back);
    assert!(
        same_image(&back, &in_west),
        "the failed-back disk differs from the west disk"
    );
}
