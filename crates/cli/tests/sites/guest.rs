//! A real guest through the multi-process path.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ITEM;
use crate::site::*;
use crate::support::*;

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
    let Sites {
        tmp,
        ns,
        s,
        s3,
        prefix,
    } = Sites::start("sites-guest");
    let dir = tmp.path();
    let import = s.data.join("import");
    std::fs::create_dir_all(&import).unwrap();
    std::fs::copy(&kernel, import.join("vmlinuz")).unwrap();
    std::fs::copy(&initrd, import.join("initrd.gz")).unwrap();
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

    // The guest boots at once from its image, which its host fills from the server meanwhile.
    let fs = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest-kit/fs.img");
    std::fs::copy(&fs, import.join("fs.img")).unwrap();
    create_vm(
        &s,
        &[
            "--disk",
            "64MiB@sa1",
            "--image",
            "fs.img",
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
        ],
    );
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

    job_succeeds(&s, &["failover", "run", ITEM, "--recovery-point", "latest"]);
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
