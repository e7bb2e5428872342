//! Benchmark data that compression and deduplication cannot shortcut, and the single-core
//! baselines measured on it.

use std::io::Read;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;

use super::MB;

/// Bytes stamped with a unique counter: every 4 KiB page of every block differs.
const PAGE: usize = 4096;

/// A pool of pseudo-random bytes; [`Pool::fill`] turns it into distinct blocks.
pub struct Pool {
    bytes: Vec<u8>,
}

impl Pool {
    pub fn new(len: usize) -> Pool {
        let mut bytes = vec![0u8; len];
        let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(rand::random::<u32>());
        for w in bytes.chunks_exact_mut(8) {
            w.copy_from_slice(&wyrand(&mut state).to_le_bytes());
        }
        Pool { bytes }
    }

    /// Fills `buf` (a multiple of 4 KiB) with block number `n`: pool bytes from an offset
    /// derived from `n`, each 4 KiB page stamped with `n` and its index, so no two pages of
    /// any two blocks are equal and nothing compresses.
    pub fn fill(&self, n: u64, buf: &mut [u8]) {
        let pages = (self.bytes.len() - buf.len()) / PAGE;
        let mut s = n.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let start = (wyrand(&mut s) as usize % pages.max(1)) * PAGE;
        buf.copy_from_slice(&self.bytes[start..start + buf.len()]);
        for (i, page) in buf.chunks_mut(PAGE).enumerate() {
            page[..8].copy_from_slice(&n.to_le_bytes());
            page[8..16].copy_from_slice(&(i as u64).to_le_bytes());
        }
    }
}

/// wyrand: a fast 64-bit PRNG (not for cryptography).
fn wyrand(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0xa076_1d64_78bd_642f);
    let t = u128::from(*state) * u128::from(*state ^ 0xe703_7ed1_a0b4_28db);
    ((t >> 64) ^ t) as u64
}

/// zstd level 1 plus BLAKE3 of `total` bytes of pool blocks in 64 KiB chunks, on this thread:
/// what the processor does to every changed block. Returns MB/s.
pub fn zstd_blake3_single_core(pool: &Pool, total: usize) -> Result<f64> {
    const CHUNK: usize = 64 << 10;
    let mut block = vec![0u8; 1 << 20];
    let mut compressor = zstd::bulk::Compressor::new(1)?;
    let mut out = vec![0u8; zstd::zstd_safe::compress_bound(CHUNK)];
    let mut sink = 0u64;
    let mut done = 0;
    let mut n = 1u64 << 40;
    let t = Instant::now();
    while done < total {
        pool.fill(n, &mut block);
        n += 1;
        for chunk in block.chunks(CHUNK) {
            let h = blake3::hash(chunk);
            let len = compressor.compress_to_buffer(chunk, &mut out)?;
            sink = sink.wrapping_add(u64::from(h.as_bytes()[0]) + len as u64);
        }
        done += block.len();
    }
    let secs = t.elapsed().as_secs_f64();
    std::hint::black_box(sink);
    Ok(done as f64 / MB / secs)
}

/// One sequential read of a whole file in 1 MiB reads; MB/s.
pub fn read_file_once(path: &Path) -> Result<f64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut f = std::fs::File::open(path)?;
    let t = Instant::now();
    let mut total = 0usize;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n;
    }
    Ok(total as f64 / MB / t.elapsed().as_secs_f64())
}

/// Sequential read of a whole file in 1 MiB reads (through the page cache); MB/s, best of 2.
pub fn read_file(path: &Path) -> Result<f64> {
    let mut best = 0f64;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..2 {
        let mut f = std::fs::File::open(path)?;
        let t = Instant::now();
        let mut total = 0usize;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n;
        }
        best = best.max(total as f64 / MB / t.elapsed().as_secs_f64());
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_differ_page_by_page_and_do_not_compress() {
        let pool = Pool::new(4 << 20);
        let (mut a, mut b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
        pool.fill(1, &mut a);
        pool.fill(2, &mut b);
        let pages_a: std::collections::HashSet<&[u8]> =
            a.chunks(PAGE).chain(b.chunks(PAGE)).collect();
        assert_eq!(pages_a.len(), 2 * (1 << 20) / PAGE);
        let z = zstd::bulk::compress(&a, 1).unwrap();
        assert!(z.len() > a.len() * 99 / 100);
    }
}
