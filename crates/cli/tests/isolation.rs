//! One slow peer stalls nothing else: while one VM's target account accepts connections and
//! never answers, or while VM creations are handed a FIFO as their image, another VM's NBD
//! reads and `/healthz` keep their latency, and the other VM's item is still monitored (new
//! points, old ones pruned, `replication show` answers at once, its RPO stays low).
//!
//! The stalled account sits behind a proxy in front of the local S3 server: `scripts/test`
//! starts it and exports AWS_ENDPOINT (see .ci/object-stores.sh); without it the account test
//! fails.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::*;

/// Longest a `/healthz` or a 4 KiB read may take while the other peer stalls.
const MOST: Duration = Duration::from_secs(1);

/// A TCP proxy in front of a server that can stall: from [`Proxy::stall`] on it forwards
/// nothing more, on open connections or new ones, and answers nothing, holding every
/// connection open (a peer that accepts TCP and never answers).
struct Proxy {
    port: u16,
    stalled: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stalled = Arc::new(AtomicBool::new(false));
        let flag = stalled.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if flag.load(Ordering::SeqCst) {
                    swallow(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                pump(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    &flag,
                );
                pump(server, client, &flag);
            }
        });
        Proxy { port, stalled }
    }

    fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }
}

/// Read and drop everything the client sends, answer nothing, until it hangs up.
fn swallow(mut client: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 << 10];
        while matches!(client.read(&mut buf), Ok(n) if n > 0) {}
    });
}

/// Forward `from` to `to` until either closes, or only read once stalled.
fn pump(mut from: TcpStream, mut to: TcpStream, stalled: &Arc<AtomicBool>) {
    let stalled = stalled.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 << 10];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            if !stalled.load(Ordering::SeqCst) && to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

/// Latencies measured in the background, each with when it started, until dropped.
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(Instant, Duration)>>>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Time `op` every `every`; an attempt that fails counts as taking `fail`.
    fn start(
        every: Duration,
        fail: Duration,
        mut op: impl FnMut() -> bool + Send + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, out) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let at = Instant::now();
                let took = if op() {
                    at.elapsed()
                } else {
                    fail.max(at.elapsed())
                };
                out.lock().unwrap().push((at, took));
                std::thread::sleep(every);
            }
        });
        Sampler {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// 4 KiB reads over one NBD connection to `uri`, spread over the first MiB.
    fn nbd_reads(uri: &str) -> Sampler {
        let uri = uri.to_string();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut client = rt
            .block_on(ferry_nbd::NbdClient::connect_uri(&uri))
            .expect("connect to the VM's disk");
        let mut offset = 0u64;
        Sampler::start(Duration::from_millis(20), MOST * 10, move || {
            offset = (offset + 4096) % (1 << 20);
            let read = rt.block_on(async {
                tokio::time::timeout(MOST * 10, client.read(offset, 4096)).await
            });
            matches!(read, Ok(Ok(_)))
        })
    }

    /// `GET /healthz` on a new connection each time.
    fn healthz(port: u16) -> Sampler {
        Sampler::start(Duration::from_millis(50), MOST * 10, move || {
            healthz_ok(port, MOST * 10)
        })
    }

    /// The samples that started in `[from, to)`.
    fn between(&self, from: Instant, to: Instant) -> Vec<Duration> {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, d)| *d)
            .collect()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn healthz_ok(port: u16, timeout: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    s.set_read_timeout(Some(timeout)).unwrap();
    let req = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut resp = String::new();
    s.write_all(req.as_bytes()).is_ok()
        && s.read_to_string(&mut resp).is_ok()
        && resp.starts_with("HTTP/1.1 200")
}

fn median(mut v: Vec<Duration>) -> Duration {
    assert!(!v.is_empty(), "no samples");
    v.sort();
    v[v.len() / 2]
}

/// Assert that B's reads and `/healthz` in `[from, to)` kept their latency: none over
/// [`MOST`], and reads' median within a small multiple of the baseline's.
fn assert_latency(
    reads: &Sampler,
    health: &Sampler,
    baseline: Duration,
    from: Instant,
    to: Instant,
) {
    let (r, h) = (reads.between(from, to), health.between(from, to));
    assert!(
        r.len() >= 10 && h.len() >= 10,
        "the other VM's reads and /healthz stalled: only {} reads and {} /healthz answered",
        r.len(),
        h.len()
    );
    let (r_max, h_max) = (*r.iter().max().unwrap(), *h.iter().max().unwrap());
    assert!(
        h_max < MOST,
        "a /healthz took {h_max:?} ({} samples)",
        h.len()
    );
    assert!(
        r_max < MOST,
        "a read of the other VM's disk took {r_max:?} ({} samples)",
        r.len()
    );
    let m = median(r);
    assert!(
        m <= baseline * 4 + Duration::from_millis(5),
        "the other VM's median read latency went from {baseline:?} to {m:?}"
    );
}

/// The seconds since the oldest of an item's points.
fn oldest_point_age(s: &Server, item: &str) -> f64 {
    let now = now();
    s.points(item)
        .iter()
        .map(|p| now - epoch(p["time"].as_str().unwrap()))
        .fold(0.0, f64::max)
}

/// Run a CLI command in the background (it may never end).
fn spawn_ferry(s: &Server, args: &[&str]) -> Child {
    Command::new(FERRY)
        .args(args)
        .env("FERRY_URL", &s.url)
        .env("FERRY_TOKEN", &s.token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ferry")
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().unwrap().success();
    assert!(ok, "mkfifo {}", path.display());
}

#[test]
fn vm_creations_from_fifos_stall_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    s.base_resources(None);
    s.create_vm("rg1/b1", "default", &["16MiB@sa1"]);
    let uri = s.disk_uri("rg1/b1", 0);
    assert!(qemu_io(&uri, "write -P 0x5a 0 1M"));
    let reads = Sampler::nbd_reads(&uri);
    let health = Sampler::healthz(s.port);
    let start = Instant::now();
    wait_until(30, "a baseline of reads", || {
        reads.between(start, Instant::now()).len() >= 50
    });
    let baseline = median(reads.between(start, Instant::now()));

    // More creations at once than the server has async workers.
    let n = std::thread::available_parallelism().map_or(2, |n| n.get()) + 1;
    let import = s.data.join("import");
    std::fs::create_dir_all(&import).unwrap();
    let fifos: Vec<_> = (0..n)
        .map(|i| import.join(format!("image{i}.fifo")))
        .collect();
    let mut creations: Vec<Child> = fifos
        .iter()
        .enumerate()
        .map(|(i, fifo)| {
            mkfifo(fifo);
            let name = format!("rg1/fifo{i}");
            spawn_ferry(
                &s,
                &[
                    "vm",
                    "create",
                    &name,
                    "--network",
                    "vnet1",
                    "--subnet",
                    "default",
                    "--disk",
                    "16MiB@sa1",
                    "--image",
                    fifo.to_str().unwrap(),
                ],
            )
        })
        .collect();
    // Watch for 3 s whatever the creations do, and give them 10 s in all to answer.
    let during = Instant::now();
    let mut refusals = Vec::new();
    while during.elapsed() < Duration::from_secs(3)
        || (!creations.is_empty() && during.elapsed() < Duration::from_secs(10))
    {
        creations.retain_mut(|c| match c.try_wait().unwrap() {
            Some(_) => {
                refusals.push(stderr_of(c));
                false
            }
            None => true,
        });
        std::thread::sleep(Duration::from_millis(100));
    }
    let end = Instant::now();
    for c in &mut creations {
        let _ = c.kill();
    }
    assert_latency(&reads, &health, baseline, during, end);
    assert!(
        creations.is_empty(),
        "{} VM creations from a FIFO never answered",
        creations.len()
    );
    for stderr in refusals {
        assert!(
            stderr.contains("--image must be a regular file"),
            "a FIFO as image is refused, naming why: {stderr}"
        );
    }
    let vms = s.json(&["vm", "list"]);
    assert_eq!(
        vms.as_array().unwrap().len(),
        1,
        "no VM was created from a FIFO: {vms}"
    );
}

/// The stderr of a child that has exited.
fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    err
}

/// The S3 server `.ci/object-stores.sh` started.
fn s3_server() -> SocketAddr {
    let endpoint = peer_env("AWS_ENDPOINT", "s3");
    let addr = endpoint.trim_start_matches("http://").trim_end_matches('/');
    addr.parse().expect("AWS_ENDPOINT is http://HOST:PORT")
}

#[test]
fn a_stalled_account_stalls_no_other_item() {
    let s3 = s3_server();
    let proxy = Proxy::start(s3);
    let dir = tempfile::tempdir().unwrap();
    let env = vec![
        (
            "AWS_ENDPOINT".to_string(),
            format!("http://127.0.0.1:{}", proxy.port),
        ),
        ("AWS_ALLOW_HTTP".into(), "true".into()),
    ];
    let s = Server::start_with(&dir.path().join("data"), free_port(), env);
    s.base_resources(None);
    const RETENTION: f64 = 20.0;
    s.ok(&[
        "policy",
        "create",
        "short",
        "--crash-consistent-every",
        "2s",
        "--retention",
        "20s",
    ]);
    // A's replica goes to an account on the S3 server behind the proxy; B's to local ones.
    let unique = format!("stall-{}-{}", std::process::id(), (now() * 1000.0) as u64);
    s.ok(&["group", "create", "rg1-asr", "--region", "west"]);
    s.ok(&[
        "storage",
        "create",
        "rg1-asr/remote",
        "--url",
        &format!("s3://ferry-test/{unique}"),
    ]);
    s.create_vm("rg1/a1", "default", &["16MiB@sa2"]);
    s.create_vm("rg1/b1", "default", &["16MiB@sa1"]);
    let uri = s.disk_uri("rg1/b1", 0);
    assert!(qemu_io(&uri, "write -P 0x5a 0 1M"));
    let enable = [
        "replication",
        "enable",
        "--target-region",
        "west",
        "--policy",
        "short",
    ];
    s.ok(&[&enable[..], &["rg1/a1", "--target-storage", "sa2=remote"]].concat());
    s.ok(&[&enable[..], &["rg1/b1"]].concat());
    s.wait_protected("rg1/a1", 120);
    s.wait_protected("rg1/b1", 120);
    s.wait_point_after("rg1/a1", now(), 60);

    let reads = Sampler::nbd_reads(&uri);
    let health = Sampler::healthz(s.port);
    let start = Instant::now();
    wait_until(30, "a baseline of reads", || {
        reads.between(start, Instant::now()).len() >= 50
    });
    let baseline = median(reads.between(start, Instant::now()));

    proxy.stall();
    let stalled = Instant::now();
    let mut worst_age: f64 = 0.0;
    let mut worst_show = Duration::ZERO;
    let mut worst_rpo: f64 = 0.0;
    let mut b_points = 0;
    // Long enough for B's points to outlive the retention by far if pruning stops.
    while stalled.elapsed() < Duration::from_secs(45) {
        let asked = Instant::now();
        let b = s.replication("rg1/b1");
        worst_show = worst_show.max(asked.elapsed());
        worst_rpo = worst_rpo.max(b["rpo_seconds"].as_f64().unwrap_or(f64::MAX));
        b_points = s.points("rg1/b1").len().max(b_points);
        if stalled.elapsed() > Duration::from_secs(15) {
            worst_age = worst_age.max(oldest_point_age(&s, "rg1/b1"));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_latency(&reads, &health, baseline, stalled, Instant::now());
    assert!(
        worst_show < MOST * 2,
        "`replication show` of B took {worst_show:?}"
    );
    assert!(worst_rpo < 15.0, "B's RPO reached {worst_rpo} s");
    let newest = s.points("rg1/b1");
    assert!(
        newest
            .iter()
            .any(|p| epoch(p["time"].as_str().unwrap()) > now() - 10.0),
        "B keeps getting points: {newest:?}"
    );
    assert!(
        worst_age < RETENTION + 15.0,
        "B's points past the retention are no longer pruned: the oldest was {worst_age:.0} s old \
         ({b_points} points)"
    );
    // A itself answers, naming its trouble in time.
    let asked = Instant::now();
    let a = s.replication("rg1/a1");
    assert!(
        asked.elapsed() < MOST * 2,
        "`replication show` of A took {:?}",
        asked.elapsed()
    );
    assert_eq!(a["state"], "protected", "{a}");
}
