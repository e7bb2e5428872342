//! The mobility agent: the protected VM's disk front-end on its source host.
//!
//! It serves each disk as an NBD export ([`disk::Disk`] implements [`ferry_nbd::Export`]); a
//! write is applied to the source image (made durable when the client asks with FUA or FLUSH)
//! and, while the VM is protected, appended to the VM's single ordered write stream
//! ([`stream::Stream`]) before it is acknowledged. The stream lives in a local log on the source
//! host (so an acknowledged write survives `kill -9`), is cut into immutable segments every
//! ~1 s or ~8 MiB ([`sealer`]) and shipped to the cache storage account ([`shipper`]). When the
//! local buffer of unshipped logs is full, writes are tracked in a persisted dirty bitmap and
//! copied later by a [`catch_up`], so the VM never waits for the cache account. When
//! replication starts on disks that already hold data, [`initial_sync`] streams their non-zero
//! blocks in the same order as live writes.
//!
//! The agent only makes outbound connections: to the cache account (through a store confined to
//! its own prefix) and to the control plane.

mod alive;
pub mod catch_up;
pub mod command;
mod dirty;
pub mod disk;
mod error;
pub mod executor;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod guests;
mod hold;
mod host;
pub mod hydrate;
pub mod initial_sync;
mod log;
pub mod redo;
mod reserve;
pub mod restore;
pub mod sealer;
mod seed_upload;
pub mod shipper;
mod state;
pub mod stream;

pub use error::AgentError;
pub use host::{AgentHost, DiskSpec, NbdAccess, NbdTcp, ReplicationConfig, VmStatus};
pub use stream::StreamStatus;
