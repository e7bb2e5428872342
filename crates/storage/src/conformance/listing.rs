//! Checks of `list`.

use bytes::Bytes;

use super::{CheckResult, ensure, op};
use crate::{DynStore, Key};

fn keys(infos: &[crate::ObjectInfo]) -> Vec<String> {
    infos.iter().map(|i| i.key.to_string()).collect()
}

/// `list` by prefix is sorted, whole-segment (`a/b` does not list `a/bc/x`), reports sizes and
/// etags like `head`; a prefix with nothing under it lists nothing; `None` lists the whole account.
/// `list_children` names each segment under a prefix once, objects and deeper keys alike.
pub async fn check_list(store: &DynStore, base: &Key) -> CheckResult {
    let names = [
        "a/b/2",
        "a/b/1",
        "a/bc/x",
        "a/b/c/deep",
        "a/b-c",
        "a.b",
        "z",
    ];
    for n in names {
        let key = base.concat(&Key::parse(n).map_err(|e| e.to_string())?);
        op(
            "put",
            store.put(&key, Bytes::from(n.as_bytes().to_vec())).await,
        )?;
    }
    let ab = base.concat(&Key::parse("a/b").map_err(|e| e.to_string())?);
    let listed = op("list a/b", store.list(Some(&ab)).await)?;
    let want: Vec<String> = ["a/b/1", "a/b/2", "a/b/c/deep"]
        .iter()
        .map(|n| format!("{base}/{n}"))
        .collect();
    ensure(keys(&listed) == want, || {
        format!("list a/b gave {:?}, want {want:?}", keys(&listed))
    })?;
    for info in &listed {
        let head = op("head", store.head(&info.key).await)?;
        ensure(head.size == info.size && head.etag == info.etag, || {
            format!("list says {info:?} but head says {head:?}")
        })?;
    }
    let all = op("list base", store.list(Some(base)).await)?;
    let mut sorted: Vec<String> = names.iter().map(|n| format!("{base}/{n}")).collect();
    sorted.sort();
    ensure(keys(&all) == sorted, || {
        format!("list of the base gave {:?}, want {sorted:?}", keys(&all))
    })?;
    let none = op(
        "list empty prefix",
        store.list(Some(&base.join("nothing-here"))).await,
    )?;
    ensure(none.is_empty(), || {
        format!("a prefix with no objects listed {:?}", keys(&none))
    })?;
    let account = op("list whole account", store.list(None).await)?;
    let account_keys = keys(&account);
    ensure(account_keys.windows(2).all(|w| w[0] < w[1]), || {
        "whole-account list is not sorted".into()
    })?;
    ensure(sorted.iter().all(|k| account_keys.contains(k)), || {
        "whole-account list misses objects".into()
    })?;
    let a = base.join("a");
    let children = op("list_children a", store.list_children(&a).await)?;
    ensure(children == ["b", "b-c", "bc"], || {
        format!("the children of a are {children:?}, want [b, b-c, bc]")
    })?;
    let none = op(
        "list_children of nothing",
        store.list_children(&base.join("nothing-here")).await,
    )?;
    ensure(none.is_empty(), || {
        format!("a prefix with no objects has children {none:?}")
    })
}

/// Names with `-`, `_`, `.`, digits, and 16-hex-digit sequence numbers list in sequence order.
pub async fn check_list_sequence_names(store: &DynStore, base: &Key) -> CheckResult {
    let seqs = [0u64, 1, 9, 10, 15, 16, 255, 4096, u64::MAX >> 1, u64::MAX];
    let mut want = Vec::new();
    for (i, s) in seqs.iter().enumerate().rev() {
        let name = format!("{s:016x}.seg");
        let key = base.join("segs").join(&name);
        op(
            "put_new",
            store.put_new(&key, Bytes::from(vec![i as u8; i + 1])).await,
        )?;
        want.push(key.to_string());
    }
    want.reverse();
    for odd in ["with-dash", "with_underscore", "v1.2.3", "0123456789"] {
        op(
            "put odd name",
            store
                .put(&base.join("odd").join(odd), Bytes::from_static(b"o"))
                .await,
        )?;
    }
    let listed = op("list segs", store.list(Some(&base.join("segs"))).await)?;
    ensure(keys(&listed) == want, || {
        format!("segments listed as {:?}, want {want:?}", keys(&listed))
    })?;
    for (i, info) in listed.iter().enumerate() {
        ensure(info.size == i as u64 + 1, || {
            format!("{} has size {}", info.key, info.size)
        })?;
    }
    let odd = op("list odd", store.list(Some(&base.join("odd"))).await)?;
    let mut want_odd: Vec<String> = ["with-dash", "with_underscore", "v1.2.3", "0123456789"]
        .iter()
        .map(|n| format!("{base}/odd/{n}"))
        .collect();
    want_odd.sort();
    ensure(keys(&odd) == want_odd, || {
        format!("odd names listed as {:?}", keys(&odd))
    })
}
