//! [`FaultyStore`]: a [`Store`] wrapper that injects faults at run time, for tests of the code
//! above the storage layer (outages, flaky calls, slow stores).

use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{Cause, DynStore, ETag, Key, ObjectInfo, Store, StoreError};

/// One kind of [`Store`] call, to filter injected failures and count calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`Store::put_new`]
    PutNew,
    /// [`Store::put`]
    Put,
    /// [`Store::put_if_match`]
    PutIfMatch,
    /// [`Store::get`]
    Get,
    /// [`Store::get_range`]
    GetRange,
    /// [`Store::head`]
    Head,
    /// [`Store::list`]
    List,
    /// [`Store::delete`]
    Delete,
}

const OPS: usize = 8;

/// Wraps a store; every call first applies the configured latency and faults.
/// Injected failures are [`StoreError::Unreachable`], so they are retryable.
#[derive(Debug)]
pub struct FaultyStore {
    inner: DynStore,
    offline: AtomicBool,
    /// Remaining injected failures and the op they apply to (`None`: any op).
    fail_next: Mutex<(u64, Option<Op>)>,
    latency: Mutex<Duration>,
    calls: [AtomicU64; OPS],
}

impl FaultyStore {
    /// A pass-through wrapper around `inner` (no faults until switched on).
    pub fn new(inner: DynStore) -> FaultyStore {
        FaultyStore {
            inner,
            offline: AtomicBool::new(false),
            fail_next: Mutex::new((0, None)),
            latency: Mutex::new(Duration::ZERO),
            calls: Default::default(),
        }
    }

    /// While `true`, every call fails with a retryable `Unreachable`.
    pub fn set_offline(&self, offline: bool) {
        self.offline.store(offline, Ordering::SeqCst);
    }

    /// Fail the next `n` calls of `op` (of any op when `None`) with `Unreachable`.
    pub fn fail_next(&self, n: u64, op: Option<Op>) {
        *self.fail_next.lock().unwrap_or_else(|e| e.into_inner()) = (n, op);
    }

    /// Delay every call by `latency` before it runs (zero: no delay).
    pub fn set_latency(&self, latency: Duration) {
        *self.latency.lock().unwrap_or_else(|e| e.into_inner()) = latency;
    }

    /// How many calls of `op` were made, failed ones included.
    pub fn calls(&self, op: Op) -> u64 {
        self.calls[op as usize].load(Ordering::SeqCst)
    }

    async fn enter(&self, op: Op) -> Result<(), StoreError> {
        self.calls[op as usize].fetch_add(1, Ordering::SeqCst);
        let latency = *self.latency.lock().unwrap_or_else(|e| e.into_inner());
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if self.offline.load(Ordering::SeqCst) {
            return Err(self.fault("store is offline (injected)"));
        }
        let mut next = self.fail_next.lock().unwrap_or_else(|e| e.into_inner());
        if next.0 > 0 && next.1.is_none_or(|o| o == op) {
            next.0 -= 1;
            return Err(self.fault("injected failure"));
        }
        Ok(())
    }

    fn fault(&self, what: &str) -> StoreError {
        StoreError::Unreachable {
            url: self.inner.url().to_owned(),
            source: Cause::new(what),
        }
    }
}

#[async_trait]
impl Store for FaultyStore {
    fn url(&self) -> &str {
        self.inner.url()
    }

    async fn put_new(&self, key: &Key, data: Bytes) -> Result<ETag, StoreError> {
        self.enter(Op::PutNew).await?;
        self.inner.put_new(key, data).await
    }

    async fn put(&self, key: &Key, data: Bytes) -> Result<ETag, StoreError> {
        self.enter(Op::Put).await?;
        self.inner.put(key, data).await
    }

    async fn put_if_match(
        &self,
        key: &Key,
        data: Bytes,
        expected: &ETag,
    ) -> Result<ETag, StoreError> {
        self.enter(Op::PutIfMatch).await?;
        self.inner.put_if_match(key, data, expected).await
    }

    async fn get(&self, key: &Key) -> Result<Bytes, StoreError> {
        self.enter(Op::Get).await?;
        self.inner.get(key).await
    }

    async fn get_range(&self, key: &Key, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.enter(Op::GetRange).await?;
        self.inner.get_range(key, range).await
    }

    async fn head(&self, key: &Key) -> Result<ObjectInfo, StoreError> {
        self.enter(Op::Head).await?;
        self.inner.head(key).await
    }

    async fn list(&self, prefix: Option<&Key>) -> Result<Vec<ObjectInfo>, StoreError> {
        self.enter(Op::List).await?;
        self.inner.list(prefix).await
    }

    async fn list_children(&self, prefix: &Key) -> Result<Vec<String>, StoreError> {
        self.enter(Op::List).await?;
        self.inner.list_children(prefix).await
    }

    async fn delete(&self, key: &Key) -> Result<(), StoreError> {
        self.enter(Op::Delete).await?;
        self.inner.delete(key).await
    }
}
