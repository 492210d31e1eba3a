//! Whom the client trusts: a CA file, a pinned certificate fingerprint, or
//! else the system's roots. A refused certificate is reported with the
//! fingerprint the server presented, so the operator can compare and pin it.

use crate::wire::fingerprint;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, Error, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Only certificates issued by (or equal to) those in this PEM file.
    CaFile(std::path::PathBuf),
    /// Only the certificate with this SHA-256 fingerprint.
    Pin(String),
    /// The system's trusted roots.
    System,
}

/// Normalises a fingerprint as written by people: `SHA256:` optional, colons
/// optional, any case.
pub fn normalize_pin(pin: &str) -> Option<String> {
    let hex: String = pin
        .trim()
        .trim_start_matches("SHA256:")
        .trim_start_matches("sha256:")
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_uppercase();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let pairs: Vec<&str> = (0..32).map(|i| &hex[i * 2..i * 2 + 2]).collect();
    Some(format!("SHA256:{}", pairs.join(":")))
}

#[derive(Debug)]
struct Verifier {
    inner: Option<Arc<dyn ServerCertVerifier>>,
    pin: Option<String>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let presented = fingerprint(end_entity);
        if let Some(pin) = &self.pin {
            return if *pin == presented {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(Error::General(format!(
                    "certificate fingerprint mismatch: the server presented {presented}, expected {pin}"
                )))
            };
        }
        match &self.inner {
            Some(v) => v
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
                .map_err(|e| {
                    Error::General(format!(
                        "the server's certificate is not trusted ({e}); it presented {presented} (trust it with --ca-cert or a pinned fingerprint)"
                    ))
                }),
            None => Err(Error::General("no trust configured".into())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
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
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
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

/// A rustls client config that trusts exactly `trust`.
pub fn client_config(trust: &Trust) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (inner, pin): (Option<Arc<dyn ServerCertVerifier>>, _) = match trust {
        Trust::Pin(p) => (None, Some(p.clone())),
        Trust::CaFile(path) => (Some(ca_verifier(path, provider.clone())?), None),
        Trust::System => (
            Some(Arc::new(rustls_platform_verifier::Verifier::new(
                provider.clone(),
            )?)),
            None,
        ),
    };
    let verifier = Arc::new(Verifier {
        inner,
        pin,
        provider: provider.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn ca_verifier(path: &Path, provider: Arc<CryptoProvider>) -> anyhow::Result<Arc<dyn ServerCertVerifier>> {
    use anyhow::Context;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read CA file {}", path.display()))?
    {
        let cert = cert.with_context(|| format!("invalid CA file {}", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("invalid certificate in {}", path.display()))?;
    }
    if roots.is_empty() {
        anyhow::bail!("no certificate in CA file {}", path.display());
    }
    Ok(WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_normalized() {
        let fp = "SHA256:69:3E:9C:4E:48:94:35:06:D3:9B:11:18:3C:2A:87:BD:3F:9A:7B:00:F4:D9:94:B6:D5:D7:1C:F7:A5:AF:AF:B5";
        assert_eq!(normalize_pin(fp).as_deref(), Some(fp));
        let bare = fp.trim_start_matches("SHA256:").replace(':', "").to_lowercase();
        assert_eq!(normalize_pin(&bare).as_deref(), Some(fp));
        assert_eq!(normalize_pin("SHA256:12:34"), None);
        assert_eq!(normalize_pin(&"zz".repeat(32)), None);
    }
}
