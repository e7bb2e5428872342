//! One whole server session over bytes, for the `nbd_session` fuzz target in `fuzz/` (feature
//! `fuzzing`): the bytes are what a client sends (handshake, options, requests and payloads),
//! and the server's answer is returned. The export is in memory and panics on any request
//! outside it, so a request the server let through without checking its bounds is a crash.

use std::sync::{Arc, Mutex, OnceLock};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::watch;

use crate::handshake::{Outcome, negotiate};
use crate::transmission::transmit;
use crate::{Export, Exports};

/// The name the session's export is served under.
pub const EXPORT_NAME: &str = "fuzz";
/// Size of the session's export (1 MiB).
pub const EXPORT_SIZE: u64 = 1 << 20;

/// Run the server on `input` as one connection's client bytes until either side is done;
/// returns everything the server sent.
pub fn session(input: &[u8]) -> Vec<u8> {
    runtime().block_on(async {
        let exports = Exports::new();
        exports.insert(EXPORT_NAME, Arc::new(MemoryExport::new(EXPORT_SIZE)));
        let (client, server) = tokio::io::duplex(64 << 10);
        let (server_r, server_w) = tokio::io::split(server);
        let (mut client_r, mut client_w) = tokio::io::split(client);
        let (_stop, shutdown) = watch::channel(false);
        let serve = async move {
            let mut reader = BufReader::new(server_r);
            let mut writer = BufWriter::new(server_w);
            if let Ok(Outcome::Transmission(att)) =
                negotiate(&mut reader, &mut writer, &exports).await
            {
                let _ = transmit(reader, writer, att, shutdown).await;
            }
        };
        let feed = async move {
            // The server may close first; what it did not read is not its business.
            let _ = client_w.write_all(input).await;
            let _ = client_w.shutdown().await;
        };
        let mut out = Vec::new();
        let drain = client_r.read_to_end(&mut out);
        let ((), (), _) = tokio::join!(serve, feed, drain);
        out
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build a runtime for fuzzing sessions")
    })
}

/// An export in memory that panics on a request outside it.
struct MemoryExport(Mutex<Vec<u8>>);

impl MemoryExport {
    fn new(size: u64) -> Self {
        MemoryExport(Mutex::new(vec![0; size as usize]))
    }

    fn range(&self, offset: u64, len: u64) -> std::ops::Range<usize> {
        let end = offset.checked_add(len).expect("request extent overflows");
        assert!(
            end <= self.size(),
            "request {offset}+{len} is outside the export"
        );
        offset as usize..end as usize
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Export for MemoryExport {
    fn size(&self) -> u64 {
        EXPORT_SIZE
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let r = self.range(offset, buf.len() as u64);
        buf.copy_from_slice(&self.lock()[r]);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8], _fua: bool) -> std::io::Result<()> {
        let r = self.range(offset, data.len() as u64);
        self.lock()[r].copy_from_slice(data);
        Ok(())
    }

    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64, _fua: bool) -> std::io::Result<()> {
        self.write_zeroes(offset, len, false, false)
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        _fua: bool,
        _no_hole: bool,
    ) -> std::io::Result<()> {
        let r = self.range(offset, len);
        self.lock()[r].fill(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
