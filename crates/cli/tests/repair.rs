//! Tracking that cannot be trusted, and its repair: a disk image changed while the server was
//! stopped puts the item in `resync-required` with the reason; `ferry replication repair` reads
//! every block, sends only those that differ under a new generation, and the item is protected
//! again with a latest point equal to the disks. The points from before are kept.

mod support;

use std::os::unix::fs::FileExt;

use support::*;

#[test]
fn a_disk_changed_behind_the_agent_needs_a_repair_that_sends_only_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut s = Server::start(&d.join("data"));
    s.base_resources(None);
    s.create_vm("rg1/db1", "db", &["16MiB@sa1", "16MiB@sa2"]);
    let uris = [s.disk_uri("rg1/db1", 0), s.disk_uri("rg1/db1", 1)];
    assert!(qemu_io(&uris[0], "write -P 0x11 0 4M"));
    assert!(qemu_io(&uris[1], "write -P 0x22 1M 4M"));
    s.protect("rg1/db1");
    let before = s.wait_point_after("rg1/db1", now(), 60);
    let before_id = before["id"].as_str().unwrap().to_string();
    s.export("rg1/db1", 0, &before_id, &d.join("before.raw"));
    let before_hash = sha(&d.join("before.raw"));
    let generation = s.replication("rg1/db1")["generation"].clone();

    // The server stops cleanly; someone writes to disk 0's image behind ferry's back.
    let image = s.json(&["vm", "show", "rg1/db1"]);
    let image = image["disks"][0]["image"].as_str().unwrap().to_string();
    s.terminate();
    write_behind_ferry(&image);
    s.restart();
    wait_resync_required(&s);
    let r = s.replication("rg1/db1");
    assert_eq!(r["health"], "critical");
    let reasons = r["health_reasons"].to_string();
    assert!(
        reasons.contains("disk 0") && reasons.contains("changed") && reasons.contains("repair"),
        "the reason says which disk and what to do: {reasons}"
    );

    // The monitor records the critical health (it looks every 250 ms).
    wait_until(30, "a critical health event naming the disk", || {
        let events = s.json(&[
            "event",
            "list",
            "--target",
            "rg1/db1",
            "--kind",
            "health-changed",
        ]);
        events.as_array().unwrap().iter().any(|e| {
            e["severity"] == "critical" && e["message"].as_str().unwrap().contains("disk 0")
        })
    });

    // The repair: a job that compares every block and sends only the changed one.
    let job = s.json(&["replication", "repair", "rg1/db1", "--wait"]);
    assert_eq!(job["state"], "succeeded", "{job}");
    let r = s.replication("rg1/db1");
    assert_eq!(r["state"], "protected");
    assert_eq!(r["health"], "healthy", "{r}");
    assert_ne!(
        r["generation"], generation,
        "a new generation fences the old stream"
    );
    let sent = r["initial_replication"]["sent_bytes"].as_u64().unwrap();
    let total = r["initial_replication"]["total_bytes"].as_u64().unwrap();
    assert_eq!(total, 32 << 20, "every block was compared");
    assert!(
        sent > 0 && sent <= 2 * 65536,
        "only the changed block is sent: {sent} of {total} bytes"
    );

    // Replication goes on; the latest point equals the disks, the old point is unchanged.
    assert!(qemu_io(&uris[1], "write -P 0x33 12M 64k"));
    let after = s.wait_point_after("rg1/db1", now(), 60);
    let after_id = after["id"].as_str().unwrap();
    for (i, uri) in uris.iter().enumerate() {
        let (point, source) = (d.join(format!("p{i}.raw")), d.join(format!("s{i}.raw")));
        s.export("rg1/db1", i, after_id, &point);
        read_disk(uri, &source);
        assert!(
            same_image(&point, &source),
            "disk {i}: the point after the repair differs from the source"
        );
    }
    s.export("rg1/db1", 0, &before_id, &d.join("before-again.raw"));
    assert_eq!(sha(&d.join("before-again.raw")), before_hash);

    // The story is in the events: resync required (critical, with the reason), the repair
    // job's end, health back to healthy.
    let events = s.json(&["event", "list", "--target", "rg1/db1"]);
    let events = events.as_array().unwrap();
    let has = |kind: &str, severity: &str, text: &str| {
        events.iter().any(|e| {
            e["kind"] == kind
                && e["severity"] == severity
                && e["message"].as_str().unwrap().contains(text)
        })
    };
    assert!(has("resync-required", "critical", "disk 0"), "{events:#?}");
    assert!(has("health-changed", "critical", "disk 0"), "{events:#?}");
    assert!(
        has("job-succeeded", "info", "repair-replication"),
        "{events:#?}"
    );
    assert!(has("health-changed", "info", "→ healthy"), "{events:#?}");
    let critical = s.json(&["event", "list", "--severity", "critical"]);
    assert!(
        critical
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["severity"] == "critical"),
        "{critical:#?}"
    );
    assert!(
        s.fails(&["event", "list", "--severity", "loud"])
            .contains("info, warning or critical")
    );
}

/// No clean stop records the images' stamps when the server is killed with `kill -9`: an
/// image modified after the agent's last sign of life is still found at the next start. A
/// restart long after a kill, with the image untouched, goes on without a repair.
#[test]
fn a_disk_changed_after_a_kill_9_needs_a_repair() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut s = Server::start(&d.join("data"));
    let uri = s.protected_db1(Some("write -P 0x11 0 1M"));
    let image = s.json(&["vm", "show", "rg1/db1"]);
    let image = image["disks"][0]["image"].as_str().unwrap().to_string();
    // Longer than the slack the agent allows between its last sign of life and its own
    // last write to an image.
    let down = |s: &mut Server| {
        s.kill9();
        let until = std::time::SystemTime::now() + std::time::Duration::from_secs(7);
        wait_until(30, "the agent to be down for 7 s", || {
            std::time::SystemTime::now() > until
        });
    };

    down(&mut s);
    s.restart();
    assert!(qemu_io(&uri, "write -P 0x12 2M 64k"));
    s.wait_point_after("rg1/db1", now(), 60);
    assert_eq!(s.replication("rg1/db1")["state"], "protected");

    down(&mut s);
    write_behind_ferry(&image);
    s.restart();
    wait_resync_required(&s);
    let reasons = s.replication("rg1/db1")["health_reasons"].to_string();
    assert!(
        reasons.contains("disk 0") && reasons.contains("while the agent was down"),
        "{reasons}"
    );
    let point = repair_and_compare(&s, d, &uri);
    assert!(qemu_io(point.to_str().unwrap(), "read -P 0x77 8M 4k"));
}

/// A segment that vanishes from the cache account before it is applied leaves a hole in the
/// stream that nothing can fill: the item goes to `resync-required` naming the gap, and a
/// repair brings it back to a latest point equal to the disk.
#[test]
fn a_segment_lost_from_the_cache_needs_a_repair() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The processor takes 1.5 s per segment, so segments wait in the cache.
    let slow = failpoints("processor-after-journal=delay:1500");
    let s = Server::start_with_config(
        &d.join("data"),
        slow,
        r#"{"gap_grace_seconds": 1, "seal_interval_seconds": 0.2}"#,
    );
    s.base_resources(None);
    s.create_vm("rg1/db1", "db", &["16MiB@sa1"]);
    let uri = s.disk_uri("rg1/db1", 0);
    assert!(qemu_io(&uri, "write -P 0x11 0 1M"));
    s.protect("rg1/db1");

    // Several writes, each in its own segment, queue up in the cache; one of the later ones
    // is lost.
    let cache = s.data.join("regions/east/storage/rg1/cache-east");
    let segments = || {
        let mut found = Vec::new();
        collect_segments(&cache, &mut found);
        found.sort();
        found
    };
    let shipped = || {
        s.replication("rg1/db1")["stats"]["segments_shipped"]
            .as_u64()
            .unwrap()
    };
    for i in 0..6 {
        let before = shipped();
        assert!(qemu_io(
            &uri,
            &format!("write -P 0x{:x} {}M 64k", 0x40 + i, 2 + i)
        ));
        wait_until(30, "the write's segment to be shipped", || {
            shipped() > before
        });
    }
    wait_until(30, "segments queued in the cache", || segments().len() >= 3);
    let queued = segments();
    std::fs::remove_file(&queued[queued.len() - 2]).unwrap();

    wait_until(120, "the item to need a resync", || {
        s.replication("rg1/db1")["state"] == "resync-required"
    });
    let r = s.replication("rg1/db1");
    assert_eq!(r["health"], "critical", "{r}");
    let reasons = r["health_reasons"].to_string();
    assert!(
        reasons.contains("sequence gap") && reasons.contains("repair"),
        "{reasons}"
    );

    repair_and_compare(&s, d, &uri);
}

/// Write 4 KiB of 0x77 at 8 MiB straight into a disk image, as something other than ferry would.
/// When the stream does not start within the hold (one second here; the failpoint holds the
/// start for five), the VM's write goes on untracked rather than stall the VM: the item says so
/// and needs a repair, which makes the replica equal to the disk.
#[test]
fn a_write_held_past_the_deadline_needs_a_repair() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut s =
        Server::start_with_config(&d.join("data"), Vec::new(), r#"{"start_hold_seconds": 1}"#);
    let uri = s.protected_db1(None);

    let slow = failpoints("reconcile-before-streams=delay:5000");
    s.restart_while_writing(slow, &uri, "write -P 0x61 5M 64k");
    wait_resync_required(&s);
    let reasons = s.replication("rg1/db1")["health_reasons"].to_string();
    assert!(
        reasons.contains("disk 0") && reasons.contains("no stream recorded"),
        "{reasons}"
    );
    let point = repair_and_compare(&s, d, &uri);
    assert!(qemu_io(point.to_str().unwrap(), "read -P 0x61 5M 64k"));
}

fn write_behind_ferry(image: &str) {
    let f = std::fs::OpenOptions::new().write(true).open(image).unwrap();
    f.write_all_at(&[0x77; 4096], 8 << 20).unwrap();
    f.sync_all().unwrap();
}

fn wait_resync_required(s: &Server) {
    wait_until(60, "the item to need a resync", || {
        s.replication("rg1/db1")["state"] == "resync-required"
    });
}

/// Repair `rg1/db1`; the next point equals its disk 0 (`uri`). Returns the point's export.
fn repair_and_compare(s: &Server, d: &std::path::Path, uri: &str) -> std::path::PathBuf {
    let job = s.json(&["replication", "repair", "rg1/db1", "--wait"]);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(qemu_io(uri, "write -P 0x54 3M 64k"));
    let after = s.wait_point_after("rg1/db1", now(), 120);
    let (point, source) = (d.join("p.raw"), d.join("s.raw"));
    s.export("rg1/db1", 0, after["id"].as_str().unwrap(), &point);
    read_disk(uri, &source);
    assert!(
        same_image(&point, &source),
        "the point after the repair differs from the disk"
    );
    assert_eq!(s.replication("rg1/db1")["state"], "protected");
    point
}

fn collect_segments(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_segments(&p, out);
        } else if p.extension().is_some_and(|x| x == "seg") {
            out.push(p);
        }
    }
}
