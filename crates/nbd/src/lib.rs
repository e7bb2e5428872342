//! An NBD (Network Block Device) protocol server, knowing nothing of replication.
//!
//! It speaks the fixed-newstyle handshake and the simple-reply transmission phase of the NBD
//! protocol (`doc/proto.md` of the NetworkBlockDevice/nbd project) over unix sockets (mode 0660,
//! owned by a chosen group) and TCP (plain, or TLS only: `NBD_OPT_STARTTLS` with x509
//! credentials), serving any number of named [`Export`]s to many clients with many requests
//! in flight.
//! What an export does with a write is the export's business: ferry's mobility agent implements
//! [`Export`] to make each write durable on the source image and append it to the VM's ordered
//! write stream before the reply is sent.

use std::io;
use std::sync::Arc;

pub mod access;
pub mod bench;
pub mod client;
mod error;
mod exports;
mod file_export;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod handshake;
mod listener;
pub mod metrics;
pub mod protocol;
mod tls;
mod transmission;

pub use client::NbdClient;
pub use error::NbdError;
pub use exports::Exports;
pub use file_export::FileExport;
pub use listener::{NbdListener, serve_tcp, serve_unix};
pub use tls::TlsConfig;

/// One block device served over NBD. Calls may come from many connections at once.
///
/// Methods are synchronous: implementations do page-cache I/O (and `fdatasync` for `fua` and
/// `flush`); the server calls them from a context where blocking briefly is allowed.
pub trait Export: Send + Sync + 'static {
    /// Size in bytes; fixed while the export is served.
    fn size(&self) -> u64;

    /// Fill `buf` with the bytes at `offset`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Write `data` at `offset`; when `fua`, it must be durable before returning.
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()>;

    /// Make every completed write durable.
    fn flush(&self) -> io::Result<()>;

    /// Discard `len` bytes at `offset` (they read back as zeroes afterwards).
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()>;

    /// Write `len` zero bytes at `offset`. With `no_hole` the range must stay allocated
    /// (`NBD_CMD_FLAG_NO_HOLE`: no hole is punched); without it, punching one is allowed.
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool, no_hole: bool) -> io::Result<()>;
}

/// A shared handle to an export.
pub type DynExport = Arc<dyn Export>;
