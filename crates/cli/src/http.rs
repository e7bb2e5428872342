//! Serving the API over HTTP/1.1 with limits a slow or idle client cannot outwait: a connection
//! must send a request's headers within the header timeout (an idle keep-alive connection is
//! closed after it too), and at most `max_connections` are served at once. Beyond that, new
//! connections wait in the listen backlog until one ends; they are not refused. The body's
//! deadline is the API router's (`ferry_control::api::with_body_timeout`).
//!
//! With TLS on, a connection whose first byte opens a TLS handshake is served over TLS (the
//! handshake, too, must end within the header timeout); any other is plain HTTP, served only
//! from a loopback peer: from any other it gets a 400 that says to use `https://`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::tls::ServerTls;

/// How long a client may take over what it sends, and how many connections are served at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// From the connection's start (or the end of its previous response) to the end of a
    /// request's headers.
    pub header_read_timeout: Duration,
    /// From the end of a request's headers to the end of its body.
    pub body_read_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 512,
        }
    }
}

/// Serve `app` on `listener` until `stop` turns true; then stop accepting, let each connection
/// finish the request it is serving, and return once all are closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<ServerTls>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = ferry_control::api::with_body_timeout(app, limits.body_read_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        // A free slot first, so connections beyond the cap stay in the backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = stop.wait_for(|v| *v) => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|v| *v) => break,
        };
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, or a connection reset before it was accepted: the
                // listener itself is fine, so pause a moment and go on.
                tracing::warn!(error = %e, "accept an API connection");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    _ = stop.wait_for(|v| *v) => break,
                }
            }
        };
        let (http, app, tls, mut stop) = (http.clone(), app.clone(), tls.clone(), stop.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let Some(tls) = tls else {
                return drive(&http, TokioIo::new(socket), app, stop).await;
            };
            // A client that never sends a byte or never ends its handshake is cut off as
            // one that never ends its headers.
            let opened = tokio::select! {
                opened = tokio::time::timeout(
                    limits.header_read_timeout,
                    open(socket, peer, &tls),
                ) => opened,
                _ = stop.wait_for(|v| *v) => return,
            };
            match opened {
                Ok(Some(Opened::Tls(s))) => drive(&http, TokioIo::new(s), app, stop).await,
                Ok(Some(Opened::Plain(s))) => drive(&http, TokioIo::new(s), app, stop).await,
                Ok(None) | Err(_) => {}
            }
        });
    }
    drop(listener);
    // Every connection holds a slot until it is closed.
    let _all = slots
        .acquire_many(limits.max_connections as u32)
        .await
        .expect("the semaphore is never closed");
    Ok(())
}

/// Serve one connection until it ends; when `stop` turns true, finish the request being served
/// and close.
async fn drive<I>(http: &http1::Builder, io: I, app: Router, mut stop: watch::Receiver<bool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // With upgrades: an agent's link is a WebSocket.
    let conn = http
        .serve_connection(io, TowerToHyperService::new(app))
        .with_upgrades();
    tokio::pin!(conn);
    // A client that goes away or times out is its own business: nothing to log.
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.wait_for(|v| *v) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// A connection ready for HTTP.
enum Opened {
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Plain(TcpStream),
}

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Open a connection while TLS is on: TLS if it starts a handshake, plain HTTP from a loopback
/// peer; `None` when it ended, failed its handshake or was refused.
async fn open(socket: TcpStream, peer: SocketAddr, tls: &ServerTls) -> Option<Opened> {
    let mut first = [0u8; 1];
    // Peeked, not read: the handshake or the request starts with it.
    if socket.peek(&mut first).await.ok()? == 0 {
        return None;
    }
    if first[0] == TLS_HANDSHAKE {
        let stream = tls.acceptor.accept(socket).await.ok()?;
        return Some(Opened::Tls(Box::new(stream)));
    }
    if peer.ip().to_canonical().is_loopback() {
        return Some(Opened::Plain(socket));
    }
    refuse_plain(socket, &tls.fingerprint).await;
    None
}

/// Answer plain HTTP from a peer that is not on loopback with a 400 naming the way in, then
/// read what it sent until it closes (closing with its request unread would reset the
/// connection before it reads the answer).
async fn refuse_plain(mut socket: TcpStream, fingerprint: &str) {
    let body = format!(
        "this ferry server accepts plain HTTP only from loopback; use https:// (fingerprint \
         {fingerprint})\n"
    );
    let head = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    if socket.write_all(head.as_bytes()).await.is_err()
        || socket.write_all(body.as_bytes()).await.is_err()
        || socket.shutdown().await.is_err()
    {
        return;
    }
    let mut sink = [0u8; 4096];
    let mut left: usize = 1 << 20;
    while let Ok(n @ 1..) = socket.read(&mut sink).await {
        left = left.saturating_sub(n);
        if left == 0 {
            break;
        }
    }
}
