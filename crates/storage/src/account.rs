//! [`ObjectStoreAccount`]: the one [`Store`] implementation over an `object_store` backend.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, PutResult,
    UpdateVersion, WriteMultipart,
};
use tokio::sync::Mutex;

use crate::error::map_os_error;
use crate::{ETag, Key, ObjectInfo, Store, StoreError};

/// Objects larger than this are written with a multipart upload by [`Store::put`]
/// (create-only and conditional writes always use one request).
pub(crate) const MULTIPART_THRESHOLD: usize = 16 << 20;
const MULTIPART_CHUNK: usize = 8 << 20;

/// What a backend can do natively.
#[derive(Debug, Clone)]
pub(crate) struct Caps {
    /// `PutMode::Update` works; otherwise `put_if_match` is emulated under `update_lock`.
    pub native_update: bool,
    /// The backend wants etags quoted in `If-Match` (HTTP stores).
    pub quote_etags: bool,
    /// Use multipart uploads for large overwrites.
    pub multipart: bool,
}

/// A storage account backed by an `object_store` implementation.
pub(crate) struct ObjectStoreAccount {
    pub inner: Arc<dyn ObjectStore>,
    pub url: String,
    pub caps: Caps,
    /// Process-wide lock of the emulated `put_if_match` (shared by every handle on the account).
    pub update_lock: Arc<Mutex<()>>,
}

impl std::fmt::Debug for ObjectStoreAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreAccount")
            .field("url", &self.url)
            .finish()
    }
}

/// Strip quotes (and a weak marker) so etags compare equal across put, head and list.
pub(crate) fn normalize_etag(raw: &str) -> ETag {
    let t = raw.trim();
    let t = t.strip_prefix("W/").unwrap_or(t);
    ETag(t.trim_matches('"').to_owned())
}

fn path(key: &Key) -> Path {
    // Keys are validated to be a subset of what `Path` accepts verbatim.
    Path::parse(key.as_str()).expect("a validated Key is a valid object_store Path")
}

impl ObjectStoreAccount {
    fn err(&self, op: &'static str, key: &Key) -> impl FnOnce(object_store::Error) -> StoreError {
        let url = self.url.clone();
        let key = key.as_str().to_owned();
        move |e| map_os_error(e, &url, op, &key)
    }

    async fn write(
        &self,
        key: &Key,
        data: Bytes,
        mode: PutMode,
        op: &'static str,
    ) -> Result<ETag, StoreError> {
        let location = path(key);
        let result: PutResult = if self.caps.multipart
            && matches!(mode, PutMode::Overwrite)
            && data.len() > MULTIPART_THRESHOLD
        {
            let upload = self
                .inner
                .put_multipart(&location)
                .await
                .map_err(self.err(op, key))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_CHUNK);
            writer.put(data);
            writer.finish().await.map_err(self.err(op, key))?
        } else {
            let opts = PutOptions {
                mode,
                ..Default::default()
            };
            self.inner
                .put_opts(&location, PutPayload::from(data), opts)
                .await
                .map_err(self.err(op, key))?
        };
        match result.e_tag {
            Some(tag) => Ok(normalize_etag(&tag)),
            None => self.head(key).await?.etag.ok_or_else(|| StoreError::Other {
                url: self.url.clone(),
                op,
                source: crate::error::Cause::new("the backend returned no etag"),
            }),
        }
    }

    async fn emulated_put_if_match(
        &self,
        key: &Key,
        data: Bytes,
        expected: &ETag,
    ) -> Result<ETag, StoreError> {
        let _guard = self.update_lock.lock().await;
        let current = self.head(key).await?;
        if current.etag.as_ref() != Some(expected) {
            return Err(StoreError::PreconditionFailed {
                key: key.to_string(),
            });
        }
        self.write(key, data, PutMode::Overwrite, "put_if_match")
            .await
    }
}

#[async_trait]
impl Store for ObjectStoreAccount {
    fn url(&self) -> &str {
        &self.url
    }

    async fn put_new(&self, key: &Key, data: Bytes) -> Result<ETag, StoreError> {
        match self.write(key, data, PutMode::Create, "put_new").await {
            // S3 answers a failed `If-None-Match: *` with 412.
            Err(StoreError::PreconditionFailed { key }) => Err(StoreError::AlreadyExists { key }),
            // A create-only credential (an Azure SAS without write permission) is refused a
            // write over an existing object (403) before any condition is checked: whether the
            // object is there decides which answer it is.
            Err(e @ StoreError::Other { .. }) => match self.head(key).await {
                Ok(_) => Err(StoreError::AlreadyExists {
                    key: key.to_string(),
                }),
                Err(_) => Err(e),
            },
            other => other,
        }
    }

    async fn put(&self, key: &Key, data: Bytes) -> Result<ETag, StoreError> {
        self.write(key, data, PutMode::Overwrite, "put").await
    }

    async fn put_if_match(
        &self,
        key: &Key,
        data: Bytes,
        expected: &ETag,
    ) -> Result<ETag, StoreError> {
        if !self.caps.native_update {
            return self.emulated_put_if_match(key, data, expected).await;
        }
        let tag = if self.caps.quote_etags {
            format!("\"{}\"", expected.0)
        } else {
            expected.0.clone()
        };
        let mode = PutMode::Update(UpdateVersion {
            e_tag: Some(tag),
            version: None,
        });
        match self.write(key, data, mode, "put_if_match").await {
            // Some stores answer a conditional write on a missing object with 412, and S3 a
            // concurrent conditional write with 409: tell NotFound from a lost race.
            Err(
                StoreError::PreconditionFailed { key: k } | StoreError::AlreadyExists { key: k },
            ) => match self.head(key).await {
                Err(StoreError::NotFound { .. }) => Err(StoreError::NotFound { key: k }),
                _ => Err(StoreError::PreconditionFailed { key: k }),
            },
            other => other,
        }
    }

    async fn get(&self, key: &Key) -> Result<Bytes, StoreError> {
        let result = self
            .inner
            .get(&path(key))
            .await
            .map_err(self.err("get", key))?;
        result.bytes().await.map_err(self.err("get", key))
    }

    async fn get_range(&self, key: &Key, range: Range<u64>) -> Result<Bytes, StoreError> {
        let invalid = || StoreError::InvalidRange {
            key: key.to_string(),
            range: range.clone(),
        };
        if range.start > range.end {
            return Err(invalid());
        }
        if range.start == range.end {
            let info = self.head(key).await?;
            return if range.end <= info.size {
                Ok(Bytes::new())
            } else {
                Err(invalid())
            };
        }
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            ..Default::default()
        };
        let result = match self.inner.get_opts(&path(key), opts).await {
            Ok(result) => result,
            Err(e) => {
                let e = map_os_error(e, &self.url, "get_range", key.as_str());
                if matches!(e, StoreError::NotFound { .. }) || e.is_retryable() {
                    return Err(e);
                }
                // Backends report ranges past the end in many ways: check the size.
                let info = self.head(key).await?;
                return Err(if range.end > info.size { invalid() } else { e });
            }
        };
        if range.end > result.meta.size {
            return Err(invalid());
        }
        let bytes = result.bytes().await.map_err(self.err("get_range", key))?;
        if bytes.len() as u64 != range.end - range.start {
            return Err(invalid());
        }
        Ok(bytes)
    }

    async fn head(&self, key: &Key) -> Result<ObjectInfo, StoreError> {
        let meta = self
            .inner
            .head(&path(key))
            .await
            .map_err(self.err("head", key))?;
        Ok(ObjectInfo {
            key: key.clone(),
            size: meta.size,
            etag: meta.e_tag.as_deref().map(normalize_etag),
        })
    }

    async fn list(&self, prefix: Option<&Key>) -> Result<Vec<ObjectInfo>, StoreError> {
        let location = prefix.map(path);
        let metas: Vec<_> = self
            .inner
            .list(location.as_ref())
            .try_collect()
            .await
            .map_err(|e| map_os_error(e, &self.url, "list", prefix.map_or("", Key::as_str)))?;
        let mut out = Vec::with_capacity(metas.len());
        for meta in metas {
            let Ok(key) = Key::parse(meta.location.as_ref()) else {
                tracing::warn!(url = %self.url, location = %meta.location, "skipping object with a key ferry cannot name");
                continue;
            };
            if prefix.is_some_and(|p| key.strip_prefix(p).is_none()) {
                continue;
            }
            out.push(ObjectInfo {
                key,
                size: meta.size,
                etag: meta.e_tag.as_deref().map(normalize_etag),
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn list_children(&self, prefix: &Key) -> Result<Vec<String>, StoreError> {
        let listed = self
            .inner
            .list_with_delimiter(Some(&path(prefix)))
            .await
            .map_err(|e| map_os_error(e, &self.url, "list", prefix.as_str()))?;
        let mut names: Vec<String> = listed
            .common_prefixes
            .iter()
            .chain(listed.objects.iter().map(|o| &o.location))
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn delete(&self, key: &Key) -> Result<(), StoreError> {
        let _guard = if self.caps.native_update {
            None
        } else {
            Some(self.update_lock.lock().await)
        };
        match self.inner.delete(&path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_os_error(e, &self.url, "delete", key.as_str())),
        }
    }
}
