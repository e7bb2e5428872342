//! Opening a storage account from its URL.

use std::collections::HashMap;
use std::path::{Component, PathBuf};
use std::sync::{Arc, LazyLock, Mutex as StdMutex};
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, RetryConfig};
use tokio::sync::Mutex;
use url::Url;

use crate::account::{Caps, ObjectStoreAccount};
use crate::error::redact;
use crate::{DynStore, Key, StoreError};

const SCHEMES: &str =
    "use file:///ABSOLUTE/DIR, memory://, az://CONTAINER[/PREFIX] or s3://BUCKET[/PREFIX]";

/// Open the storage account at `url`:
///
/// - `file:///abs/dir` — a local directory (created if missing; empty directories are removed
///   on delete). `put_if_match` is emulated under a process-wide lock: safe only when one
///   process writes the directory.
/// - `memory://` — a fresh in-memory account (tests).
/// - `az://CONTAINER[/prefix]` — Azure Blob Storage, configured from the environment
///   (`AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, `AZURE_STORAGE_USE_EMULATOR`,
///   `AZURITE_BLOB_STORAGE_URL`, ...).
/// - `s3://BUCKET[/prefix]` — S3, configured from the environment (`AWS_ENDPOINT`,
///   `AWS_ALLOW_HTTP`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, ...).
///
/// A path after the container or bucket is a key prefix every key is relative to.
/// Credentials never go in the URL.
pub fn open(url: &str) -> Result<DynStore, StoreError> {
    open_with_options(url, &[])
}

/// [`open`], with `object_store` configuration keys (e.g. `("aws_endpoint", "http://…")`,
/// `("azure_storage_account_name", "…")`) applied over the environment.
pub fn open_with_options(url: &str, options: &[(&str, &str)]) -> Result<DynStore, StoreError> {
    open_as(url, options, None)
}

/// Open the `az://CONTAINER[/prefix]` account at `url` with a shared access signature
/// ([`crate::AzureSas::token`]) and no other credential: of the environment only where the
/// account is counts (`AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_USE_EMULATOR`,
/// `AZURE_STORAGE_ENDPOINT`, `AZURITE_BLOB_STORAGE_URL`, client options); an account key,
/// token or client secret there is not used.
pub fn open_with_sas(url: &str, sas: &str) -> Result<DynStore, StoreError> {
    if !url.starts_with("az://") {
        return Err(StoreError::InvalidUrl {
            url: redact(url.split('?').next().unwrap_or(url)),
            reason: "a shared access signature opens only an Azure account (az://CONTAINER)".into(),
        });
    }
    open_as(url, &[], Some(sas))
}

fn open_as(url: &str, options: &[(&str, &str)], sas: Option<&str>) -> Result<DynStore, StoreError> {
    let shown = redact(url.split('?').next().unwrap_or(url));
    let invalid = |reason: String| StoreError::InvalidUrl {
        url: shown.clone(),
        reason,
    };
    let parsed = Url::parse(url).map_err(|e| invalid(format!("{e}; {SCHEMES}")))?;
    if parsed.query().is_some()
        || parsed.fragment().is_some()
        || !parsed.username().is_empty()
        || parsed.password().is_some()
    {
        return Err(invalid(format!(
            "no credentials, query or fragment allowed in a storage URL (credentials come from the environment); {SCHEMES}"
        )));
    }
    match parsed.scheme() {
        "file" => open_file(url, &parsed, &shown).map_err(invalid),
        "memory" => Ok(account(
            Arc::new(InMemory::new()),
            shown,
            memory_caps(),
            new_lock(),
        )),
        "az" | "s3" => open_cloud(&parsed, shown.clone(), options, sas).map_err(invalid),
        other => Err(invalid(format!("unsupported scheme `{other}`; {SCHEMES}"))),
    }
}

fn memory_caps() -> Caps {
    Caps {
        native_update: true,
        quote_etags: true,
        multipart: false,
    }
}

fn new_lock() -> Arc<Mutex<()>> {
    Arc::new(Mutex::new(()))
}

fn account(inner: Arc<dyn ObjectStore>, url: String, caps: Caps, lock: Arc<Mutex<()>>) -> DynStore {
    Arc::new(ObjectStoreAccount {
        inner,
        url,
        caps,
        update_lock: lock,
    })
}

/// One lock per local directory for the whole process.
fn local_lock(dir: &std::path::Path) -> Arc<Mutex<()>> {
    static LOCKS: LazyLock<StdMutex<HashMap<PathBuf, Arc<Mutex<()>>>>> =
        LazyLock::new(Default::default);
    let mut locks = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    locks
        .entry(dir.to_path_buf())
        .or_insert_with(new_lock)
        .clone()
}

/// Where a storage URL keeps its data, as far as the local host is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `file:///DIR`: this directory, absolute and normal (no `.`, `..` or empty component,
    /// after percent-decoding).
    Local(PathBuf),
    /// `memory://`: gone when the process exits.
    Memory,
    /// `az://` or `s3://`: not on this host.
    Remote,
}

/// Where `url` keeps its data, checked as [`open`] checks it, without creating anything.
pub fn location(url: &str) -> Result<Location, StoreError> {
    let shown = redact(url.split('?').next().unwrap_or(url));
    let invalid = |reason: String| StoreError::InvalidUrl {
        url: shown.clone(),
        reason,
    };
    let parsed = Url::parse(url).map_err(|e| invalid(format!("{e}; {SCHEMES}")))?;
    match parsed.scheme() {
        "file" => local_dir(url, &parsed, &shown)
            .map(Location::Local)
            .map_err(invalid),
        "memory" => Ok(Location::Memory),
        _ => Ok(Location::Remote),
    }
}

/// The directory of a `file:///DIR` URL: written with three slashes (`file:relative` would
/// parse as `/relative`), absolute and normal once percent-decoded, so the URL shows the
/// directory it names (`a%2F..%2F..` is refused, not resolved).
fn local_dir(raw: &str, url: &Url, shown: &str) -> Result<PathBuf, String> {
    let absolute = raw
        .get(..8)
        .is_some_and(|p| p.eq_ignore_ascii_case("file:///"));
    if !absolute || url.host_str().is_some_and(|h| !h.is_empty()) {
        return Err(format!(
            "a file URL needs an absolute path: file:///ABSOLUTE/DIR (three slashes), not `{shown}`"
        ));
    }
    let dir = url
        .to_file_path()
        .map_err(|()| format!("not a local path; {SCHEMES}"))?;
    let text = dir.to_string_lossy();
    // The parser drops `.` and resolves `..` segments before they could be seen decoded.
    let dots = raw[7..].split(['/', '?', '#']).any(|seg| {
        let seg = seg.to_ascii_lowercase().replace("%2e", ".");
        seg == "." || seg == ".."
    });
    let normal = !dots
        && dir
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && !text.contains("//")
        && !text.chars().any(char::is_control)
        && dir.components().count() > 1;
    if !normal {
        return Err(format!(
            "`{shown}` is not a plain directory path (decoded: {text:?}): name the directory \
             itself, with no `.`, `..`, `//` or control characters, and not `/`"
        ));
    }
    Ok(dir)
}

fn open_file(raw: &str, url: &Url, shown: &str) -> Result<DynStore, String> {
    let dir = local_dir(raw, url, shown)?;
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", dir.display()))?;
    let fs = LocalFileSystem::new_with_prefix(&dir)
        .map_err(|e| format!("cannot open {}: {}", dir.display(), redact(&e.to_string())))?
        .with_automatic_cleanup(true);
    let caps = Caps {
        native_update: false,
        quote_etags: false,
        multipart: false,
    };
    Ok(account(
        Arc::new(fs),
        shown.to_owned(),
        caps,
        local_lock(&dir),
    ))
}

fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: Duration::from_secs(30),
    }
}

/// Timeouts set as configuration keys: `with_client_options` would replace the options
/// `from_env` read (such as `AWS_ALLOW_HTTP`). Explicit options and the environment win (e.g.
/// `AWS_READ_TIMEOUT`).
///
/// A peer that accepts the connection and then never answers (or stops in the middle of a
/// body) fails a call after the read timeout, 30 s without a byte, rather than the whole
/// request's 120 s; with the retry budget ([`retry_config`]: no new attempt 30 s after the
/// first began) a call to such a peer gives up after about 30 s, naming the timeout.
const CLIENT_DEFAULTS: [(ClientConfigKey, &str); 3] = [
    (ClientConfigKey::ConnectTimeout, "5s"),
    (ClientConfigKey::ReadTimeout, "30s"),
    (ClientConfigKey::Timeout, "120s"),
];

/// The environment's Azure settings that say where the account is, none that says who calls.
fn azure_location_from_env() -> MicrosoftAzureBuilder {
    let mut b = MicrosoftAzureBuilder::new();
    for (name, value) in std::env::vars() {
        let name = name.to_ascii_lowercase();
        if !name.starts_with("azure_") {
            continue;
        }
        let Ok(key) = name.parse::<AzureConfigKey>() else {
            continue;
        };
        if matches!(
            key,
            AzureConfigKey::AccountName
                | AzureConfigKey::Endpoint
                | AzureConfigKey::UseEmulator
                | AzureConfigKey::UseFabricEndpoint
                | AzureConfigKey::Client(_)
        ) {
            b = b.with_config(key, value);
        }
    }
    b
}

fn open_cloud(
    url: &Url,
    shown: String,
    options: &[(&str, &str)],
    sas: Option<&str>,
) -> Result<DynStore, String> {
    let scheme = url.scheme();
    let (what, example) = if scheme == "az" {
        ("container", "az://CONTAINER[/PREFIX]")
    } else {
        ("bucket", "s3://BUCKET[/PREFIX]")
    };
    let name = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("missing {what} name: {example}"))?;
    let prefix = url.path().trim_matches('/');
    let prefix = if prefix.is_empty() {
        None
    } else {
        Some(Key::parse(prefix).map_err(|e| format!("bad key prefix: {e}"))?)
    };
    let inner: Arc<dyn ObjectStore> = if scheme == "az" {
        let b = match sas {
            None => MicrosoftAzureBuilder::from_env(),
            Some(token) => azure_location_from_env().with_config(AzureConfigKey::SasKey, token),
        };
        let mut b = b.with_container_name(name).with_retry(retry_config());
        for (k, v) in CLIENT_DEFAULTS {
            if b.get_config_value(&AzureConfigKey::Client(k)).is_none() {
                b = b.with_config(AzureConfigKey::Client(k), v);
            }
        }
        for (k, v) in options {
            let key: AzureConfigKey = k
                .parse()
                .map_err(|_| format!("unknown Azure option `{k}`"))?;
            b = b.with_config(key, *v);
        }
        Arc::new(b.build().map_err(|e| {
            format!(
                "cannot configure Azure: {}; set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY \
                 (or AZURE_STORAGE_USE_EMULATOR=true for Azurite, see .ci/object-stores.sh)",
                redact(&e.to_string())
            )
        })?)
    } else {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(name)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_retry(retry_config());
        for (k, v) in CLIENT_DEFAULTS {
            if b.get_config_value(&AmazonS3ConfigKey::Client(k)).is_none() {
                b = b.with_config(AmazonS3ConfigKey::Client(k), v);
            }
        }
        for (k, v) in options {
            let key: AmazonS3ConfigKey =
                k.parse().map_err(|_| format!("unknown S3 option `{k}`"))?;
            b = b.with_config(key, *v);
        }
        Arc::new(b.build().map_err(|e| {
            format!(
                "cannot configure S3: {}; set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION \
                 and AWS_ENDPOINT for a non-AWS endpoint (see .ci/object-stores.sh)",
                redact(&e.to_string())
            )
        })?)
    };
    let inner: Arc<dyn ObjectStore> = match prefix {
        Some(p) => Arc::new(PrefixStore::new(inner, p.as_str())),
        None => inner,
    };
    let caps = Caps {
        native_update: true,
        quote_etags: true,
        multipart: true,
    };
    Ok(account(inner, shown, caps, new_lock()))
}
