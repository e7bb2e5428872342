//! The parts of a site the tests put together: a network namespace that accepts no
//! connection, a TCP forwarder, a host's agent process, a writing client.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::ITEM;
use crate::support::*;

/// A network namespace joined to this one by a veth pair: `host_ip` here, `ns_ip` there. In
/// it, new inbound connections are dropped.
pub struct Netns {
    pub name: String,
    pub link: String,
    pub host_ip: String,
    pub ns_ip: String,
}

pub fn run(cmd: &mut Command) {
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
    pub fn new() -> Netns {
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
    pub fn cmd(&self, program: &str) -> Command {
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
pub fn forward(listen: SocketAddr, to: SocketAddr) {
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
pub struct Agent {
    pub child: Child,
    pub data: PathBuf,
}

impl Agent {
    pub fn socket_uri(&self, vm: &str, disk: usize) -> String {
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

pub fn host(s: &Server, name: &str) -> serde_json::Value {
    s.json(&["host", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == name)
        .cloned()
        .unwrap_or_default()
}

pub fn fingerprint(s: &Server) -> String {
    std::fs::read_to_string(s.data.join("tls/fingerprint"))
        .expect("the server's certificate fingerprint")
        .trim()
        .to_string()
}

/// Create the test's VM in network vnet1, subnet db, with `args` (its disks, host, ...).
pub fn create_vm(s: &Server, args: &[&str]) {
    let mut all = vec!["vm", "create", ITEM, "--network", "vnet1", "--subnet", "db"];
    all.extend_from_slice(args);
    s.ok(&all);
}

/// Create the test's VM (one 16 MiB disk) on host east-1.
pub fn create_on_east_1(s: &Server) {
    create_vm(s, &["--disk", "16MiB@sa1", "--host", "east-1"]);
}

/// A fresh one-time join token for `region`.
pub fn join_token(s: &Server, region: &str) -> String {
    s.json(&["agent", "token", "create", "--region", region])["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Start `name`'s agent in `ns`, joining with a fresh token; it reaches the server over TLS at
/// the namespace's host address, and S3 through `s3`.
pub fn start_agent(s: &Server, ns: &Netns, name: &str, data: &Path, s3: SocketAddr) -> Agent {
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
pub fn start_local_agent(s: &Server, region: &str, name: &str, data: &Path) -> Agent {
    let mut cmd = Command::new(FERRY);
    cmd.args(["agent", "--server", &s.url]);
    spawn_agent(s, cmd, region, name, data)
}

pub fn spawn_agent(s: &Server, mut cmd: Command, region: &str, name: &str, data: &Path) -> Agent {
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
pub fn credential_of(agent: &Agent) -> String {
    let text = std::fs::read_to_string(agent.data.join("credential")).expect("the credential");
    text.trim().to_string()
}

/// A request with an agent's credential: (status, body).
pub fn as_agent(s: &Server, credential: &str, path: &str, body: &str) -> (u16, String) {
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
pub struct Writer {
    pub acked: Arc<Mutex<Vec<f64>>>,
    pub stop: Arc<AtomicBool>,
    pub thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub fn start(uri: &str) -> Writer {
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

    pub fn acked_since(&self, t: f64) -> usize {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .filter(|a| **a > t)
            .count()
    }

    /// Stop; returns when the last write was acknowledged.
    pub fn stop(mut self) -> f64 {
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

/// Run a command that starts a job, wait for the job, and check that it succeeded; the job.
pub fn job_succeeds(s: &Server, args: &[&str]) -> serde_json::Value {
    let job = s.json(args);
    let id = job["id"].as_u64().expect("a job").to_string();
    s.ok(&["job", "show", &id, "--wait"]);
    let job = s.json(&["job", "show", &id]);
    assert_eq!(job["state"], "succeeded", "{job}");
    job
}

/// A server (TLS, on every address) for a site test, an east namespace, and S3 reached from
/// the namespace through a forwarder; the test's S3 prefix.
pub struct Sites {
    pub tmp: tempfile::TempDir,
    pub ns: Netns,
    pub s: Server,
    pub s3: SocketAddr,
    pub prefix: String,
}

impl Sites {
    pub fn start(tag: &str) -> Sites {
        let s3_url = peer_env("FERRY_TEST_S3_URL", "s3");
        let moto: SocketAddr = std::env::var("AWS_ENDPOINT")
            .unwrap()
            .trim_start_matches("http://")
            .parse()
            .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let ns = Netns::new();
        let config = format!(r#"{{"api_tls": {{"names": ["{}"]}}}}"#, ns.host_ip);
        let s = Server::start_on_all_addresses(&tmp.path().join("data"), &config);
        let s3: SocketAddr = format!("{}:{}", ns.host_ip, free_port()).parse().unwrap();
        forward(s3, moto);
        let prefix = format!("{s3_url}/{tag}-{}", std::process::id());
        Sites {
            tmp,
            ns,
            s,
            s3,
            prefix,
        }
    }
}
