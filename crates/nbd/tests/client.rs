//! [`NbdClient`] against this crate's server serving a [`FileExport`].

mod common;

use common::*;
use ferry_nbd::{NbdClient, NbdError};

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_back_writes_zeroes_trims_and_flushes_over_unix() -> Result {
    let server = Server::start().await?;
    let path = server.file_export("vm/disk0", 4 * MIB)?;
    let mut c = NbdClient::connect_uri(&server.url("vm/disk0")).await?;
    assert_eq!(c.size(), 4 * MIB);
    let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 + 3) as u8).collect();
    c.write(MIB + 512, &data, false).await?;
    c.write(3 * MIB, &data[..4096], true).await?;
    assert_eq!(c.read(MIB + 512, data.len() as u32).await?, data);
    c.write_zeroes(MIB + 512, 4096, false).await?;
    c.trim(MIB + 512 + 8192, 8192).await?;
    c.flush().await?;
    let back = c.read(MIB + 512, data.len() as u32).await?;
    assert!(back[..4096].iter().all(|&b| b == 0));
    assert_eq!(back[4096..8192], data[4096..8192]);
    assert!(back[8192..16384].iter().all(|&b| b == 0));
    assert_eq!(back[16384..], data[16384..]);
    c.disconnect().await?;
    assert_eq!(file_bytes(&path, 3 * MIB, 4096)?, data[..4096]);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_over_tcp_uri_and_direct_constructors() -> Result {
    let server = Server::start_with(true).await?;
    server.file_export("d", MIB)?;
    let mut c = NbdClient::connect_uri(&server.tcp_url("d")).await?;
    c.write(0, b"hello", false).await?;
    c.disconnect().await?;
    let addr = server.tcp.unwrap_or_else(|| unreachable!());
    let mut c = NbdClient::connect_tcp(addr, "d").await?;
    assert_eq!(c.read(0, 5).await?, b"hello");
    c.disconnect().await?;
    let mut c = NbdClient::connect_unix(&server.socket, "d").await?;
    assert_eq!(c.read(0, 5).await?, b"hello");
    c.disconnect().await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_replies_name_the_errno_and_the_connection_survives() -> Result {
    let server = Server::start().await?;
    server.file_export("d", MIB)?;
    let mut c = NbdClient::connect_unix(&server.socket, "d").await?;
    let err = c.write(MIB - 512, &[1u8; 4096], false).await.unwrap_err();
    assert!(
        matches!(
            err,
            NbdError::Remote {
                command: "write",
                errno: 28,
                name: "ENOSPC"
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("ENOSPC"), "{err}");
    let err = c.read(MIB, 1).await.unwrap_err();
    assert!(
        matches!(err, NbdError::Remote { name: "EINVAL", .. }),
        "{err:?}"
    );
    c.write(0, &[9u8; 512], false).await?;
    assert_eq!(c.read(0, 512).await?, vec![9u8; 512]);
    c.disconnect().await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_export_and_bad_uri_are_errors() -> Result {
    let server = Server::start().await?;
    server.file_export("d", MIB)?;
    let err = NbdClient::connect_unix(&server.socket, "nope")
        .await
        .unwrap_err();
    assert!(
        matches!(err, NbdError::Refused { option: 7, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("nope"), "{err}");
    let err = NbdClient::connect_uri("http://x/y").await.unwrap_err();
    assert!(matches!(err, NbdError::Protocol(_)), "{err:?}");
    server.shutdown().await
}
