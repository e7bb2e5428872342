//! The conformance suite against every backend: local filesystem, memory, scoped views,
//! Azurite and S3 (moto) at `FERRY_TEST_AZURE_URL` / `FERRY_TEST_S3_URL`, which `scripts/test`
//! sets (see `.ci/object-stores.sh`). Without them the cloud tests fail: none passes by
//! skipping its store.

use ferry_storage::{DynStore, Key, conformance, open, scoped};

async fn run(store: DynStore) {
    if let Err(e) = conformance::run_all(store).await {
        panic!("conformance failures:\n{e}");
    }
}

/// The URL of the emulated cloud store `name` (`scripts/test` counts the `peer:` lines).
fn cloud_url(var: &str, name: &str) -> String {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => {
            println!("peer: {name}");
            url
        }
        _ => panic!(
            "{var} is not set: this test runs against {name}. Run it with scripts/test, which \
             starts Azurite and the S3 server, or `source .ci/object-stores.sh` first"
        ),
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
    let url = cloud_url("FERRY_TEST_AZURE_URL", "azurite");
    run(open(&url).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_with_url_prefix() {
    let url = cloud_url("FERRY_TEST_AZURE_URL", "azurite");
    run(open(&format!("{url}/prefixed/run")).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3() {
    let url = cloud_url("FERRY_TEST_S3_URL", "s3");
    run(open(&url).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_with_url_prefix() {
    let url = cloud_url("FERRY_TEST_S3_URL", "s3");
    run(open(&format!("{url}/prefixed/run")).unwrap()).await;
}
