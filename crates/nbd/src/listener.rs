//! Listening sockets: binding, the accept loop, and one task per connection.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, BufReader, BufWriter};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::error::NbdError;
use crate::exports::Exports;
use crate::handshake::{Outcome, negotiate};
use crate::transmission::transmit;

const SOCKET_BUFFER: usize = 256 << 10;

/// A bound NBD listening socket; call [`NbdListener::serve`] to accept clients.
///
/// Binding happens in the constructor, so once it returns clients can connect (they wait in
/// the backlog until `serve` runs).
#[derive(Debug)]
pub struct NbdListener {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl NbdListener {
    /// Binds a unix socket at `path`, removing a stale socket file first.
    pub fn bind_unix(path: &Path) -> Result<Self, NbdError> {
        let bind_err = |source| NbdError::Bind {
            what: path.display().to_string(),
            source,
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind_err(e)),
        }
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        Ok(Self {
            inner: Inner::Unix(listener, path.to_owned()),
        })
    }

    /// Binds a TCP socket at `addr` (port 0 picks a free port; see [`Self::local_addr`]).
    pub async fn bind_tcp(addr: SocketAddr) -> Result<Self, NbdError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| NbdError::Bind {
                what: addr.to_string(),
                source,
            })?;
        Ok(Self::from_tcp(listener))
    }

    /// Wraps an already bound TCP listener.
    pub fn from_tcp(listener: TcpListener) -> Self {
        Self {
            inner: Inner::Tcp(listener),
        }
    }

    /// The bound TCP address, or `None` for a unix socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.inner {
            Inner::Tcp(l) => l.local_addr().ok(),
            Inner::Unix(..) => None,
        }
    }

    /// Accepts clients until `shutdown` becomes `true`, then waits for every connection to
    /// finish its in-flight requests and close. A unix socket file is removed at the end.
    pub async fn serve(
        self,
        exports: Arc<Exports>,
        mut shutdown: watch::Receiver<bool>,
    ) -> io::Result<()> {
        let mut connections = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                biased;
                _ = shutdown_requested(&mut shutdown) => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                a = self.accept() => a,
            };
            let (reader, writer, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "NBD accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let exports = exports.clone();
            let shutdown = shutdown.clone();
            connections.spawn(async move {
                tracing::debug!(%peer, "NBD client connected");
                if let Err(e) = serve_connection(reader, writer, exports, shutdown).await {
                    tracing::info!(%peer, error = %e, "NBD connection ended with an error");
                }
            });
        }
        while connections.join_next().await.is_some() {}
        if let Inner::Unix(_, path) = &self.inner {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }

    async fn accept(&self) -> io::Result<(BoxRead, BoxWrite, String)> {
        match &self.inner {
            Inner::Unix(l, path) => {
                let (s, _) = l.accept().await?;
                let (r, w) = s.into_split();
                Ok((Box::new(r), Box::new(w), path.display().to_string()))
            }
            Inner::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                s.set_nodelay(true)?;
                let (r, w) = s.into_split();
                Ok((Box::new(r), Box::new(w), peer.to_string()))
            }
        }
    }
}

type BoxRead = Box<dyn AsyncRead + Unpin + Send>;
type BoxWrite = Box<dyn AsyncWrite + Unpin + Send>;

/// Binds `path` (removing a stale socket) and serves `exports` until `shutdown` flips.
///
/// The socket exists as soon as this function is called and polled once; use
/// [`NbdListener::bind_unix`] to know it exists before serving.
pub async fn serve_unix(
    path: &Path,
    exports: Arc<Exports>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    NbdListener::bind_unix(path)?.serve(exports, shutdown).await
}

/// Serves `exports` on an already bound TCP listener until `shutdown` flips.
pub async fn serve_tcp(
    listener: TcpListener,
    exports: Arc<Exports>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    NbdListener::from_tcp(listener)
        .serve(exports, shutdown)
        .await
}

/// Handshake then transmission on one accepted connection.
async fn serve_connection(
    reader: BoxRead,
    writer: BoxWrite,
    exports: Arc<Exports>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), NbdError> {
    let mut reader = BufReader::with_capacity(SOCKET_BUFFER, reader);
    let mut writer = BufWriter::with_capacity(SOCKET_BUFFER, writer);
    let outcome = tokio::select! {
        o = negotiate(&mut reader, &mut writer, &exports) => o?,
        _ = shutdown_requested(&mut shutdown) => return Ok(()),
    };
    match outcome {
        Outcome::Closed => Ok(()),
        Outcome::Transmission(attachment) => transmit(reader, writer, attachment, shutdown).await,
    }
}

/// Resolves once `shutdown` is `true`; never if its sender is gone without asking.
pub(crate) async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}
