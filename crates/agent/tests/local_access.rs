//! Who can reach a host's NBD exports: the agent's own user and the members of the socket's
//! group, over the unix socket (mode 0660); no other local user, and no TCP port unless one is
//! configured. The clients run as `nobody` (the tests run as root, so they can switch).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Output;

use ferry_agent::{AgentHost, DiskSpec, NbdAccess};

const VM: &str = "rg1/vm1";
const SIZE: u64 = 1 << 20;

type Result<T = ()> = anyhow::Result<T>;

/// Runs `program args` as `nobody` with only the supplementary `groups`.
async fn as_nobody(groups: &[u32], program: &str, args: &[&str]) -> Result<Output> {
    let groups = groups
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = tokio::process::Command::new("setpriv");
    cmd.args(["--reuid=nobody", "--regid=nogroup"]);
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        cmd.arg(format!("--groups={groups}"));
    }
    let out = cmd
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("run setpriv (util-linux): {e}"))?;
    Ok(out)
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A served VM with one disk full of 0x42, under a directory others may traverse (so a
/// refusal comes from the socket's own mode).
async fn host(dir: &Path, access: &NbdAccess) -> Result<(std::sync::Arc<AgentHost>, String)> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
    let host = AgentHost::start_with(&dir.join("agent"), access).await?;
    let image = dir.join("d0.raw");
    std::fs::write(&image, vec![0x42u8; SIZE as usize])?;
    host.attach_vm(VM, &[DiskSpec::plain(&image, SIZE)])?;
    let url = format!(
        "nbd+unix:///{}?socket={}",
        AgentHost::export_name(VM, 0),
        host.nbd_socket().display()
    );
    Ok((host, url))
}

/// The TCP ports this process listens on (from its socket descriptors and /proc/net/tcp*).
fn listening_tcp_ports() -> Result<Vec<u16>> {
    let mut inodes = Vec::new();
    for fd in std::fs::read_dir("/proc/self/fd")? {
        if let Ok(target) = std::fs::read_link(fd?.path()) {
            let t = target.to_string_lossy().into_owned();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                inodes.push(inode.to_string());
            }
        }
    }
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)?.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is f[1] ("ADDR:PORT" in hex), st is f[3] (0A: LISTEN), inode f[9].
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let port = f[1].rsplit(':').next().unwrap_or_default();
                ports.push(u16::from_str_radix(port, 16)?);
            }
        }
    }
    Ok(ports)
}

fn image_is_untouched(dir: &Path) -> Result<bool> {
    Ok(std::fs::read(dir.join("d0.raw"))?
        .iter()
        .all(|b| *b == 0x42))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_local_user_can_neither_list_read_nor_write_and_no_tcp_port_is_open() -> Result {
    let dir = tempfile::tempdir()?;
    let (host, url) = host(dir.path(), &NbdAccess::default()).await?;
    let list = format!("nbd+unix://?socket={}", host.nbd_socket().display());
    for (program, args) in [
        ("nbdinfo", vec!["--list", list.as_str()]),
        ("nbdinfo", vec![url.as_str()]),
        (
            "qemu-io",
            vec!["-f", "raw", "-c", "read -P 0x42 0 4k", url.as_str()],
        ),
        (
            "qemu-io",
            vec!["-f", "raw", "-c", "write -P 0xee 0 4k", url.as_str()],
        ),
    ] {
        let out = as_nobody(&[], program, &args).await?;
        assert!(!out.status.success(), "{program} {args:?}: {}", text(&out));
        assert!(
            text(&out).contains("Permission denied"),
            "{program} {args:?}: {}",
            text(&out)
        );
    }
    assert!(image_is_untouched(dir.path())?);
    let meta = std::fs::metadata(host.nbd_socket())?;
    assert_eq!(meta.mode() & 0o777, 0o660, "socket mode {:o}", meta.mode());
    assert_eq!(meta.gid(), ferry_nbd::access::effective_gid());
    assert_eq!(host.nbd_tcp(), None);
    assert_eq!(listening_tcp_ports()?, Vec::<u16>::new());
    // The agent's own user still can.
    let out = tokio::process::Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read -P 0x42 0 4k", &url])
        .output()
        .await?;
    assert!(out.status.success(), "{}", text(&out));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_the_configured_group_can_list_read_and_write() -> Result {
    let users = ferry_nbd::access::group_id("users")?
        .ok_or_else(|| anyhow::anyhow!("this host has no group `users`"))?;
    let dir = tempfile::tempdir()?;
    let access = NbdAccess {
        socket_group: Some(users),
        tcp: None,
    };
    let (host, url) = host(dir.path(), &access).await?;
    let meta = std::fs::metadata(host.nbd_socket())?;
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, users));

    let list = format!("nbd+unix://?socket={}", host.nbd_socket().display());
    let out = as_nobody(&[users], "nbdinfo", &["--list", &list]).await?;
    assert!(out.status.success(), "{}", text(&out));
    let export = AgentHost::export_name(VM, 0);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&export),
        "{}",
        text(&out)
    );
    let out = as_nobody(
        &[users],
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0x42 0 4k",
            "-c",
            "write -P 0x5c 0 4k",
            &url,
        ],
    )
    .await?;
    assert!(out.status.success(), "{}", text(&out));
    let image = std::fs::read(dir.path().join("d0.raw"))?;
    assert!(image[..4096].iter().all(|b| *b == 0x5c));
    assert!(image[4096..].iter().all(|b| *b == 0x42));
    // Outside the group, the same user is refused.
    let out = as_nobody(&[], "nbdinfo", &["--list", &list]).await?;
    assert!(!out.status.success(), "{}", text(&out));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced_with_the_right_mode() -> Result {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("agent");
    std::fs::create_dir_all(&root)?;
    let stale = std::os::unix::net::UnixListener::bind(root.join("nbd.sock"))?;
    std::fs::set_permissions(
        root.join("nbd.sock"),
        std::fs::Permissions::from_mode(0o777),
    )?;
    drop(stale);
    let host = AgentHost::start(&root).await?;
    let meta = std::fs::metadata(host.nbd_socket())?;
    assert_eq!(meta.mode() & 0o777, 0o660);
    // Nothing is left of the private directory the socket was made in.
    let names: Vec<_> = std::fs::read_dir(&root)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::result::Result<_, _>>()?;
    assert_eq!(names, vec!["nbd.sock".to_string()]);
    Ok(())
}
