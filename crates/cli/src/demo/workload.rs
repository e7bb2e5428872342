//! The demo's workload and its model: what each disk must hold after every write.

use anyhow::Result;
use ferry_nbd::client::NbdClient;

/// The disks as the workload wrote them.
pub struct Disks {
    data: Vec<Vec<u8>>,
}

impl Disks {
    pub fn new(sizes: &[u64]) -> Self {
        Disks {
            data: sizes.iter().map(|&s| vec![0; s as usize]).collect(),
        }
    }

    fn write(&mut self, disk: usize, offset: u64, bytes: &[u8]) {
        self.data[disk][offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes);
    }

    fn zero(&mut self, disk: usize, offset: u64, len: u64) {
        self.data[disk][offset as usize..(offset + len) as usize].fill(0);
    }

    fn size(&self, disk: usize) -> u64 {
        self.data[disk].len() as u64
    }

    /// BLAKE3 of each disk, hex.
    pub fn digests(&self) -> Vec<String> {
        self.data
            .iter()
            .map(|d| blake3::hash(d).to_hex().to_string())
            .collect()
    }
}

/// A seeded workload: sequential runs, random 4 KiB writes, zeroed ranges and rewrites.
pub struct Workload {
    state: u64,
    pub bytes_written: u64,
}

impl Workload {
    pub fn new(seed: u64) -> Self {
        Workload {
            state: seed | 1,
            bytes_written: 0,
        }
    }

    fn next(&mut self) -> u64 {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Data that compresses like real files: half random, half repeated text.
    fn data(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            if self.next().is_multiple_of(2) {
                let r = self.next().to_le_bytes();
                for _ in 0..64 {
                    out.extend_from_slice(&r);
                    let n = self.next();
                    out.extend_from_slice(&n.to_le_bytes());
                }
            } else {
                out.extend_from_slice(
                    &b"ferry keeps every acknowledged write; ".repeat(27)[..1024],
                );
            }
        }
        out.truncate(len);
        out
    }

    async fn write(
        &mut self,
        nbd: &mut [NbdClient],
        disks: &mut Disks,
        disk: usize,
        offset: u64,
        len: usize,
    ) -> Result<()> {
        let bytes = self.data(len);
        nbd[disk].write(offset, &bytes, false).await?;
        disks.write(disk, offset, &bytes);
        self.bytes_written += len as u64;
        Ok(())
    }

    /// Existing data before replication: 16 MiB at the start of disk 0, 8 MiB scattered on disk 1.
    pub async fn seed_data(&mut self, nbd: &mut [NbdClient], disks: &mut Disks) -> Result<()> {
        for i in 0..16u64 {
            self.write(nbd, disks, 0, i << 20, 1 << 20).await?;
        }
        for _ in 0..8 {
            let off = self.below(disks.size(1) >> 20) << 20;
            self.write(nbd, disks, 1, off, 1 << 20).await?;
        }
        for n in nbd.iter_mut() {
            n.flush().await?;
        }
        Ok(())
    }

    /// One round; returns the bytes it wrote.
    pub async fn round(&mut self, nbd: &mut [NbdClient], disks: &mut Disks) -> Result<u64> {
        let before = self.bytes_written;
        // A sequential run of 4 MiB in 256 KiB writes.
        let disk = self.below(2) as usize;
        let start = self.below((disks.size(disk) >> 20) - 4) << 20;
        for i in 0..16u64 {
            self.write(nbd, disks, disk, start + i * (256 << 10), 256 << 10)
                .await?;
        }
        // Random 4 KiB writes on both disks.
        for _ in 0..200 {
            let disk = self.below(2) as usize;
            let off = self.below(disks.size(disk) >> 12) << 12;
            self.write(nbd, disks, disk, off, 4096).await?;
        }
        // Zeroed ranges, some unaligned to blocks.
        for _ in 0..4 {
            let disk = self.below(2) as usize;
            let len = (self.below(16) + 1) << 16;
            let off = self.below((disks.size(disk) - len) >> 9) << 9;
            nbd[disk].write_zeroes(off, len as u32, false).await?;
            disks.zero(disk, off, len);
        }
        // Rewrites of data written before replication started.
        for _ in 0..4 {
            let off = (self.below(16) << 20) + (self.below(256) << 12);
            self.write(nbd, disks, 0, off, 64 << 10).await?;
        }
        for n in nbd.iter_mut() {
            n.flush().await?;
        }
        Ok(self.bytes_written - before)
    }
}
