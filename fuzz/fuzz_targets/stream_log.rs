//! The agent's stream log, read both ways it is read (recovery, shipping), each input twice:
//! as it is, and with the CRC of every frame that fits in the input made right, so the records
//! behind the checksums are parsed. The input is a log file (frames of `len`, `crc`, record).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferry_agent::fuzzing::stream_log(data);
    ferry_agent::fuzzing::stream_log(&fix_crcs(data));
});

fn fix_crcs(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    let mut pos = 0usize;
    while let Some(head) = out.get(pos..pos + 8) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let Some(record) = out.get(pos + 8..pos + 8 + len) else {
            break;
        };
        let crc = ferry_agent::fuzzing::crc32c(record);
        out[pos + 4..pos + 8].copy_from_slice(&crc.to_le_bytes());
        pos += 8 + len;
    }
    out
}
