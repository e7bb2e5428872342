//! Protocol conformance seen through libnbd (`nbdsh`, its Python binding): NO_HOLE keeps the
//! range allocated, option error strings fit libnbd's 4096-byte limit, and flags that do not
//! apply get EINVAL with the connection still usable.

mod common;

use std::os::unix::fs::MetadataExt;

use common::*;

const MIB: u64 = 1 << 20;

/// Runs `script` in nbdsh (handle `h`, module `nbd`); its stdout. nbdsh runs the `python3` on
/// PATH, and the binding belongs to the system's: /usr/bin goes first.
async fn nbdsh(script: &str) -> Result<String> {
    let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
    let out = tokio::process::Command::new("nbdsh")
        .args(["-c", script])
        .env("PATH", path)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("run nbdsh (scripts/install-test-tools installs it): {e}"))?;
    Ok(String::from_utf8_lossy(&ok(out)?.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_zeroes_with_no_hole_keeps_the_range_allocated() -> Result {
    let server = Server::start().await?;
    let image = server.file_export("z", 4 * MIB)?;
    let script = format!(
        r#"
import os
h.connect_uri({url:?})
def blocks():
    h.flush()
    return os.stat({image:?}).st_blocks
h.pwrite(b"\xff" * {MIB}, 0)
written = blocks()
h.zero({MIB}, 0, nbd.CMD_FLAG_NO_HOLE)
assert h.pread(4096, 0) == bytes(4096)
assert h.pread(4096, {MIB} - 4096) == bytes(4096)
kept = blocks()
h.zero({MIB}, 0)
punched = blocks()
print(written, kept, punched)
"#,
        url = server.url("z"),
        image = image.display().to_string(),
    );
    let out = nbdsh(&script).await?;
    let blocks: Vec<u64> = out
        .split_whitespace()
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()?;
    let [written, kept, punched] = blocks[..] else {
        anyhow::bail!("unexpected nbdsh output {out:?}");
    };
    // 1 MiB is 2048 sectors of 512 bytes.
    assert!(written >= 2048, "{out}");
    assert_eq!(kept, written, "NO_HOLE must not deallocate: {out}");
    assert!(
        punched < written,
        "without NO_HOLE the range is punched: {out}"
    );
    assert!(file_bytes(&image, 0, MIB as usize)?.iter().all(|b| *b == 0));
    assert!(std::fs::metadata(&image)?.blocks() < written);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4096_byte_export_name_is_refused_and_the_handle_stays_usable() -> Result {
    let server = Server::start().await?;
    let image = server.file_export("disk", MIB)?;
    std::fs::write(&image, vec![0x42u8; MIB as usize])?;
    let script = format!(
        r#"
import errno
h.set_opt_mode(True)
h.connect_unix({socket:?})
h.set_export_name("x" * 4096)
try:
    h.opt_info()
    raise SystemExit("opt_info on an unknown export succeeded")
except nbd.Error as e:
    assert e.errnum == errno.ENOENT, e
try:
    h.opt_go()
    raise SystemExit("opt_go on an unknown export succeeded")
except nbd.Error as e:
    assert e.errnum == errno.ENOENT, e
h.set_export_name("disk")
h.opt_info()
assert h.get_size() == {MIB}
h.opt_go()
assert h.pread(4, 0) == b"\x42" * 4
print("ok")
"#,
        socket = server.socket.display().to_string(),
    );
    assert_eq!(nbdsh(&script).await?.trim(), "ok");
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_that_do_not_apply_get_einval_and_the_connection_goes_on() -> Result {
    let server = Server::start().await?;
    let image = server.file_export("disk", MIB)?;
    std::fs::write(&image, vec![0x42u8; MIB as usize])?;
    let script = format!(
        r#"
import errno
h.connect_uri({url:?})
# Let libnbd send what the server should refuse.
h.set_strict_mode(h.get_strict_mode() & ~(nbd.STRICT_FLAGS | nbd.STRICT_COMMANDS))
good = b"\x42" * 4096
def refused(what, call):
    try:
        call()
    except nbd.Error as e:
        assert e.errnum == errno.EINVAL, (what, e)
    else:
        raise SystemExit(what + " was accepted")
    # The connection goes on.
    assert h.pread(4096, 0) == good, what
refused("READ with NO_HOLE", lambda: h.pread(4096, 0, nbd.CMD_FLAG_NO_HOLE))
refused("READ with DF (no structured replies)", lambda: h.pread(4096, 0, nbd.CMD_FLAG_DF))
refused("READ with an unknown flag", lambda: h.pread(4096, 0, 1 << 12))
refused("WRITE with NO_HOLE", lambda: h.pwrite(b"\x99" * 4096, 0, nbd.CMD_FLAG_NO_HOLE))
refused("TRIM with NO_HOLE", lambda: h.trim(4096, 0, nbd.CMD_FLAG_NO_HOLE))
refused("FLUSH with NO_HOLE", lambda: h.flush(nbd.CMD_FLAG_NO_HOLE))
refused("WRITE_ZEROES with FAST_ZERO (not advertised)",
        lambda: h.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO))
refused("WRITE_ZEROES with REQ_ONE", lambda: h.zero(4096, 0, nbd.CMD_FLAG_REQ_ONE))
refused("READ with FUA", lambda: h.pread(4096, 0, nbd.CMD_FLAG_FUA))
# FLUSH with FUA is served: older qemu clients send it.
h.flush(nbd.CMD_FLAG_FUA)
print("ok")
"#,
        url = server.url("disk"),
    );
    assert_eq!(nbdsh(&script).await?.trim(), "ok");
    // The refused write and zeroes changed nothing.
    assert!(file_bytes(&image, 0, 8192)?.iter().all(|b| *b == 0x42));
    server.shutdown().await
}
