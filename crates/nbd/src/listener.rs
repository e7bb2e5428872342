//! Listening sockets: binding, the accept loop, and one task per connection.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::error::NbdError;
use crate::exports::Exports;
use crate::handshake::{Outcome, Tls, greet, haggle, negotiate, until_starttls};
use crate::tls::TlsConfig;
use crate::transmission::transmit;

/// Mode of a unix socket: its owner and its group may connect, nobody else.
pub const SOCKET_MODE: u32 = 0o660;

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
    Tcp(TcpListener, Option<TlsConfig>),
}

/// An accepted connection, before the handshake.
enum Conn {
    /// A unix or plain TCP connection.
    Plain(BoxRead, BoxWrite),
    /// A TCP connection that must start TLS before anything else.
    Tls(TcpStream, TlsConfig),
}

impl NbdListener {
    /// Binds a unix socket at `path` (replacing a stale one) with mode 0660 and the process's
    /// effective group.
    pub fn bind_unix(path: &Path) -> Result<Self, NbdError> {
        Self::bind_unix_for_group(path, None)
    }

    /// Binds a unix socket at `path` (replacing a stale one) with mode 0660 ([`SOCKET_MODE`])
    /// and the group `group` (default: the process's effective group), so only the owner and
    /// that group's members may connect. The socket is made in a private directory and moved
    /// into place once its mode and group are set: nobody can connect before.
    pub fn bind_unix_for_group(path: &Path, group: Option<u32>) -> Result<Self, NbdError> {
        let group = group.unwrap_or_else(crate::access::effective_gid);
        let listener = bind_private(path, group).map_err(|source| NbdError::Bind {
            what: path.display().to_string(),
            source,
        })?;
        Ok(Self {
            inner: Inner::Unix(listener, path.to_owned()),
        })
    }

    /// Binds a TCP socket at `addr` without TLS: anyone who can reach it can use every
    /// export (port 0 picks a free port; see [`Self::local_addr`]).
    pub async fn bind_tcp(addr: SocketAddr) -> Result<Self, NbdError> {
        Ok(Self::from_tcp(tcp_listener(addr).await?))
    }

    /// Binds a TCP socket at `addr` that serves only over TLS: a client must send
    /// `NBD_OPT_STARTTLS` first (every other option is refused with `NBD_REP_ERR_TLS_REQD`, and
    /// `NBD_OPT_EXPORT_NAME` closes the connection), then complete a TLS handshake with `tls`.
    pub async fn bind_tcp_tls(addr: SocketAddr, tls: TlsConfig) -> Result<Self, NbdError> {
        Ok(Self {
            inner: Inner::Tcp(tcp_listener(addr).await?, Some(tls)),
        })
    }

    /// Wraps an already bound TCP listener (without TLS).
    pub fn from_tcp(listener: TcpListener) -> Self {
        Self {
            inner: Inner::Tcp(listener, None),
        }
    }

    /// The bound TCP address, or `None` for a unix socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.inner {
            Inner::Tcp(l, _) => l.local_addr().ok(),
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
            let (conn, peer) = match accepted {
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
                if let Err(e) = serve_connection(conn, exports, shutdown).await {
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

    async fn accept(&self) -> io::Result<(Conn, String)> {
        match &self.inner {
            Inner::Unix(l, path) => {
                let (s, _) = l.accept().await?;
                let (r, w) = s.into_split();
                Ok((
                    Conn::Plain(Box::new(r), Box::new(w)),
                    path.display().to_string(),
                ))
            }
            Inner::Tcp(l, tls) => {
                let (s, peer) = l.accept().await?;
                s.set_nodelay(true)?;
                let conn = match tls {
                    Some(tls) => Conn::Tls(s, tls.clone()),
                    None => {
                        let (r, w) = s.into_split();
                        Conn::Plain(Box::new(r), Box::new(w))
                    }
                };
                Ok((conn, peer.to_string()))
            }
        }
    }
}

async fn tcp_listener(addr: SocketAddr) -> Result<TcpListener, NbdError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NbdError::Bind {
            what: addr.to_string(),
            source,
        })
}

/// Binds a unix socket in a fresh private directory beside `path`, gives it [`SOCKET_MODE`]
/// and `group`, then renames it to `path` (replacing a stale socket).
fn bind_private(path: &Path, group: u32) -> io::Result<UnixListener> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let staging = parent.join(format!(".{name}.{}.bind", std::process::id()));
    // A directory left by a crashed bind of this same pid: nothing else uses its name.
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let bound = (|| {
        let tmp = staging.join("sock");
        let listener = UnixListener::bind(&tmp)?;
        std::os::unix::fs::chown(&tmp, None, Some(group)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("give the socket to group {group}: {e} (the server must run as root or be a member of the group)"),
            )
        })?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(SOCKET_MODE))?;
        std::fs::rename(&tmp, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    bound
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

/// Handshake (with TLS first where the listener requires it), then transmission, on one
/// accepted connection.
async fn serve_connection(
    conn: Conn,
    exports: Arc<Exports>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), NbdError> {
    let handshake = async {
        match conn {
            Conn::Plain(r, w) => {
                let mut reader = BufReader::with_capacity(SOCKET_BUFFER, r);
                let mut writer = BufWriter::with_capacity(SOCKET_BUFFER, w);
                let outcome = negotiate(&mut reader, &mut writer, &exports).await?;
                Ok::<_, NbdError>(Some((reader, writer, outcome)))
            }
            Conn::Tls(mut stream, tls) => {
                let (mut r, mut w) = stream.split();
                let flags = greet(&mut r, &mut w).await?;
                if !until_starttls(&mut r, &mut w).await? {
                    return Ok(None);
                }
                let stream = tls.acceptor().accept(stream).await?;
                let (r, w) = tokio::io::split(stream);
                let mut reader = BufReader::with_capacity(SOCKET_BUFFER, Box::new(r) as BoxRead);
                let mut writer = BufWriter::with_capacity(SOCKET_BUFFER, Box::new(w) as BoxWrite);
                let outcome =
                    haggle(&mut reader, &mut writer, &exports, flags, Tls::Active).await?;
                Ok(Some((reader, writer, outcome)))
            }
        }
    };
    let negotiated = tokio::select! {
        o = handshake => o?,
        _ = shutdown_requested(&mut shutdown) => return Ok(()),
    };
    match negotiated {
        None | Some((_, _, Outcome::Closed)) => Ok(()),
        Some((reader, writer, Outcome::Transmission(attachment))) => {
            transmit(reader, writer, attachment, shutdown).await
        }
    }
}

/// Resolves once `shutdown` is `true`; never if its sender is gone without asking.
pub(crate) async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}
