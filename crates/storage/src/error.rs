//! The one error type of every storage operation, and the mapping from `object_store` errors.

use std::error::Error as StdError;
use std::fmt;
use std::ops::Range;

/// Why a storage operation failed. Messages are one line and never contain secrets.
#[derive(thiserror::Error, Debug)]
pub enum StoreError {
    /// The object does not exist.
    #[error("object `{key}` not found")]
    NotFound {
        /// The key as the caller named it.
        key: String,
    },
    /// A create-only write found the object already there.
    #[error("object `{key}` already exists (create-only write refused)")]
    AlreadyExists {
        /// The key as the caller named it.
        key: String,
    },
    /// A conditional write found a different etag than expected.
    #[error("object `{key}` changed since it was read (etag mismatch); re-read and retry")]
    PreconditionFailed {
        /// The key as the caller named it.
        key: String,
    },
    /// A byte range that does not lie within the object.
    #[error("byte range {}..{} is outside object `{key}`", range.start, range.end)]
    InvalidRange {
        /// The key as the caller named it.
        key: String,
        /// The requested range.
        range: Range<u64>,
    },
    /// A key that is not a valid [`Key`](crate::Key).
    #[error("invalid object key `{key}`: {reason}")]
    InvalidKey {
        /// The offending key (escaped).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A storage URL that cannot be opened.
    #[error("invalid storage URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL, without any query string.
        url: String,
        /// What is wrong and what to do about it.
        reason: String,
    },
    /// The store cannot be reached right now (connection refused, timeout, 5xx, throttling).
    /// Worth retrying.
    #[error("storage account {url} is unreachable ({source}); retry later")]
    Unreachable {
        /// The account URL.
        url: String,
        /// What the transport said (redacted).
        source: Cause,
    },
    /// Any other failure (permissions, bad configuration, unexpected response).
    #[error("{op} on storage account {url} failed: {source}")]
    Other {
        /// The account URL.
        url: String,
        /// The operation (`put`, `get`, ...).
        op: &'static str,
        /// What the backend said (redacted).
        source: Cause,
    },
}

impl StoreError {
    /// True for failures that may go away by themselves (the store is unreachable, timed out,
    /// answered 5xx or throttled); false for answers that will not change on retry.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unreachable { .. })
    }
}

/// The cause of an [`StoreError::Unreachable`] or [`StoreError::Other`]: the backend's error
/// flattened to one line, with URL query strings (SAS tokens, signatures) removed.
#[derive(Debug, Clone)]
pub struct Cause(String);

impl Cause {
    /// A cause from any error, redacted.
    pub fn new(message: impl fmt::Display) -> Cause {
        Cause(redact(&message.to_string()))
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for Cause {}

/// One line, with the query string of every `http(s)://` URL replaced by `?REDACTED`.
pub(crate) fn redact(message: &str) -> String {
    let one_line: String = message.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = String::with_capacity(one_line.len());
    let mut rest = one_line.as_str();
    while let Some(pos) = rest.find("http") {
        let (before, url_and_after) = rest.split_at(pos);
        out.push_str(before);
        let end = url_and_after
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ')' | '>' | ','))
            .unwrap_or(url_and_after.len());
        let url = &url_and_after[..end];
        match url.find('?') {
            Some(q) => {
                out.push_str(&url[..q]);
                out.push_str("?REDACTED");
            }
            None => out.push_str(url),
        }
        rest = &url_and_after[end..];
    }
    out.push_str(rest);
    out
}

/// Map an `object_store` error of operation `op` on `key` of account `url`.
pub(crate) fn map_os_error(
    e: object_store::Error,
    url: &str,
    op: &'static str,
    key: &str,
) -> StoreError {
    use object_store::Error as E;
    let key = key.to_owned();
    match e {
        E::NotFound { .. } => StoreError::NotFound { key },
        E::AlreadyExists { .. } => StoreError::AlreadyExists { key },
        E::Precondition { .. } | E::NotModified { .. } => StoreError::PreconditionFailed { key },
        other => {
            let cause = Cause::new(&other);
            if is_transient(&other) {
                StoreError::Unreachable {
                    url: url.to_owned(),
                    source: cause,
                }
            } else {
                StoreError::Other {
                    url: url.to_owned(),
                    op,
                    source: cause,
                }
            }
        }
    }
}

/// Connection, timeout, 5xx and throttling failures anywhere in the error's source chain.
fn is_transient(e: &(dyn StdError + 'static)) -> bool {
    use object_store::client::{HttpError, HttpErrorKind};
    let mut current: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(http) = err.downcast_ref::<HttpError>()
            && matches!(
                http.kind(),
                HttpErrorKind::Connect
                    | HttpErrorKind::Request
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted
            )
        {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            if matches!(
                io.kind(),
                K::ConnectionRefused
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::TimedOut
                    | K::BrokenPipe
                    | K::UnexpectedEof
            ) {
                return true;
            }
        }
        current = err.source();
    }
    let text = e.to_string();
    [
        "status code: 5",
        "status code: 429",
        "SlowDown",
        "ServerBusy",
        "InternalError",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_query_strings() {
        let s = redact(
            "Error performing PUT https://a.blob.core.windows.net/c/k?sv=1&sig=SECRET in 2s\n- boom",
        );
        assert_eq!(
            s,
            "Error performing PUT https://a.blob.core.windows.net/c/k?REDACTED in 2s - boom"
        );
        assert!(!s.contains("SECRET"));
    }

    #[test]
    fn maps_basic_variants() {
        let src = || -> Box<dyn StdError + Send + Sync> { "x".into() };
        let nf = object_store::Error::NotFound {
            path: "p".into(),
            source: src(),
        };
        assert!(
            matches!(map_os_error(nf, "u", "get", "k"), StoreError::NotFound { key } if key == "k")
        );
        let pre = object_store::Error::Precondition {
            path: "p".into(),
            source: src(),
        };
        assert!(matches!(
            map_os_error(pre, "u", "put", "k"),
            StoreError::PreconditionFailed { .. }
        ));
        let generic = object_store::Error::Generic {
            store: "S3",
            source: src(),
        };
        let e = map_os_error(generic, "s3://b", "put", "k");
        assert!(matches!(e, StoreError::Other { .. }) && !e.is_retryable());
    }
}
