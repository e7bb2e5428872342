//! NBD over TLS: qemu-io through `NBD_OPT_STARTTLS`, and clients without TLS refused.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::certs::Certs;
use common::*;
use ferry_nbd::protocol::*;
use ferry_nbd::{Exports, FileExport, NbdError, NbdListener, TlsConfig};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

const MIB: u64 = 1 << 20;

/// A TLS-only TCP listener serving one file export `disk`.
struct TlsServer {
    dir: tempfile::TempDir,
    certs: Certs,
    addr: SocketAddr,
    image: std::path::PathBuf,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TlsServer {
    async fn start(client_auth: bool) -> Result<TlsServer> {
        let dir = tempfile::tempdir()?;
        let certs = Certs::make(&dir.path().join("pki"))?;
        let ca = certs.ca();
        let tls = TlsConfig::from_pem_files(
            &certs.server_cert(),
            &certs.server_key(),
            client_auth.then_some(ca.as_path()),
        )?;
        let exports = Arc::new(Exports::new());
        let image = dir.path().join("disk.img");
        exports.insert("disk", Arc::new(FileExport::create(&image, 4 * MIB)?));
        let listener = NbdListener::bind_tcp_tls("127.0.0.1:0".parse()?, tls).await?;
        let addr = listener
            .local_addr()
            .ok_or_else(|| anyhow::anyhow!("no address"))?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(listener.serve(exports, stopped));
        Ok(TlsServer {
            dir,
            certs,
            addr,
            image,
            stop,
            task,
        })
    }

    /// qemu-io over TLS with the credentials in `creds` (see [`Certs::qemu_client_dir`]).
    async fn qemu_io_tls(
        &self,
        creds: &std::path::Path,
        commands: &[&str],
    ) -> Result<std::process::Output> {
        let object = format!(
            "tls-creds-x509,id=tls0,dir={},endpoint=client",
            creds.display()
        );
        let image = format!(
            "driver=nbd,host=127.0.0.1,port={},export=disk,tls-creds=tls0",
            self.addr.port()
        );
        let mut args = vec!["--object", &object, "--image-opts"];
        for c in commands {
            args.extend(["-c", c]);
        }
        args.push(&image);
        run("qemu-io", &args).await
    }

    async fn shutdown(self) -> Result {
        self.stop.send(true)?;
        self.task.await??;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_reads_and_writes_over_tls_and_clients_without_tls_are_refused() -> Result {
    let server = TlsServer::start(false).await?;
    let creds = server.certs.qemu_client_dir(false)?;
    ok(server
        .qemu_io_tls(
            &creds,
            &["write -P 0xab 0 64k", "read -P 0xab 0 64k", "flush"],
        )
        .await?)?;
    ok(server.qemu_io_tls(&creds, &["write -P 0x17 1M 4k"]).await?)?;
    assert!(
        file_bytes(&server.image, 0, 65536)?
            .iter()
            .all(|b| *b == 0xab)
    );
    assert!(
        file_bytes(&server.image, MIB, 4096)?
            .iter()
            .all(|b| *b == 0x17)
    );

    // Without TLS: qemu-io and nbdinfo are refused, and nothing is written.
    let plain = format!("nbd://{}/disk", server.addr);
    let out = qemu_io(&plain, &["write -P 0xcd 0 64k"]).await?;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("TLS"), "{}", text(&out));
    let out = run("nbdinfo", &[&plain]).await?;
    assert!(!out.status.success(), "{}", text(&out));
    let out = run("nbdinfo", &["--list", &format!("nbd://{}", server.addr)]).await?;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("disk"),
        "{}",
        text(&out)
    );
    assert!(
        file_bytes(&server.image, 0, 65536)?
            .iter()
            .all(|b| *b == 0xab)
    );

    // A client that does not trust the server's CA fails the handshake.
    let other = Certs::make(&server.dir.path().join("other-pki"))?;
    let out = server
        .qemu_io_tls(&other.qemu_client_dir(false)?, &["read 0 4k"])
        .await?;
    assert!(!out.status.success(), "{}", text(&out));
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_starttls_every_option_gets_tls_reqd_and_export_name_closes() -> Result {
    let server = TlsServer::start(false).await?;
    let s = TcpStream::connect(server.addr).await?;
    let mut c = RawClient::greet(s, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await?;
    let go = [0, 0, 0, 4, b'd', b'i', b's', b'k', 0, 0];
    for (opt, data) in [
        (OPT_LIST, &[][..]),
        (OPT_GO, &go[..]),
        (OPT_INFO, &go[..]),
        (OPT_STRUCTURED_REPLY, &[][..]),
        (4242, &[1, 2, 3][..]),
    ] {
        c.option(opt, data).await?;
        let (o, kind, _) = c.option_reply().await?;
        assert_eq!((o, kind), (opt, REP_ERR_TLS_REQD), "option {opt}");
    }
    c.option(OPT_STARTTLS, &[1]).await?;
    assert_eq!(c.option_reply().await?.1, REP_ERR_INVALID);
    // NBD_OPT_EXPORT_NAME cannot be refused: the connection is closed, nothing served.
    c.option(OPT_EXPORT_NAME, b"disk").await?;
    assert!(c.closed().await);
    // NBD_OPT_ABORT is answered.
    let s = TcpStream::connect(server.addr).await?;
    let mut c = RawClient::greet(s, FLAG_C_FIXED_NEWSTYLE).await?;
    c.option(OPT_ABORT, &[]).await?;
    assert_eq!(c.option_reply().await?, (OPT_ABORT, REP_ACK, vec![]));
    assert!(c.closed().await);
    // STARTTLS is acknowledged; a client that then speaks no TLS gets at most a TLS alert
    // (record type 0x15) and is dropped.
    let s = TcpStream::connect(server.addr).await?;
    let mut c = RawClient::greet(s, FLAG_C_FIXED_NEWSTYLE).await?;
    c.option(OPT_STARTTLS, &[]).await?;
    assert_eq!(c.option_reply().await?, (OPT_STARTTLS, REP_ACK, vec![]));
    c.option(OPT_LIST, &[]).await?;
    let mut rest = Vec::new();
    c.s.read_to_end(&mut rest).await?;
    assert!(rest.is_empty() || rest[0] == 0x15, "{rest:x?}");
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_starttls_options_run_over_tls_and_a_second_starttls_is_invalid() -> Result {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};

    let server = TlsServer::start(false).await?;
    std::fs::write(&server.image, vec![0x42u8; 4 * MIB as usize])?;
    let s = TcpStream::connect(server.addr).await?;
    let mut c = RawClient::greet(s, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await?;
    c.option(OPT_STARTTLS, &[]).await?;
    assert_eq!(c.option_reply().await?, (OPT_STARTTLS, REP_ACK, vec![]));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(server.certs.ca())? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost")?, c.s)
        .await?;
    let mut c = RawClient { s: tls };
    c.option(OPT_STARTTLS, &[]).await?;
    assert_eq!(c.option_reply().await?.1, REP_ERR_INVALID);
    c.option(OPT_LIST, &[]).await?;
    assert_eq!(
        c.option_reply().await?,
        (OPT_LIST, REP_SERVER, b"\0\0\0\x04disk".to_vec())
    );
    assert_eq!(c.option_reply().await?, (OPT_LIST, REP_ACK, vec![]));
    assert_eq!(c.go("disk").await?, 4 * MIB);
    assert_eq!(c.read(1, 4096, 8).await?, [0x42; 8]);
    c.request(CMD_DISC, 2, 0, 0).await?;
    assert!(c.closed().await);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_only_clients_with_its_certificate_get_in() -> Result {
    let server = TlsServer::start(true).await?;
    let with = server.certs.qemu_client_dir(true)?;
    ok(server
        .qemu_io_tls(&with, &["write -P 0x5a 0 4k", "read -P 0x5a 0 4k"])
        .await?)?;
    let without = server.certs.qemu_client_dir(false)?;
    let out = server
        .qemu_io_tls(&without, &["write -P 0x66 0 4k"])
        .await?;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        file_bytes(&server.image, 0, 4096)?
            .iter()
            .all(|b| *b == 0x5a)
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_credentials_are_errors_naming_the_file() -> Result {
    let dir = tempfile::tempdir()?;
    let certs = Certs::make(dir.path())?;
    let missing = dir.path().join("missing.pem");
    let err = TlsConfig::from_pem_files(&missing, &certs.server_key(), None)
        .err()
        .ok_or_else(|| anyhow::anyhow!("a missing certificate was accepted"))?;
    assert!(
        matches!(&err, NbdError::Credentials { path, .. } if *path == missing),
        "{err}"
    );
    assert!(err.to_string().contains("missing.pem"), "{err}");
    // A key file holding a certificate only.
    let err = TlsConfig::from_pem_files(&certs.server_cert(), &certs.server_cert(), None)
        .err()
        .ok_or_else(|| anyhow::anyhow!("a certificate was accepted as a key"))?;
    assert!(err.to_string().contains("private key"), "{err}");
    // The client's key with the server's certificate.
    let err = TlsConfig::from_pem_files(
        &certs.server_cert(),
        &dir.path().join("client-key.pem"),
        None,
    )
    .err()
    .ok_or_else(|| anyhow::anyhow!("a key of another certificate was accepted"))?;
    assert!(err.to_string().contains("server-cert.pem"), "{err}");
    // A CA file with no certificate in it.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "")?;
    let err = TlsConfig::from_pem_files(&certs.server_cert(), &certs.server_key(), Some(&empty))
        .err()
        .ok_or_else(|| anyhow::anyhow!("an empty CA file was accepted"))?;
    assert!(err.to_string().contains("no certificate"), "{err}");
    Ok(())
}
