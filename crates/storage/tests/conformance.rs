//! The conformance suite against every backend: local filesystem, memory, scoped views, and —
//! when `FERRY_TEST_AZURE_URL` / `FERRY_TEST_S3_URL` are set (see `.ci/object-stores.sh`) —
//! Azurite and S3 (moto). With `CI` set, a missing cloud URL fails instead of skipping.

use ferry_storage::{DynStore, Key, conformance, open, scoped};

async fn run(store: DynStore) {
    if let Err(e) = conformance::run_all(store).await {
        panic!("conformance failures:\n{e}");
    }
}

fn cloud_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "{var} is not set but CI is: CI must run every backend (source .ci/object-stores.sh)"
            )
        }
        _ => {
            println!("skipped: set {var} (see .ci/object-stores.sh)");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    run(open(&format!("file://{}", dir.path().join("account").display())).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory() {
    run(open("memory://").unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_memory() {
    run(scoped(
        open("memory://").unwrap(),
        Key::parse("tenant/cache").unwrap(),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_local_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&format!("file://{}", dir.path().display())).unwrap();
    run(scoped(store, Key::parse("agents/a1").unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure() {
    let Some(url) = cloud_url("FERRY_TEST_AZURE_URL") else {
        return;
    };
    run(open(&url).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_with_url_prefix() {
    let Some(url) = cloud_url("FERRY_TEST_AZURE_URL") else {
        return;
    };
    run(open(&format!("{url}/prefixed/run")).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3() {
    let Some(url) = cloud_url("FERRY_TEST_S3_URL") else {
        return;
    };
    run(open(&url).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_with_url_prefix() {
    let Some(url) = cloud_url("FERRY_TEST_S3_URL") else {
        return;
    };
    run(open(&format!("{url}/prefixed/run")).unwrap()).await;
}
