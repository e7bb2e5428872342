//! Checks of the write operations: `put_new`, `put`, `put_if_match`, `delete`.

use bytes::Bytes;

use super::{CheckResult, ensure, expect_err, op};
use crate::{DynStore, ETag, Key, StoreError};

/// `put_new` creates; a second `put_new` fails with `AlreadyExists` and the first content stays.
pub async fn check_put_new(store: &DynStore, base: &Key) -> CheckResult {
    let key = base.join("once");
    let etag = op(
        "put_new",
        store.put_new(&key, Bytes::from_static(b"first")).await,
    )?;
    ensure(!etag.0.is_empty() && !etag.0.contains('"'), || {
        format!("put_new returned a bad etag {etag:?}")
    })?;
    let again = store.put_new(&key, Bytes::from_static(b"second")).await;
    expect_err("second put_new", again, "AlreadyExists", |e| {
        matches!(e, StoreError::AlreadyExists { .. })
    })?;
    let got = op("get", store.get(&key).await)?;
    ensure(got == "first", || {
        format!("after a refused put_new the content is {got:?}, not \"first\"")
    })
}

/// 8 tasks `put_new` the same key at once: exactly one wins, and its content is what is stored.
pub async fn check_put_new_race(store: &DynStore, base: &Key) -> CheckResult {
    let key = base.join("race");
    let tasks: Vec<_> = (0..8u8)
        .map(|i| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move { (i, store.put_new(&key, Bytes::from(vec![i; 1024])).await) })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        let (i, r) = t.await.map_err(|e| format!("task panicked: {e}"))?;
        match r {
            Ok(_) => winners.push(i),
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(format!("racing put_new {i}: unexpected error {e} ({e:?})")),
        }
    }
    ensure(winners.len() == 1, || {
        format!("{} racing put_new calls won: {winners:?}", winners.len())
    })?;
    let got = op("get", store.get(&key).await)?;
    ensure(got == vec![winners[0]; 1024], || {
        "stored content is not the winner's".into()
    })
}

/// `put` creates and overwrites, returning a new etag.
pub async fn check_put(store: &DynStore, base: &Key) -> CheckResult {
    let key = base.join("over");
    let e1 = op("put", store.put(&key, Bytes::from_static(b"one")).await)?;
    let e2 = op(
        "put again",
        store.put(&key, Bytes::from_static(b"two, longer")).await,
    )?;
    ensure(e1 != e2, || format!("overwrite kept the etag {e1:?}"))?;
    let got = op("get", store.get(&key).await)?;
    ensure(got == "two, longer", || {
        format!("after overwrite got {got:?}")
    })
}

/// `put_if_match`: right etag → new etag; stale etag → `PreconditionFailed`, content unchanged;
/// missing key → `NotFound`.
pub async fn check_put_if_match(store: &DynStore, base: &Key) -> CheckResult {
    let key = base.join("cas");
    let e1 = op("put", store.put(&key, Bytes::from_static(b"v1")).await)?;
    let e2 = op(
        "put_if_match (right etag)",
        store
            .put_if_match(&key, Bytes::from_static(b"v2"), &e1)
            .await,
    )?;
    ensure(e1 != e2, || {
        format!("put_if_match returned the old etag {e1:?}")
    })?;
    let head = op("head", store.head(&key).await)?;
    ensure(head.etag.as_ref() == Some(&e2), || {
        format!("head etag {:?} != put_if_match etag {e2:?}", head.etag)
    })?;
    let stale = store
        .put_if_match(&key, Bytes::from_static(b"v3"), &e1)
        .await;
    expect_err(
        "put_if_match (stale etag)",
        stale,
        "PreconditionFailed",
        |e| matches!(e, StoreError::PreconditionFailed { .. }),
    )?;
    let got = op("get", store.get(&key).await)?;
    ensure(got == "v2", || {
        format!("a refused put_if_match changed the content to {got:?}")
    })?;
    let bogus = ETag("0000000000000000000000000000dead".into());
    let wrong = store
        .put_if_match(&key, Bytes::from_static(b"v4"), &bogus)
        .await;
    expect_err(
        "put_if_match (made-up etag)",
        wrong,
        "PreconditionFailed",
        |e| matches!(e, StoreError::PreconditionFailed { .. }),
    )?;
    let missing = store
        .put_if_match(&base.join("absent"), Bytes::from_static(b"x"), &e2)
        .await;
    expect_err("put_if_match (missing key)", missing, "NotFound", |e| {
        matches!(e, StoreError::NotFound { .. })
    })?;
    expect_err(
        "get of key never written",
        store.get(&base.join("absent")).await,
        "NotFound",
        |e| matches!(e, StoreError::NotFound { .. }),
    )
}

/// `delete` removes (then `get`/`head` → `NotFound`, `put_new` works again) and is idempotent.
pub async fn check_delete(store: &DynStore, base: &Key) -> CheckResult {
    let key = base.join("doomed");
    op("put", store.put(&key, Bytes::from_static(b"x")).await)?;
    op("delete", store.delete(&key).await)?;
    let nf = |e: &StoreError| matches!(e, StoreError::NotFound { .. });
    expect_err("get after delete", store.get(&key).await, "NotFound", nf)?;
    expect_err("head after delete", store.head(&key).await, "NotFound", nf)?;
    op("delete again", store.delete(&key).await)?;
    op(
        "delete of a key never written",
        store.delete(&base.join("never")).await,
    )?;
    op(
        "put_new after delete",
        store.put_new(&key, Bytes::from_static(b"y")).await,
    )?;
    let listed = op("list", store.list(Some(base)).await)?;
    ensure(listed.len() == 1, || {
        format!("after delete+put_new list shows {listed:?}")
    })
}
