//! A shared access signature the server mints for a host's agent, against Azurite at
//! `FERRY_TEST_AZURE_URL` (set by `scripts/test`; see `.ci/object-stores.sh`). Without it the
//! tests fail: none passes by skipping its store.
//!
//! The store under test is opened with the SAS alone (`open_with_sas` takes no account key
//! from the environment), so every answer below is Azurite judging the SAS.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use ferry_storage::{DynStore, Key, StoreError, container_sas, open_with_sas};

fn azurite_url() -> String {
    match std::env::var("FERRY_TEST_AZURE_URL") {
        Ok(url) if !url.is_empty() => {
            println!("peer: azurite");
            url
        }
        _ => panic!(
            "FERRY_TEST_AZURE_URL is not set: this test runs against Azurite. Run it with \
             scripts/test, or `source .ci/object-stores.sh` first"
        ),
    }
}

/// A prefix no other run uses.
fn fresh_prefix(url: &str) -> String {
    format!("{url}/sas-test/{}", uuid_like())
}

fn uuid_like() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{nanos:x}-{}", std::process::id())
}

fn key(s: &str) -> Key {
    Key::parse(s).unwrap()
}

fn denied(what: &str, r: Result<impl std::fmt::Debug, StoreError>) {
    match r {
        Err(e @ StoreError::Other { .. }) => {
            let text = e.to_string();
            assert!(text.contains("403"), "{what}: expected a 403, got {text}");
            assert!(
                !text.contains("sig="),
                "{what}: the error shows the SAS: {text}"
            );
        }
        other => panic!("{what}: expected a refusal (403), got {other:?}"),
    }
}

fn with_sas(url: &str, now: SystemTime, lifetime: Duration) -> DynStore {
    let sas = container_sas(url, now, lifetime)
        .unwrap()
        .expect("the Azurite environment has an account key to sign with");
    open_with_sas(url, sas.token()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sas_creates_and_reads_and_nothing_more() {
    let url = fresh_prefix(&azurite_url());
    let store = with_sas(&url, SystemTime::now(), Duration::from_secs(3600));
    let seg = key("streams/s1/0000000000000001.seg");

    store
        .put_new(&seg, Bytes::from_static(b"segment one"))
        .await
        .expect("create a new object");
    assert_eq!(
        store.get(&seg).await.unwrap(),
        Bytes::from_static(b"segment one")
    );
    assert_eq!(store.head(&seg).await.unwrap().size, 11);
    match store.put_new(&seg, Bytes::from_static(b"other")).await {
        Err(StoreError::AlreadyExists { .. }) => {}
        other => panic!("a second create of the same key: expected AlreadyExists, got {other:?}"),
    }

    denied(
        "overwrite",
        store.put(&seg, Bytes::from_static(b"other")).await,
    );
    denied("delete", store.delete(&seg).await);
    denied("list", store.list(Some(&key("streams"))).await);
    // Still the first bytes: nothing above changed the object.
    assert_eq!(
        store.get(&seg).await.unwrap(),
        Bytes::from_static(b"segment one")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_sas_is_refused() {
    let url = fresh_prefix(&azurite_url());
    let a_day_ago = SystemTime::now() - Duration::from_secs(24 * 3600);
    let store = with_sas(&url, a_day_ago, Duration::from_secs(3600));
    let k = key("streams/s1/0000000000000001.seg");
    denied(
        "create with an expired SAS",
        store.put_new(&k, Bytes::from_static(b"x")).await,
    );
    denied("read with an expired SAS", store.get(&k).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sas_reaches_no_other_container_and_cannot_be_widened() {
    let url = azurite_url();
    let sas = container_sas(&url, SystemTime::now(), Duration::from_secs(3600))
        .unwrap()
        .unwrap();
    let k = key("sas-test/elsewhere.seg");

    let other = open_with_sas("az://ferry-sas-other", sas.token()).unwrap();
    denied(
        "create in another container",
        other.put_new(&k, Bytes::from_static(b"x")).await,
    );

    let widened = sas.token().replace("sp=rc", "sp=rcwd");
    assert_ne!(widened, sas.token());
    let store = open_with_sas(&url, &widened).unwrap();
    denied(
        "a token whose permissions were edited",
        store.put_new(&k, Bytes::from_static(b"x")).await,
    );
}

#[test]
fn a_sas_opens_only_azure() {
    let dir = tempfile::tempdir().unwrap();
    let e = open_with_sas(&format!("file://{}", dir.path().display()), "sv=x").unwrap_err();
    assert!(e.to_string().contains("only an Azure account"), "{e}");
    assert!(
        container_sas("file:///tmp/x", SystemTime::now(), Duration::from_secs(60))
            .unwrap()
            .is_none()
    );
}
