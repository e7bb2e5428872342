//! Faults a user can meet: the target account unreachable (segments wait in the cache account,
//! visible there, and are removed once applied), a corrupt segment (refused, nothing of it
//! applied, health critical with the reason) and a full disk on the source host (writes tracked
//! as dirty blocks, caught up once there is space).

mod support;

use std::path::{Path, PathBuf};

use support::*;

fn segments(cache: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in walk(cache) {
        if e.extension().is_some_and(|x| x == "seg") {
            out.push(e);
        }
    }
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn segments_wait_in_the_cache_and_a_corrupt_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = Server::start(&d.join("data"));
    s.base_resources(None);
    s.create_vm("rg1/app1", "default", &["8MiB@sa1"]);
    let uri = s.disk_uri("rg1/app1", 0);
    s.protect("rg1/app1");
    let cache = s.data.join("regions/east/storage/rg1/cache-east");
    let target = s.data.join("regions/west/storage/rg1-asr/sa1-asr");
    let good = s.wait_point_after("rg1/app1", now(), 60);

    // The target account becomes unreachable: a file stands where its directory was.
    let aside = d.join("target-aside");
    std::fs::rename(&target, &aside).unwrap();
    std::fs::write(&target, b"not a directory").unwrap();
    assert!(qemu_io(&uri, "write -P 0x61 0 64k"));
    assert!(qemu_io(&uri, "write -P 0x62 1M 64k"));
    wait_until(60, "segments to wait in the cache account", || {
        segments(&cache).len() >= 3
    });
    wait_until(60, "health to report the unreachable target", || {
        s.replication("rg1/app1")["health"] == "critical"
    });

    // Corrupt the oldest waiting segment (a byte in its middle).
    let segs = segments(&cache);
    let victim = segs[0].clone();
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&victim, &bytes).unwrap();
    let victim_seq =
        u64::from_str_radix(victim.file_stem().unwrap().to_str().unwrap(), 16).unwrap();

    // The target comes back: the corrupt segment is refused with a clear reason.
    std::fs::remove_file(&target).unwrap();
    std::fs::rename(&aside, &target).unwrap();
    wait_until(60, "the corrupt segment to be refused", || {
        let r = s.replication("rg1/app1");
        r["health"] == "critical"
            && r["health_reasons"]
                .to_string()
                .contains("checksum mismatch")
    });
    let rep = s.replication("rg1/app1");
    let reasons = rep["health_reasons"].to_string();
    assert!(
        reasons.contains(&format!("{victim_seq:016x}"))
            && reasons.contains("nothing of it was applied"),
        "{reasons}"
    );
    // Nothing of it, nor anything after it, was applied: no point beyond the last good one.
    for p in s.points("rg1/app1") {
        let seq = u64::from_str_radix(p["id"].as_str().unwrap(), 16).unwrap();
        assert!(
            seq < victim_seq,
            "point {seq:x} is past the refused segment {victim_seq:x}"
        );
    }
    s.export("rg1/app1", 0, "latest", &d.join("latest.raw"));
    s.export(
        "rg1/app1",
        0,
        good["id"].as_str().unwrap(),
        &d.join("good.raw"),
    );
    assert!(!qemu_io(
        d.join("latest.raw").to_str().unwrap(),
        "read -P 0x61 0 64k"
    ));

    // Restoring the byte lets processing go on; the cache empties and health recovers.
    bytes[mid] ^= 0x10;
    std::fs::write(&victim, &bytes).unwrap();
    wait_until(60, "processing to resume", || {
        s.replication("rg1/app1")["health"] == "healthy"
    });
    wait_until(60, "the cache account to empty", || {
        segments(&cache).is_empty()
    });
    let p = s.wait_point_after("rg1/app1", now(), 60);
    s.export(
        "rg1/app1",
        0,
        p["id"].as_str().unwrap(),
        &d.join("after.raw"),
    );
    assert!(qemu_io(
        d.join("after.raw").to_str().unwrap(),
        "read -P 0x61 0 64k"
    ));
    assert!(qemu_io(
        d.join("after.raw").to_str().unwrap(),
        "read -P 0x62 1M 64k"
    ));
}

/// The source host's disk fills up: a write whose record cannot be logged is still acknowledged,
/// tracked as a dirty block; the catch-up waits until the stream's space reserve can be made
/// again, then copies the block. The item never needs a repair, and the next point equals the
/// disk.
#[test]
fn a_full_source_disk_falls_back_to_dirty_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The third write's log append fails as on a full disk (half of it written); the first
    // attempt to make the space reserve again fails too: the disk is still full.
    let full = failpoints("agent-log-append=error-after:3,agent-reserve=error-after:2");
    let s = Server::start_with(&d.join("data"), free_port(), full);
    s.base_resources(None);
    s.create_vm("rg1/db1", "db", &["16MiB@sa1"]);
    let uri = s.disk_uri("rg1/db1", 0);
    s.protect("rg1/db1");
    let generation = s.replication("rg1/db1")["generation"].clone();
    assert!(qemu_io(&uri, "write -P 0x51 0 64k"));
    assert!(qemu_io(&uri, "write -P 0x52 1M 64k"));
    assert!(
        qemu_io(&uri, "write -P 0x53 2M 64k"),
        "a write the full disk could not log is tracked and acknowledged"
    );

    let events = |kind: &str| {
        s.json(&["event", "list", "--target", "rg1/db1", "--kind", kind])
            .as_array()
            .unwrap()
            .clone()
    };
    wait_until(30, "a source-disk-full event", || {
        events("source-disk-full").iter().any(|e| {
            e["severity"] == "critical"
                && e["message"]
                    .as_str()
                    .unwrap()
                    .contains("free space on the source host")
        })
    });
    wait_until(60, "the catch-up after the full disk", || {
        let r = s.replication("rg1/db1");
        r["stats"]["tracking"] == "ordered" && r["stats"]["disk_full_since"].is_null()
    });
    let copied = s.replication("rg1/db1")["stats"]["catch_up_copied_bytes"].clone();
    assert!(
        copied.as_u64().unwrap() >= 64 << 10,
        "the catch-up copied the block: {copied}"
    );
    assert!(
        events("ship-buffer-overflow").is_empty(),
        "a full disk is not reported as a full ship buffer"
    );

    let p = s.wait_point_after("rg1/db1", now(), 60);
    let (point, source) = (d.join("p.raw"), d.join("s.raw"));
    s.export("rg1/db1", 0, p["id"].as_str().unwrap(), &point);
    read_disk(&uri, &source);
    assert!(
        same_image(&point, &source),
        "the point differs from the disk"
    );
    assert!(qemu_io(point.to_str().unwrap(), "read -P 0x53 2M 64k"));
    let r = s.replication("rg1/db1");
    assert_eq!(r["state"], "protected");
    assert_eq!(r["generation"], generation, "no repair was needed");
    assert_eq!(r["stats"]["disk_full_count"], 1);
    wait_until(30, "health back to healthy", || {
        s.replication("rg1/db1")["health"] == "healthy"
    });
}
