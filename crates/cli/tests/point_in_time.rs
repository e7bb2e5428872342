//! Any point in time: an RFC 3339 instant exports, and test-fails-over to, exactly the disks
//! after the last write acknowledged before it, across all the VM's disks, rebuilt from the
//! point before it and the journal; instants outside the journal window are refused.

mod support;

use ferry_types::Timestamp;
use support::*;

const ITEM: &str = "rg1/pit1";

fn rfc3339(epoch: f64) -> String {
    Timestamp((epoch * 1e9) as i64).to_string()
}

#[test]
fn an_instant_between_writes_exports_exactly_the_writes_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    s.base_resources(None);
    s.create_vm(ITEM, "default", &["16MiB@sa1", "16MiB@sa2"]);
    s.seed_two_disks(ITEM);
    s.protect(ITEM);
    let (u0, u1) = (s.disk_uri(ITEM, 0), s.disk_uri(ITEM, 1));

    // Three writes in quick succession: no point is cut between them.
    assert!(qemu_io(&u0, "write -P 0x31 0 64k"));
    let ta = now();
    assert!(qemu_io(&u1, "write -P 0x32 1M 64k"));
    let tb = now();
    assert!(qemu_io(&u0, "write -P 0x33 0 64k"));
    s.wait_point_after(ITEM, now(), 60);

    let at = |t: f64, disk: usize, name: &str| {
        let out = dir.path().join(name);
        s.export(ITEM, disk, &rfc3339(t), &out);
        out.to_str().unwrap().to_string()
    };
    let a0 = at(ta, 0, "a0.raw");
    let a1 = at(ta, 1, "a1.raw");
    assert!(
        qemu_io(&a0, "read -P 0x31 0 64k"),
        "write A is missing at its instant"
    );
    assert!(
        qemu_io(&a1, "read -P 0x22 1M 64k"),
        "write B is in the state before it"
    );
    let b0 = at(tb, 0, "b0.raw");
    let b1 = at(tb, 1, "b1.raw");
    assert!(
        qemu_io(&b0, "read -P 0x31 0 64k"),
        "write C is in the state before it"
    );
    assert!(
        qemu_io(&b1, "read -P 0x32 1M 64k"),
        "write B is missing at its instant"
    );

    // A test failover to an instant boots exactly that state.
    s.ok(&[
        "failover",
        "test",
        ITEM,
        "--recovery-point",
        &rfc3339(ta),
        "--wait",
    ]);
    let tv = "rg1-asr/pit1-test";
    assert!(qemu_io(&s.disk_uri(tv, 0), "read -P 0x31 0 64k"));
    assert!(qemu_io(&s.disk_uri(tv, 1), "read -P 0x22 1M 64k"));
    s.ok(&["failover", "test-cleanup", ITEM, "--wait"]);

    // Outside the journal window, and in the future: refused with what to do.
    let old = s.fails(&[
        "disk",
        "export",
        ITEM,
        "--disk",
        "0",
        "--recovery-point",
        &rfc3339(now() - 7200.0),
        "--out",
        dir.path().join("x.raw").to_str().unwrap(),
    ]);
    assert!(old.contains("journal window"), "{old}");
    let future = s.fails(&[
        "disk",
        "export",
        ITEM,
        "--disk",
        "0",
        "--recovery-point",
        &rfc3339(now() + 3600.0),
        "--out",
        dir.path().join("x.raw").to_str().unwrap(),
    ]);
    assert!(future.contains("future"), "{future}");
}
