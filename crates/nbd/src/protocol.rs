//! Wire constants and fixed-size message encodings of the NBD protocol (`doc/proto.md`).
//!
//! Everything is big-endian. Only what this server speaks is defined: the fixed newstyle
//! handshake, option replies, requests and simple replies.
//!
//! Every length a client sends is checked against its bound before anything is read or
//! allocated for it: option data against [`MAX_OPTION_LEN`] (longer data is skipped without
//! being buffered and refused with [`REP_ERR_TOO_BIG`]; for `NBD_OPT_EXPORT_NAME` the
//! connection closes), an export name in `NBD_OPT_INFO`/`GO` against the option's data, a read
//! or write length against [`MAX_PAYLOAD`] (a longer write's payload is skipped; `EINVAL`) and
//! against the export's size. `ferry_nbd::fuzzing` (feature `fuzzing`) runs a whole session
//! over bytes for the `nbd_session` fuzz target.

/// `NBDMAGIC`, first 8 bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`, second server magic and prefix of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// Magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flag: the server speaks fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server can omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: omit the 124 zero bytes.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flag: always set.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag: the export is read-only.
pub const FLAG_READ_ONLY: u16 = 1 << 1;
/// Transmission flag: `NBD_CMD_FLUSH` is supported.
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: `NBD_CMD_FLAG_FUA` is supported.
pub const FLAG_SEND_FUA: u16 = 1 << 3;
/// Transmission flag: `NBD_CMD_TRIM` is supported.
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag: `NBD_CMD_WRITE_ZEROES` is supported.
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flag: flush and FUA are visible across connections.
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// The transmission flags this server advertises for every export.
pub const TRANSMISSION_FLAGS: u16 = FLAG_HAS_FLAGS
    | FLAG_SEND_FLUSH
    | FLAG_SEND_FUA
    | FLAG_SEND_TRIM
    | FLAG_SEND_WRITE_ZEROES
    | FLAG_CAN_MULTI_CONN;

/// Option: choose an export and enter transmission (old style, no reply on error).
pub const OPT_EXPORT_NAME: u32 = 1;
/// Option: abort negotiation.
pub const OPT_ABORT: u32 = 2;
/// Option: list exports.
pub const OPT_LIST: u32 = 3;
/// Option: start TLS (on a TLS listener; refused on others).
pub const OPT_STARTTLS: u32 = 5;
/// Option: describe an export.
pub const OPT_INFO: u32 = 6;
/// Option: describe an export and enter transmission.
pub const OPT_GO: u32 = 7;
/// Option: structured replies (refused).
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// Option: list metadata contexts (refused).
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// Option: set metadata contexts (refused).
pub const OPT_SET_META_CONTEXT: u32 = 10;
/// Option: extended headers (refused).
pub const OPT_EXTENDED_HEADERS: u32 = 11;

/// Option reply: done.
pub const REP_ACK: u32 = 1;
/// Option reply: one export of a list.
pub const REP_SERVER: u32 = 2;
/// Option reply: one piece of export information.
pub const REP_INFO: u32 = 3;
const REP_ERR: u32 = 1 << 31;
/// Option error: unknown option.
pub const REP_ERR_UNSUP: u32 = REP_ERR | 1;
/// Option error: forbidden by policy.
pub const REP_ERR_POLICY: u32 = REP_ERR | 2;
/// Option error: syntactically invalid.
pub const REP_ERR_INVALID: u32 = REP_ERR | 3;
/// Option error: TLS must be started first.
pub const REP_ERR_TLS_REQD: u32 = REP_ERR | 5;
/// Option error: unknown export.
pub const REP_ERR_UNKNOWN: u32 = REP_ERR | 6;
/// Option error: the server is shutting down.
pub const REP_ERR_SHUTDOWN: u32 = REP_ERR | 7;
/// Option error: the option data is too big.
pub const REP_ERR_TOO_BIG: u32 = REP_ERR | 9;

/// Info type: size and transmission flags.
pub const INFO_EXPORT: u16 = 0;
/// Info type: block size constraints.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Command: read.
pub const CMD_READ: u16 = 0;
/// Command: write (with payload).
pub const CMD_WRITE: u16 = 1;
/// Command: disconnect.
pub const CMD_DISC: u16 = 2;
/// Command: flush.
pub const CMD_FLUSH: u16 = 3;
/// Command: trim.
pub const CMD_TRIM: u16 = 4;
/// Command: write zeroes.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// Command flag: force unit access.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// Command flag: write zeroes must leave the range allocated (no hole).
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// Command flag: do not fragment a structured read reply (not advertised here).
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// Command flag: one extent per block status reply (no block status here).
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// Command flag: fail write zeroes unless it is fast (not advertised here).
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// The command flags this server accepts with `command`; a request with any other flag is
/// answered `EINVAL`:
/// - FUA with the commands that write (WRITE, WRITE_ZEROES, TRIM), and with FLUSH, which
///   older qemu clients send with FUA set. A READ with FUA is refused, as nbdkit refuses it:
///   there is nothing for it to make durable, and a client that sends it is in error.
/// - NO_HOLE with WRITE_ZEROES only.
pub fn accepted_flags(command: u16) -> u16 {
    match command {
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
        CMD_READ => 0,
        _ => CMD_FLAG_FUA,
    }
}

/// Error: operation not permitted.
pub const EPERM: u32 = 1;
/// Error: input/output error.
pub const EIO: u32 = 5;
/// Error: out of memory.
pub const ENOMEM: u32 = 12;
/// Error: invalid argument.
pub const EINVAL: u32 = 22;
/// Error: no space left.
pub const ENOSPC: u32 = 28;
/// Error: server shutting down.
pub const ESHUTDOWN: u32 = 108;

/// Largest read or write payload accepted (and advertised as maximum block size).
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Preferred block size advertised.
pub const PREFERRED_BLOCK: u32 = 4096;
/// Largest option data accepted during the handshake.
pub const MAX_OPTION_LEN: u32 = 64 << 10;

/// A transmission request header (28 bytes on the wire; a write's payload follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags (`CMD_FLAG_*`).
    pub flags: u16,
    /// Command type (`CMD_*`).
    pub command: u16,
    /// Opaque handle (cookie) echoed in the reply.
    pub handle: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub length: u32,
}

impl Request {
    /// Encoded size.
    pub const LEN: usize = 28;

    /// Decodes a header; `Err` carries the bad magic.
    pub fn decode(b: &[u8; Self::LEN]) -> Result<Self, u32> {
        let magic = be32(b, 0);
        if magic != REQUEST_MAGIC {
            return Err(magic);
        }
        Ok(Self {
            flags: u16::from_be_bytes([b[4], b[5]]),
            command: u16::from_be_bytes([b[6], b[7]]),
            handle: be64(b, 8),
            offset: be64(b, 16),
            length: be32(b, 24),
        })
    }

    /// Encodes the header (used by clients and tests).
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.command.to_be_bytes());
        b[8..16].copy_from_slice(&self.handle.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// A simple reply header (16 bytes; a successful read's data follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    /// 0 or an NBD error number.
    pub error: u32,
    /// The request's handle.
    pub handle: u64,
}

impl SimpleReply {
    /// Encoded size.
    pub const LEN: usize = 16;

    /// Encodes the header.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&self.error.to_be_bytes());
        b[8..16].copy_from_slice(&self.handle.to_be_bytes());
        b
    }

    /// Decodes a header (used by clients and tests); `Err` carries the bad magic.
    pub fn decode(b: &[u8; Self::LEN]) -> Result<Self, u32> {
        let magic = be32(b, 0);
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(magic);
        }
        Ok(Self {
            error: be32(b, 4),
            handle: be64(b, 8),
        })
    }
}

/// Header of an option reply: magic, option, reply type, data length (20 bytes).
pub fn option_reply_header(option: u32, reply_type: u32, len: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0..8].copy_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    b[8..12].copy_from_slice(&option.to_be_bytes());
    b[12..16].copy_from_slice(&reply_type.to_be_bytes());
    b[16..20].copy_from_slice(&len.to_be_bytes());
    b
}

/// Header of a client option: `IHAVEOPT`, option, data length (16 bytes).
pub fn option_header(option: u32, len: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[8..12].copy_from_slice(&option.to_be_bytes());
    b[12..16].copy_from_slice(&len.to_be_bytes());
    b
}

/// Maps an I/O error of an export to the NBD error sent to the client.
pub fn errno_of(e: &std::io::Error) -> u32 {
    const OS_ENOSPC: i32 = 28;
    const OS_EDQUOT: i32 = 122;
    match (e.kind(), e.raw_os_error()) {
        (std::io::ErrorKind::StorageFull, _) | (_, Some(OS_ENOSPC | OS_EDQUOT)) => ENOSPC,
        (std::io::ErrorKind::InvalidInput, _) => EINVAL,
        (std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem, _) => EPERM,
        (std::io::ErrorKind::OutOfMemory, _) => ENOMEM,
        _ => EIO,
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_and_matches_wire_layout() {
        let r = Request {
            flags: CMD_FLAG_FUA,
            command: CMD_WRITE,
            handle: 0x0102_0304_0506_0708,
            offset: 0x1000,
            length: 512,
        };
        let b = r.encode();
        assert_eq!(&b[0..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(&b[4..8], &[0, 1, 0, 1]);
        assert_eq!(&b[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&b[16..24], &[0, 0, 0, 0, 0, 0, 0x10, 0]);
        assert_eq!(&b[24..28], &[0, 0, 2, 0]);
        assert_eq!(Request::decode(&b), Ok(r));
        let mut bad = b;
        bad[0] = 0;
        assert_eq!(Request::decode(&bad), Err(0x0060_9513));
    }

    #[test]
    fn simple_reply_layout() {
        let r = SimpleReply {
            error: EINVAL,
            handle: 7,
        };
        let b = r.encode();
        assert_eq!(&b[0..4], &[0x67, 0x44, 0x66, 0x98]);
        assert_eq!(&b[4..8], &[0, 0, 0, 22]);
        assert_eq!(&b[8..16], &[0, 0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(SimpleReply::decode(&b), Ok(r));
    }

    #[test]
    fn option_headers_layout() {
        let h = option_reply_header(OPT_GO, REP_ERR_UNSUP, 3);
        assert_eq!(&h[0..8], &[0, 3, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9]);
        assert_eq!(&h[8..12], &[0, 0, 0, 7]);
        assert_eq!(&h[12..16], &[0x80, 0, 0, 1]);
        assert_eq!(&h[16..20], &[0, 0, 0, 3]);
        let o = option_header(OPT_LIST, 0);
        assert_eq!(&o[0..8], b"IHAVEOPT");
        assert_eq!(&o[8..16], &[0, 0, 0, 3, 0, 0, 0, 0]);
        assert_eq!(NBDMAGIC.to_be_bytes(), *b"NBDMAGIC");
    }

    #[test]
    fn io_errors_map_to_nbd_errors() {
        use std::io::{Error, ErrorKind};
        assert_eq!(errno_of(&Error::from(ErrorKind::StorageFull)), ENOSPC);
        assert_eq!(errno_of(&Error::from_raw_os_error(28)), ENOSPC);
        assert_eq!(errno_of(&Error::other("boom")), EIO);
        assert_eq!(errno_of(&Error::from_raw_os_error(5)), EIO);
        assert_eq!(TRANSMISSION_FLAGS, 0x16d);
    }
}
