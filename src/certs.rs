//! TLS certificates: self-signed ones made with rcgen (for `serve` and
//! `gen-key --tls-dir`), and the fingerprint of a PEM file.

use anyhow::Context;
use std::path::{Path, PathBuf};

pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A new self-signed certificate for `names` (DNS names or IP addresses):
/// (certificate PEM, private key PEM, DER of the certificate).
pub fn self_signed(names: &[String]) -> anyhow::Result<(String, String, Vec<u8>)> {
    let key = rcgen::KeyPair::generate().context("cannot generate a key pair")?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).context("invalid certificate names")?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().cloned().unwrap_or_else(|| "agentsd".into()),
    );
    let cert = params.self_signed(&key).context("cannot sign the certificate")?;
    Ok((cert.pem(), key.serialize_pem(), cert.der().to_vec()))
}

/// Writes a new self-signed certificate and key (0600) into `dir`.
pub fn write_self_signed(
    dir: &Path,
    names: &[String],
    overwrite: bool,
) -> anyhow::Result<(CertFiles, String)> {
    let (cert_pem, key_pem, der) = self_signed(names)?;
    let files = CertFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    crate::secret::write_private(&files.key, key_pem.as_bytes(), overwrite)?;
    crate::secret::write_private(&files.cert, cert_pem.as_bytes(), overwrite)?;
    Ok((files, crate::wire::fingerprint(&der)))
}

/// The names a generated certificate covers: loopback and this host.
pub fn default_names() -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(h) = nix::unistd::gethostname()
        && let Some(h) = h.to_str()
        && !h.is_empty()
        && !names.iter().any(|n| n == h)
    {
        names.push(h.to_string());
    }
    names
}

/// The fingerprint of the first certificate in a PEM file.
pub fn fingerprint_of_pem(path: &Path) -> anyhow::Result<String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let cert = CertificateDer::from_pem_file(path)
        .with_context(|| format!("cannot read certificate {}", path.display()))?;
    Ok(crate::wire::fingerprint(&cert))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_has_stable_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let (files, fp) = write_self_signed(dir.path(), &default_names(), false).unwrap();
        assert!(fp.starts_with("SHA256:"));
        assert_eq!(fp.len(), 7 + 32 * 3 - 1);
        assert_eq!(fingerprint_of_pem(&files.cert).unwrap(), fp);
        assert!(write_self_signed(dir.path(), &default_names(), false).is_err());
    }
}
