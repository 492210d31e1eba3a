//! Whom the client trusts: a CA file, a pinned certificate fingerprint, or
//! else the system's roots. A refused certificate is reported with the
//! fingerprint the server presented, so the operator can compare and pin it.

use crate::wire::fingerprint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_name};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};
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
    /// The certificates of the CA file, if trust comes from one.
    ca_certs: Vec<CertificateDer<'static>>,
    /// Whom `inner` trusts, for messages: "the CA file X" or "the system's
    /// trusted roots".
    trusted: String,
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
                    "certificate fingerprint mismatch: the server presented {presented}, expected {pin} (if its certificate was replaced on purpose, pin the new fingerprint)"
                )))
            };
        }
        let Some(inner) = &self.inner else {
            return Err(Error::General("no trust configured".into()));
        };
        match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Ok(v) => Ok(v),
            // A self-signed certificate made the common way (`openssl req
            // -x509`) says CA:TRUE, which a server's own certificate must
            // not; curl trusts it anyway when the CA file holds that very
            // certificate, and so do we. Its validity period was checked
            // before (webpki checks it first); its name is checked here.
            Err(e)
                if is_ca_used_as_end_entity(&e)
                    && self.ca_certs.iter().any(|c| c.as_ref() == end_entity.as_ref()) =>
            {
                let parsed = ParsedCertificate::try_from(end_entity)
                    .map_err(|e| Error::General(explain_certificate(&e, &presented, &self.trusted)))?;
                verify_server_name(&parsed, server_name)
                    .map_err(|e| Error::General(explain_certificate(&e, &presented, &self.trusted)))?;
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => Err(Error::General(explain_certificate(&e, &presented, &self.trusted))),
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
    let verifier = verifier(trust, provider.clone())?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn verifier(trust: &Trust, provider: Arc<CryptoProvider>) -> anyhow::Result<Verifier> {
    let mut verifier = Verifier {
        inner: None,
        pin: None,
        ca_certs: Vec::new(),
        trusted: String::new(),
        provider: provider.clone(),
    };
    match trust {
        Trust::Pin(p) => verifier.pin = Some(p.clone()),
        Trust::CaFile(path) => {
            let (v, certs) = ca_verifier(path, provider.clone())?;
            verifier.inner = Some(v);
            verifier.ca_certs = certs;
            verifier.trusted = format!("the CA file {}", path.display());
        }
        Trust::System => {
            verifier.inner = Some(Arc::new(rustls_platform_verifier::Verifier::new(
                provider.clone(),
            )?));
            verifier.trusted = "the system's trusted roots".into();
        }
    }
    Ok(verifier)
}

type CaVerifier = (Arc<dyn ServerCertVerifier>, Vec<CertificateDer<'static>>);

fn ca_verifier(path: &Path, provider: Arc<CryptoProvider>) -> anyhow::Result<CaVerifier> {
    use anyhow::Context;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read CA file {}", path.display()))?
    {
        let cert = cert.with_context(|| format!("invalid CA file {}", path.display()))?;
        roots
            .add(cert.clone())
            .with_context(|| format!("invalid certificate in {}", path.display()))?;
        certs.push(cert);
    }
    if roots.is_empty() {
        anyhow::bail!("no certificate in CA file {}", path.display());
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
    Ok((verifier, certs))
}

fn is_ca_used_as_end_entity(e: &Error) -> bool {
    match e {
        Error::InvalidCertificate(CertificateError::Other(o)) => {
            matches!(
                o.0.downcast_ref::<webpki::Error>(),
                Some(webpki::Error::CaUsedAsEndEntity)
            )
        }
        _ => false,
    }
}

fn date(t: UnixTime) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.as_secs());
    humantime::format_rfc3339_seconds(crate::wire::representable(at)).to_string()
}

/// Why a certificate was refused, as one sentence with what to do about it.
/// `presented` is its fingerprint; `trusted` whom the client trusts.
pub fn explain_certificate(e: &Error, presented: &str, trusted: &str) -> String {
    let untrusted = |why: &str| {
        format!(
            "the server's certificate is not trusted: {why}; it presented {presented} (trust it with --ca-cert FILE, or pin that fingerprint in a context)"
        )
    };
    let Error::InvalidCertificate(ce) = e else {
        return untrusted(&describe_tls(e));
    };
    match ce {
        CertificateError::Expired => {
            "the server's certificate has expired: renew it on the server".into()
        }
        CertificateError::ExpiredContext { not_after, .. } => format!(
            "the server's certificate expired on {}: renew it on the server",
            date(*not_after)
        ),
        CertificateError::NotValidYet => {
            "the server's certificate is not valid yet: check the clocks of this host and the server".into()
        }
        CertificateError::NotValidYetContext { not_before, .. } => format!(
            "the server's certificate is not valid before {}: check the clocks of this host and the server",
            date(*not_before)
        ),
        CertificateError::NotValidForNameContext { expected, presented: names } => {
            let expected = expected.to_str();
            let connect = match names.len() {
                0 => "",
                1 => "connect with that name, or ",
                _ => "connect with one of those names, or ",
            };
            let names = if names.is_empty() {
                "no name at all".to_string()
            } else {
                names.iter().map(|n| plain_name(n)).collect::<Vec<_>>().join(", ")
            };
            format!(
                "the server's certificate is for {names}, not {expected}: {connect}give the server a certificate that includes {expected} (agentsd gen-key --tls-dir DIR --san {expected})"
            )
        }
        CertificateError::NotValidForName => {
            "the server's certificate is not for the name in the URL: connect with a name it holds, or give the server a certificate for this one".into()
        }
        CertificateError::UnknownIssuer => untrusted(&format!("it was not issued by {trusted}")),
        CertificateError::BadSignature => untrusted(&format!(
            "its signature does not verify with {trusted} (a different certificate under the same name?)"
        )),
        CertificateError::Revoked => "the server's certificate has been revoked: the server needs a new one".into(),
        CertificateError::BadEncoding => "the server's certificate is malformed".into(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "the server's certificate is not meant for a TLS server (its extended key usage says otherwise): give the server one that is".into()
        }
        CertificateError::UnsupportedSignatureAlgorithmContext { .. }
        | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            "the server's certificate is signed with an algorithm this client does not support: give the server one signed with ECDSA, Ed25519 or RSA (agentsd gen-key --tls-dir makes one)".into()
        }
        CertificateError::Other(o) => match o.0.downcast_ref::<webpki::Error>() {
            Some(webpki::Error::CaUsedAsEndEntity) => untrusted(&format!(
                "it is a CA certificate (CA:TRUE), and {trusted} does not hold this very certificate"
            )),
            Some(webpki::Error::UnknownIssuer) | None => untrusted(&format!("it was not issued by {trusted}")),
            Some(other) => untrusted(&format!("{other:?} (checked against {trusted})")),
        },
        CertificateError::UnhandledCriticalExtension => {
            untrusted("it has a critical extension this client does not understand")
        }
        other => untrusted(&format!("{other} (checked against {trusted})")),
    }
}

/// `localhost` for rustls's `DnsName("localhost")`, `127.0.0.1` for its
/// `IpAddress(127.0.0.1)`.
fn plain_name(n: &str) -> &str {
    n.strip_prefix("DnsName(\"")
        .and_then(|r| r.strip_suffix("\")"))
        .or_else(|| n.strip_prefix("IpAddress(").and_then(|r| r.strip_suffix(')')))
        .unwrap_or(n)
}

/// A TLS failure other than a refused certificate, as one sentence.
pub fn describe_tls(e: &Error) -> String {
    match e {
        // Our own sentences (from the verifier) come through as they are.
        Error::General(msg) => msg.clone(),
        Error::InvalidMessage(_) => {
            "the server does not speak TLS (if it is a plain http listener on loopback, use http://)".into()
        }
        Error::AlertReceived(alert) => format!(
            "the server ended the TLS handshake ({alert:?}): it may want something this client does not offer"
        ),
        Error::PeerIncompatible(_) => {
            "the server and this client have no TLS version or cipher suite in common (TLS 1.2 or 1.3 is needed)".into()
        }
        Error::NoCertificatesPresented => "the server presented no certificate".into(),
        Error::InvalidCertificate(_) => explain_certificate(e, "an unknown certificate", "this client"),
        other => format!("{other}"),
    }
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

    /// A self-signed certificate for `names`, as `openssl req -x509` makes
    /// them (CA:TRUE) when `ca`; valid between the two years.
    fn cert(
        dir: &Path,
        name: &str,
        names: &[&str],
        ca: bool,
        years: (i32, i32),
    ) -> (std::path::PathBuf, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        // The subject is the file name up to its first dot.
        let subject = name.split('.').next().unwrap_or(name);
        params.distinguished_name.push(rcgen::DnType::CommonName, subject);
        if ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
        let c = params.self_signed(&key).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, c.pem()).unwrap();
        (path, c.der().to_vec())
    }

    fn check(ca_file: &Path, der: &[u8], host: &str) -> Result<ServerCertVerified, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let v = verifier(&Trust::CaFile(ca_file.into()), provider).unwrap();
        let name = ServerName::try_from(host.to_string()).unwrap();
        v.verify_server_cert(
            &CertificateDer::from(der.to_vec()),
            &[],
            &name,
            &[],
            UnixTime::now(),
        )
    }

    fn sentence(r: Result<ServerCertVerified, Error>) -> String {
        match r {
            Err(Error::General(s)) => s,
            Err(other) => panic!("not a sentence: {other:?}"),
            Ok(_) => panic!("trusted"),
        }
    }

    #[test]
    fn a_ca_file_holding_the_very_certificate_is_trusted_even_with_ca_true() {
        let dir = tempfile::tempdir().unwrap();
        let (file, der) = cert(
            dir.path(),
            "ca.pem",
            &["localhost", "127.0.0.1"],
            true,
            (2000, 2200),
        );
        assert!(check(&file, &der, "127.0.0.1").is_ok());
        assert!(check(&file, &der, "localhost").is_ok());
        // Its names still count.
        let e = sentence(check(&file, &der, "bots.example.com"));
        assert!(
            e.starts_with("the server's certificate is for localhost, 127.0.0.1, not bots.example.com: "),
            "{e}"
        );
        // And its dates.
        let (old, old_der) = cert(dir.path(), "old.pem", &["127.0.0.1"], true, (2000, 2001));
        let e = sentence(check(&old, &old_der, "127.0.0.1"));
        assert!(
            e.starts_with("the server's certificate expired on 2001-01-01T00:00:00Z: renew it"),
            "{e}"
        );
        let (young, young_der) = cert(dir.path(), "young.pem", &["127.0.0.1"], true, (2190, 2200));
        let e = sentence(check(&young, &young_der, "127.0.0.1"));
        assert!(e.contains("not valid before 2190-01-01"), "{e}");
        // A CA:TRUE certificate that the file does not hold as it is.
        let (_, stranger) = cert(dir.path(), "stranger.pem", &["127.0.0.1"], true, (2000, 2200));
        let e = sentence(check(&file, &stranger, "127.0.0.1"));
        assert!(e.starts_with("the server's certificate is not trusted: "), "{e}");
    }

    #[test]
    fn refusals_read_as_sentences_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = cert(dir.path(), "a.pem", &["127.0.0.1"], false, (2000, 2200));
        let (_, other) = cert(dir.path(), "b.pem", &["127.0.0.1"], false, (2000, 2200));
        let e = sentence(check(&file, &other, "127.0.0.1"));
        let fp = fingerprint(&other);
        assert_eq!(
            e,
            format!(
                "the server's certificate is not trusted: it was not issued by the CA file {}; it presented {fp} (trust it with --ca-cert FILE, or pin that fingerprint in a context)",
                file.display()
            )
        );
        // Another certificate under the same name as the one trusted.
        let (_, twin) = cert(dir.path(), "a.twin.pem", &["127.0.0.1"], false, (2000, 2200));
        let e = sentence(check(&file, &twin, "127.0.0.1"));
        assert!(
            e.contains("its signature does not verify with the CA file"),
            "{e}"
        );
        let (exp, exp_der) = cert(dir.path(), "c.pem", &["127.0.0.1"], false, (2000, 2001));
        let e = sentence(check(&exp, &exp_der, "127.0.0.1"));
        assert!(
            e.starts_with("the server's certificate expired on 2001-01-01"),
            "{e}"
        );
        for e in [
            describe_tls(&Error::InvalidCertificate(CertificateError::BadSignature)),
            describe_tls(&Error::General("x".into())),
            describe_tls(&Error::InvalidCertificate(CertificateError::NotValidForName)),
        ] {
            assert!(!e.contains('{') && !e.contains("Context"), "{e}");
        }
    }
}
