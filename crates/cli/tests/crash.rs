//! `kill -9` of the server while a client writes: after a restart replication resumes, every
//! write the client saw acknowledged reaches the replica, and earlier points still export right.
//! The server is killed once by hand, at random moments (seeded: `FERRY_CRASH_SEED` replays a
//! run), and at each named failpoint of the agent and the processor.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

#[test]
fn kill_9_while_writing_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut s = Server::start(&d.join("data"));
    s.base_resources(None);
    s.create_vm("rg1/db1", "db", &["16MiB@sa1", "16MiB@sa2"]);
    let uris = [s.disk_uri("rg1/db1", 0), s.disk_uri("rg1/db1", 1)];
    s.protect("rg1/db1");
    assert!(qemu_io(&uris[0], "write -P 0x01 0 64k"));
    let before = s.wait_point_after("rg1/db1", now(), 60);
    let before_id = before["id"].as_str().unwrap().to_string();
    s.export("rg1/db1", 0, &before_id, &d.join("before.raw"));
    let before_hash = sha(&d.join("before.raw"));

    // A client writes 64 KiB records, each to its own place with its own pattern; each qemu-io
    // that exits 0 saw its write acknowledged. The server is killed in the middle.
    let mut acked = Vec::new();
    for i in 0..120u64 {
        if i == 60 {
            // Kill while a write is in flight.
            let disk = (i % 2) as usize;
            let mut inflight = Command::new("qemu-io")
                .args([
                    "-f",
                    "raw",
                    "-c",
                    &format!("write -P {} {} 64k", (i % 250) + 2, 1 + i * 64),
                    &uris[disk],
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            s.kill9();
            let _ = inflight.wait();
            s.restart();
            continue;
        }
        let disk = (i % 2) as usize;
        let pattern = (i % 250) + 2;
        let offset = 1024 * 1024 + i * 64 * 1024;
        if qemu_io(&uris[disk], &format!("write -P {pattern} {offset} 64k")) {
            acked.push((disk, pattern, offset));
        }
    }
    assert!(
        acked.len() >= 110,
        "most writes must be acknowledged, got {}",
        acked.len()
    );

    // Replication resumes: a point after the last write holds every acknowledged write.
    let t = now();
    let after = s.wait_point_after("rg1/db1", t, 90);
    for (disk, uri) in uris.iter().enumerate() {
        let out = d.join(format!("after{disk}.raw"));
        s.export("rg1/db1", disk, after["id"].as_str().unwrap(), &out);
        for (_, pattern, offset) in acked.iter().filter(|(dd, _, _)| *dd == disk) {
            assert!(
                qemu_io(
                    out.to_str().unwrap(),
                    &format!("read -P {pattern} {offset} 64k")
                ),
                "acknowledged write at disk {disk} offset {offset} is missing after the crash"
            );
        }
        read_disk(uri, &d.join(format!("src{disk}.raw")));
        assert!(
            same_image(&out, &d.join(format!("src{disk}.raw"))),
            "disk {disk} differs from the source"
        );
    }
    // The point published before the crash still exports the same bytes.
    s.export("rg1/db1", 0, &before_id, &d.join("before-again.raw"));
    assert_eq!(sha(&d.join("before-again.raw")), before_hash);
    let rep = s.replication("rg1/db1");
    assert_eq!(rep["state"], "protected");
    assert_eq!(rep["health"], "healthy", "{rep}");
}

/// SplitMix64: a tiny seeded generator, so a failing run replays from its printed seed.
struct Rng(u64);

impl Rng {
    /// The seed from `FERRY_CRASH_SEED`, or a new one; printed either way.
    fn from_env(test: &str) -> Rng {
        let seed = match std::env::var("FERRY_CRASH_SEED") {
            Ok(v) => v.trim().parse().expect("FERRY_CRASH_SEED is a number"),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
        };
        eprintln!("{test}: seed {seed} (replay with FERRY_CRASH_SEED={seed})");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const DISK: u64 = 16 << 20;
const SLOT: u64 = 64 << 10;
const ITEM: &str = "rg1/db1";

/// A client write with its own place (no other write touches it) and its own pattern.
#[derive(Debug, Clone, Copy)]
struct Write {
    disk: usize,
    offset: u64,
    len: u64,
    pattern: u8,
}

impl Write {
    fn command(&self) -> String {
        format!("write -P {} {} {}", self.pattern, self.offset, self.len)
    }
}

/// Writes in a random order over both disks: one per 64 KiB slot, the slots straddling block
/// boundaries, each write 512 B to 32 KiB at a random place in its slot, so most change only
/// part of a block (which the processor must read back from what it stored before a crash).
fn plan(rng: &mut Rng) -> Vec<Write> {
    let mut slots: Vec<(usize, u64)> = (0..2)
        .flat_map(|d| (0..DISK / SLOT - 1).map(move |k| (d, k)))
        .collect();
    for i in (1..slots.len()).rev() {
        slots.swap(i, rng.below(i as u64 + 1) as usize);
    }
    slots
        .into_iter()
        .enumerate()
        .map(|(i, (disk, k))| Write {
            disk,
            offset: k * SLOT + SLOT / 2 + rng.below(64) * 512,
            len: (1 + rng.below(64)) * 512,
            pattern: (i % 255 + 1) as u8,
        })
        .collect()
}

/// Send `w` until it is acknowledged, as a client that reconnects and resends would; returns
/// the attempts that failed (the server was down or died with the write in flight).
fn write_until_acked(uri: &str, w: &Write) -> usize {
    let mut failed = 0;
    wait_until(120, &format!("{w:?} to be acknowledged"), || {
        let ok = qemu_io(uri, &w.command());
        failed += usize::from(!ok);
        ok
    });
    failed
}

/// A VM with two 16 MiB disks, protected.
fn protected_vm(d: &Path) -> (Server, [String; 2]) {
    let s = Server::start(&d.join("data"));
    s.base_resources(None);
    s.create_vm(ITEM, "db", &["16MiB@sa1", "16MiB@sa2"]);
    let uris = [s.disk_uri(ITEM, 0), s.disk_uri(ITEM, 1)];
    s.protect(ITEM);
    (s, uris)
}

/// Wait for a point cut after now (every write before this call is acknowledged), and check
/// it: each disk exports byte-identical to the source disk, and every acknowledged write's
/// bytes are there.
fn check_latest_point(s: &Server, uris: &[String; 2], acked: &[Write], dir: &Path, what: &str) {
    let p: Value = s.wait_point_after(ITEM, now(), 90);
    let id = p["id"].as_str().unwrap();
    for (disk, uri) in uris.iter().enumerate() {
        let (out, src) = (dir.join("point.raw"), dir.join("source.raw"));
        s.export(ITEM, disk, id, &out);
        read_disk(uri, &src);
        let (got, want) = (std::fs::read(&out).unwrap(), std::fs::read(&src).unwrap());
        for w in acked.iter().filter(|w| w.disk == disk) {
            let bytes = &got[w.offset as usize..(w.offset + w.len) as usize];
            assert!(
                bytes.iter().all(|&b| b == w.pattern),
                "{what}: acknowledged {w:?} is missing from point {id}"
            );
        }
        assert_eq!(
            got.len(),
            want.len(),
            "{what}: disk {disk} size at point {id}"
        );
        if let Some(at) = got.iter().zip(&want).position(|(a, b)| a != b) {
            panic!(
                "{what}: disk {disk} at point {id} differs from the source from byte {at} \
                 (block {})",
                at as u64 / SLOT
            );
        }
    }
}

/// The server is killed with `kill -9` at random moments, three times, and stopped cleanly
/// once, while a client keeps writing; each time replication resumes, and at the end the newest
/// point equals the source and holds every acknowledged write.
#[test]
fn kill_9_at_random_moments_loses_no_acknowledged_write() {
    let mut rng = Rng::from_env("kill_9_at_random_moments");
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut s, uris) = protected_vm(d);
    let writes = plan(&mut rng);

    // The client writes the plan in order, as far as it is allowed (`granted`), about ten a
    // second, and counts what was acknowledged; a write that fails is sent again until it is.
    let granted = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (granted, acked, stop) = (granted.clone(), acked.clone(), stop.clone());
        let (uris, writes) = (uris.clone(), writes.clone());
        let mut rng = Rng(rng.next());
        std::thread::spawn(move || {
            let mut failed = 0;
            for (i, w) in writes.iter().enumerate() {
                wait_until(300, "more writes to be allowed", || {
                    granted.load(Ordering::SeqCst) > i || stop.load(Ordering::SeqCst)
                });
                if granted.load(Ordering::SeqCst) <= i {
                    break;
                }
                failed += write_until_acked(&uris[w.disk], w);
                acked.store(i + 1, Ordering::SeqCst);
                // The client's think time between writes.
                std::thread::sleep(Duration::from_millis(50 + rng.below(100)));
            }
            failed
        })
    };

    for cycle in 0..4 {
        // Let the client write a dozen or two, and kill the server in the first half of them:
        // after a random number, plus up to 0.5 s so the kill can land in any step (a write, a
        // seal, an upload, an apply, a pack, a point); the writes left fail until the server
        // is back, and are sent again.
        let from = acked.load(Ordering::SeqCst);
        let grant = 12 + rng.below(12) as usize;
        granted.fetch_add(grant, Ordering::SeqCst);
        let kill_after = from + 1 + rng.below(grant as u64 / 2) as usize;
        let pause = Duration::from_millis(rng.below(500));
        wait_until(120, "the client's writes before the kill", || {
            acked.load(Ordering::SeqCst) >= kill_after
        });
        std::thread::sleep(pause);
        // One of the stops is a clean one (SIGTERM): writes that arrive while the server
        // shuts down must not reach a disk unrecorded either.
        let how = if cycle == 2 { "stopped" } else { "killed" };
        if cycle == 2 {
            s.terminate();
        } else {
            s.kill9();
        }
        eprintln!(
            "cycle {cycle}: {how} after {} acknowledged writes (+{pause:?})",
            acked.load(Ordering::SeqCst)
        );
        s.restart();
        // Replication resumes: a new point is cut while the client goes on writing.
        s.wait_point_after(ITEM, now(), 90);
    }
    let total = granted.load(Ordering::SeqCst);
    wait_until(120, "the client's last writes", || {
        acked.load(Ordering::SeqCst) >= total
    });
    stop.store(true, Ordering::SeqCst);
    let failed = client.join().expect("the client");
    eprintln!("{total} writes acknowledged, {failed} attempts failed and were sent again");

    check_latest_point(
        &s,
        &uris,
        &writes[..total],
        d,
        "after 3 kills and a clean stop",
    );
    let rep = s.replication(ITEM);
    assert_eq!(rep["state"], "protected");
    eprintln!("kill_9_at_random_moments: {:?}", started.elapsed());
}

/// The server dies at each named failpoint of the agent and the processor in turn, mid-stream
/// (at a later hit, not the first); after a restart without it, no acknowledged write is
/// missing and the newest point equals the source.
#[test]
fn crash_at_each_failpoint_loses_no_acknowledged_write() {
    const FAILPOINTS: &[(&str, u64)] = &[
        ("agent-after-log-append", 8),
        ("agent-before-segment-put", 3),
        ("agent-after-segment-put", 3),
        ("processor-after-journal", 3),
        ("processor-after-apply", 3),
        ("processor-after-point", 2),
    ];
    let mut rng = Rng::from_env("crash_at_each_failpoint");
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut s, uris) = protected_vm(d);
    let writes = plan(&mut rng);
    let log = s.data.with_extension("log");
    let mut next = 0;

    for &(name, n) in FAILPOINTS {
        let armed = format!("{name}=abort-after:{n}");
        s.restart_with(vec![("FERRY_FAILPOINTS".to_string(), armed.clone())]);
        // Write, about ten a second, until the server dies at the failpoint (some fire per
        // write, some per segment or point, which also come without writes).
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut sent, mut in_flight) = (0, false);
        let alive = |s: &mut Server| s.child.as_mut().unwrap().try_wait().unwrap().is_none();
        while alive(&mut s) && sent < 60 {
            assert!(Instant::now() < deadline, "{armed}: writes are refused");
            let w = &writes[next];
            if qemu_io(&uris[w.disk], &w.command()) {
                next += 1;
                sent += 1;
                std::thread::sleep(Duration::from_millis(50 + rng.below(100)));
            } else {
                in_flight = !alive(&mut s);
            }
        }
        s.wait_died(60);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains(&format!("failpoint {name}: stopping the process")),
            "{armed}: the server died elsewhere"
        );
        eprintln!(
            "{armed}: died after {sent} acknowledged writes{}",
            if in_flight { ", one in flight" } else { "" }
        );

        // Restart without the failpoint: the write in flight is sent again, a few more follow,
        // and the next point holds them all.
        s.restart_with(Vec::new());
        for _ in 0..4 {
            write_until_acked(&uris[writes[next].disk], &writes[next]);
            next += 1;
        }
        check_latest_point(&s, &uris, &writes[..next], d, &armed);
    }
    let rep = s.replication(ITEM);
    assert_eq!(rep["state"], "protected");
    eprintln!(
        "crash_at_each_failpoint: {next} writes, {:?}",
        started.elapsed()
    );
}

/// After a `kill -9` the restarted server serves the VM's disks a moment before it starts the
/// VM's stream (here four seconds, at a failpoint). A write that arrives in between waits for
/// the stream instead of reaching the disk unrecorded, and the next point holds it.
#[test]
fn a_write_during_a_restart_waits_for_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut s = Server::start(&d.join("data"));
    let uri = s.protected_db1(Some("write -P 0x11 0 64k"));

    s.kill9();
    let slow = failpoints("reconcile-before-streams=delay:4000");
    let took = s.restart_while_writing(slow, &uri, "write -P 0x22 1M 19456");
    assert!(
        took >= Duration::from_secs(2),
        "the write sent while the stream was not started was held ({took:?})"
    );

    let after = s.wait_point_after("rg1/db1", now(), 60);
    let out = d.join("after.raw");
    s.export("rg1/db1", 0, after["id"].as_str().unwrap(), &out);
    let out = out.to_str().unwrap();
    assert!(qemu_io(out, "read -P 0x11 0 64k"));
    assert!(
        qemu_io(out, "read -P 0x22 1M 19456"),
        "the write acknowledged during the restart is missing from the replica"
    );
    read_disk(&uri, &d.join("src.raw"));
    assert!(same_image(Path::new(out), &d.join("src.raw")));
    let rep = s.replication("rg1/db1");
    assert_eq!(rep["state"], "protected", "{rep}");
}

/// One write of the client that never retries: `len` bytes of `pattern` at `offset`.
#[derive(Debug, Clone, Copy)]
struct Once {
    disk: usize,
    offset: u64,
    len: u64,
    pattern: u8,
}

/// Two 32 MiB disks written with 4 KiB to 8 MiB at random (sector-aligned) offsets, the server
/// killed with `kill -9` at a random moment or at the failpoint between a write's record in the
/// stream and its write to the image, 20 times. The client sends one write per `qemu-io`
/// command and stops at its first error: the write in flight at the kill is never sent again,
/// so whether it reached the image is up to the server. After each restart the item is
/// `protected` in the same generation (no repair, no full resync), and a fresh point equals
/// the source disks byte for byte and holds every acknowledged write (the one in flight may
/// hold either content, as long as point and source agree).
#[test]
fn a_client_that_never_retries_finds_the_replica_equal_after_every_kill() {
    const SIZE: u64 = 32 << 20;
    const CYCLES: usize = 20;
    let mut rng = Rng::from_env("a_client_that_never_retries");
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut s = Server::start(&d.join("data"));
    s.base_resources(None);
    s.create_vm(ITEM, "db", &["32MiB@sa1", "32MiB@sa2"]);
    let uris = [s.disk_uri(ITEM, 0), s.disk_uri(ITEM, 1)];
    s.protect(ITEM);
    let generation = s.replication(ITEM)["generation"].clone();
    // What each disk must hold: every acknowledged write, in order.
    let mut model = vec![vec![0u8; SIZE as usize]; 2];
    let (mut acked_total, mut in_flight_kills) = (0, 0);
    let mut pattern = 0u8;

    for cycle in 0..CYCLES {
        let at_failpoint = cycle % 2 == 1;
        let plan: Vec<Once> = (0..200)
            .map(|_| {
                // 4 KiB to 8 MiB, most of them small.
                let len = 4096u64 << rng.below(12);
                let offset = rng.below((SIZE - len) / 512 + 1) * 512;
                pattern = pattern % 254 + 1;
                Once {
                    disk: rng.below(2) as usize,
                    offset,
                    len,
                    pattern,
                }
            })
            .collect();
        if at_failpoint {
            let n = 1 + rng.below(8);
            s.restart_with(failpoints(&format!(
                "agent-before-image-write=abort-after:{n}"
            )));
        }
        let client = {
            let uris = uris.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for w in plan {
                    let cmd = format!("write -P {} {} {}", w.pattern, w.offset, w.len);
                    if !qemu_io(&uris[w.disk], &cmd) {
                        return (acked, Some(w));
                    }
                    acked.push(w);
                }
                (acked, None)
            })
        };
        let how = if at_failpoint {
            s.wait_died(120);
            "died at agent-before-image-write".to_string()
        } else {
            let pause = Duration::from_millis(100 + rng.below(1400));
            std::thread::sleep(pause);
            s.kill9();
            format!("killed after {pause:?}")
        };
        let (acked, failed) = client.join().expect("the client");
        assert!(
            failed.is_some(),
            "cycle {cycle}: the client wrote its whole plan before the kill"
        );
        acked_total += acked.len();
        for w in &acked {
            model[w.disk][w.offset as usize..(w.offset + w.len) as usize].fill(w.pattern);
        }
        s.restart_with(Vec::new());

        // A fresh point equals the source, which holds every acknowledged write.
        let p = s.wait_point_after(ITEM, now(), 90);
        let id = p["id"].as_str().unwrap();
        let failed = failed.unwrap();
        let mut torn = false;
        for (disk, uri) in uris.iter().enumerate() {
            let (out, src) = (d.join("point.raw"), d.join("source.raw"));
            s.export(ITEM, disk, id, &out);
            read_disk(uri, &src);
            let (got, source) = (std::fs::read(&out).unwrap(), std::fs::read(&src).unwrap());
            if let Some(at) = got.iter().zip(&source).position(|(a, b)| a != b) {
                panic!(
                    "cycle {cycle} ({how}): disk {disk} at point {id} differs from the source \
                     from byte {at}"
                );
            }
            // The write in flight may or may not be there; the rest is exactly the model.
            let range = if failed.disk == disk {
                failed.offset as usize..(failed.offset + failed.len) as usize
            } else {
                0..0
            };
            torn |= !range.is_empty() && source[range.clone()] != model[disk][range.clone()];
            model[disk][range.clone()].copy_from_slice(&source[range]);
            if let Some(at) = got.iter().zip(&model[disk]).position(|(a, b)| a != b) {
                let w = acked.iter().rev().find(|w| {
                    w.disk == disk && (w.offset..w.offset + w.len).contains(&(at as u64))
                });
                panic!(
                    "cycle {cycle} ({how}): disk {disk} at point {id}: byte {at} is {:#04x}, \
                     not {:#04x} (acknowledged write: {w:?})",
                    got[at], model[disk][at]
                );
            }
        }
        in_flight_kills += usize::from(torn);
        let rep = s.replication(ITEM);
        assert_eq!(rep["state"], "protected", "cycle {cycle} ({how}): {rep}");
        assert_eq!(
            rep["generation"], generation,
            "cycle {cycle} ({how}): no repair, no new generation"
        );
        eprintln!(
            "cycle {cycle}: {how}, {} writes acknowledged, the one in flight ({} bytes) {}",
            acked.len(),
            failed.len,
            if torn {
                "reached the disk"
            } else {
                "did not change the disk"
            }
        );
    }
    let events = s.json(&[
        "event",
        "list",
        "--target",
        ITEM,
        "--kind",
        "resync-required",
    ]);
    assert_eq!(events, serde_json::json!([]), "no resync was required");
    eprintln!(
        "a_client_that_never_retries: {CYCLES} kills, {acked_total} writes acknowledged, \
         {in_flight_kills} writes in flight reached the disk, {:?}",
        started.elapsed()
    );
}
