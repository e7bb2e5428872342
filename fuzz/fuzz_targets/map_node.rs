//! Block-map nodes, behind their checksum and their name. Each input is decoded twice:
//! 1. as a whole node whose trailer is recomputed, named by its digest (fixtures are seeds);
//! 2. as a version 2 header (magic, version, level, count: 15 bytes) followed by the
//!    *uncompressed* entries, which are compressed to make the body.
#![no_main]

use ferry_format::{Digest, map};
use libfuzzer_sys::fuzz_target;

const HEADER: usize = 15;

fuzz_target!(|data: &[u8]| {
    if let Some(body) = data.len().checked_sub(32) {
        decode(ferry_format::seal(data[..body].to_vec()));
    }
    if data.len() >= HEADER {
        let (head, raw) = data.split_at(HEADER);
        if let Ok(body) = zstd::bulk::compress(raw, 1) {
            let mut object = head.to_vec();
            object.extend_from_slice(&body);
            decode(ferry_format::seal(object));
        }
    }
});

fn decode(object: Vec<u8>) {
    let name = Digest::of(&object);
    match map::decode(&object, &name) {
        Ok(map::Node::Leaf(entries)) => assert!(entries.len() <= map::MAX_ENTRIES),
        Ok(map::Node::Index { level, children }) => {
            assert!((1..=map::MAX_LEVEL).contains(&level));
            assert!(children.len() <= map::MAX_ENTRIES);
        }
        Err(_) => {}
    }
}
