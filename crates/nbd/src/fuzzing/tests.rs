//! Every length a client sends is checked against its bound before the server reads or
//! allocates for it; the checks hold through the fuzzing entry point too.

use std::collections::BTreeMap;

use super::*;
use crate::protocol::*;

const GREETING: usize = 8 + 8 + 2;

fn hello() -> Vec<u8> {
    (FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
        .to_be_bytes()
        .to_vec()
}

fn option(out: &mut Vec<u8>, option: u32, data: &[u8]) {
    out.extend_from_slice(&option_header(option, data.len() as u32));
    out.extend_from_slice(data);
}

fn go(out: &mut Vec<u8>, name: &str) {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&0u16.to_be_bytes());
    option(out, OPT_GO, &d);
}

/// The option replies in `out` after the greeting: `(option, reply type)` each, and where they
/// end.
fn option_replies(out: &[u8]) -> (Vec<(u32, u32)>, usize) {
    let mut at = GREETING;
    let mut replies = Vec::new();
    while out.len() >= at + 20 && out[at..at + 8] == OPTION_REPLY_MAGIC.to_be_bytes() {
        let be = |i: usize| u32::from_be_bytes(out[at + i..at + i + 4].try_into().unwrap());
        let (opt, kind, len) = (be(8), be(12), be(16) as usize);
        replies.push((opt, kind));
        at += 20 + len;
        if opt == OPT_GO && kind == REP_ACK {
            break;
        }
    }
    (replies, at)
}

#[test]
fn an_option_longer_than_the_limit_is_refused_without_buffering_it() {
    let mut input = hello();
    option(&mut input, OPT_LIST, &vec![0; MAX_OPTION_LEN as usize + 1]);
    option(&mut input, OPT_ABORT, &[]);
    let out = session(&input);
    let (replies, _) = option_replies(&out);
    assert_eq!(
        replies,
        vec![(OPT_LIST, REP_ERR_TOO_BIG), (OPT_ABORT, REP_ACK)]
    );

    // A claim of 4 GiB with nothing behind it ends the session: nothing was allocated for it.
    let mut input = hello();
    input.extend_from_slice(&option_header(OPT_INFO, u32::MAX));
    assert_eq!(session(&input).len(), GREETING);
    let mut input = hello();
    input.extend_from_slice(&option_header(OPT_EXPORT_NAME, u32::MAX));
    assert_eq!(session(&input).len(), GREETING);
}

#[test]
fn an_export_name_longer_than_its_option_is_invalid() {
    let mut input = hello();
    let mut d = u32::MAX.to_be_bytes().to_vec();
    d.extend_from_slice(b"fuzz\0\0");
    option(&mut input, OPT_GO, &d);
    go(&mut input, EXPORT_NAME);
    let out = session(&input);
    let (replies, _) = option_replies(&out);
    assert_eq!(replies[0], (OPT_GO, REP_ERR_INVALID));
    assert_eq!(replies.last(), Some(&(OPT_GO, REP_ACK)));
}

#[test]
fn requests_past_the_largest_payload_or_the_export_are_refused() {
    let mut input = hello();
    go(&mut input, EXPORT_NAME);
    let request = |input: &mut Vec<u8>, command, handle, offset, length| {
        let r = Request {
            flags: 0,
            command,
            handle,
            offset,
            length,
        };
        input.extend_from_slice(&r.encode());
    };
    request(&mut input, CMD_READ, 1, 0, MAX_PAYLOAD + 1);
    request(&mut input, CMD_WRITE, 2, EXPORT_SIZE, 4);
    input.extend_from_slice(b"late");
    request(&mut input, CMD_WRITE, 3, 8, 4);
    input.extend_from_slice(b"here");
    request(&mut input, CMD_TRIM, 4, u64::MAX, 1);
    request(&mut input, CMD_FLUSH, 5, 0, 0);
    request(&mut input, CMD_READ, 6, 8, 4);
    request(&mut input, CMD_WRITE_ZEROES, 7, EXPORT_SIZE - 1, 2);
    request(&mut input, CMD_WRITE, 8, 0, u32::MAX);
    let out = session(&input);
    let (_, mut at) = option_replies(&out);
    let mut replies = BTreeMap::new();
    while at + SimpleReply::LEN <= out.len() {
        let r = SimpleReply::decode(out[at..at + SimpleReply::LEN].try_into().unwrap()).unwrap();
        at += SimpleReply::LEN;
        let data = if r.handle == 6 && r.error == 0 {
            at += 4;
            out[at - 4..at].to_vec()
        } else {
            vec![]
        };
        replies.insert(r.handle, (r.error, data));
    }
    assert_eq!(at, out.len());
    assert_eq!(replies[&1], (EINVAL, vec![]));
    assert_eq!(replies[&2], (ENOSPC, vec![]));
    assert_eq!(replies[&3], (0, vec![]));
    assert_eq!(replies[&4], (EINVAL, vec![]));
    assert_eq!(replies[&5], (0, vec![]));
    assert_eq!(replies[&6], (0, b"here".to_vec()));
    assert_eq!(replies[&7], (ENOSPC, vec![]));
    // A write claiming 4 GiB with nothing behind it is refused before its payload is read;
    // its payload never comes, so the session ends without a reply to it.
    assert!(!replies.contains_key(&8));
}
