//! One NBD server session: the input is everything a client sends (handshake, options,
//! requests and payloads) to an in-memory export of 1 MiB that panics on any request outside
//! it. Seeds: a handshake and a few requests of each kind.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let out = ferry_nbd::fuzzing::session(data);
    // The server always greets first.
    if !out.is_empty() {
        assert_eq!(&out[..8], b"NBDMAGIC");
    }
});
