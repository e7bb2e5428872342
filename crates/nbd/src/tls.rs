//! NBD over TLS: the server's x509 credentials, read from PEM files.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

use crate::error::NbdError;

/// What a TCP listener needs to run TLS: its certificate chain and key, and optionally the CA
/// that every client's certificate must be signed by. Cheap to clone.
#[derive(Clone)]
pub struct TlsConfig {
    acceptor: TlsAcceptor,
    client_auth: bool,
}

impl TlsConfig {
    /// Reads the server's certificate chain (`cert`, PEM, leaf first) and private key (`key`,
    /// PEM: PKCS#8, PKCS#1 or SEC1). With `client_ca` (PEM, one or more CA certificates), a
    /// client must present a certificate signed by one of them.
    pub fn from_pem_files(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<Self, NbdError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let chain = certificates(cert)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
            credentials(
                key,
                format!("no usable private key (PEM, PKCS#8, PKCS#1 or SEC1): {e}"),
            )
        })?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| credentials(cert, e.to_string()))?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certificates(ca)? {
                    roots.add(c).map_err(|e| {
                        credentials(ca, format!("not a usable CA certificate: {e}"))
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| credentials(ca, e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_single_cert(chain, key).map_err(|e| {
            credentials(
                cert,
                format!("cannot serve this certificate with its key: {e}"),
            )
        })?;
        Ok(TlsConfig {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            client_auth: client_ca.is_some(),
        })
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

/// Every certificate in a PEM file; none is an error.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, NbdError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| credentials(path, format!("cannot read PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(credentials(
            path,
            "holds no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks)".into(),
        ));
    }
    Ok(certs)
}

fn credentials(path: &Path, reason: String) -> NbdError {
    NbdError::Credentials {
        path: path.to_path_buf(),
        reason,
    }
}
