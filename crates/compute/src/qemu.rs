//! Finding qemu, building its command line and starting it detached.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::ComputeError;
use crate::process::{self, PID_FILE};
use crate::qmp::Qmp;
use crate::spec::{Boot, NBD_RECONNECT_DELAY_SECS, VmSpec};

pub(crate) const CONSOLE_LOG: &str = "console.log";
pub(crate) const QMP_SOCK: &str = "qmp.sock";
pub(crate) const QGA_SOCK: &str = "qga.sock";
const ARGS_FILE: &str = "qemu.args";
const QEMU_LOG: &str = "qemu.log";
/// How long qemu may take to open its QMP socket (it connects to every NBD disk first).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How qemu executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation: `-accel kvm -cpu host`.
    Kvm,
    /// Emulation: `-accel tcg -cpu max`.
    Tcg,
}

/// The qemu binary and the accelerator to run VMs with.
#[derive(Debug, Clone)]
pub struct Qemu {
    binary: PathBuf,
    accel: Accel,
}

/// A VM qemu has started; its state lives in `dir` (see the crate docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningVm {
    pub pid: u32,
    pub dir: PathBuf,
}

impl Qemu {
    /// Finds `qemu-system-x86_64` on PATH and picks KVM only where a real KVM module
    /// (`kvm_intel` or `kvm_amd`) is loaded and `/dev/kvm` opens; otherwise TCG (a nested KVM
    /// without those modules cannot run a stock kernel).
    pub fn detect() -> Result<Qemu, ComputeError> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let binary = find_in_path(&path, "qemu-system-x86_64").ok_or(ComputeError::QemuMissing)?;
        let accel = if kvm_usable() { Accel::Kvm } else { Accel::Tcg };
        Ok(Qemu { binary, accel })
    }

    /// A specific binary and accelerator.
    pub fn new(binary: impl Into<PathBuf>, accel: Accel) -> Qemu {
        Qemu {
            binary: binary.into(),
            accel,
        }
    }

    /// `"kvm"` or `"tcg"`.
    pub fn accel(&self) -> &str {
        match self.accel {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Starts the VM detached (own process group, so it survives its starter), writes
    /// `qemu.pid` and `qemu.args`, and returns once QMP answers.
    pub async fn start(&self, spec: &VmSpec) -> Result<RunningVm, ComputeError> {
        fs::create_dir_all(&spec.dir).map_err(ComputeError::io("create VM dir", &spec.dir))?;
        let dir =
            fs::canonicalize(&spec.dir).map_err(ComputeError::io("resolve VM dir", &spec.dir))?;
        if let Some(pid) = process::running_pid(&dir) {
            return Err(ComputeError::AlreadyRunning { dir, pid });
        }
        for stale in [QMP_SOCK, QGA_SOCK, PID_FILE] {
            remove_if_exists(&dir.join(stale))?;
        }
        let args = self.args(spec, &dir)?;
        let mut listing = String::new();
        for arg in &args {
            listing.push_str(&arg.to_string_lossy());
            listing.push('\n');
        }
        write(&dir.join(ARGS_FILE), listing.as_bytes())?;
        // qemu's file chardev appends; every boot starts with an empty console.
        File::create(dir.join(CONSOLE_LOG))
            .map_err(ComputeError::io("create", dir.join(CONSOLE_LOG)))?;
        let log_path = dir.join(QEMU_LOG);
        let log = File::create(&log_path).map_err(ComputeError::io("create", &log_path))?;
        let log_err = log
            .try_clone()
            .map_err(ComputeError::io("clone", &log_path))?;

        let mut child = Command::new(&self.binary)
            .args(&args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .spawn()
            .map_err(ComputeError::io("run", &self.binary))?;
        let pid = child.id();
        write(&dir.join(PID_FILE), format!("{pid}\n").as_bytes())?;
        tracing::info!(vm = %spec.name, pid, dir = %dir.display(), accel = self.accel(), "started qemu");

        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let qmp = loop {
            if let Ok(Some(status)) = child.try_wait() {
                let _ = fs::remove_file(dir.join(PID_FILE));
                return Err(ComputeError::StartFailed {
                    reason: format!("qemu exited with {status}"),
                    log: read_lossy(&log_path),
                    dir,
                });
            }
            match Qmp::connect(&dir).await {
                Ok(qmp) => break qmp,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    process::kill_pid(pid);
                    let _ = child.wait();
                    return Err(ComputeError::StartFailed {
                        reason: format!("QMP did not answer within {START_TIMEOUT:?}: {e}"),
                        log: read_lossy(&log_path),
                        dir,
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        drop(qmp);
        // Reap qemu when it exits, so a long-lived starter collects no zombies.
        std::thread::spawn(move || child.wait());
        Ok(RunningVm { pid, dir })
    }

    /// The full qemu command line for `spec` running in `dir`.
    pub(crate) fn args(&self, spec: &VmSpec, dir: &Path) -> Result<Vec<OsString>, ComputeError> {
        let mut a = Args::default();
        a.push("-name").push(opt_escape(&spec.name));
        a.push("-machine").push("q35");
        a.push("-m").push(spec.memory_mib.to_string());
        match self.accel {
            Accel::Kvm => a.push("-accel").push("kvm").push("-cpu").push("host"),
            Accel::Tcg => a.push("-accel").push("tcg").push("-cpu").push("max"),
        };
        a.push("-nographic").push("-nodefaults").push("-no-reboot");
        a.push("-chardev").push(format!(
            "file,id=console0,path={}",
            path_opt(&dir.join(CONSOLE_LOG))?
        ));
        a.push("-serial").push("chardev:console0");
        a.push("-qmp").push(format!(
            "unix:{},server=on,wait=off",
            socket_opt(&dir.join(QMP_SOCK))?
        ));
        a.push("-device").push("virtio-serial-pci,id=vser0");
        a.push("-chardev").push(format!(
            "socket,id=qga0,path={},server=on,wait=off",
            socket_opt(&dir.join(QGA_SOCK))?
        ));
        a.push("-device")
            .push("virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0");
        a.push("-nic").push("none");
        for (i, disk) in spec.disks.iter().enumerate() {
            socket_opt(&disk.socket)?;
            let socket = disk.socket.to_str().ok_or_else(|| {
                ComputeError::InvalidSpec(format!(
                    "NBD socket path {} is not UTF-8",
                    disk.socket.display()
                ))
            })?;
            let node = serde_json::json!({
                "driver": "nbd",
                "node-name": format!("disk{i}"),
                "server": { "type": "unix", "path": socket },
                "export": disk.export,
                "reconnect-delay": NBD_RECONNECT_DELAY_SECS,
                "cache": { "direct": true, "no-flush": false },
            });
            a.push("-blockdev").push(node.to_string());
            let mut device = format!("virtio-blk-pci,drive=disk{i},id=vdisk{i},write-cache=on");
            if i == 0 && spec.boot == Boot::Disk {
                device.push_str(",bootindex=0");
            }
            a.push("-device").push(device);
        }
        if let Boot::Kernel {
            kernel,
            initrd,
            append,
        } = &spec.boot
        {
            a.push("-kernel").push(kernel.as_os_str());
            if let Some(initrd) = initrd {
                a.push("-initrd").push(initrd.as_os_str());
            }
            let mut cmdline = String::from("console=ttyS0 panic=-1");
            if let Some(ip) = &spec.ip {
                cmdline.push_str(" ferry.ip=");
                cmdline.push_str(ip);
            }
            if !append.trim().is_empty() {
                cmdline.push(' ');
                cmdline.push_str(append.trim());
            }
            a.push("-append").push(cmdline);
        }
        Ok(a.0)
    }
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push(&mut self, arg: impl Into<OsString>) -> &mut Self {
        self.0.push(arg.into());
        self
    }
}

/// qemu's option syntax ends a value at a comma; a literal comma is written twice.
fn opt_escape(value: &str) -> String {
    value.replace(',', ",,")
}

fn path_opt(path: &Path) -> Result<String, ComputeError> {
    path.to_str()
        .map(opt_escape)
        .ok_or_else(|| ComputeError::InvalidSpec(format!("path {} is not UTF-8", path.display())))
}

/// Longest unix socket path the kernel accepts (`sun_path` holds 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

fn socket_opt(path: &Path) -> Result<String, ComputeError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(ComputeError::InvalidSpec(format!(
            "unix socket path {} is {len} bytes, over the kernel's {MAX_SOCKET_PATH}: use a shorter \
             directory",
            path.display()
        )));
    }
    path_opt(path)
}

fn find_in_path(path: &std::ffi::OsStr, name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path).map(|d| d.join(name)).find(|p| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

fn kvm_usable() -> bool {
    let real_kvm = ["/sys/module/kvm_intel", "/sys/module/kvm_amd"]
        .iter()
        .any(|m| Path::new(m).exists());
    real_kvm
        && OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), ComputeError> {
    fs::write(path, bytes).map_err(ComputeError::io("write", path))
}

fn remove_if_exists(path: &Path) -> Result<(), ComputeError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(ComputeError::io("remove", path)(e))
        }
        _ => Ok(()),
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::DiskAttachment;

    fn spec() -> VmSpec {
        let mut spec = VmSpec::new(
            "web,1",
            "/run/vm",
            Boot::Kernel {
                kernel: "/k/vmlinuz".into(),
                initrd: Some("/k/initrd.gz".into()),
                append: "ferry.job=idle".into(),
            },
        );
        spec.ip = Some("10.1.0.4/24".into());
        spec.disks.push(DiskAttachment {
            socket: "/run/agent/vm1.sock".into(),
            export: "disk0".into(),
        });
        spec
    }

    fn args(qemu: &Qemu, spec: &VmSpec) -> Vec<String> {
        qemu.args(spec, Path::new("/run/vm"))
            .unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn kernel_boot_command_line() {
        let args = args(
            &Qemu::new("/usr/bin/qemu-system-x86_64", Accel::Tcg),
            &spec(),
        );
        assert_eq!(after(&args, "-name"), ["web,,1"]);
        assert_eq!(after(&args, "-accel"), ["tcg"]);
        assert_eq!(after(&args, "-cpu"), ["max"]);
        assert_eq!(after(&args, "-m"), ["256"]);
        assert_eq!(
            after(&args, "-append"),
            ["console=ttyS0 panic=-1 ferry.ip=10.1.0.4/24 ferry.job=idle"]
        );
        assert_eq!(
            after(&args, "-qmp"),
            ["unix:/run/vm/qmp.sock,server=on,wait=off"]
        );
        let blockdev: serde_json::Value =
            serde_json::from_str(after(&args, "-blockdev")[0]).unwrap();
        assert_eq!(blockdev["server"]["path"], "/run/agent/vm1.sock");
        assert_eq!(blockdev["export"], "disk0");
        assert_eq!(blockdev["reconnect-delay"], NBD_RECONNECT_DELAY_SECS);
        assert_eq!(
            after(&args, "-device")[2],
            "virtio-blk-pci,drive=disk0,id=vdisk0,write-cache=on"
        );
        for flag in ["-nographic", "-nodefaults", "-no-reboot"] {
            assert!(args.iter().any(|a| a == flag), "{flag} missing");
        }
    }

    #[test]
    fn disk_boot_marks_disk0_bootable_and_kvm_uses_host_cpu() {
        let mut spec = spec();
        spec.boot = Boot::Disk;
        let args = args(&Qemu::new("/usr/bin/qemu-system-x86_64", Accel::Kvm), &spec);
        assert_eq!(after(&args, "-cpu"), ["host"]);
        assert!(after(&args, "-device")[2].ends_with(",bootindex=0"));
        assert!(after(&args, "-append").is_empty());
        assert!(after(&args, "-kernel").is_empty());
    }

    #[test]
    fn socket_paths_too_long_for_the_kernel_are_refused() {
        let qemu = Qemu::new("/usr/bin/qemu-system-x86_64", Accel::Tcg);
        let long = Path::new("/").join("d".repeat(100));
        let err = qemu.args(&spec(), &long).unwrap_err();
        assert!(err.to_string().contains("use a shorter directory"), "{err}");
    }

    #[test]
    fn missing_binary_says_how_to_install() {
        assert_eq!(
            find_in_path(std::ffi::OsStr::new("/nonexistent"), "qemu-system-x86_64"),
            None
        );
        assert!(
            ComputeError::QemuMissing
                .to_string()
                .contains("scripts/install-test-tools")
        );
    }
}
