//! [`NbdClient`]: a minimal NBD client (fixed newstyle, `NBD_OPT_GO`, simple replies, one
//! request in flight), used by benchmarks and tests to drive any NBD server.

use std::net::SocketAddr;
use std::path::Path;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufStream};
use tokio::net::{TcpStream, UnixStream};

use crate::error::NbdError;
use crate::protocol::*;

/// The default NBD TCP port.
pub const DEFAULT_PORT: u16 = 10809;

trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// One connection to one export, in the transmission phase.
pub struct NbdClient {
    s: BufStream<Box<dyn Conn>>,
    size: u64,
    flags: u16,
    next_handle: u64,
}

impl std::fmt::Debug for NbdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdClient")
            .field("size", &self.size)
            .field("flags", &self.flags)
            .finish_non_exhaustive()
    }
}

impl NbdClient {
    /// Connects to `nbd+unix:///NAME?socket=PATH` or `nbd://HOST[:PORT]/NAME`.
    pub async fn connect_uri(uri: &str) -> Result<NbdClient, NbdError> {
        let bad = || NbdError::Protocol(format!("unsupported NBD URI {uri:?}"));
        if let Some(rest) = uri.strip_prefix("nbd+unix://") {
            let (path, query) = rest.split_once('?').ok_or_else(bad)?;
            let export = path.strip_prefix('/').unwrap_or(path);
            let socket = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("socket="))
                .ok_or_else(bad)?;
            return Self::connect_unix(Path::new(socket), export).await;
        }
        let rest = uri
            .strip_prefix("nbd://")
            .or_else(|| uri.strip_prefix("nbd+tcp://"))
            .ok_or_else(bad)?;
        let (authority, export) = rest.split_once('/').unwrap_or((rest, ""));
        let has_port = authority.rsplit_once(':').is_some_and(|(h, p)| {
            !h.is_empty() && p.parse::<u16>().is_ok() && !authority.ends_with(']')
        });
        let host = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:{DEFAULT_PORT}")
        };
        let addr = tokio::net::lookup_host(&host)
            .await?
            .next()
            .ok_or_else(bad)?;
        Self::connect_tcp(addr, export).await
    }

    /// Connects over a unix socket and opens `export`.
    pub async fn connect_unix(path: &Path, export: &str) -> Result<NbdClient, NbdError> {
        let s = UnixStream::connect(path).await?;
        Self::handshake(Box::new(s), export).await
    }

    /// Connects over TCP and opens `export`.
    pub async fn connect_tcp(addr: SocketAddr, export: &str) -> Result<NbdClient, NbdError> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Self::handshake(Box::new(s), export).await
    }

    async fn handshake(conn: Box<dyn Conn>, export: &str) -> Result<NbdClient, NbdError> {
        let mut s = BufStream::new(conn);
        if s.read_u64().await? != NBDMAGIC || s.read_u64().await? != IHAVEOPT {
            return Err(NbdError::Protocol("not a newstyle NBD server".into()));
        }
        let server_flags = s.read_u16().await?;
        if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(NbdError::Protocol("server lacks fixed newstyle".into()));
        }
        let mut client_flags = FLAG_C_FIXED_NEWSTYLE;
        if server_flags & FLAG_NO_ZEROES != 0 {
            client_flags |= FLAG_C_NO_ZEROES;
        }
        s.write_u32(client_flags).await?;
        let name = export.as_bytes();
        let name_len = u32::try_from(name.len())
            .map_err(|_| NbdError::Protocol("export name too long".into()))?;
        s.write_all(&option_header(OPT_GO, 4 + name_len + 2))
            .await?;
        s.write_u32(name_len).await?;
        s.write_all(name).await?;
        s.write_u16(0).await?;
        s.flush().await?;
        let mut info = None;
        loop {
            if s.read_u64().await? != OPTION_REPLY_MAGIC {
                return Err(NbdError::Protocol("bad option reply magic".into()));
            }
            let option = s.read_u32().await?;
            let kind = s.read_u32().await?;
            let len = s.read_u32().await?;
            if option != OPT_GO || len > MAX_OPTION_LEN {
                return Err(NbdError::Protocol(format!(
                    "bad reply to NBD_OPT_GO: {option}"
                )));
            }
            let mut data = vec![0u8; len as usize];
            s.read_exact(&mut data).await?;
            match kind {
                REP_ACK => break,
                REP_INFO if data.len() >= 12 && data[0..2] == INFO_EXPORT.to_be_bytes() => {
                    let size = u64::from_be_bytes(data[2..10].try_into().unwrap_or_default());
                    info = Some((size, u16::from_be_bytes([data[10], data[11]])));
                }
                REP_INFO => {}
                code if code & (1 << 31) != 0 => {
                    let message = String::from_utf8_lossy(&data).into_owned();
                    return Err(NbdError::Refused {
                        option,
                        code,
                        message,
                    });
                }
                other => {
                    return Err(NbdError::Protocol(format!("unexpected reply {other:#x}")));
                }
            }
        }
        let (size, flags) =
            info.ok_or_else(|| NbdError::Protocol("NBD_OPT_GO without export info".into()))?;
        Ok(NbdClient {
            s,
            size,
            flags,
            next_handle: 1,
        })
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The export's transmission flags (`FLAG_*`).
    pub fn transmission_flags(&self) -> u16 {
        self.flags
    }

    /// Reads `len` bytes at `offset`.
    pub async fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, NbdError> {
        self.request(CMD_READ, 0, offset, len, &[]).await?;
        let mut data = vec![0u8; len as usize];
        self.s.read_exact(&mut data).await?;
        Ok(data)
    }

    /// Writes `data` at `offset`; with `fua` the server makes it durable before replying.
    pub async fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> Result<(), NbdError> {
        let len = u32::try_from(data.len())
            .map_err(|_| NbdError::Protocol("write larger than 4 GiB".into()))?;
        self.request(CMD_WRITE, fua_flag(fua), offset, len, data)
            .await
    }

    /// Writes `len` zero bytes at `offset`.
    pub async fn write_zeroes(&mut self, offset: u64, len: u32, fua: bool) -> Result<(), NbdError> {
        self.request(CMD_WRITE_ZEROES, fua_flag(fua), offset, len, &[])
            .await
    }

    /// Discards `len` bytes at `offset`.
    pub async fn trim(&mut self, offset: u64, len: u32) -> Result<(), NbdError> {
        self.request(CMD_TRIM, 0, offset, len, &[]).await
    }

    /// Makes every completed write durable.
    pub async fn flush(&mut self) -> Result<(), NbdError> {
        self.request(CMD_FLUSH, 0, 0, 0, &[]).await
    }

    /// Sends `NBD_CMD_DISC` and closes the connection.
    pub async fn disconnect(mut self) -> Result<(), NbdError> {
        let req = Request {
            flags: 0,
            command: CMD_DISC,
            handle: 0,
            offset: 0,
            length: 0,
        };
        self.s.write_all(&req.encode()).await?;
        self.s.flush().await?;
        self.s.get_mut().shutdown().await?;
        Ok(())
    }

    /// Sends one request (with `payload` for writes) and waits for its simple reply header.
    async fn request(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> Result<(), NbdError> {
        let handle = self.next_handle;
        self.next_handle += 1;
        let req = Request {
            flags,
            command,
            handle,
            offset,
            length,
        };
        self.s.write_all(&req.encode()).await?;
        self.s.write_all(payload).await?;
        self.s.flush().await?;
        let mut b = [0u8; SimpleReply::LEN];
        self.s.read_exact(&mut b).await?;
        let reply = SimpleReply::decode(&b)
            .map_err(|m| NbdError::Protocol(format!("bad reply magic {m:#x}")))?;
        if reply.handle != handle {
            return Err(NbdError::Protocol(format!(
                "reply for handle {} while waiting for {handle}",
                reply.handle
            )));
        }
        if reply.error != 0 {
            return Err(NbdError::Remote {
                command: command_name(command),
                errno: reply.error,
                name: errno_name(reply.error),
            });
        }
        Ok(())
    }
}

fn fua_flag(fua: bool) -> u16 {
    if fua { CMD_FLAG_FUA } else { 0 }
}

fn command_name(command: u16) -> &'static str {
    match command {
        CMD_READ => "read",
        CMD_WRITE => "write",
        CMD_FLUSH => "flush",
        CMD_TRIM => "trim",
        CMD_WRITE_ZEROES => "write_zeroes",
        _ => "request",
    }
}

/// The symbolic name of an NBD error number.
pub fn errno_name(errno: u32) -> &'static str {
    match errno {
        EPERM => "EPERM",
        EIO => "EIO",
        ENOMEM => "ENOMEM",
        EINVAL => "EINVAL",
        ENOSPC => "ENOSPC",
        75 => "EOVERFLOW",
        95 => "ENOTSUP",
        ESHUTDOWN => "ESHUTDOWN",
        _ => "unknown error",
    }
}
