//! ferry's stored formats: pure encode and decode, no I/O.
//!
//! | object | module | spec |
//! |---|---|---|
//! | segment of a write stream (cache account) | [`segment`] | `docs/formats/segment.md` |
//! | chunk pack (target account) | [`pack`] | `docs/formats/pack.md` |
//! | block-map page (target account) | [`map`] | `docs/formats/map-page.md` |
//! | recovery-point record (target account) | [`point`] | `docs/formats/recovery-point.md` |
//!
//! Every format starts with an 8-byte magic and a 16-bit version, and ends with the BLAKE3
//! digest of everything before it. Integers are little-endian.

mod codec;
mod error;
pub mod map;
pub mod pack;
pub mod point;
pub mod segment;

pub use codec::{Digest, seal};
pub use error::FormatError;

/// Size of one block of the replica's block map, and of one chunk.
pub const BLOCK_SIZE: u64 = 64 * 1024;
