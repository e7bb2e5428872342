//! The API over HTTP against clients that misbehave, on raw sockets: a client that sends half
//! its headers is cut off after the header timeout while others are served; connections beyond
//! the cap wait until a slot is free; a body over the limit gets 413, a body that does not
//! arrive in time 408, a method the route lacks 405, each with the API's JSON error, and none
//! of them changes anything.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// A server whose clients get one second for their headers and one for their bodies.
fn strict_server(dir: &std::path::Path, max_connections: usize) -> Server {
    Server::start_with_config(
        &dir.join("data"),
        Vec::new(),
        &format!(
            r#"{{"http_header_timeout_seconds": 1, "http_body_timeout_seconds": 1,
                "http_max_connections": {max_connections}}}"#
        ),
    )
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

/// Read until the server closes the connection; `None` if it did not within the read timeout.
fn read_to_close(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut all = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(all),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Some(all),
            Err(_) => return None,
        }
    }
}

/// Status, headers (lowercase names) and body of a response read to the connection's close.
fn response(raw: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_lowercase(), body.to_string())
}

/// The JSON error of a response: `{"error": "..."}` and nothing else.
fn json_error(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    let obj = v.as_object().expect("a JSON object");
    assert_eq!(obj.len(), 1, "{v}");
    obj["error"].as_str().expect("an error message").to_string()
}

/// `GET /healthz` on a new connection: the time it took, or a panic if it failed.
fn healthz(port: u16) -> Duration {
    let t = Instant::now();
    let mut s = connect(port);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let raw = read_to_close(&mut s).expect("an answer to GET /healthz");
    let (status, _, body) = response(&raw);
    assert_eq!((status, body.as_str()), (200, "ok"));
    t.elapsed()
}

#[test]
fn slow_header_clients_are_cut_off_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let s = strict_server(dir.path(), 512);

    // Fifty clients each send half a request line and then nothing.
    let start = Instant::now();
    let slow: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut c = connect(s.port);
            c.write_all(b"GET /v1/vms HT").unwrap();
            c
        })
        .collect();
    // Each is closed by the server after the header timeout (1 s), not before, and not
    // much after; normal requests are answered quickly all the while.
    let readers: Vec<_> = slow
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                let got = read_to_close(&mut c);
                (got, start.elapsed())
            })
        })
        .collect();
    let mut served = 0;
    while !readers.iter().all(|r| r.is_finished()) {
        let took = healthz(s.port);
        assert!(took < Duration::from_secs(2), "GET /healthz took {took:?}");
        served += 1;
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the slow clients were not cut off within 30 s"
        );
    }
    assert!(served > 0);
    for r in readers {
        let (got, at) = r.join().unwrap();
        let got = got.expect("the server closed the slow connection");
        // hyper closes without a response, or with a 408; never a 200.
        let (status, _, _) = response(&got);
        assert!(
            status == 0 || status == 408,
            "{}",
            String::from_utf8_lossy(&got)
        );
        assert!(
            at >= Duration::from_millis(900) && at < Duration::from_secs(10),
            "a slow client was cut off after {at:?}"
        );
    }
    // The server is still fine.
    healthz(s.port);
}

#[test]
fn connections_beyond_the_cap_wait_until_one_ends() {
    let dir = tempfile::tempdir().unwrap();
    let s = strict_server(dir.path(), 4);
    // Four idle connections take every slot; a fifth is accepted only once the header
    // timeout has closed them, and then it is served.
    let start = Instant::now();
    let idle: Vec<TcpStream> = (0..4).map(|_| connect(s.port)).collect();
    let took = healthz(s.port);
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "the fifth connection was served after {took:?}, before a slot was free"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    drop(idle);
    healthz(s.port);
}

#[test]
fn large_slow_and_misdirected_requests_get_json_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = strict_server(dir.path(), 512);
    let auth = format!("Authorization: Bearer {}\r\n", s.token);

    // A declared length over the limit: 413 before the body is sent.
    let mut c = connect(s.port);
    c.write_all(
        format!(
            "POST /v1/groups HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: 10485760\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let (status, head, body) = response(&read_to_close(&mut c).unwrap());
    assert_eq!(status, 413, "{head}{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let msg = json_error(&body);
    assert!(msg.contains("10485760") && msg.contains("limit"), "{msg}");

    // A chunked body that grows over the limit: 413 once the limit is passed.
    let mut c = connect(s.port);
    let n = (2 << 20) + 1;
    let mut req = format!(
        "POST /v1/groups HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n{n:x}\r\n"
    )
    .into_bytes();
    req.extend(std::iter::repeat_n(b' ', n));
    c.write_all(&req).unwrap();
    let (status, _, body) = response(&read_to_close(&mut c).unwrap());
    assert_eq!(status, 413, "{body}");
    assert!(json_error(&body).contains("limit"), "{body}");

    // A body that stops halfway: 408 after the body timeout (1 s).
    let mut c = connect(s.port);
    let t = Instant::now();
    c.write_all(
        format!(
            "POST /v1/groups HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: 40\r\n\r\n{{\"name\": \"rg9\","
        )
        .as_bytes(),
    )
    .unwrap();
    let (status, _, body) = response(&read_to_close(&mut c).unwrap());
    assert_eq!(status, 408, "{body}");
    assert!(
        json_error(&body).contains("did not arrive within 1 s"),
        "{body}"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );

    // A method the route does not have: 405 naming those it has, with `Allow`.
    for (method, path, allowed) in [
        ("POST", "/v1/regions", "GET"),
        ("PUT", "/v1/groups", "GET or POST"),
        ("DELETE", "/healthz", "GET"),
        ("POST", "/", "GET"),
    ] {
        let (status, body) = s.http(method, path, Some("{}"), true);
        assert_eq!(status, 405, "{method} {path}: {body}");
        let msg = json_error(&body);
        assert!(
            msg.contains(method) && msg.contains(path) && msg.ends_with(&format!("use {allowed}")),
            "{method} {path}: {msg}"
        );
    }
    let mut c = connect(s.port);
    c.write_all(
        format!("PATCH /v1/groups HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let (status, head, _) = response(&read_to_close(&mut c).unwrap());
    assert_eq!(status, 405);
    assert!(head.contains("allow: get,head,post"), "{head}");
    // Without the token, the API's routes say nothing about their methods.
    let (status, body) = s.http("PUT", "/v1/groups", Some("{}"), false);
    assert_eq!(status, 401, "{body}");

    // None of it created anything, and normal requests still work.
    assert_eq!(s.json(&["group", "list"]).as_array().unwrap().len(), 0);
    s.ok(&["group", "create", "rg1", "--region", "east"]);
    assert_eq!(s.json(&["group", "list"]).as_array().unwrap().len(), 1);
}
