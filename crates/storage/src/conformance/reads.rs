//! Checks of the read operations: `get_range`, `head`, and content fidelity.

use bytes::Bytes;

use super::{CheckResult, ensure, expect_err, op};
use crate::{DynStore, Key, StoreError};

/// Ranges: start, middle, end, empty, whole; past the end → `InvalidRange`; missing → `NotFound`.
pub async fn check_get_range(store: &DynStore, base: &Key) -> CheckResult {
    let key = base.join("ranged");
    let data: Vec<u8> = (0..100u8).collect();
    op("put", store.put(&key, Bytes::from(data.clone())).await)?;
    for r in [0..10, 40..60, 90..100, 0..100, 50..50, 100..100] {
        let got = op(
            &format!("get_range {r:?}"),
            store.get_range(&key, r.clone()).await,
        )?;
        let want = &data[r.start as usize..r.end as usize];
        ensure(got == want, || {
            format!("get_range {r:?} returned {} wrong bytes", got.len())
        })?;
    }
    let invalid = |e: &StoreError| matches!(e, StoreError::InvalidRange { .. });
    for r in [90..101, 100..110, 200..300, 101..101] {
        expect_err(
            &format!("get_range {r:?}"),
            store.get_range(&key, r).await,
            "InvalidRange",
            invalid,
        )?;
    }
    let missing = store.get_range(&base.join("absent"), 0..1).await;
    expect_err("get_range of missing key", missing, "NotFound", |e| {
        matches!(e, StoreError::NotFound { .. })
    })
}

/// `head` reports the size and the etag `put` returned; `NotFound` for a missing key.
pub async fn check_head(store: &DynStore, base: &Key) -> CheckResult {
    let key = base.join("headed");
    let etag = op("put", store.put(&key, Bytes::from(vec![7u8; 4321])).await)?;
    let info = op("head", store.head(&key).await)?;
    ensure(info.key == key, || {
        format!("head returned key {}", info.key)
    })?;
    ensure(info.size == 4321, || {
        format!("head size {} != 4321", info.size)
    })?;
    ensure(info.etag.as_ref() == Some(&etag), || {
        format!("head etag {:?} != put etag {etag:?}", info.etag)
    })?;
    let empty = base.join("empty");
    op("put empty", store.put(&empty, Bytes::new()).await)?;
    let info = op("head empty", store.head(&empty).await)?;
    ensure(info.size == 0, || {
        format!("empty object has size {}", info.size)
    })?;
    let got = op("get empty", store.get(&empty).await)?;
    ensure(got.is_empty(), || "empty object read back non-empty".into())?;
    expect_err(
        "head of missing key",
        store.head(&base.join("absent")).await,
        "NotFound",
        |e| matches!(e, StoreError::NotFound { .. }),
    )
}

/// Every byte value round-trips; a 20 MiB object round-trips through `put_new` and through
/// `put` (the multipart path on cloud stores).
pub async fn check_binary_and_large(store: &DynStore, base: &Key) -> CheckResult {
    let key = base.join("binary");
    let all: Vec<u8> = (0..=255u8).cycle().take(256 * 4).collect();
    op(
        "put_new binary",
        store.put_new(&key, Bytes::from(all.clone())).await,
    )?;
    let got = op("get binary", store.get(&key).await)?;
    ensure(got == all, || "binary content did not round-trip".into())?;

    let big: Vec<u8> = (0..20u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for (what, key) in [
        ("put_new", base.join("big-new")),
        ("put", base.join("big-put")),
    ] {
        let etag = if what == "put_new" {
            op(what, store.put_new(&key, Bytes::from(big.clone())).await)?
        } else {
            op(what, store.put(&key, Bytes::from(big.clone())).await)?
        };
        let info = op("head big", store.head(&key).await)?;
        ensure(info.size == big.len() as u64, || {
            format!("{what}: 20 MiB object has size {}", info.size)
        })?;
        ensure(info.etag.as_ref() == Some(&etag), || {
            format!("{what}: head etag {:?} != {etag:?}", info.etag)
        })?;
        let got = op("get big", store.get(&key).await)?;
        ensure(got == big, || {
            format!("{what}: 20 MiB object did not round-trip")
        })?;
        let tail = op(
            "get_range big",
            store.get_range(&key, (19 << 20)..(20 << 20)).await,
        )?;
        ensure(tail == big[19 << 20..], || {
            format!("{what}: last MiB of the big object differs")
        })?;
    }
    Ok(())
}
