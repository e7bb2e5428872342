//! Sending a host's disks to the server to seed a replica from (`upload-disks`): every
//! [`SEED_CHUNK`] of each disk in order, its non-zero blocks in the body. A failed request is
//! tried again a few times; after that the server, which waits for the next range, gives up.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_format::BLOCK_SIZE;

use crate::restore::{SEED_CHUNK, SeedRange, ServerBlocks, encode_blocks};

const TRIES: u32 = 5;

pub(crate) async fn send(
    server: &dyn ServerBlocks,
    upload: u64,
    images: &[(usize, PathBuf, u64)],
) -> Result<(), String> {
    for (disk, path, size) in images {
        let mut offset = 0;
        while offset < *size {
            let len = (size - offset).min(SEED_CHUNK);
            let p = path.clone();
            let blocks = tokio::task::spawn_blocking(move || read_nonzero(&p, offset, len))
                .await
                .map_err(|e| e.to_string())??;
            let range = SeedRange {
                upload,
                disk: *disk,
                offset,
                len,
            };
            let body = encode_blocks(&blocks);
            let mut tries = 0;
            loop {
                match server.upload(range, body.clone()).await {
                    Ok(()) => break,
                    Err(e) if tries + 1 < TRIES => {
                        tries += 1;
                        tracing::warn!(error = %e, "send a range of a disk; trying again");
                        tokio::time::sleep(Duration::from_millis(500 << tries)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
            offset += len;
        }
    }
    Ok(())
}

/// The non-zero blocks of `len` bytes of an image from `offset`, by block number.
fn read_nonzero(path: &Path, offset: u64, len: u64) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut out = Vec::new();
    let mut at = offset;
    while at < offset + len {
        let n = (offset + len - at).min(BLOCK_SIZE) as usize;
        // Whole blocks, as the replica stores them (a short last one padded with zeroes).
        let mut buf = vec![0u8; BLOCK_SIZE as usize];
        file.read_exact_at(&mut buf[..n], at)
            .map_err(|e| format!("read {}: {e}", path.display()))?;
        if buf.iter().any(|&b| b != 0) {
            out.push((at / BLOCK_SIZE, buf));
        }
        at += n as u64;
    }
    Ok(out)
}
