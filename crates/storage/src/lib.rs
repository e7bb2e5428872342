//! Storage accounts: one narrow trait, [`Store`], over real object stores (local filesystem,
//! Azure Blob Storage, S3) reached through the `object_store` crate.
//!
//! Everything ferry persists outside its state database goes through this trait: cache segments
//! in the source region, chunk packs, block-map pages and recovery-point records in the target
//! region. The contract (see `CONTRACT.md` next to this crate's `Cargo.toml`) is what every
//! backend must honour, and [`conformance`] is the suite that proves it.
//!
//! - Keys are typed ([`Key`]): relative, `/`-separated, no empty or `.`/`..` segments.
//! - `put_new` is create-only: it fails with [`StoreError::AlreadyExists`] when the key exists.
//!   This is the commit point of every immutable object (segments, packs, recovery points).
//! - `put_if_match` replaces an object only when its current [`ETag`] matches.
//! - `list` returns every object under a prefix, sorted by key.
//! - `delete` is idempotent.

mod account;
mod azure_sas;
pub mod conformance;
mod error;
pub mod fault;
mod key;
mod open;
mod renewable;
pub mod retry;
mod scoped;

pub use azure_sas::{
    AzureSas, CREATE_READ, SAS_VERSION, SasRequest, container_sas, sign_container_sas,
};
pub use error::{Cause, StoreError};
pub use key::Key;
pub use open::{Location, location, open, open_with_options, open_with_sas};
pub use renewable::Renewable;
pub use scoped::scoped;

use std::fmt::Debug;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

/// An opaque version tag of one stored object, compared for conditional updates.
/// Backends normalise it (no surrounding quotes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ETag(pub String);

/// What `head` and `list` tell about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's key (relative to the account or scoped view it was listed from).
    pub key: Key,
    /// Size in bytes.
    pub size: u64,
    /// The current etag, normalised; `None` only when a backend reports none.
    pub etag: Option<ETag>,
}

/// A storage account. Cheap to clone behind an `Arc`; safe to share between tasks.
#[async_trait]
pub trait Store: Send + Sync + Debug {
    /// The URL this account was opened from (`file:///…`, `az://…`, `s3://…`, `memory://…`),
    /// with no secrets in it.
    fn url(&self) -> &str;

    /// Create `key` with `data`; fails with `AlreadyExists` when it exists (never overwrites).
    async fn put_new(&self, key: &Key, data: Bytes) -> Result<ETag, StoreError>;

    /// Create or overwrite `key` with `data`.
    async fn put(&self, key: &Key, data: Bytes) -> Result<ETag, StoreError>;

    /// Replace `key` only when its current etag is `expected`; fails with
    /// `PreconditionFailed` otherwise, and with `NotFound` when the key does not exist.
    async fn put_if_match(
        &self,
        key: &Key,
        data: Bytes,
        expected: &ETag,
    ) -> Result<ETag, StoreError>;

    /// The whole object; `NotFound` when absent.
    async fn get(&self, key: &Key) -> Result<Bytes, StoreError>;

    /// Bytes `range` of the object; `NotFound` when absent, `InvalidRange` past its end.
    async fn get_range(&self, key: &Key, range: Range<u64>) -> Result<Bytes, StoreError>;

    /// Size and etag; `NotFound` when absent.
    async fn head(&self, key: &Key) -> Result<ObjectInfo, StoreError>;

    /// Every object whose key starts with `prefix` (a whole-segment prefix: `a/b` lists `a/b/…`),
    /// sorted by key. An empty prefix lists the whole account.
    async fn list(&self, prefix: Option<&Key>) -> Result<Vec<ObjectInfo>, StoreError>;

    /// The names of the key segments right under `prefix` (of objects there, and of deeper
    /// keys), each once, sorted: `a` holding `a/b/1`, `a/b/2` and `a/c` lists `b` and `c`.
    /// One request per page, however many objects lie deeper.
    async fn list_children(&self, prefix: &Key) -> Result<Vec<String>, StoreError>;

    /// Remove `key`; succeeds when it is already absent.
    async fn delete(&self, key: &Key) -> Result<(), StoreError>;
}

/// A shared handle to a storage account.
pub type DynStore = Arc<dyn Store>;
