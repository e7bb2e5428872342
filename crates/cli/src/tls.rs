//! TLS of the API. The server's side: by default it makes its own CA and a certificate that CA
//! signed, in `DATA/tls`, at first start and reuses them after; an operator may give a
//! certificate and key instead. Either way a client can pin the **fingerprint**, the SHA-256 of
//! the CA certificate's DER (`sha256:<hex>`), which the server prints at start and keeps in
//! `DATA/tls/fingerprint`. The client's side: a rustls configuration that trusts a CA file or a
//! pinned fingerprint (`tls_pin.rs`), for the CLI and for an agent's link.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio_rustls::TlsAcceptor;

pub use crate::tls_pin::{Trust, client_config};

/// `api_tls` of the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTlsFile {
    /// `auto` (default): TLS with the operator's certificate if given, else the server's own;
    /// `off`: plain HTTP, allowed only when the API listens on loopback.
    #[serde(default)]
    mode: Option<Mode>,
    /// The operator's certificate chain (PEM, leaf first) and private key (PEM).
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
    /// The CA (PEM) that signed `cert`: sent after the chain, and its fingerprint is the one
    /// printed (else the leaf's).
    #[serde(default)]
    ca: Option<PathBuf>,
    /// More names (DNS names or IP addresses) the server's own certificate is valid for.
    #[serde(default)]
    names: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Mode {
    Auto,
    Off,
}

/// What the API serves with when TLS is on.
#[derive(Clone)]
pub struct ServerTls {
    pub acceptor: TlsAcceptor,
    /// `sha256:<hex>` of the certificate a client pins.
    pub fingerprint: String,
}

/// The API's TLS as the config file at `config` (if any) says, for a listener on `listen`:
/// `None` when it is off. Makes (or reuses) the server's own CA in `data/tls`, or reads the
/// operator's files, and writes `data/tls/fingerprint`.
pub fn server(
    data: &Path,
    config: Option<&Path>,
    file: Option<&ApiTlsFile>,
    listen: SocketAddr,
) -> Result<Option<ServerTls>> {
    let default = ApiTlsFile::default();
    let file = file.unwrap_or(&default);
    let at = || match config {
        Some(p) => format!("config {}: ", p.display()),
        None => String::new(),
    };
    if file.mode == Some(Mode::Off) {
        if file.cert.is_some() || file.key.is_some() || file.ca.is_some() {
            bail!(
                "{}api_tls.mode is off but api_tls.cert, key or ca is set: remove them or set \
                 api_tls.mode = auto",
                at()
            );
        }
        if !listen.ip().to_canonical().is_loopback() {
            bail!(
                "plain HTTP only on loopback: set api_tls.mode = auto or listen on 127.0.0.1 \
                 (--listen {listen})"
            );
        }
        return Ok(None);
    }
    let dir = data.join("tls");
    let (chain, key, pinned) = match (&file.cert, &file.key) {
        (Some(cert), Some(key)) => {
            if file.names.is_some() {
                bail!(
                    "{}api_tls.names applies only to the server's own certificate: put the \
                     names in the certificate api_tls.cert gives",
                    at()
                );
            }
            operator(cert, key, file.ca.as_deref()).with_context(at)?
        }
        (None, None) if file.ca.is_none() => {
            let names = file.names.clone().unwrap_or_default();
            own(&dir, &names, listen).with_context(|| format!("{}api_tls", at()))?
        }
        _ => bail!(
            "{}api_tls: give both cert and key (PEM files), with ca if a CA signed them, or \
             none of them for the server's own certificate",
            at()
        ),
    };
    let fingerprint = fingerprint(&pinned);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            anyhow!(
                "{}api_tls: cannot serve the certificate with its key: {e}",
                at()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    write_new(
        &dir.join("fingerprint"),
        format!("{fingerprint}\n").as_bytes(),
    )?;
    Ok(Some(ServerTls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        fingerprint,
    }))
}

/// `sha256:<hex>` of a certificate's DER.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.as_ref());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The operator's chain and key, checked: with `ca`, the CA is sent after the chain (unless the
/// chain ends with it) and is the certificate pinned; else the leaf is.
fn operator(
    cert: &Path,
    key: &Path,
    ca: Option<&Path>,
) -> Result<(
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
    CertificateDer<'static>,
)> {
    let mut chain = certificates("api_tls.cert", cert)?;
    let key = private_key("api_tls.key", key)?;
    let pinned = match ca {
        Some(ca) => {
            let ca = certificates("api_tls.ca", ca)?.swap_remove(0);
            if chain.last() != Some(&ca) {
                chain.push(ca.clone());
            }
            ca
        }
        None => chain[0].clone(),
    };
    Ok((chain, key, pinned))
}

/// The certificates of the PEM file `path` (at least one), read for config key `name`.
fn certificates(name: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(name, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{name} {}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        bail!(
            "{name} {}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(certs)
}

fn private_key(name: &str, path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read(name, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        anyhow!(
            "{name} {}: holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
            path.display()
        )
    })
}

fn read(name: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        anyhow!(
            "{name} {}: cannot read it ({e}): give the path of a PEM file the server can read",
            path.display()
        )
    })
}

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server.key";

/// The server's own credentials in `dir`: the CA is made when neither of its files exists, the
/// server's certificate (signed by it) when neither of its files exists; existing ones are
/// reused as they are. Returns the chain sent (the server's certificate, then the CA's), its
/// key and the CA's certificate.
fn own(
    dir: &Path,
    names: &[String],
    listen: SocketAddr,
) -> Result<(
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
    CertificateDer<'static>,
)> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let ca_key = match pair(dir, CA_CERT, CA_KEY)? {
        Some(key) => key,
        None => {
            let key = rcgen::KeyPair::generate().context("generate the CA's key")?;
            let cert = ca_params()?
                .self_signed(&key)
                .context("make the CA certificate")?;
            // The key first: a CA certificate without its key could sign nothing.
            write_new(&dir.join(CA_KEY), key.serialize_pem().as_bytes())?;
            write_new(&dir.join(CA_CERT), cert.pem().as_bytes())?;
            tracing::info!(dir = %dir.display(), "made the API's own CA");
            key
        }
    };
    if pair(dir, SERVER_CERT, SERVER_KEY)?.is_none() {
        let key = rcgen::KeyPair::generate().context("generate the server's key")?;
        let mut params =
            rcgen::CertificateParams::new(server_names(names, listen)).map_err(|e| {
                anyhow!("names {names:?}: each must be a DNS name or an IP address ({e})")
            })?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ferry server");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params);
        let issuer = rcgen::Issuer::new(ca_params()?, ca_key);
        let cert = params
            .signed_by(&key, &issuer)
            .context("sign the server's certificate")?;
        write_new(&dir.join(SERVER_KEY), key.serialize_pem().as_bytes())?;
        write_new(&dir.join(SERVER_CERT), cert.pem().as_bytes())?;
        tracing::info!(dir = %dir.display(), "made the API's certificate");
    }
    let ca = certificates("the CA certificate", &dir.join(CA_CERT))?.swap_remove(0);
    let leaf = certificates("the server's certificate", &dir.join(SERVER_CERT))?.swap_remove(0);
    let key = private_key("the server's key", &dir.join(SERVER_KEY))?;
    Ok((vec![leaf, ca.clone()], key, ca))
}

/// The key of the certificate `cert` in `dir` if both files exist, `None` if neither does.
fn pair(dir: &Path, cert: &str, key: &str) -> Result<Option<rcgen::KeyPair>> {
    let (cert_path, key_path) = (dir.join(cert), dir.join(key));
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let pem = std::fs::read_to_string(&key_path)
                .with_context(|| format!("read {}", key_path.display()))?;
            let key = rcgen::KeyPair::from_pem(&pem)
                .map_err(|e| anyhow!("{} is not a usable PEM key: {e}", key_path.display()))?;
            Ok(Some(key))
        }
        (false, false) => Ok(None),
        (has_cert, _) => {
            let (there, missing) = if has_cert {
                (cert_path, key_path)
            } else {
                (key_path, cert_path)
            };
            bail!(
                "{} is missing but {} is there: restore it, or remove both to make new ones \
                 (a new CA changes the fingerprint every agent pins)",
                missing.display(),
                there.display()
            )
        }
    }
}

/// The CA's parameters: the same at every start, so a CA read back signs as the one made.
fn ca_params() -> Result<rcgen::CertificateParams> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ferry API CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params);
    Ok(params)
}

/// From a year ago (clocks differ) to 30 years on: the certificates are not renewed.
fn set_validity(params: &mut rcgen::CertificateParams) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let year = 1970 + (secs / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 30, 1, 1);
}

/// The names the server's own certificate is valid for: loopback, the host's name, the listen
/// address's IP if it is a specific one, and `extra`.
fn server_names(extra: &[String], listen: SocketAddr) -> Vec<String> {
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).into();
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() {
            names.push(host.to_string());
        }
    }
    let ip: IpAddr = listen.ip().to_canonical();
    if !ip.is_unspecified() {
        names.push(ip.to_string());
    }
    names.extend(extra.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// Write `bytes` to `path` whole (a temporary file renamed over it), mode 0600.
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}
