//! The client's side of the API's TLS: trust a CA file, or pin the fingerprint the server
//! printed. With a pin, the server's chain is accepted when one of its certificates (the CA the
//! server sends last, or the leaf) has that SHA-256, and the leaf is valid for the host name and,
//! signed by that certificate, for the time; a pinned leaf that is not self-signed is trusted
//! as it is, for the host name.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::tls::fingerprint;

/// What a client trusts the server's certificate by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// CA certificates (PEM) that must have signed the server's.
    CaFile(PathBuf),
    /// The `sha256:<hex>` fingerprint the server printed.
    Fingerprint(String),
}

impl Trust {
    /// `sha256:<hex>` is a pin (hex in either case, bytes may be separated by `:`); anything
    /// else is the path of a CA file.
    pub fn parse(text: &str) -> Result<Trust> {
        let text = text.trim();
        let Some(hex) = text.strip_prefix("sha256:") else {
            if text.is_empty() {
                bail!("no trust given: use sha256:<hex> (the server's fingerprint) or a CA file");
            }
            return Ok(Trust::CaFile(PathBuf::from(text)));
        };
        let hex: String = hex.chars().filter(|c| *c != ':').collect();
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            bail!(
                "fingerprint {text:?} is not sha256: and 64 hex digits: copy it as `ferry server` \
                 printed it (or from DATA/tls/fingerprint)"
            );
        }
        Ok(Trust::Fingerprint(format!(
            "sha256:{}",
            hex.to_ascii_lowercase()
        )))
    }
}

/// A client configuration (TLS 1.2/1.3, ALPN `http/1.1`) that trusts the server by `trust`.
pub fn client_config(trust: &Trust) -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let mut config = match trust {
        Trust::CaFile(path) => {
            let pem =
                std::fs::read(path).map_err(|e| anyhow!("read CA file {}: {e}", path.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    anyhow!(
                        "CA file {} is not a PEM certificate file: {e}",
                        path.display()
                    )
                })?;
                roots.add(cert).map_err(|e| {
                    anyhow!(
                        "CA file {}: not a usable CA certificate: {e}",
                        path.display()
                    )
                })?;
            }
            if roots.is_empty() {
                bail!("CA file {} holds no PEM certificate", path.display());
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Fingerprint(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                pin: pin.clone(),
                provider,
            }))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts the chain that holds the pinned certificate.
#[derive(Debug)]
struct Pinned {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain: Vec<&CertificateDer<'_>> =
            std::iter::once(end_entity).chain(intermediates).collect();
        let Some(at) = chain.iter().position(|c| fingerprint(c) == self.pin) else {
            let last = chain.last().expect("the chain has its leaf");
            let msg = format!(
                "the server's CA has fingerprint {}, not the pinned {}",
                fingerprint(last),
                self.pin
            );
            let msg: Box<dyn std::error::Error + Send + Sync> = msg.into();
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::from(msg))),
            ));
        };
        let leaf = rustls::server::ParsedCertificate::try_from(end_entity)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(chain[at].clone().into_owned())?;
        let signed = rustls::client::verify_server_cert_signed_by_trust_anchor(
            &leaf,
            &roots,
            &intermediates[..at.saturating_sub(1)],
            now,
            self.provider.signature_verification_algorithms.all,
        );
        match signed {
            Ok(()) => {}
            // A pinned leaf its own CA did not sign: the pin alone is trusted.
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))
                if at == 0 => {}
            Err(e) => return Err(e),
        }
        rustls::client::verify_server_name(&leaf, server_name)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_tells_a_pin_from_a_ca_file_and_refuses_a_bad_pin() {
        let hex = "ab".repeat(32);
        assert_eq!(
            Trust::parse(&format!("sha256:{}", hex.to_uppercase())).unwrap(),
            Trust::Fingerprint(format!("sha256:{hex}"))
        );
        assert_eq!(
            Trust::parse("/etc/ferry/ca.pem").unwrap(),
            Trust::CaFile("/etc/ferry/ca.pem".into())
        );
        let err = Trust::parse("sha256:abcd").unwrap_err().to_string();
        assert!(err.contains("64 hex digits"), "{err}");
    }
}
