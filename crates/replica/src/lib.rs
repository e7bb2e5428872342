//! The processing service and the replica it maintains in the target region.
//!
//! [`processor::Processor`] reads a protected item's segments from the cache account in
//! sequence order (a GET by name, no LIST), verifies each one (checksum, stream, sequence,
//! previous digest) before applying anything of it, applies its records to the replica, cuts a
//! recovery point at every marker, and deletes cache segments once a durable record covers them.
//!
//! The replica, per disk: content-addressed chunks (BLAKE3 of a 64 KiB block, zstd) packed into
//! pack objects, and a block map kept as a tree of content-addressed nodes shared by every point
//! that did not change them. A recovery point is a small record naming the root of each disk's
//! map; its create-only write is the commit point. Nothing here depends on the agent: only on
//! `ferry-format` and `ferry-storage`.

mod blocks;
mod chunks;
mod error;
pub mod export;
pub mod gc;
pub mod layout;
pub mod points;
pub mod processor;
pub mod resync;
pub mod retention;
pub mod tree;
pub mod verify;

pub use error::ReplicaError;
pub use layout::ReplicaLayout;
pub use points::{PointInfo, PointSelector};
pub use processor::{
    Fence, Processor, ProcessorConfig, ProcessorStatus, SeedBlocks, SeedSource, Waker,
    apply_latency, block_hashes,
};
