//! Where a replica's objects live in the target accounts.
//!
//! ```text
//! <meta account>  replicas/<stream>/points/<seq:016x>.point       recovery points
//!                 replicas/<stream>/checkpoints/<seq:016x>.point  processor restart positions
//!                 replicas/<stream>/journal/<first_seq:016x>.seg  applied segments, kept for
//!                                                                 the journal window
//!                 replicas/<stream>/gc/pending.json               garbage-collection candidates
//! <disk account>  replicas/<stream>/disk<N>/packs/<id:016x>.pack  chunk packs
//!                 replicas/<stream>/disk<N>/pages/<digest>.page    block-map pages
//! ```
//! The meta account is the target account of disk 0.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ferry_format::point::PointRecord;
use ferry_storage::{DynStore, Key};
use ferry_types::{Seq, StreamId};

/// The accounts and prefixes of one replica.
#[derive(Debug, Clone)]
pub struct ReplicaLayout {
    pub stream: StreamId,
    pub meta: DynStore,
    pub disks: Vec<DynStore>,
    /// Decoded recovery points (immutable objects), by sequence.
    pub(crate) point_cache: Arc<Mutex<HashMap<Seq, PointRecord>>>,
}

impl ReplicaLayout {
    pub fn new(stream: StreamId, meta: DynStore, disks: Vec<DynStore>) -> Self {
        ReplicaLayout {
            stream,
            meta,
            disks,
            point_cache: Arc::default(),
        }
    }

    fn root(&self) -> Key {
        Key::from_segments(["replicas", &self.stream.to_string()])
            .expect("stream ids are valid key segments")
    }

    pub fn points_prefix(&self) -> Key {
        self.root().join("points")
    }

    pub fn checkpoints_prefix(&self) -> Key {
        self.root().join("checkpoints")
    }

    /// Garbage collection's pending candidates.
    pub fn gc_prefix(&self) -> Key {
        self.root().join("gc")
    }

    pub fn journal_prefix(&self) -> Key {
        self.root().join("journal")
    }

    pub fn journal_key(&self, first_seq: Seq) -> Key {
        self.journal_prefix()
            .join(&ferry_format::segment::object_name(first_seq))
    }

    pub fn disk_prefix(&self, disk: usize) -> Key {
        self.root().join(&format!("disk{disk}"))
    }

    pub fn pack_key(&self, disk: usize, id: u64) -> Key {
        self.disk_prefix(disk)
            .join("packs")
            .join(&ferry_format::pack::object_name(id))
    }

    pub fn page_key(&self, disk: usize, digest: &ferry_format::Digest) -> Key {
        self.disk_prefix(disk)
            .join("pages")
            .join(&ferry_format::map::object_name(digest))
    }
}
