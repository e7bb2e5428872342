//! A peer that accepts connections and never answers: every call fails in a bounded time, as
//! unreachable (worth retrying later), instead of hanging.

use std::io::Read;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_storage::{Key, StoreError, open_with_options};

/// Accept every connection, read what comes, answer nothing.
fn stalled_peer() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    port
}

#[tokio::test]
async fn calls_to_a_peer_that_never_answers_fail_in_time() {
    let endpoint = format!("http://127.0.0.1:{}", stalled_peer());
    let options = [
        ("aws_endpoint", endpoint.as_str()),
        ("aws_allow_http", "true"),
        ("aws_access_key_id", "test"),
        ("aws_secret_access_key", "test"),
        ("aws_region", "us-east-1"),
        // The default is 30 s; the same path, shorter.
        ("aws_read_timeout", "1s"),
    ];
    let store = open_with_options("s3://bucket/prefix", &options).unwrap();
    let key = Key::parse("a/b").unwrap();
    let started = Instant::now();
    let got = store.get(&key).await;
    let put = store.put_new(&key, Bytes::from_static(b"x")).await;
    let listed = store.list(None).await;
    let took = started.elapsed();
    for result in [got.map(|_| ()), put.map(|_| ()), listed.map(|_| ())] {
        let e = result.expect_err("a peer that never answers");
        assert!(
            matches!(e, StoreError::Unreachable { .. }) && e.is_retryable(),
            "{e}"
        );
    }
    // Each call: a few attempts of 1 s and their backoffs.
    assert!(took < Duration::from_secs(30), "three calls took {took:?}");
}
