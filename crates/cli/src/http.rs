//! Serving the API over HTTP/1.1 with limits a slow or idle client cannot outwait: a connection
//! must send a request's headers within the header timeout (an idle keep-alive connection is
//! closed after it too), and at most `max_connections` are served at once. Beyond that, new
//! connections wait in the listen backlog until one ends; they are not refused. The body's
//! deadline is the API router's (`ferry_control::api::with_body_timeout`).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

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
        let socket = match accepted {
            Ok((socket, _peer)) => socket,
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
        let conn =
            http.serve_connection(TokioIo::new(socket), TowerToHyperService::new(app.clone()));
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            tokio::pin!(conn);
            // A client that goes away or times out is its own business: nothing to log.
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.wait_for(|v| *v) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
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
