//! Opening: invalid URLs are refused with a helpful message; an unreachable endpoint gives a
//! retryable `Unreachable`.

use bytes::Bytes;
use ferry_storage::{Key, StoreError, open, open_with_options};

fn invalid_url(url: &str) -> String {
    match open(url) {
        Err(e @ StoreError::InvalidUrl { .. }) => e.to_string(),
        Err(e) => panic!("{url}: expected InvalidUrl, got {e:?}"),
        Ok(s) => panic!("{url}: expected InvalidUrl, opened {s:?}"),
    }
}

#[test]
fn invalid_urls_say_what_to_do() {
    let msg = invalid_url("ftp://x");
    assert!(
        msg.contains("ftp")
            && msg.contains("file:///")
            && msg.contains("az://")
            && msg.contains("s3://"),
        "{msg}"
    );
    let msg = invalid_url("file://relative");
    assert!(msg.contains("file:///"), "{msg}");
    let msg = invalid_url("az://");
    assert!(
        msg.contains("container") && msg.contains("az://CONTAINER"),
        "{msg}"
    );
    let msg = invalid_url("s3://");
    assert!(msg.contains("bucket"), "{msg}");
    let msg = invalid_url("not a url");
    assert!(msg.contains("file:///"), "{msg}");
    let msg = invalid_url("az://c/p?sig=SECRET");
    assert!(
        !msg.contains("SECRET") && msg.contains("environment"),
        "{msg}"
    );
    let msg = invalid_url("az://c/a%20b");
    assert!(msg.contains("prefix"), "{msg}");
}

#[test]
fn file_urls_name_a_plain_absolute_directory() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().display().to_string();
    for url in [
        "file:relative".to_string(),
        "file:/abs".to_string(),
        format!("file://{base}/a%2F..%2F..%2Fescape"),
        format!("file://{base}/a/./b"),
        format!("file://{base}/a//b"),
        "file:///".to_string(),
    ] {
        let msg = invalid_url(&url);
        assert!(
            msg.contains("file:///") || msg.contains("plain directory"),
            "{url}: {msg}"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "{url} created something"
        );
        assert!(
            !std::path::Path::new("/relative").exists()
                && !std::path::Path::new("/escape").exists()
        );
    }
    let Ok(ferry_storage::Location::Local(d)) =
        ferry_storage::location(&format!("file://{base}/x%20y"))
    else {
        panic!("a plain directory is local")
    };
    assert_eq!(d, dir.path().join("x y"));
    assert_eq!(
        ferry_storage::location("memory://").unwrap(),
        ferry_storage::Location::Memory
    );
    assert_eq!(
        ferry_storage::location("s3://b/p").unwrap(),
        ferry_storage::Location::Remote
    );
}

#[tokio::test]
async fn unreachable_endpoint_is_retryable() {
    let store = open_with_options(
        "s3://nowhere",
        &[
            ("aws_endpoint", "http://127.0.0.1:1"),
            ("aws_allow_http", "true"),
            ("aws_access_key_id", "test"),
            ("aws_secret_access_key", "test-secret-never-shown"),
            ("aws_region", "us-east-1"),
        ],
    )
    .unwrap();
    let key = Key::parse("k").unwrap();
    let started = std::time::Instant::now();
    let err = store.put(&key, Bytes::from_static(b"x")).await.unwrap_err();
    assert!(matches!(err, StoreError::Unreachable { .. }), "{err:?}");
    assert!(err.is_retryable());
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("test-secret-never-shown"), "{shown}");
    let err = store.get(&key).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(
        started.elapsed().as_secs() < 60,
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn file_url_creates_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("a/b");
    let store = open(&format!("file://{}", root.display())).unwrap();
    assert!(root.is_dir());
    let key = Key::parse("x/y/z").unwrap();
    store.put_new(&key, Bytes::from_static(b"1")).await.unwrap();
    store.delete(&key).await.unwrap();
    assert!(
        !root.join("x").exists(),
        "empty directories are cleaned up on delete"
    );
}
