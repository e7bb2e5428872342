//! The hydration bitmap file, behind its header checksum: the input is the file, its header
//! CRC is made right, and the disk's size is the one its `blocks` field names, less the
//! reserved `u32` at 36 (not read by the decoder) modulo 64 KiB, so the checks behind the block
//! count are reached too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut file = data.to_vec();
    let mut size = 0u64;
    if file.len() >= 40 {
        let crc = ferry_agent::fuzzing::crc32c(&file[..32]);
        file[32..36].copy_from_slice(&crc.to_le_bytes());
        let blocks = u64::from_le_bytes(file[16..24].try_into().unwrap_or_default());
        let less = u64::from(u32::from_le_bytes(
            file[36..40].try_into().unwrap_or_default(),
        ));
        size = blocks
            .saturating_mul(1 << 16)
            .saturating_sub(less % (1 << 16));
    }
    if let Ok(pending) = ferry_agent::fuzzing::hydration_bitmap(&file, size) {
        assert!(pending <= size.div_ceil(1 << 16).div_ceil(64) * 64);
    }
});
