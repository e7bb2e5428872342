//! Pack indexes, behind their checksum: the input's trailer is recomputed (the golden fixture
//! is a seed), the index decoded, and every chunk it names opened.
#![no_main]

use ferry_format::pack;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(body) = data.len().checked_sub(32) else {
        return;
    };
    let object = ferry_format::seal(data[..body].to_vec());
    let Ok((_, entries)) = pack::decode_index(&object) else {
        return;
    };
    for e in entries {
        assert!(e.offset as usize >= pack::HEADER_LEN);
        let chunk = &object[e.offset as usize..e.offset as usize + e.len as usize];
        let _ = pack::open_chunk(chunk, &e.hash, e.raw_len as usize);
    }
});
