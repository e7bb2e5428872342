//! `ferry agent`: the agent of one hypervisor host. It serves the host's VM disks over NBD,
//! captures their writes and ships them to the cache account, and takes its commands from the
//! server over a link it opens itself ([`link`]); it accepts no connection but its VMs' NBD.

mod join;
mod link;
mod restore;
mod sse;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use ferry_agent::executor::{Executor, OpenStore};
use ferry_agent::{AgentHost, NbdAccess};
use tokio::sync::watch;

use crate::args::AgentRunArgs;
use crate::tls::Trust;

/// The agent's configuration file (JSON); flags win over it.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    server: Option<String>,
    region: Option<String>,
    name: Option<String>,
    fingerprint: Option<String>,
    /// A CA certificate (PEM) to trust for the server instead of a pinned fingerprint.
    ca_cert: Option<PathBuf>,
    /// Serve NBD over TCP too (only with TLS), on this address; by default only the unix
    /// socket in the data directory.
    nbd_tcp: Option<NbdTcpFile>,
}

/// `nbd_tcp` of the agent's configuration file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NbdTcpFile {
    /// `HOST:PORT`, fixed so clients find it after a restart.
    listen: String,
    /// The certificate chain (PEM, leaf first) and private key (PEM) it presents.
    tls_cert: PathBuf,
    tls_key: PathBuf,
    /// A CA (PEM): when set, a client must present a certificate it signed.
    #[serde(default)]
    tls_ca: Option<PathBuf>,
}

/// What the agent needs, settled from its arguments and its data directory.
pub(crate) struct Settings {
    pub server: String,
    pub region: String,
    pub name: String,
    pub data: PathBuf,
    /// How the server's certificate is trusted (https only).
    pub trust: Option<Trust>,
    pub join_token: Option<String>,
    /// How the host's NBD is reached besides its unix socket.
    pub nbd: NbdAccess,
}

pub async fn run(args: AgentRunArgs) -> Result<()> {
    crate::server::init_logging();
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let settings = settle(args)?;
    let credential = join::credential(&settings).await?;
    let host = AgentHost::start_with(&settings.data.join("agent"), &settings.nbd)
        .await
        .context("start the NBD listener")?;
    let open_store: OpenStore = Arc::new(|url: &str, sas: Option<&str>| {
        match sas {
            Some(sas) => ferry_storage::open_with_sas(url, sas),
            None => ferry_storage::open(url),
        }
        .map_err(|e| e.to_string())
    });
    let restore = restore::FromServer {
        server: settings.server.clone(),
        http: link::http_client(&settings, Some(&credential))?,
    };
    let exec = Arc::new(Executor::new(
        host.clone(),
        settings.data.clone(),
        false,
        open_store,
        Some(Arc::new(restore)),
        env!("CARGO_PKG_VERSION").to_string(),
    ));
    println!(
        "ferry agent {} (region {}) serving NBD on {}, linked to {}",
        settings.name,
        settings.region,
        host.nbd_socket().display(),
        settings.server
    );
    let (stop_tx, stop) = watch::channel(false);
    let link = tokio::spawn(link::run(settings, credential, exec.clone(), stop));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = link.await;
    host.stop_all(ferry_agent::stream::StreamConfig::default().start_hold)
        .await;
    Ok(())
}

/// The settings from the flags, the config file and the data directory. The server's
/// fingerprint given at the first start is kept in `DATA/server-fingerprint` for later ones.
fn settle(args: AgentRunArgs) -> Result<Settings> {
    let file: ConfigFile = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("read the agent's config {}", p.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("the agent's config {} is not valid", p.display()))?
        }
        None => ConfigFile::default(),
    };
    let (Some(server), Some(region), Some(name), Some(data)) = (
        args.server.or(file.server),
        args.region.or(file.region),
        args.name.or(file.name),
        args.data,
    ) else {
        bail!(
            "ferry agent needs --server URL --region REGION --name NAME (or a --config file with \
             them) and --data DIR"
        );
    };
    link::check_server_url(&server)?;
    std::fs::create_dir_all(&data)
        .with_context(|| format!("create the agent's data directory {}", data.display()))?;
    let pinned = data.join("server-fingerprint");
    let fingerprint = match args.fingerprint.or(file.fingerprint) {
        Some(f) => {
            Trust::parse(&f).context("--fingerprint")?;
            std::fs::write(&pinned, &f)
                .with_context(|| format!("keep the fingerprint in {}", pinned.display()))?;
            Some(f)
        }
        None => std::fs::read_to_string(&pinned)
            .ok()
            .map(|f| f.trim().to_string()),
    };
    let trust = match (fingerprint, file.ca_cert) {
        (Some(f), _) => Some(Trust::parse(&f)?),
        (None, Some(ca)) => Some(Trust::CaFile(ca)),
        (None, None) => None,
    };
    if server.starts_with("https://") && trust.is_none() {
        bail!(
            "--server {server} is https: pass --fingerprint sha256:... as `ferry server` printed it \
             (or ca_cert in the config file)"
        );
    }
    let nbd = match file.nbd_tcp {
        None => NbdAccess::default(),
        Some(t) => {
            let listen = t.listen.parse().with_context(|| {
                format!(
                    "nbd_tcp.listen {:?} is not HOST:PORT such as 10.0.0.5:10809",
                    t.listen
                )
            })?;
            let tls =
                ferry_nbd::TlsConfig::from_pem_files(&t.tls_cert, &t.tls_key, t.tls_ca.as_deref())
                    .context("nbd_tcp")?;
            NbdAccess {
                socket_group: None,
                tcp: Some(ferry_agent::NbdTcp { listen, tls }),
            }
        }
    };
    Ok(Settings {
        server: server.trim_end_matches('/').to_string(),
        region,
        name,
        data,
        trust,
        join_token: args.join_token,
        nbd,
    })
}
