//! Protocol-level tests with a hand-written client: errors, options, pipelining, closing.

mod common;

use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ferry_nbd::protocol::*;
use ferry_nbd::{Export, FileExport, NbdListener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

const MIB: u64 = 1 << 20;

async fn unix_client(server: &Server) -> Result<RawClient<UnixStream>> {
    let s = UnixStream::connect(&server.socket).await?;
    RawClient::greet(s, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_and_bad_requests_get_errors_and_the_connection_survives() -> Result {
    let server = Server::start_with(true).await?;
    server.file_export("d", MIB)?;
    let tcp = TcpStream::connect(server.tcp.unwrap_or_else(|| unreachable!())).await?;
    let mut c = RawClient::greet(tcp, FLAG_C_FIXED_NEWSTYLE).await?;
    assert_eq!(c.go("d").await?, MIB);
    c.request(CMD_READ, 1, MIB - 512, 4096).await?;
    assert_eq!(
        c.reply().await?,
        SimpleReply {
            error: EINVAL,
            handle: 1
        }
    );
    c.request(CMD_READ, 2, u64::MAX - 10, 4096).await?;
    assert_eq!(
        c.reply().await?,
        SimpleReply {
            error: EINVAL,
            handle: 2
        }
    );
    c.request(CMD_READ, 3, 0, MAX_PAYLOAD + 1).await?;
    assert_eq!(
        c.reply().await?,
        SimpleReply {
            error: EINVAL,
            handle: 3
        }
    );
    c.request(CMD_TRIM, 4, MIB, 1).await?;
    assert_eq!(
        c.reply().await?,
        SimpleReply {
            error: EINVAL,
            handle: 4
        }
    );
    c.request(CMD_WRITE_ZEROES, 5, MIB, 1).await?;
    assert_eq!(
        c.reply().await?,
        SimpleReply {
            error: ENOSPC,
            handle: 5
        }
    );
    c.request(99, 6, 0, 0).await?;
    assert_eq!(
        c.reply().await?,
        SimpleReply {
            error: EINVAL,
            handle: 6
        }
    );
    // A write past the end: the payload is consumed, the reply is ENOSPC.
    c.request(CMD_WRITE, 7, MIB - 100, 200).await?;
    c.s.write_all(&[0xee; 200]).await?;
    assert_eq!(
        c.reply().await?,
        SimpleReply {
            error: ENOSPC,
            handle: 7
        }
    );
    // An oversized write: the payload is consumed (not buffered), the reply is EINVAL.
    c.request(CMD_WRITE, 8, 0, MAX_PAYLOAD + 4096).await?;
    let payload = vec![0x11u8; (MAX_PAYLOAD + 4096) as usize];
    c.s.write_all(&payload).await?;
    assert_eq!(
        c.reply().await?,
        SimpleReply {
            error: EINVAL,
            handle: 8
        }
    );
    // Still usable.
    c.request(CMD_WRITE, 9, 512, 3).await?;
    c.s.write_all(b"abc").await?;
    assert_eq!(
        c.reply().await?,
        SimpleReply {
            error: 0,
            handle: 9
        }
    );
    assert_eq!(c.read(10, 510, 6).await?, b"\0\0abc\0");
    c.request(CMD_DISC, 11, 0, 0).await?;
    assert!(c.closed().await);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_are_answered_or_politely_refused() -> Result {
    let server = Server::start().await?;
    server.file_export("d", 3 * MIB)?;
    let mut c = unix_client(&server).await?;
    // Oversized option data: refused with TOO_BIG, the handshake continues.
    c.option(OPT_LIST, &vec![0u8; 1 << 20]).await?;
    assert_eq!(c.option_reply().await?.1, REP_ERR_TOO_BIG);
    for opt in [
        OPT_STRUCTURED_REPLY,
        OPT_EXTENDED_HEADERS,
        OPT_LIST_META_CONTEXT,
        OPT_SET_META_CONTEXT,
        OPT_STARTTLS,
        4242,
    ] {
        c.option(opt, &[]).await?;
        let (o, kind, _) = c.option_reply().await?;
        assert_eq!((o, kind), (opt, REP_ERR_UNSUP));
    }
    c.option(OPT_LIST, &[1]).await?;
    assert_eq!(c.option_reply().await?.1, REP_ERR_INVALID);
    c.option(OPT_LIST, &[]).await?;
    assert_eq!(
        c.option_reply().await?,
        (OPT_LIST, REP_SERVER, b"\0\0\0\x01d".to_vec())
    );
    assert_eq!(c.option_reply().await?, (OPT_LIST, REP_ACK, vec![]));
    // INFO with a block size request.
    let info = [0, 0, 0, 1, b'd', 0, 2, 0, INFO_BLOCK_SIZE as u8, 0, 1];
    c.option(OPT_INFO, &info).await?;
    let (_, kind, data) = c.option_reply().await?;
    assert_eq!(kind, REP_INFO);
    assert_eq!(data[..10], [0, 0, 0, 0, 0, 0, 0, 0x30, 0, 0]);
    let (_, kind, data) = c.option_reply().await?;
    assert_eq!(kind, REP_INFO);
    assert_eq!(data, [0, 3, 0, 0, 0, 1, 0, 0, 16, 0, 2, 0, 0, 0]);
    assert_eq!(c.option_reply().await?.1, REP_ACK);
    c.option(OPT_GO, &[0, 0, 0, 1, b'x', 0, 0]).await?;
    assert_eq!(c.option_reply().await?.1, REP_ERR_UNKNOWN);
    c.option(OPT_GO, &[0, 0, 0, 9, b'x']).await?;
    assert_eq!(c.option_reply().await?.1, REP_ERR_INVALID);
    c.option(OPT_ABORT, &[]).await?;
    assert_eq!(c.option_reply().await?, (OPT_ABORT, REP_ACK, vec![]));
    assert!(c.closed().await);

    // Old-style NBD_OPT_EXPORT_NAME, with and without the 124 zero bytes.
    let mut c = unix_client(&server).await?;
    c.option(OPT_EXPORT_NAME, b"d").await?;
    assert_eq!(c.s.read_u64().await?, 3 * MIB);
    assert_eq!(c.s.read_u16().await?, TRANSMISSION_FLAGS);
    assert_eq!(c.read(1, 0, 4).await?, [0; 4]);
    let s = UnixStream::connect(&server.socket).await?;
    let mut c = RawClient::greet(s, FLAG_C_FIXED_NEWSTYLE).await?;
    c.option(OPT_EXPORT_NAME, b"d").await?;
    let mut reply = [0xffu8; 8 + 2 + 124];
    c.s.read_exact(&mut reply).await?;
    assert!(reply[10..].iter().all(|b| *b == 0));
    // Unknown name with EXPORT_NAME: no reply, the connection is closed.
    let mut c = unix_client(&server).await?;
    c.option(OPT_EXPORT_NAME, b"nope").await?;
    assert!(c.closed().await);
    // Unknown client flags: closed.
    let s = UnixStream::connect(&server.socket).await?;
    let mut c = RawClient::greet(s, 1 << 7).await?;
    assert!(c.closed().await);
    // The server is still up.
    let mut c = unix_client(&server).await?;
    assert_eq!(c.go("d").await?, 3 * MIB);
    server.shutdown().await
}

/// An export whose writes wait (up to a deadline) until `want` writes are in progress.
struct Gate {
    inner: FileExport,
    want: usize,
    state: Mutex<(usize, usize)>, // (in progress, peak)
    cv: Condvar,
}

impl Export for Gate {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read(offset, buf)
    }
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 += 1;
        s.1 = s.1.max(s.0);
        self.cv.notify_all();
        while s.1 < self.want && Instant::now() < deadline {
            s = self
                .cv
                .wait_timeout(s, Duration::from_millis(100))
                .map_or_else(|p| p.into_inner().0, |r| r.0);
        }
        s.0 -= 1;
        drop(s);
        self.inner.write(offset, data, fua)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.inner.trim(offset, len, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool, no_hole: bool) -> io::Result<()> {
        self.inner.write_zeroes(offset, len, fua, no_hole)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_one_connection_run_concurrently_and_reply_by_handle() -> Result {
    let server = Server::start().await?;
    let gate = Arc::new(Gate {
        inner: FileExport::create(&server.dir.path().join("g"), MIB)?,
        want: 16,
        state: Mutex::new((0, 0)),
        cv: Condvar::new(),
    });
    server.exports.insert("g", gate.clone());
    let mut c = unix_client(&server).await?;
    c.go("g").await?;
    // 16 pipelined writes: they can only complete if all 16 are in progress together.
    let mut requests = Vec::new();
    for h in 0..16u64 {
        let req = Request {
            flags: CMD_FLAG_FUA,
            command: CMD_WRITE,
            handle: 100 + h,
            offset: h * 4096,
            length: 4096,
        };
        requests.extend_from_slice(&req.encode());
        requests.extend_from_slice(&[h as u8 + 1; 4096]);
    }
    c.s.write_all(&requests).await?;
    let mut handles = Vec::new();
    for _ in 0..16 {
        let r = c.reply().await?;
        assert_eq!(r.error, 0);
        handles.push(r.handle);
    }
    handles.sort_unstable();
    assert_eq!(handles, (100..116).collect::<Vec<_>>());
    let peak = gate.state.lock().unwrap_or_else(|p| p.into_inner()).1;
    assert_eq!(peak, 16, "writes did not run concurrently");
    for h in 0..16u64 {
        assert!(
            c.read(h, h * 4096, 4096)
                .await?
                .iter()
                .all(|b| u64::from(*b) == h + 1)
        );
    }
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_export_closes_only_its_connections() -> Result {
    let server = Server::start().await?;
    server.file_export("a", MIB)?;
    server.file_export("b", MIB)?;
    let mut a = unix_client(&server).await?;
    a.go("a").await?;
    let mut b = unix_client(&server).await?;
    b.go("b").await?;
    assert_eq!(a.read(1, 0, 512).await?.len(), 512);
    assert_eq!(server.exports.connections("a"), 1);
    assert!(server.exports.remove("a").is_some());
    assert!(
        a.closed().await,
        "connection to a removed export stays open"
    );
    assert_eq!(b.read(2, 0, 512).await?.len(), 512);
    assert_eq!(server.exports.names(), ["b"]);
    // Closing ends with the server dropping its side.
    let exports = server.exports.clone();
    drop(b);
    wait_until(Duration::from_secs(10), || exports.connections("b") == 0).await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_connections_and_removes_the_socket() -> Result {
    let server = Server::start().await?;
    server.file_export("d", MIB)?;
    let mut c = unix_client(&server).await?;
    c.go("d").await?;
    let mut idle = unix_client(&server).await?; // still haggling
    let socket = server.socket.clone();
    server.shutdown().await?;
    assert!(c.closed().await);
    assert!(idle.closed().await);
    assert!(!socket.exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_file_is_replaced() -> Result {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("s");
    std::fs::write(&path, b"stale")?;
    let listener = NbdListener::bind_unix(&path)?;
    UnixStream::connect(&path).await?;
    drop(listener);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalled_mid_payload_does_not_hold_up_shutdown() -> Result {
    let server = Server::start().await?;
    server.file_export("d", MIB)?;
    let mut c = unix_client(&server).await?;
    c.go("d").await?;
    // A WRITE of 64 KiB whose payload stops after 100 bytes.
    c.request(CMD_WRITE, 7, 0, 64 * 1024).await?;
    c.s.write_all(&[0xab; 100]).await?;
    c.s.flush().await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .map_err(|_| io::Error::other("shutdown waited on a stalled client"))??;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(c.closed().await);
    Ok(())
}
