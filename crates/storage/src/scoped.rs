//! [`scoped`]: a view of an account confined to one key prefix.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{DynStore, ETag, Key, ObjectInfo, Store, StoreError};

/// A view of `store` confined to the keys under `prefix`: every key given to or returned by the
/// view is relative to `prefix`, and nothing outside it can be named (keys cannot contain `..`).
pub fn scoped(store: DynStore, prefix: Key) -> DynStore {
    let url = format!("{}/{}", store.url().trim_end_matches('/'), prefix);
    Arc::new(ScopedStore {
        inner: store,
        prefix,
        url,
    })
}

#[derive(Debug)]
struct ScopedStore {
    inner: DynStore,
    prefix: Key,
    url: String,
}

impl ScopedStore {
    fn full(&self, key: &Key) -> Key {
        self.prefix.concat(key)
    }

    /// Report errors with the key the caller used.
    fn local(&self, key: &Key, e: StoreError) -> StoreError {
        let key = key.to_string();
        match e {
            StoreError::NotFound { .. } => StoreError::NotFound { key },
            StoreError::AlreadyExists { .. } => StoreError::AlreadyExists { key },
            StoreError::PreconditionFailed { .. } => StoreError::PreconditionFailed { key },
            StoreError::InvalidRange { range, .. } => StoreError::InvalidRange { key, range },
            other => other,
        }
    }
}

#[async_trait]
impl Store for ScopedStore {
    fn url(&self) -> &str {
        &self.url
    }

    async fn put_new(&self, key: &Key, data: Bytes) -> Result<ETag, StoreError> {
        self.inner
            .put_new(&self.full(key), data)
            .await
            .map_err(|e| self.local(key, e))
    }

    async fn put(&self, key: &Key, data: Bytes) -> Result<ETag, StoreError> {
        self.inner
            .put(&self.full(key), data)
            .await
            .map_err(|e| self.local(key, e))
    }

    async fn put_if_match(
        &self,
        key: &Key,
        data: Bytes,
        expected: &ETag,
    ) -> Result<ETag, StoreError> {
        let full = self.full(key);
        self.inner
            .put_if_match(&full, data, expected)
            .await
            .map_err(|e| self.local(key, e))
    }

    async fn get(&self, key: &Key) -> Result<Bytes, StoreError> {
        self.inner
            .get(&self.full(key))
            .await
            .map_err(|e| self.local(key, e))
    }

    async fn get_range(&self, key: &Key, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.inner
            .get_range(&self.full(key), range)
            .await
            .map_err(|e| self.local(key, e))
    }

    async fn head(&self, key: &Key) -> Result<ObjectInfo, StoreError> {
        let info = self
            .inner
            .head(&self.full(key))
            .await
            .map_err(|e| self.local(key, e))?;
        Ok(ObjectInfo {
            key: key.clone(),
            ..info
        })
    }

    async fn list(&self, prefix: Option<&Key>) -> Result<Vec<ObjectInfo>, StoreError> {
        let full = prefix.map_or_else(|| self.prefix.clone(), |p| self.full(p));
        let mut out = Vec::new();
        for info in self.inner.list(Some(&full)).await? {
            let Some(rest) = info.key.strip_prefix(&self.prefix) else {
                continue;
            };
            out.push(ObjectInfo {
                key: Key::parse(rest)?,
                ..info
            });
        }
        // Stripping a common prefix keeps the order, but sort anyway: it is the contract.
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn list_children(&self, prefix: &Key) -> Result<Vec<String>, StoreError> {
        self.inner.list_children(&self.full(prefix)).await
    }

    async fn delete(&self, key: &Key) -> Result<(), StoreError> {
        self.inner
            .delete(&self.full(key))
            .await
            .map_err(|e| self.local(key, e))
    }
}
