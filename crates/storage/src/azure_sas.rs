//! Azure service shared access signatures (SAS): what the server, which holds a cache account's
//! key, hands a host's agent instead of the key.
//!
//! A SAS here is a **container** SAS (`sr=c`) with **read and create** permission (`sp=rc`)
//! and a bounded lifetime. Azure can scope a SAS to a directory (`sr=d`) only on an account
//! with a hierarchical namespace, which Azurite does not emulate (it ignores `sr=d` and
//! refuses the request), so a stream's prefix is not part of the signature: what confines an
//! agent to its prefix is the store view it opens (`scoped`), not the credential. What the SAS
//! does bound: no overwrite of an existing blob, no delete, no list, no container operation,
//! and nothing after its expiry. `SECURITY.md` says what that means for a stolen token.
//!
//! The signature is HMAC-SHA256 with the account key over the string-to-sign of service
//! version 2020-12-06 and later (Azure's "Create a service SAS"), which Azurite checks the
//! same way.

use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use url::Url;

use crate::StoreError;
use crate::error::redact;

/// The service version a SAS is signed for: the newest that Azurite (3.35) serves.
pub const SAS_VERSION: &str = "2025-11-05";

/// Read and create: get and head any blob, create a blob that does not exist. Not write
/// (overwrite), delete, list, add, tag or move.
pub const CREATE_READ: &str = "rc";

/// How far before now a SAS starts, for clocks that run behind the server's.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// A signed SAS token (`sv=…&sig=…`, no leading `?`). It is a secret: its `Debug` shows only
/// when it expires.
#[derive(Clone, PartialEq, Eq)]
pub struct AzureSas {
    token: String,
    expires: SystemTime,
}

impl AzureSas {
    /// The query string that authorises a request.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// When Azure stops accepting it.
    pub fn expires(&self) -> SystemTime {
        self.expires
    }
}

impl fmt::Debug for AzureSas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureSas")
            .field("token", &"REDACTED")
            .field(
                "expires",
                &humantime::format_rfc3339_seconds(self.expires).to_string(),
            )
            .finish()
    }
}

/// What a SAS is signed for.
#[derive(Debug, Clone)]
pub struct SasRequest<'a> {
    pub account: &'a str,
    pub container: &'a str,
    /// Azure's letters, in Azure's order (`racwdxltmeop`), e.g. [`CREATE_READ`].
    pub permissions: &'a str,
    pub start: SystemTime,
    pub expiry: SystemTime,
}

/// Sign a container SAS with the account's base64 key.
pub fn sign_container_sas(req: &SasRequest<'_>, key_base64: &str) -> Result<AzureSas, String> {
    let key = STANDARD
        .decode(key_base64.trim())
        .map_err(|e| format!("the account key is not base64: {e}"))?;
    let start = humantime::format_rfc3339_seconds(req.start).to_string();
    let expiry = humantime::format_rfc3339_seconds(req.expiry).to_string();
    let resource = format!("/blob/{}/{}", req.account, req.container);
    // permissions, start, expiry, canonical resource, identifier, IP, protocol, version,
    // resource type, snapshot time, encryption scope, rscc, rscd, rsce, rscl, rsct.
    let string_to_sign = [
        req.permissions,
        &start,
        &expiry,
        &resource,
        "",
        "",
        "",
        SAS_VERSION,
        "c",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
    ]
    .join("\n");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let sig = STANDARD.encode(ring::hmac::sign(&key, string_to_sign.as_bytes()).as_ref());
    let token = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("sv", SAS_VERSION)
        .append_pair("st", &start)
        .append_pair("se", &expiry)
        .append_pair("sr", "c")
        .append_pair("sp", req.permissions)
        .append_pair("sig", &sig)
        .finish();
    Ok(AzureSas {
        token,
        expires: req.expiry,
    })
}

/// A read-and-create SAS for the container of the `az://CONTAINER[/prefix]` account at `url`,
/// valid from a moment before `now` for `lifetime`, signed with the account key the
/// environment gives (as [`crate::open`] reads it: `AZURE_STORAGE_ACCOUNT_NAME` and
/// `AZURE_STORAGE_ACCOUNT_KEY`, or Azurite's well-known account with
/// `AZURE_STORAGE_USE_EMULATOR`).
///
/// `None` when there is nothing to sign: the URL is not an Azure account, or the environment
/// holds no account key (a token or managed identity cannot sign a service SAS).
pub fn container_sas(
    url: &str,
    now: SystemTime,
    lifetime: Duration,
) -> Result<Option<AzureSas>, StoreError> {
    let invalid = |reason: String| StoreError::InvalidUrl {
        url: redact(url.split('?').next().unwrap_or(url)),
        reason,
    };
    let parsed = Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    if parsed.scheme() != "az" {
        return Ok(None);
    }
    let container = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| invalid("missing container name: az://CONTAINER[/PREFIX]".into()))?;
    let env = MicrosoftAzureBuilder::from_env();
    let emulator = env
        .get_config_value(&AzureConfigKey::UseEmulator)
        .is_some_and(|v| {
            matches!(
                v.to_ascii_lowercase().as_str(),
                "1" | "true" | "on" | "yes" | "y"
            )
        });
    let account = env.get_config_value(&AzureConfigKey::AccountName);
    let key = env.get_config_value(&AzureConfigKey::AccessKey);
    let (account, key) = match (account, key) {
        (Some(a), Some(k)) => (a, k),
        (None, Some(k)) if emulator => (EMULATOR_ACCOUNT.to_owned(), k),
        (account, None) if emulator => (
            account.unwrap_or_else(|| EMULATOR_ACCOUNT.to_owned()),
            EMULATOR_KEY.to_owned(),
        ),
        _ => return Ok(None),
    };
    let req = SasRequest {
        account: &account,
        container,
        permissions: CREATE_READ,
        start: now.checked_sub(CLOCK_SKEW).unwrap_or(now),
        expiry: now + lifetime,
    };
    sign_container_sas(&req, &key)
        .map(Some)
        .map_err(|reason| invalid(format!("cannot sign a SAS for account {account}: {reason}")))
}

/// Azurite's public, well-known account and key (the ones `object_store` uses for it).
const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
const EMULATOR_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn token_carries_scope_and_never_shows_in_debug() {
        let sas = sign_container_sas(
            &SasRequest {
                account: "devstoreaccount1",
                container: "cache",
                permissions: CREATE_READ,
                start: at("2026-01-01T00:00:00Z"),
                expiry: at("2026-01-02T00:00:00Z"),
            },
            EMULATOR_KEY,
        )
        .unwrap();
        let t = sas.token();
        for part in [
            "sv=2025-11-05",
            "sr=c",
            "sp=rc",
            "st=2026-01-01T00%3A00%3A00Z",
            "se=2026-01-02T00%3A00%3A00Z",
            "sig=",
        ] {
            assert!(t.contains(part), "{part} missing from {t}");
        }
        let shown = format!("{sas:?}");
        assert!(!shown.contains("sig"), "{shown}");
        assert!(shown.contains("2026-01-02T00:00:00Z"), "{shown}");
    }

    #[test]
    fn a_bad_key_is_an_error() {
        let req = SasRequest {
            account: "a",
            container: "c",
            permissions: CREATE_READ,
            start: SystemTime::UNIX_EPOCH,
            expiry: SystemTime::UNIX_EPOCH,
        };
        let e = sign_container_sas(&req, "not base64!").unwrap_err();
        assert!(e.contains("not base64"), "{e}");
    }
}
