//! A throughput comparison of this server against `qemu-nbd`, both driven by `qemu-img bench`.

use std::io;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::{Exports, FileExport, NbdListener};

/// One measured figure next to the same figure for the baseline server.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchFigure {
    /// What was measured, e.g. `nbd write 1MiB seq qd16`.
    pub name: String,
    /// This server's figure.
    pub value: f64,
    /// Unit of both figures, e.g. `MiB/s` or `IOPS`.
    pub unit: String,
    /// The baseline's name (`qemu-nbd`).
    pub baseline: String,
    /// The baseline's figure.
    pub baseline_value: f64,
}

/// One `qemu-img bench` write workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    /// Requests issued.
    pub count: u64,
    /// Bytes per request.
    pub size: u64,
    /// Offset step between requests (wrapping at the image size).
    pub step: u64,
    /// Requests in flight.
    pub depth: u32,
}

impl Workload {
    /// Requests per second for a run of `seconds`.
    pub fn iops(&self, seconds: f64) -> f64 {
        self.count as f64 / seconds.max(1e-9)
    }

    /// Bytes per second for a run of `seconds`.
    pub fn bytes_per_second(&self, seconds: f64) -> f64 {
        self.iops(seconds) * self.size as f64
    }
}

struct Case {
    name: &'static str,
    unit: &'static str,
    work: Workload,
}

const IMAGE_SIZE: u64 = 2 << 30;
const EXPORT: &str = "bench";
const CASES: [Case; 2] = [
    Case {
        name: "nbd write 1MiB sequential qd16",
        unit: "MiB/s",
        work: Workload {
            count: 2000,
            size: 1 << 20,
            step: 1 << 20,
            depth: 16,
        },
    },
    Case {
        name: "nbd write 4KiB strided qd32",
        unit: "IOPS",
        work: Workload {
            count: 100_000,
            size: 4096,
            step: (1 << 20) + 4096,
            depth: 32,
        },
    },
];

/// Serves one raw file with this crate and another with `qemu-nbd` (writeback cache, both
/// over unix sockets in `dir`), runs each workload against both (best of two runs) and
/// returns the figures. Needs `qemu-nbd` and `qemu-img` on `PATH`.
pub async fn bench_against_qemu_nbd(dir: &Path) -> io::Result<Vec<BenchFigure>> {
    let ours_sock = dir.join("ferry-nbd.sock");
    let qemu_sock = dir.join("qemu-nbd.sock");
    let qemu_img = dir.join("qemu-nbd.img");
    let exports = Arc::new(Exports::new());
    let export = FileExport::create(&dir.join("ferry-nbd.img"), IMAGE_SIZE)?;
    exports.insert(EXPORT, Arc::new(export));
    std::fs::File::create(&qemu_img)?.set_len(IMAGE_SIZE)?;
    let listener = NbdListener::bind_unix(&ours_sock)?;
    let (stop, stopped) = watch::channel(false);
    let server = tokio::spawn(listener.serve(exports, stopped));
    let mut qemu = spawn_qemu_nbd(&qemu_sock, &qemu_img, EXPORT)?;
    let result = async {
        wait_for_socket(&qemu_sock).await?;
        let mut figures = Vec::new();
        for case in &CASES {
            let mut base = f64::MAX;
            let mut ours = f64::MAX;
            for _ in 0..2 {
                base = base.min(qemu_img_bench(&unix_url(&qemu_sock, EXPORT), &case.work).await?);
                ours = ours.min(qemu_img_bench(&unix_url(&ours_sock, EXPORT), &case.work).await?);
            }
            figures.push(BenchFigure {
                name: case.name.into(),
                value: rate(case, ours),
                unit: case.unit.into(),
                baseline: "qemu-nbd".into(),
                baseline_value: rate(case, base),
            });
        }
        Ok(figures)
    }
    .await;
    let _ = qemu.kill().await;
    let _ = stop.send(true);
    let _ = server.await;
    result
}

/// Requests per second (IOPS) or MiB per second from a run's duration in seconds.
fn rate(case: &Case, seconds: f64) -> f64 {
    if case.unit == "IOPS" {
        case.work.iops(seconds)
    } else {
        case.work.bytes_per_second(seconds) / f64::from(1 << 20)
    }
}

/// `nbd+unix:///EXPORT?socket=SOCKET`.
pub fn unix_url(socket: &Path, export: &str) -> String {
    format!("nbd+unix:///{export}?socket={}", socket.display())
}

/// Starts `qemu-nbd` serving the raw `image` as `export` on the unix socket `socket`
/// (writeback cache, persistent, up to 8 clients); killed when the child is dropped.
/// Wait for it with [`wait_for_socket`].
pub fn spawn_qemu_nbd(socket: &Path, image: &Path, export: &str) -> io::Result<Child> {
    Command::new("qemu-nbd")
        .args([
            "-f",
            "raw",
            "-x",
            export,
            "-t",
            "-e",
            "8",
            "--cache=writeback",
            "-k",
        ])
        .arg(socket)
        .arg(image)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
}

/// Runs `qemu-img bench -w -t none -f raw` with `work` against the NBD `url`; returns the
/// run's duration in seconds as `qemu-img` reports it.
pub async fn qemu_img_bench(url: &str, work: &Workload) -> io::Result<f64> {
    let out = Command::new("qemu-img")
        .args(["bench", "-w", "-t", "none", "-f", "raw"])
        .args(["-c", &work.count.to_string(), "-d", &work.depth.to_string()])
        .args(["-s", &work.size.to_string(), "-S", &work.step.to_string()])
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(io::Error::other(format!("qemu-img bench failed: {stderr}")));
    }
    parse_duration(&stdout)
        .ok_or_else(|| io::Error::other(format!("unexpected qemu-img bench output: {stdout}")))
}

/// Extracts X from `Run completed in X seconds.`.
fn parse_duration(output: &str) -> Option<f64> {
    let rest = output.split("Run completed in ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Waits (up to 10 s) until a unix socket accepts connections.
pub async fn wait_for_socket(path: &Path) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::UnixStream::connect(path).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn parses_qemu_img_bench_output() {
        let out = "Sending 2000 write requests, 1048576 bytes each, 16 in parallel\n\
                   Run completed in 1.234 seconds.\n";
        assert_eq!(parse_duration(out), Some(1.234));
        assert_eq!(parse_duration("nothing"), None);
    }
}
