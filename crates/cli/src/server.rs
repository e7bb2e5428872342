//! `ferry server`: the control plane, each region's agent and the processors in one process.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use ferry_control::{Control, ControlConfig, api};
use serde::Deserialize;

use crate::args::ServerArgs;
use crate::{http, tls};

/// The optional configuration file (JSON).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    regions: Option<Vec<String>>,
    /// Seal a segment at least this often while writes are pending (default 1).
    #[serde(default)]
    seal_interval_seconds: Option<f64>,
    /// Seal a segment once this many bytes are pending (default 8 MiB).
    #[serde(default)]
    seal_bytes: Option<u64>,
    /// Bound of each protected VM's ship buffer, the local logs not yet in the cache account
    /// (default 2 GiB); writes beyond it are tracked as dirty blocks and caught up later.
    #[serde(default)]
    ship_buffer_bytes: Option<u64>,
    /// At a start, how long a protected VM's writes wait for its stream to attach before they
    /// go on untracked and the item needs a repair (default 20).
    #[serde(default)]
    start_hold_seconds: Option<f64>,
    /// Unreferenced chunks and map pages are deleted this long after garbage collection
    /// found them (default 600).
    #[serde(default)]
    gc_grace_seconds: Option<f64>,
    /// How often garbage collection takes a step (default 60).
    #[serde(default)]
    gc_interval_seconds: Option<f64>,
    /// How long a segment may be missing from the cache while a later one is there before the
    /// item goes to `resync-required` (default 30).
    #[serde(default)]
    gap_grace_seconds: Option<f64>,
    /// How often to look for what no record owns (default 300).
    #[serde(default)]
    orphan_check_seconds: Option<f64>,
    /// How long something stays an orphan before it is deleted (default 3600).
    #[serde(default)]
    orphan_grace_seconds: Option<f64>,
    /// How long events are kept (default 30 days).
    #[serde(default)]
    event_retention_seconds: Option<f64>,
    /// How long jobs are kept after they end (default 7 days; a running job is kept).
    #[serde(default)]
    job_retention_seconds: Option<f64>,
    /// The group (name or id) of each agent's NBD unix socket, mode 0660: its members may use
    /// every disk of the region (default: the server's own primary group).
    #[serde(default)]
    nbd_socket_group: Option<String>,
    /// Serve NBD over TCP as well, only with TLS (default: no TCP).
    #[serde(default)]
    nbd_tcp: Option<NbdTcpFile>,
    /// Confinement: `file://` storage accounts only in directories under these absolute
    /// paths (default `DATA/storage`).
    #[serde(default)]
    storage_roots: Option<Vec<PathBuf>>,
    /// Confinement: accept `memory://` accounts, which lose every point at a restart (tests
    /// only; default false).
    #[serde(default)]
    allow_memory_accounts: Option<bool>,
    /// Confinement: VM images are imported only from this directory (default `DATA/import`).
    #[serde(default)]
    import_dir: Option<PathBuf>,
    /// Confinement: freeze/thaw scripts are named files in this directory (default
    /// `DATA/scripts`).
    #[serde(default)]
    scripts_dir: Option<PathBuf>,
    /// Confinement: the user scripts run as when the server runs as root (default `nobody`).
    #[serde(default)]
    scripts_user: Option<String>,
    /// The API's HTTP limits: how long a client may take to send a request's headers (and how
    /// long an idle connection stays open; default 10), to send its body after them (default
    /// 30), and how many connections are served at once (default 512; more wait in the backlog).
    #[serde(default)]
    http_header_timeout_seconds: Option<f64>,
    #[serde(default)]
    http_body_timeout_seconds: Option<f64>,
    #[serde(default)]
    http_max_connections: Option<usize>,
    /// TLS of the API (default: on, with the server's own CA).
    #[serde(default)]
    api_tls: Option<tls::ApiTlsFile>,
}

/// `nbd_tcp` of the configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NbdTcpFile {
    /// `HOST:PORT` each region's agent listens on, by region (regions not named get none).
    listen: std::collections::BTreeMap<String, String>,
    /// The server's certificate chain (PEM, leaf first) and private key (PEM).
    tls_cert: PathBuf,
    tls_key: PathBuf,
    /// A CA (PEM): when set, a client must present a certificate it signed.
    #[serde(default)]
    tls_ca: Option<PathBuf>,
}

/// Apply the confinement settings of the config file at `path` to `cfg`.
fn confinement(path: &Path, file: &ConfigFile, cfg: &mut ferry_control::Confinement) -> Result<()> {
    let absolute = |name: &str, p: &Path| -> Result<PathBuf> {
        if !p.is_absolute() {
            bail!(
                "config {}: {name} must be absolute paths, not {}",
                path.display(),
                p.display()
            );
        }
        Ok(p.to_path_buf())
    };
    if let Some(roots) = &file.storage_roots {
        cfg.storage_roots = roots
            .iter()
            .map(|r| absolute("storage_roots", r))
            .collect::<Result<_>>()?;
    }
    if let Some(allow) = file.allow_memory_accounts {
        cfg.allow_memory_accounts = allow;
    }
    if let Some(dir) = &file.import_dir {
        cfg.import_dir = absolute("import_dir", dir)?;
    }
    if let Some(dir) = &file.scripts_dir {
        cfg.scripts_dir = absolute("scripts_dir", dir)?;
    }
    if let Some(user) = &file.scripts_user {
        cfg.scripts_user = user.clone();
    }
    Ok(())
}

/// Make everything the server creates private to its user (directories 0700, files 0600),
/// and the data directory too if an older version made it readable by others.
fn make_private(data: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    std::fs::create_dir_all(data)
        .with_context(|| format!("create data directory {}", data.display()))?;
    std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("make data directory {} private (mode 0700)", data.display()))
}

/// A duration setting of the config file at `path`, in seconds, within `range` (said as
/// `what`, e.g. "between 0 and 24 h").
fn seconds(
    path: &Path,
    name: &str,
    value: Option<f64>,
    range: std::ops::RangeInclusive<f64>,
    what: &str,
) -> Result<Option<std::time::Duration>> {
    match value {
        None => Ok(None),
        Some(secs) if range.contains(&secs) => Ok(Some(std::time::Duration::from_secs_f64(secs))),
        Some(_) => bail!("config {}: {name} must be {what}", path.display()),
    }
}

/// The NBD keys of the config file at `path`: the socket's group must exist, and each TCP
/// listener names a configured region, a valid address and usable TLS credentials.
fn nbd_access(
    path: &Path,
    socket_group: Option<&str>,
    tcp: Option<&NbdTcpFile>,
    cfg: &mut ControlConfig,
) -> Result<()> {
    if let Some(name) = socket_group {
        let gid = ferry_nbd::access::group_id(name).with_context(|| {
            format!(
                "config {}: look up nbd_socket_group {name:?}",
                path.display()
            )
        })?;
        let Some(gid) = gid else {
            bail!(
                "config {}: nbd_socket_group {name:?} is not a group on this host: name an \
                 existing group (see /etc/group, e.g. \"kvm\") or create it with groupadd",
                path.display()
            );
        };
        cfg.nbd_socket_group = Some(gid);
    }
    let Some(tcp) = tcp else {
        return Ok(());
    };
    if tcp.listen.is_empty() {
        bail!(
            "config {}: nbd_tcp.listen names no region: give each region that should serve NBD \
             over TCP an address, e.g. {{\"{}\": \"127.0.0.1:10809\"}}",
            path.display(),
            cfg.regions.first().map_or("east", String::as_str)
        );
    }
    let tls =
        ferry_nbd::TlsConfig::from_pem_files(&tcp.tls_cert, &tcp.tls_key, tcp.tls_ca.as_deref())
            .with_context(|| format!("config {}: nbd_tcp", path.display()))?;
    for (region, listen) in &tcp.listen {
        if !cfg.regions.contains(region) {
            bail!(
                "config {}: nbd_tcp.listen names region {region:?}, which is not one of the \
                 regions ({})",
                path.display(),
                cfg.regions.join(", ")
            );
        }
        let addr: SocketAddr = listen.parse().with_context(|| {
            format!(
                "config {}: nbd_tcp.listen.{region} {listen:?} is not HOST:PORT such as \
                 127.0.0.1:10809",
                path.display()
            )
        })?;
        let tcp = ferry_agent::NbdTcp {
            listen: addr,
            tls: tls.clone(),
        };
        cfg.nbd_tcp.insert(region.clone(), tcp);
    }
    Ok(())
}

/// A running server.
pub struct Running {
    pub url: String,
    pub token: String,
    pub control: Arc<Control>,
    /// The fingerprint clients pin, when the API serves TLS.
    pub fingerprint: Option<String>,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Running {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.control.shutdown().await;
    }
}

pub fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Start the control plane and the API on `listen`.
pub async fn start(
    data: &Path,
    listen: &str,
    config: Option<&Path>,
    database: ferry_control::Database,
) -> Result<Running> {
    make_private(data)?;
    let data = data
        .canonicalize()
        .with_context(|| format!("resolve {}", data.display()))?;
    let mut cfg = ControlConfig::embedded(data.clone());
    cfg.database = database;
    let mut limits = http::Limits::default();
    let mut api_tls = None;
    if let Some(path) = config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read config {}", path.display()))?;
        let file: ConfigFile = serde_json::from_str(&text)
            .with_context(|| format!("config {} is not valid", path.display()))?;
        confinement(path, &file, &mut cfg.confine)?;
        if let Some(r) = file.regions {
            if r.len() < 2 {
                bail!("config {}: name at least two regions", path.display());
            }
            cfg.regions = r;
        }
        if let Some(d) = seconds(
            path,
            "seal_interval_seconds",
            file.seal_interval_seconds,
            0.01..=60.0,
            "between 0.01 and 60",
        )? {
            cfg.stream.seal_interval = d;
        }
        if let Some(bytes) = file.seal_bytes {
            if !(64 << 10..=256 << 20).contains(&bytes) {
                bail!(
                    "config {}: seal_bytes must be between 64 KiB and 256 MiB",
                    path.display()
                );
            }
            cfg.stream.seal_bytes = bytes;
        }
        if let Some(bytes) = file.ship_buffer_bytes {
            if !(1 << 20..=1 << 40).contains(&bytes) {
                bail!(
                    "config {}: ship_buffer_bytes must be between 1 MiB and 1 TiB",
                    path.display()
                );
            }
            cfg.stream.buffer_bytes = bytes;
        }
        if let Some(d) = seconds(
            path,
            "start_hold_seconds",
            file.start_hold_seconds,
            0.0..=600.0,
            "between 0 and 600",
        )? {
            cfg.stream.start_hold = d;
        }
        if let Some(d) = seconds(
            path,
            "gc_grace_seconds",
            file.gc_grace_seconds,
            0.0..=7.0 * 86_400.0,
            "between 0 and 7 days",
        )? {
            cfg.processor.gc_grace = d;
        }
        if let Some(d) = seconds(
            path,
            "gc_interval_seconds",
            file.gc_interval_seconds,
            0.1..=86_400.0,
            "between 0.1 s and 24 h",
        )? {
            cfg.processor.gc_interval = d;
        }
        if let Some(d) = seconds(
            path,
            "gap_grace_seconds",
            file.gap_grace_seconds,
            0.0..=86_400.0,
            "between 0 and 24 h",
        )? {
            cfg.processor.gap_grace = d;
        }
        if let Some(d) = seconds(
            path,
            "orphan_check_seconds",
            file.orphan_check_seconds,
            1.0..=86_400.0,
            "between 1 s and 24 h",
        )? {
            cfg.orphan_check = d;
        }
        if let Some(d) = seconds(
            path,
            "orphan_grace_seconds",
            file.orphan_grace_seconds,
            0.0..=30.0 * 86_400.0,
            "between 0 and 30 days",
        )? {
            cfg.orphan_grace = d;
        }
        if let Some(d) = seconds(
            path,
            "event_retention_seconds",
            file.event_retention_seconds,
            3600.0..=3650.0 * 86_400.0,
            "between 1 h and 10 years",
        )? {
            cfg.event_retention = d;
        }
        if let Some(d) = seconds(
            path,
            "job_retention_seconds",
            file.job_retention_seconds,
            60.0..=3650.0 * 86_400.0,
            "between 1 min and 10 years",
        )? {
            cfg.job_retention = d;
        }
        nbd_access(
            path,
            file.nbd_socket_group.as_deref(),
            file.nbd_tcp.as_ref(),
            &mut cfg,
        )?;
        if let Some(d) = seconds(
            path,
            "http_header_timeout_seconds",
            file.http_header_timeout_seconds,
            0.1..=3600.0,
            "between 0.1 s and 1 h",
        )? {
            limits.header_read_timeout = d;
        }
        if let Some(d) = seconds(
            path,
            "http_body_timeout_seconds",
            file.http_body_timeout_seconds,
            0.1..=3600.0,
            "between 0.1 s and 1 h",
        )? {
            limits.body_read_timeout = d;
        }
        if let Some(n) = file.http_max_connections {
            if !(1..=65_536).contains(&n) {
                bail!(
                    "config {}: http_max_connections must be between 1 and 65536",
                    path.display()
                );
            }
            limits.max_connections = n;
        }
        api_tls = file.api_tls;
    }
    let addr: SocketAddr = listen.parse().with_context(|| {
        format!("invalid --listen {listen:?}: use HOST:PORT such as 127.0.0.1:7480")
    })?;
    let tls = tls::server(&data, config, api_tls.as_ref(), addr)?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("listen on {addr} (is another server running? pick another with --listen)")
    })?;
    let addr = listener.local_addr()?;
    let control = Control::start(cfg)
        .await
        .context("start the control plane")?;
    let token =
        api::load_or_create_token(&data.join("admin-token")).context("write the admin token")?;
    let app = api::router(control.clone(), token.clone());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let fingerprint = tls.as_ref().map(|t| t.fingerprint.clone());
    let task = tokio::spawn(http::serve(listener, app, limits, tls, rx));
    Ok(Running {
        url: format!("http://{addr}"),
        token,
        control,
        fingerprint,
        task,
        stop,
    })
}

pub async fn run(data: Option<PathBuf>, args: &ServerArgs) -> Result<()> {
    init_logging();
    let data = data.unwrap_or_else(|| PathBuf::from("ferry-data"));
    let database = match &args.database {
        Some(url) => ferry_control::Database::parse(url)?,
        None => ferry_control::Database::Embedded,
    };
    let running = start(&data, &args.listen, args.config.as_deref(), database).await?;
    // Only a banner: a server whose standard output nobody reads goes on serving.
    let data = running.control.data_dir();
    let how = match &running.fingerprint {
        Some(fp) => format!(
            "{} (TLS fingerprint {fp}; plain HTTP from loopback only)",
            running.url.replacen("http://", "https://", 1)
        ),
        None => format!("{} (plain HTTP, no TLS)", running.url),
    };
    let _ = writeln!(
        std::io::stdout(),
        "ferry server listening on {how} (data {}, state in {}, token in {})",
        data.display(),
        running.control.state_location(),
        data.join("admin-token").display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}
