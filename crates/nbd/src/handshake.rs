//! The fixed newstyle handshake: greeting and option haggling up to the transmission phase,
//! and the options before `NBD_OPT_STARTTLS` on a listener that insists on TLS.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::NbdError;
use crate::exports::{Attachment, Exports};
use crate::protocol::*;

/// The longest string an option reply may carry (`doc/proto.md`, "Conventions"); libnbd
/// drops a connection whose server sends a longer one.
pub const MAX_STRING: usize = 4096;

/// How option haggling ended.
pub(crate) enum Outcome {
    /// The client chose an export; transmission starts.
    Transmission(Attachment),
    /// The client aborted, or chose an unknown export with `NBD_OPT_EXPORT_NAME`.
    Closed,
}

/// Whether the connection runs TLS, as option haggling sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tls {
    /// The listener has no TLS (a unix socket): `NBD_OPT_STARTTLS` is unsupported.
    Off,
    /// TLS runs on this connection: `NBD_OPT_STARTTLS` again is invalid.
    Active,
}

/// What the client said in its flags.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientFlags {
    pub(crate) no_zeroes: bool,
}

/// Sends the greeting and reads the client's flags. `w` is flushed.
pub(crate) async fn greet<R, W>(r: &mut R, w: &mut W) -> Result<ClientFlags, NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    w.write_all(&NBDMAGIC.to_be_bytes()).await?;
    w.write_all(&IHAVEOPT.to_be_bytes()).await?;
    w.write_all(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes())
        .await?;
    w.flush().await?;
    let client_flags = r.read_u32().await?;
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(NbdError::Protocol(format!(
            "unknown client flags {client_flags:#x}"
        )));
    }
    Ok(ClientFlags {
        no_zeroes: client_flags & FLAG_C_NO_ZEROES != 0,
    })
}

/// Reads the next option's header: `(option, data length)`.
async fn option_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<(u32, u32), NbdError> {
    let magic = r.read_u64().await?;
    if magic != IHAVEOPT {
        return Err(NbdError::Protocol(format!("bad option magic {magic:#x}")));
    }
    Ok((r.read_u32().await?, r.read_u32().await?))
}

/// Consumes `len` bytes of option data without buffering them.
async fn skip_data<R: AsyncRead + Unpin>(r: &mut R, len: u32) -> Result<(), NbdError> {
    let mut data = r.take(u64::from(len));
    if tokio::io::copy(&mut data, &mut tokio::io::sink()).await? != u64::from(len) {
        return Err(NbdError::Protocol("truncated option".into()));
    }
    Ok(())
}

/// Option haggling before TLS on a listener that insists on it (FORCEDTLS in `doc/proto.md`):
/// every option but `NBD_OPT_STARTTLS` and `NBD_OPT_ABORT` gets `NBD_REP_ERR_TLS_REQD`, and
/// `NBD_OPT_EXPORT_NAME` (which cannot be refused) ends the session. Returns `true` once
/// STARTTLS is acknowledged (the TLS handshake comes next), `false` when the session ends.
///
/// Reads exactly the bytes of each option, so nothing of the TLS handshake is consumed.
pub(crate) async fn until_starttls<R, W>(r: &mut R, w: &mut W) -> Result<bool, NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let (option, len) = option_header(r).await?;
        match option {
            OPT_EXPORT_NAME => return Ok(false),
            OPT_STARTTLS if len == 0 => {
                reply(w, option, REP_ACK, &[]).await?;
                w.flush().await?;
                return Ok(true);
            }
            OPT_ABORT => {
                skip_data(r, len).await?;
                let _ = reply(w, option, REP_ACK, &[]).await;
                let _ = w.flush().await;
                return Ok(false);
            }
            OPT_STARTTLS => {
                skip_data(r, len).await?;
                let msg = "NBD_OPT_STARTTLS takes no data";
                error_reply(w, option, REP_ERR_INVALID, msg).await?;
            }
            _ => {
                skip_data(r, len).await?;
                let msg = "this server requires TLS: send NBD_OPT_STARTTLS first";
                error_reply(w, option, REP_ERR_TLS_REQD, msg).await?;
            }
        }
        w.flush().await?;
    }
}

/// Runs the whole handshake on a fresh connection without TLS: the greeting, then option
/// haggling up to the transmission phase. `w` is flushed before every wait for input.
pub(crate) async fn negotiate<R, W>(
    r: &mut R,
    w: &mut W,
    exports: &Exports,
) -> Result<Outcome, NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let flags = greet(r, w).await?;
    haggle(r, w, exports, flags, Tls::Off).await
}

/// Option haggling after the greeting (and after the TLS handshake, with [`Tls::Active`]), up
/// to the transmission phase. `w` is flushed before every wait for input.
pub(crate) async fn haggle<R, W>(
    r: &mut R,
    w: &mut W,
    exports: &Exports,
    flags: ClientFlags,
    tls: Tls,
) -> Result<Outcome, NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let (option, len) = option_header(r).await?;
        if len > MAX_OPTION_LEN {
            if option == OPT_EXPORT_NAME {
                return Ok(Outcome::Closed);
            }
            // Skip the data without buffering it, then refuse.
            skip_data(r, len).await?;
            error_reply(w, option, REP_ERR_TOO_BIG, "option data too long").await?;
            w.flush().await?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        r.read_exact(&mut data).await?;
        match option {
            OPT_EXPORT_NAME => {
                let Some(att) = std::str::from_utf8(&data)
                    .ok()
                    .and_then(|n| exports.attach(n))
                else {
                    return Ok(Outcome::Closed);
                };
                w.write_all(&att.export.size().to_be_bytes()).await?;
                w.write_all(&TRANSMISSION_FLAGS.to_be_bytes()).await?;
                if !flags.no_zeroes {
                    w.write_all(&[0u8; 124]).await?;
                }
                w.flush().await?;
                return Ok(Outcome::Transmission(att));
            }
            OPT_ABORT => {
                // The client may already have gone; that is fine.
                let _ = reply(w, option, REP_ACK, &[]).await;
                let _ = w.flush().await;
                return Ok(Outcome::Closed);
            }
            OPT_STARTTLS if tls == Tls::Active => {
                let msg = "TLS is already running on this connection";
                error_reply(w, option, REP_ERR_INVALID, msg).await?;
            }
            OPT_LIST if !data.is_empty() => {
                error_reply(w, option, REP_ERR_INVALID, "NBD_OPT_LIST takes no data").await?;
            }
            OPT_LIST => {
                for name in exports.names() {
                    let mut d = Vec::with_capacity(4 + name.len());
                    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
                    d.extend_from_slice(name.as_bytes());
                    reply(w, option, REP_SERVER, &d).await?;
                }
                reply(w, option, REP_ACK, &[]).await?;
            }
            OPT_INFO | OPT_GO => {
                if let Some(att) = info(w, option, &data, exports).await?
                    && option == OPT_GO
                {
                    w.flush().await?;
                    return Ok(Outcome::Transmission(att));
                }
            }
            _ => error_reply(w, option, REP_ERR_UNSUP, "option not supported").await?,
        }
        w.flush().await?;
    }
}

/// Answers `NBD_OPT_INFO`/`NBD_OPT_GO`; returns the export when the answer was a success.
async fn info<W: AsyncWrite + Unpin>(
    w: &mut W,
    option: u32,
    data: &[u8],
    exports: &Exports,
) -> Result<Option<Attachment>, NbdError> {
    let Some((name, requests)) = parse_info(data) else {
        error_reply(w, option, REP_ERR_INVALID, "malformed info request").await?;
        return Ok(None);
    };
    let Some(att) = exports.attach(name) else {
        let msg = format!("unknown export {name:?}");
        error_reply(w, option, REP_ERR_UNKNOWN, &msg).await?;
        return Ok(None);
    };
    let mut d = [0u8; 12];
    d[0..2].copy_from_slice(&INFO_EXPORT.to_be_bytes());
    d[2..10].copy_from_slice(&att.export.size().to_be_bytes());
    d[10..12].copy_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
    reply(w, option, REP_INFO, &d).await?;
    if requests.contains(&INFO_BLOCK_SIZE) {
        let mut d = [0u8; 14];
        d[0..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        d[2..6].copy_from_slice(&1u32.to_be_bytes());
        d[6..10].copy_from_slice(&PREFERRED_BLOCK.to_be_bytes());
        d[10..14].copy_from_slice(&MAX_PAYLOAD.to_be_bytes());
        reply(w, option, REP_INFO, &d).await?;
    }
    reply(w, option, REP_ACK, &[]).await?;
    Ok(Some(att))
}

/// Splits `NBD_OPT_INFO`/`GO` data into the export name and the requested info types.
fn parse_info(data: &[u8]) -> Option<(&str, Vec<u16>)> {
    let name_len = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let name = std::str::from_utf8(data.get(4..4usize.checked_add(name_len)?)?).ok()?;
    let rest = &data[4 + name_len..];
    let count = u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?) as usize;
    let list = &rest[2..];
    if list.len() != count * 2 {
        return None;
    }
    let requests = list
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Some((name, requests))
}

async fn reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    option: u32,
    reply_type: u32,
    data: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    w.write_all(&option_reply_header(option, reply_type, len))
        .await?;
    w.write_all(data).await
}

/// An option error reply; its message is cut to [`MAX_STRING`] bytes.
async fn error_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    option: u32,
    reply_type: u32,
    message: &str,
) -> std::io::Result<()> {
    let message = truncate(message, MAX_STRING);
    tracing::debug!(option, reply_type, message, "refusing NBD option");
    reply(w, option, reply_type, message.as_bytes()).await
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::{parse_info, truncate};

    #[test]
    fn messages_are_cut_on_a_char_boundary() {
        assert_eq!(truncate("abc", 4096), "abc");
        assert_eq!(truncate("abcdef", 3), "abc");
        // "é" is two bytes: a cut inside it goes back to before it.
        assert_eq!(truncate("aé", 2), "a");
        let long = "é".repeat(3000);
        let cut = truncate(&long, 4096);
        assert_eq!(cut.len(), 4096);
        assert!(cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn parses_info_requests() {
        let mut d = vec![0, 0, 0, 2, b'v', b'm', 0, 2, 0, 3, 0, 1];
        assert_eq!(parse_info(&d), Some(("vm", vec![3, 1])));
        d.push(0);
        assert_eq!(parse_info(&d), None);
        assert_eq!(parse_info(&[0, 0, 0, 9, b'x']), None);
        assert_eq!(parse_info(&[0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(parse_info(&[0, 0, 0, 0, 0, 0]), Some(("", vec![])));
    }
}
