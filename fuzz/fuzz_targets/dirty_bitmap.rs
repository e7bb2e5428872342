//! The agent's dirty bitmap file (no checksum: the input is the file).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(dirty) = ferry_agent::fuzzing::dirty_bitmap(data) {
        assert!(dirty <= 8 * data.len() as u64);
    }
});
