//! `FaultyStore` switches, the `retry` helper, and `scoped` isolation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_storage::fault::{FaultyStore, Op};
use ferry_storage::retry::{RetryPolicy, retry};
use ferry_storage::{Cause, DynStore, Key, Store, StoreError, open, scoped};

fn key(s: &str) -> Key {
    Key::parse(s).unwrap()
}

fn quick() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    }
}

#[tokio::test]
async fn offline_then_online() {
    let faulty = Arc::new(FaultyStore::new(open("memory://").unwrap()));
    faulty
        .put(&key("a"), Bytes::from_static(b"1"))
        .await
        .unwrap();
    faulty.set_offline(true);
    for err in [
        faulty.get(&key("a")).await.unwrap_err(),
        faulty.put(&key("b"), Bytes::new()).await.unwrap_err(),
        faulty.list(None).await.unwrap_err(),
    ] {
        assert!(
            matches!(err, StoreError::Unreachable { .. }) && err.is_retryable(),
            "{err:?}"
        );
    }
    faulty.set_offline(false);
    assert_eq!(faulty.get(&key("a")).await.unwrap(), "1");
    assert_eq!(faulty.calls(Op::Get), 2);
    assert_eq!(faulty.calls(Op::Put), 2);
}

#[tokio::test]
async fn fail_next_latency_and_retry() {
    let faulty = Arc::new(FaultyStore::new(open("memory://").unwrap()));
    let store: DynStore = faulty.clone();
    store
        .put(&key("a"), Bytes::from_static(b"1"))
        .await
        .unwrap();
    faulty.fail_next(2, Some(Op::Get));
    assert!(
        store.head(&key("a")).await.is_ok(),
        "the filter spares other ops"
    );
    let a = key("a");
    let got = retry("get a", quick(), || store.get(&a)).await.unwrap();
    assert_eq!(got, "1");
    assert_eq!(faulty.calls(Op::Get), 3);

    faulty.fail_next(10, None);
    let err = retry("get a", quick(), || store.get(&a)).await.unwrap_err();
    assert!(err.is_retryable());
    assert_eq!(faulty.calls(Op::Get), 3 + 4, "gives up after max_attempts");
    faulty.fail_next(0, None);

    faulty.set_latency(Duration::from_millis(50));
    let t = Instant::now();
    store.head(&key("a")).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(50));
}

#[tokio::test]
async fn retry_gives_up_at_once_on_permanent_errors() {
    let attempts = AtomicU32::new(0);
    let err = retry("get missing", quick(), || async {
        attempts.fetch_add(1, Ordering::SeqCst);
        Err::<(), _>(StoreError::NotFound { key: "k".into() })
    })
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }));
    assert_eq!(attempts.load(Ordering::SeqCst), 1);

    let attempts = AtomicU32::new(0);
    let ok = retry("flaky", quick(), || async {
        if attempts.fetch_add(1, Ordering::SeqCst) < 2 {
            Err(StoreError::Unreachable {
                url: "memory://".into(),
                source: Cause::new("down"),
            })
        } else {
            Ok(7)
        }
    })
    .await
    .unwrap();
    assert_eq!((ok, attempts.load(Ordering::SeqCst)), (7, 3));
}

#[tokio::test]
async fn scoped_view_is_confined() {
    let account = open("memory://").unwrap();
    account
        .put(&key("outside"), Bytes::from_static(b"o"))
        .await
        .unwrap();
    account
        .put(&key("cache-other/x"), Bytes::from_static(b"o"))
        .await
        .unwrap();
    account
        .put(&key("cache/mine"), Bytes::from_static(b"m"))
        .await
        .unwrap();
    let view = scoped(account.clone(), key("cache"));

    let listed: Vec<String> = view
        .list(None)
        .await
        .unwrap()
        .iter()
        .map(|i| i.key.to_string())
        .collect();
    assert_eq!(listed, ["mine"]);
    assert_eq!(view.get(&key("mine")).await.unwrap(), "m");
    assert!(matches!(
        view.get(&key("outside")).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(
        Key::parse("../outside").is_err(),
        "no key can climb out of the view"
    );

    view.put(&key("outside"), Bytes::from_static(b"shadow"))
        .await
        .unwrap();
    view.delete(&key("cache-other/x")).await.unwrap();
    assert_eq!(account.get(&key("outside")).await.unwrap(), "o");
    assert_eq!(account.get(&key("cache-other/x")).await.unwrap(), "o");
    assert_eq!(account.get(&key("cache/outside")).await.unwrap(), "shadow");
    assert_eq!(
        view.head(&key("outside")).await.unwrap().key,
        key("outside")
    );
    assert!(view.url().ends_with("/cache"), "{}", view.url());
}
