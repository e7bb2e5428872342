//! End-to-end tests of the qemu provider: a real qemu-system-x86_64 boots the guest kit
//! (scripts/guest-kit) with a disk served by qemu-nbd over a unix socket.
//! Needs the tools of scripts/install-test-tools; nothing is skipped when they are missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_compute::{
    Boot, ComputeError, DiskAttachment, FreezeStatus, Qemu, VmSpec, console, freeze, freeze_status,
    is_running, stop, thaw, wait_console,
};

/// Deadline for a guest to reach a console line; a TCG boot takes a few seconds, more when
/// tests run side by side.
const BOOT: Duration = Duration::from_secs(90);
const AGENT: Duration = Duration::from_secs(20);
const GRACE: Duration = Duration::from_secs(30);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn qemu() -> Qemu {
    // `scripts/test` counts the tests that print this.
    println!("peer: qemu-system");
    Qemu::detect().unwrap_or_else(|e| panic!("{e}"))
}

/// The guest kernel and initramfs, built once into target/tmp/guest-kit.
fn guest_kit() -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest-kit");
    let status = Command::new(repo_root().join("scripts/guest-kit"))
        .arg(&dir)
        .status()
        .expect("run scripts/guest-kit");
    assert!(
        status.success(),
        "scripts/guest-kit failed: run scripts/install-test-tools first"
    );
    (dir.join("vmlinuz"), dir.join("initrd.gz"))
}

/// Boots the guest kit; tests pass `quiet` (the kernel's log on a TCG serial console costs
/// seconds per boot; errors still show).
fn kernel_boot(append: &str) -> Boot {
    let (kernel, initrd) = guest_kit();
    Boot::Kernel {
        kernel,
        initrd: Some(initrd),
        append: append.to_string(),
    }
}

/// qemu-nbd serving a fresh ext4 image as export `disk0` on a unix socket; killed on drop.
struct NbdServer {
    child: Child,
    image: PathBuf,
    socket: PathBuf,
}

impl NbdServer {
    fn start(dir: &Path) -> NbdServer {
        let image = dir.join("disk.img");
        let status = Command::new(repo_root().join("scripts/guest-kit"))
            .args(["mkfs".as_ref(), image.as_os_str(), "64M".as_ref()])
            .status()
            .expect("run scripts/guest-kit mkfs");
        assert!(status.success(), "scripts/guest-kit mkfs failed");
        let socket = dir.join("nbd.sock");
        let child = serve(&image, &socket);
        NbdServer {
            child,
            image,
            socket,
        }
    }

    /// Kills the server and starts a new one on the same socket after `downtime`.
    fn restart(&mut self, downtime: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::remove_file(&self.socket).unwrap();
        std::thread::sleep(downtime);
        self.child = serve(&self.image, &self.socket);
    }

    fn disk(&self) -> DiskAttachment {
        DiskAttachment {
            socket: self.socket.clone(),
            export: "disk0".into(),
        }
    }
}

fn serve(image: &Path, socket: &Path) -> Child {
    let child = Command::new("qemu-nbd")
        .args([
            "-f",
            "raw",
            "-x",
            "disk0",
            "--persistent",
            "--shared=8",
            "-k",
        ])
        .arg(socket)
        .arg(image)
        .stdin(Stdio::null())
        .spawn()
        .expect("run qemu-nbd (scripts/install-test-tools installs qemu-utils)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "qemu-nbd did not create {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Waits until the console shows `needle` past its first `offset` bytes.
async fn wait_console_after(dir: &Path, offset: usize, needle: &str) {
    let deadline = Instant::now() + BOOT;
    loop {
        let text = console(dir).unwrap();
        if text.get(offset..).is_some_and(|t| t.contains(needle)) {
            return;
        }
        assert!(
            is_running(dir),
            "VM exited; console:\n{}",
            &text[offset.min(text.len())..]
        );
        assert!(
            Instant::now() < deadline,
            "no {needle:?} after restart; console:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills the VM if the test ends early.
struct VmGuard(PathBuf);

impl Drop for VmGuard {
    fn drop(&mut self) {
        ferry_compute::kill(&self.0);
    }
}

async fn wait_stopped(dir: &Path) {
    let deadline = Instant::now() + BOOT;
    while is_running(dir) {
        assert!(
            Instant::now() < deadline,
            "VM in {} did not power off",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn write_freeze_thaw_stop_then_verify() {
    let qemu = qemu();
    let tmp = tempfile::tempdir().unwrap();
    let mut nbd = NbdServer::start(tmp.path());
    let dir = tmp.path().join("vm");
    let _guard = VmGuard(dir.clone());

    let mut spec = VmSpec::new(
        "writer",
        &dir,
        kernel_boot("quiet ferry.job=write-loop ferry.gen=1"),
    );
    spec.disks.push(nbd.disk());
    let started = Instant::now();
    let vm = qemu.start(&spec).await.unwrap();
    assert!(is_running(&vm.dir));
    eprintln!(
        "qemu ({}) answered QMP after {:?}",
        qemu.accel(),
        started.elapsed()
    );
    wait_console(&dir, "ferry-guest: booted", BOOT)
        .await
        .unwrap();
    eprintln!("ferry-guest: booted after {:?}", started.elapsed());
    wait_console(&dir, "ferry-guest: wrote", BOOT)
        .await
        .unwrap();
    eprintln!("first file written after {:?}", started.elapsed());

    let t = Instant::now();
    freeze(&dir, AGENT).await.unwrap();
    eprintln!("freeze took {:?}", t.elapsed());
    assert_eq!(
        freeze_status(&dir, AGENT).await.unwrap(),
        FreezeStatus::Frozen
    );
    thaw(&dir, AGENT).await.unwrap();
    assert_eq!(
        freeze_status(&dir, AGENT).await.unwrap(),
        FreezeStatus::Thawed
    );
    // The writer goes on after the thaw, and rides out a restart of the NBD server.
    let offset = console(&dir).unwrap().len();
    nbd.restart(Duration::from_secs(2));
    wait_console_after(&dir, offset, "ferry-guest: wrote").await;

    let t = Instant::now();
    let outcome = stop(&dir, GRACE).await.unwrap();
    eprintln!("graceful stop took {:?}", t.elapsed());
    assert!(outcome.graceful, "the guest ignored the power button");
    assert!(!outcome.already_stopped);
    assert!(!is_running(&dir));
    assert!(stop(&dir, GRACE).await.unwrap().already_stopped);

    let mut spec = VmSpec::new("verifier", &dir, kernel_boot("quiet ferry.job=verify"));
    spec.disks.push(nbd.disk());
    let started = Instant::now();
    qemu.start(&spec).await.unwrap();
    let console = wait_console(&dir, "ferry-guest: verify ", BOOT)
        .await
        .unwrap();
    eprintln!("verify finished after {:?}", started.elapsed());
    // Parse from the marker on: a kernel message may share the line.
    let verdict = console
        .split_once("ferry-guest: verify ")
        .map(|(_, rest)| rest.lines().next().unwrap_or(""))
        .unwrap();
    let files: u32 = verdict
        .strip_prefix("ok files=")
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("verify failed: {verdict}; console:\n{console}"));
    assert!(
        files >= 10,
        "only {files} files verified; console:\n{console}"
    );
    wait_stopped(&dir).await;
    eprintln!("verify VM powered off after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn freeze_without_guest_agent_times_out() {
    let qemu = qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vm");
    let _guard = VmGuard(dir.clone());
    let spec = VmSpec::new(
        "noagent",
        &dir,
        kernel_boot("quiet ferry.job=idle ferry.noagent=1"),
    );
    qemu.start(&spec).await.unwrap();
    wait_console(&dir, "ferry-guest: job idle", BOOT)
        .await
        .unwrap();

    let timeout = Duration::from_secs(2);
    let t = Instant::now();
    let err = freeze(&dir, timeout).await.unwrap_err();
    let took = t.elapsed();
    assert!(
        matches!(err, ComputeError::GuestAgentTimeout { .. }),
        "{err}"
    );
    assert!(err.is_retryable());
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(1),
        "took {took:?}"
    );

    stop(&dir, GRACE).await.unwrap();
    assert!(!is_running(&dir));
}

#[tokio::test(flavor = "multi_thread")]
async fn console_reports_ip() {
    let qemu = qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vm");
    let _guard = VmGuard(dir.clone());
    let mut spec = VmSpec::new("ip", &dir, kernel_boot("quiet ferry.job=idle"));
    spec.ip = Some("10.1.0.4/24".into());
    qemu.start(&spec).await.unwrap();
    assert!(matches!(
        qemu.start(&spec).await,
        Err(ComputeError::AlreadyRunning { .. })
    ));
    wait_console(&dir, "ferry-guest: ip 10.1.0.4/24", BOOT)
        .await
        .unwrap();
    // An idle guest keeps running and powers off on the button.
    let outcome = stop(&dir, GRACE).await.unwrap();
    assert!(outcome.graceful);
}
