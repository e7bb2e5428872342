//! `kill -9` of the server while a client writes: after a restart replication resumes, every
//! write the client saw acknowledged reaches the replica, and earlier points still export right.

mod support;

use std::process::{Command, Stdio};

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
