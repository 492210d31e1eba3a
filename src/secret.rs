//! API keys at run time: generated from the OS random source, stored in
//! files that only their owner can read, read back with one set of rules (by
//! the daemon and the client alike), compared in constant time.

use anyhow::{Context, bail};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use subtle::ConstantTimeEq;

/// Shorter keys are refused: they could be guessed.
pub const MIN_KEY_LEN: usize = 32;

/// 32 random bytes from the OS, as 64 hex characters.
pub fn generate() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("the OS random source failed"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `contents` to a new file with mode 0600, atomically (a reader sees
/// no file or the whole one). Without `overwrite`, an existing file is an
/// error, also one that appears meanwhile.
pub fn write_private(path: &Path, contents: &[u8], overwrite: bool) -> anyhow::Result<()> {
    if !overwrite && path.exists() {
        bail!("{} already exists (use --force to replace it)", path.display());
    }
    write_atomic(path, contents, 0o600, overwrite)
}

/// Writes a file through a temporary file in the same directory (random
/// name, `mode` from the start), then moves it into place.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32, overwrite: bool) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".agentsd-")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    tmp.write_all(contents)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    let persisted = if overwrite {
        tmp.persist(path).map(drop)
    } else {
        tmp.persist_noclobber(path).map(drop)
    };
    persisted
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Reads a key file, refusing one that group or others can read.
pub fn read_key_file(path: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    // One open: the mode checked is the mode of the file read.
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read API key file {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read API key file {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "API key file {} is readable by group or others (mode {mode:04o}); run: chmod 600 {}",
            path.display(),
            path.display()
        );
    }
    let mut key = String::new();
    file.read_to_string(&mut key)
        .with_context(|| format!("cannot read API key file {}", path.display()))?;
    let key = key.trim().to_string();
    check_len(&key, &path.display().to_string())?;
    Ok(key)
}

pub fn check_len(key: &str, source: &str) -> anyhow::Result<()> {
    if key.chars().count() < MIN_KEY_LEN {
        bail!(
            "the API key from {source} is too short ({} characters): at least {MIN_KEY_LEN} are required (agentsd gen-key makes one)",
            key.chars().count()
        );
    }
    Ok(())
}

/// The server's key, kept only as a digest: comparing digests of equal
/// length takes the same time whatever the key presented, and its length.
#[derive(Clone)]
pub struct KeyCheck {
    digest: [u8; 32],
}

impl KeyCheck {
    pub fn new(key: &str) -> KeyCheck {
        KeyCheck {
            digest: sha256(key.as_bytes()),
        }
    }

    pub fn matches(&self, presented: &str) -> bool {
        sha256(presented.as_bytes()).ct_eq(&self.digest).into()
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_hex_and_differ() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn key_check() {
        let k = KeyCheck::new("0123456789abcdef0123456789abcdef");
        assert!(k.matches("0123456789abcdef0123456789abcdef"));
        assert!(!k.matches("0123456789abcdef0123456789abcdeF"));
        assert!(!k.matches(""));
    }

    #[test]
    fn key_file_mode_and_length_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        write_private(&p, b"0123456789abcdef0123456789abcdef\n", false).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(read_key_file(&p).unwrap(), "0123456789abcdef0123456789abcdef");
        let e = write_private(&p, b"x", false).unwrap_err().to_string();
        assert!(e.contains("already exists"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = read_key_file(&p).unwrap_err().to_string();
        assert!(e.contains("readable by group or others (mode 0640)"), "{e}");
        write_private(&p, b"short", true).unwrap();
        let e = read_key_file(&p).unwrap_err().to_string();
        assert!(e.contains("too short (5 characters)"), "{e}");
    }
}
