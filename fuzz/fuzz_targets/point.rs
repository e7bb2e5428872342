//! Recovery-point records, behind their checksum: the input's trailer is recomputed (the
//! golden fixtures of every version are seeds). A record that decodes must survive being
//! encoded (as the current version) and decoded again unchanged.
#![no_main]

use ferry_format::point::PointRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(body) = data.len().checked_sub(32) else {
        return;
    };
    let object = ferry_format::seal(data[..body].to_vec());
    if let Ok(rec) = PointRecord::decode(&object) {
        let again = PointRecord::decode(&rec.encode()).expect("a decoded record re-encodes");
        assert_eq!(again, rec);
    }
});
