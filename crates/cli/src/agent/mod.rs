//! `ferry agent`: the agent of one hypervisor host. It serves the host's VM disks over NBD,
//! captures their writes and ships them to the cache account, and takes its commands from the
//! server over a link it opens itself ([`link`]); it accepts no connection but its VMs' NBD.

mod join;
mod link;
mod sse;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use ferry_agent::executor::{Executor, OpenStore};
use ferry_agent::{AgentHost, NbdAccess};
use tokio::sync::watch;

/// How to run a host's agent.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentRunArgs {
    /// The server's URL, e.g. https://ferry.example:7480 (plain http only to a loopback address).
    #[arg(long, env = "FERRY_SERVER")]
    pub server: Option<String>,
    /// The region this host is in.
    #[arg(long)]
    pub region: Option<String>,
    /// This host's name (unique among the server's hosts).
    #[arg(long)]
    pub name: Option<String>,
    /// The agent's own directory: credential, disk images, stream logs, NBD socket.
    #[arg(long = "agent-data", value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// A one-time join token (`ferry agent token create`), needed at the first start only.
    #[arg(long, env = "FERRY_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
}

/// What the agent needs, settled from its arguments and its data directory.
pub(crate) struct Settings {
    pub server: String,
    pub region: String,
    pub name: String,
    pub data: PathBuf,
}

pub async fn run(args: AgentRunArgs) -> Result<()> {
    crate::server::init_logging();
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let (Some(server), Some(region), Some(name), Some(data)) =
        (args.server, args.region, args.name, args.data)
    else {
        bail!("ferry agent needs --server URL --region REGION --name NAME --agent-data DIR");
    };
    link::check_server_url(&server)?;
    std::fs::create_dir_all(&data)
        .with_context(|| format!("create the agent's data directory {}", data.display()))?;
    let settings = Settings {
        server: server.trim_end_matches('/').to_string(),
        region,
        name,
        data,
    };
    let credential = join::credential(&settings, args.join_token.as_deref()).await?;
    let host = AgentHost::start_with(&settings.data.join("agent"), &NbdAccess::default())
        .await
        .context("start the NBD listener")?;
    let open_store: OpenStore =
        Arc::new(|url: &str| ferry_storage::open(url).map_err(|e| e.to_string()));
    let exec = Arc::new(Executor::new(
        host.clone(),
        settings.data.clone(),
        false,
        open_store,
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
