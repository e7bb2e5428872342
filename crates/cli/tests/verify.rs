//! `ferry replication verify` end to end: a byte flipped in a chunk of a pack on disk is named
//! with the points it affects, `--repair` rebuilds it in place from the source disk, verify is
//! clean again, and the point exports exactly the source.

mod support;

use std::path::{Path, PathBuf};

use support::*;

fn setup(dir: &Path) -> Server {
    let s = Server::start(&dir.join("data"));
    s.base_resources(None);
    s.ok(&[
        "vm",
        "create",
        "rg1/web1",
        "--network",
        "vnet1",
        "--subnet",
        "default",
        "--disk",
        "64MiB@sa1",
        "--disk",
        "32MiB@sa2",
        "--compute",
        "external",
    ]);
    s
}

fn packs(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            packs(&p, out);
        } else if p.extension().is_some_and(|x| x == "pack")
            && p.to_string_lossy().contains("/disk0/")
        {
            out.push(p);
        }
    }
}

/// Flip a byte in the middle of the first chunk of a disk-0 pack (found from the pack's own
/// index: `count` before the 32-byte trailer, 44-byte entries before it). Returns the pack.
fn corrupt_a_chunk(data: &Path) -> PathBuf {
    let mut found = Vec::new();
    packs(
        &data.join("regions/west/storage/rg1-asr/sa1-asr"),
        &mut found,
    );
    for path in found {
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        let count = u32::from_le_bytes(bytes[n - 36..n - 32].try_into().unwrap()) as usize;
        if count == 0 {
            continue;
        }
        let entry = n - 36 - 44 * count;
        let field = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let (offset, len) = (field(entry + 32), field(entry + 36));
        bytes[offset + len / 2] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
        return path;
    }
    panic!("no pack with a chunk on disk 0 of the replica");
}

#[test]
fn verify_finds_a_flipped_byte_and_repair_rebuilds_it_from_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path());
    s.seed_two_disks("rg1/web1");
    s.protect("rg1/web1");
    let clean = s.json(&["replication", "verify", "rg1/web1"]);
    assert_eq!(clean["unrepaired"], 0, "{clean}");
    assert!(clean["chunks"].as_u64().unwrap() >= 2, "{clean}");
    let pack = corrupt_a_chunk(&s.data);
    let pack_name = pack.file_name().unwrap().to_str().unwrap();

    // Found: non-zero exit, the pack and its points named, and what to do.
    let out = s.ferry(&["replication", "verify", "rg1/web1", "-o", "json"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--repair"), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = r["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{r}");
    assert_eq!(problems[0]["kind"], "chunk");
    assert!(
        problems[0]["key"].as_str().unwrap().ends_with(pack_name),
        "{r}"
    );
    let points = problems[0]["points"].as_array().unwrap();
    let first = &s.points("rg1/web1")[0];
    assert!(points.contains(&first["id"]), "{r}");
    let table = s.ferry(&["replication", "verify", "rg1/web1"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains(pack_name) && table.contains("damaged"),
        "{table}"
    );

    // Repaired from the source disk, then clean.
    let r = s.json(&["replication", "verify", "rg1/web1", "--repair"]);
    assert_eq!(
        (r["repaired"].as_u64(), r["unrepaired"].as_u64()),
        (Some(1), Some(0)),
        "{r}"
    );
    assert_eq!(r["problems"][0]["repaired"], true);
    let r = s.json(&["replication", "verify", "rg1/web1"]);
    assert!(r["problems"].as_array().unwrap().is_empty(), "{r}");

    // The oldest point (the damaged chunk's first reader) exports the source again.
    let (src, got) = (dir.path().join("src0.raw"), dir.path().join("p0.raw"));
    read_disk(&s.disk_uri("rg1/web1", 0), &src);
    s.export("rg1/web1", 0, first["id"].as_str().unwrap(), &got);
    assert!(
        same_image(&src, &got),
        "the repaired point differs from the source"
    );

    // The request body is checked like every other.
    let (status, body) = s.http(
        "POST",
        "/v1/groups/rg1/vms/web1/replication/verify",
        Some(r#"{"repair": false, "force": true}"#),
        true,
    );
    assert_eq!(status, 400, "{body}");
}
