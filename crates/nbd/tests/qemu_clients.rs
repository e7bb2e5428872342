//! End-to-end tests with real NBD clients: qemu-io, qemu-img and nbdinfo (libnbd-bin).

mod common;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use ferry_nbd::{Export, FileExport};

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_writes_and_reads_back_patterns() -> Result {
    let server = Server::start().await?;
    let image = server.file_export("disk", 4 * MIB)?;
    let url = server.url("disk");
    ok(qemu_io(&url, &["write -P 0xab 0 64k", "read -P 0xab 0 64k"]).await?)?;
    ok(qemu_io(
        &url,
        &["write -P 0x17 1M 4k", "read -P 0x17 1M 4k", "flush"],
    )
    .await?)?;
    assert!(file_bytes(&image, 0, 65536)?.iter().all(|b| *b == 0xab));
    assert!(file_bytes(&image, MIB, 4096)?.iter().all(|b| *b == 0x17));
    // The check can fail: a wrong pattern makes qemu-io exit non-zero.
    let wrong = qemu_io(&url, &["read -P 0xcd 0 64k"]).await?;
    assert!(!wrong.status.success(), "{}", text(&wrong));
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_convert_copies_the_whole_export_over_unix_and_tcp() -> Result {
    let server = Server::start_with(true).await?;
    let image = server.dir.path().join("src.img");
    let data: Vec<u8> = (0..8 * MIB).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&image, &data)?;
    server.insert("src", FileExport::open(&image)?);
    let img = image.to_str().unwrap_or_default();
    for (i, url) in [server.url("src"), server.tcp_url("src")]
        .iter()
        .enumerate()
    {
        let out = server.dir.path().join(format!("copy{i}.raw"));
        let out = out.to_str().unwrap_or_default();
        ok(run("qemu-img", &["convert", "-f", "raw", "-O", "raw", url, out]).await?)?;
        ok(run("qemu-img", &["compare", "-f", "raw", "-F", "raw", out, img]).await?)?;
        assert_eq!(std::fs::read(out)?, data);
    }
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_lists_every_export_and_shows_sizes() -> Result {
    let server = Server::start().await?;
    for (name, size) in [("alpha", MIB), ("beta", 3 * MIB), ("vm-0/disk-1", 5 * MIB)] {
        server.file_export(name, size)?;
    }
    let list = format!("nbd+unix://?socket={}", server.socket.display());
    let out = ok(run("nbdinfo", &["--list", &list]).await?)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in ["alpha", "beta", "vm-0/disk-1"] {
        assert!(stdout.contains(&format!("export=\"{name}\"")), "{stdout}");
    }
    let out = ok(run("nbdinfo", &["--size", &server.url("beta")]).await?)?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (3 * MIB).to_string()
    );
    let out = ok(run("nbdinfo", &[&server.url("alpha")]).await?)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("export-size: {}", MIB)),
        "{stdout}"
    );
    assert!(stdout.contains("can_multi_conn: true"), "{stdout}");
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_export_name_is_a_clear_client_error() -> Result {
    let server = Server::start().await?;
    server.file_export("disk", MIB)?;
    let out = qemu_io(&server.url("nope"), &["read 0 4k"]).await?;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("unknown export \"nope\""),
        "{}",
        text(&out)
    );
    let out = run("nbdinfo", &[&server.url("nope")]).await?;
    assert!(!out.status.success());
    // libnbd maps NBD_REP_ERR_UNKNOWN to ENOENT.
    let all = text(&out);
    assert!(
        all.contains("No such file or directory for export: nope"),
        "{all}"
    );
    // The server is still up.
    ok(qemu_io(&server.url("disk"), &["read -P 0 0 4k"]).await?)?;
    server.shutdown().await
}

/// Counts trims and write-zeroes reaching the export.
struct Counting {
    inner: FileExport,
    trims: Arc<AtomicUsize>,
    zeroes: Arc<AtomicUsize>,
}

impl Export for Counting {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read(offset, buf)
    }
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.inner.write(offset, data, fua)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.trims.fetch_add(1, Ordering::SeqCst);
        self.inner.trim(offset, len, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool, no_hole: bool) -> io::Result<()> {
        self.zeroes.fetch_add(1, Ordering::SeqCst);
        self.inner.write_zeroes(offset, len, fua, no_hole)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trim_and_write_zeroes_read_back_as_zeroes() -> Result {
    let server = Server::start().await?;
    let image = server.dir.path().join("z.img");
    let (trims, zeroes) = (Arc::default(), Arc::default());
    server.insert(
        "z",
        Counting {
            inner: FileExport::create(&image, 4 * MIB)?,
            trims: Arc::clone(&trims),
            zeroes: Arc::clone(&zeroes),
        },
    );
    let url = server.url("z");
    let mut args = vec!["-f", "raw", "-d", "unmap"];
    for c in [
        "write -P 0xff 0 256k",
        "discard 0 64k",
        "write -z 64k 64k",
        "read -P 0 0 128k",
        "read -P 0xff 128k 128k",
    ] {
        args.extend(["-c", c]);
    }
    args.push(&url);
    ok(run("qemu-io", &args).await?)?;
    assert!(trims.load(Ordering::SeqCst) >= 1, "no NBD_CMD_TRIM arrived");
    assert!(
        zeroes.load(Ordering::SeqCst) >= 1,
        "no NBD_CMD_WRITE_ZEROES arrived"
    );
    assert!(file_bytes(&image, 0, 128 << 10)?.iter().all(|b| *b == 0));
    assert!(
        file_bytes(&image, 128 << 10, 128 << 10)?
            .iter()
            .all(|b| *b == 0xff)
    );
    server.shutdown().await
}

/// An export whose writes fail as if the disk were full.
struct Full(FileExport);

impl Export for Full {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read(offset, buf)
    }
    fn write(&self, _: u64, _: &[u8], _: bool) -> io::Result<()> {
        Err(io::ErrorKind::StorageFull.into())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn trim(&self, _: u64, _: u64, _: bool) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(28))
    }
    fn write_zeroes(&self, _: u64, _: u64, _: bool, _: bool) -> io::Result<()> {
        Err(io::Error::other("broken"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_export_reports_enospc_and_keeps_the_connection() -> Result {
    let server = Server::start().await?;
    server.insert(
        "full",
        Full(FileExport::create(&server.dir.path().join("f"), MIB)?),
    );
    let out = qemu_io(&server.url("full"), &["write 0 4k", "read -P 0 0 4k"]).await?;
    let all = text(&out);
    assert!(all.contains("No space left on device"), "{all}");
    // The read after the failed write succeeded on the same connection.
    assert!(all.contains("read 4096/4096 bytes at offset 0"), "{all}");
    let out = qemu_io(&server.url("full"), &["write -z 0 4k"]).await?;
    assert!(text(&out).contains("Input/output error"), "{}", text(&out));
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_and_deep_queues_write_the_right_bytes() -> Result {
    let server = Server::start().await?;
    let image = server.file_export("disk", 64 * MIB)?;
    let url = server.url("disk");
    // Eight processes write disjoint 4 MiB regions at once, each with its own pattern.
    let mut clients = Vec::new();
    for i in 0..8u64 {
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            let cmds: Vec<String> = (0..4)
                .map(|j| format!("aio_write -P {} {}M 1M", i + 1, i * 4 + j))
                .chain(["aio_flush".to_string()])
                .collect();
            let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
            qemu_io(&url, &cmds).await
        }));
    }
    for c in clients {
        ok(c.await??)?;
    }
    // Many requests in flight on one connection.
    let bench = [
        "bench",
        "-w",
        "-t",
        "none",
        "-f",
        "raw",
        "-d",
        "32",
        "-c",
        "4096",
        "-s",
        "4k",
        "-o",
        "32M",
        "--pattern",
        "90",
    ];
    let mut args: Vec<&str> = bench.to_vec();
    args.push(&url);
    ok(run("qemu-img", &args).await?)?;
    for i in 0..8u64 {
        let region = file_bytes(&image, i * 4 * MIB, 4 * MIB as usize)?;
        assert!(region.iter().all(|b| u64::from(*b) == i + 1), "region {i}");
        let read = format!("read -P {} {}M 4M", i + 1, i * 4);
        ok(qemu_io(&url, &[&read]).await?)?;
    }
    assert!(
        file_bytes(&image, 32 * MIB, 16 * MIB as usize)?
            .iter()
            .all(|b| *b == 90)
    );
    server.shutdown().await
}
