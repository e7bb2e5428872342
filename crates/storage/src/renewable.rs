//! [`Renewable`]: a store whose account handle can be replaced while it is in use, so a
//! credential that expires (an Azure SAS) is renewed under a stream that keeps running.

use std::ops::Range;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{DynStore, ETag, Key, ObjectInfo, Store, StoreError};

/// Every call goes to the store most recently given; a call already under way finishes on the
/// one it started with.
#[derive(Debug)]
pub struct Renewable {
    current: RwLock<DynStore>,
    url: String,
}

impl Renewable {
    pub fn new(store: DynStore) -> Arc<Renewable> {
        Arc::new(Renewable {
            url: store.url().to_owned(),
            current: RwLock::new(store),
        })
    }

    /// Use `store` from now on (the same account, opened with a fresh credential).
    pub fn renew(&self, store: DynStore) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = store;
    }

    fn now(&self) -> DynStore {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[async_trait]
impl Store for Renewable {
    fn url(&self) -> &str {
        &self.url
    }

    async fn put_new(&self, key: &Key, data: Bytes) -> Result<ETag, StoreError> {
        self.now().put_new(key, data).await
    }

    async fn put(&self, key: &Key, data: Bytes) -> Result<ETag, StoreError> {
        self.now().put(key, data).await
    }

    async fn put_if_match(
        &self,
        key: &Key,
        data: Bytes,
        expected: &ETag,
    ) -> Result<ETag, StoreError> {
        self.now().put_if_match(key, data, expected).await
    }

    async fn get(&self, key: &Key) -> Result<Bytes, StoreError> {
        self.now().get(key).await
    }

    async fn get_range(&self, key: &Key, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.now().get_range(key, range).await
    }

    async fn head(&self, key: &Key) -> Result<ObjectInfo, StoreError> {
        self.now().head(key).await
    }

    async fn list(&self, prefix: Option<&Key>) -> Result<Vec<ObjectInfo>, StoreError> {
        self.now().list(prefix).await
    }

    async fn list_children(&self, prefix: &Key) -> Result<Vec<String>, StoreError> {
        self.now().list_children(prefix).await
    }

    async fn delete(&self, key: &Key) -> Result<(), StoreError> {
        self.now().delete(key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_go_to_the_store_given_last() {
        let (a, b) = (
            crate::open("memory://").unwrap(),
            crate::open("memory://").unwrap(),
        );
        let k = Key::parse("k").unwrap();
        b.put_new(&k, Bytes::from_static(b"in b")).await.unwrap();
        let r = Renewable::new(a);
        assert!(matches!(r.get(&k).await, Err(StoreError::NotFound { .. })));
        r.renew(b);
        assert_eq!(r.get(&k).await.unwrap(), Bytes::from_static(b"in b"));
    }
}
