//! API keys at run time: generated from the OS random source, stored in
//! files that only their owner can read, read back with one set of rules (by
//! the daemon and the client alike), compared in constant time.

use crate::wire::Role;
use anyhow::{Context, bail};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use subtle::ConstantTimeEq;

/// Shorter keys are refused: they could be guessed.
pub const MIN_KEY_LEN: usize = 32;

/// The names of the daemon's own key (`api_key_file`, else the
/// environment), which no `[keys.NAME]` may take.
pub const FILE_KEY_NAME: &str = "api_key_file";
pub const ENV_KEY_NAME: &str = "AGENTSD_API_KEY";

/// Whether `s` can name a key: 1 to 64 of `[A-Za-z0-9._-]`.
pub fn is_key_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// 32 random bytes from the OS, as 64 hex characters.
pub fn generate() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("the OS random source failed"))?;
    Ok(data_encoding::HEXLOWER.encode(&bytes))
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

/// The SHA-256 of a key's text, as `[keys.NAME] digest` holds it.
pub fn digest(key: &str) -> [u8; 32] {
    sha256(key.as_bytes())
}

/// `sha256:<64 lowercase hex>`, as written in the config.
pub fn digest_text(d: &[u8; 32]) -> String {
    format!("sha256:{}", data_encoding::HEXLOWER.encode(d))
}

/// The first characters of a digest: enough to tell keys apart in a
/// listing, never enough to stand for the whole.
pub fn digest_short(d: &[u8; 32]) -> String {
    format!("sha256:{}...", &data_encoding::HEXLOWER.encode(d)[..12])
}

/// Reads `sha256:<64 hex>`.
pub fn parse_digest(s: &str) -> Result<[u8; 32], String> {
    let expected =
        "expected \"sha256:\" and 64 hex characters (agentsd gen-key --name NAME --role ROLE prints it)";
    let hex = s
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("invalid digest: {expected}"))?;
    let bytes = data_encoding::HEXLOWER_PERMISSIVE
        .decode(hex.as_bytes())
        .map_err(|_| format!("invalid digest: {expected}"))?;
    bytes
        .try_into()
        .map_err(|_| format!("invalid digest: {expected}"))
}

/// A key the daemon accepts, kept only as a digest: comparing digests of
/// equal length takes the same time whatever the key presented, and its
/// length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEntry {
    /// Who holds it, as the audit names it.
    pub name: String,
    pub role: Role,
    pub digest: [u8; 32],
}

/// Every key the daemon accepts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyRing {
    entries: Vec<KeyEntry>,
}

impl KeyRing {
    /// Refuses two keys with the same digest (who made a request would be
    /// ambiguous) or the same name.
    pub fn new(entries: Vec<KeyEntry>) -> Result<KeyRing, String> {
        for (i, a) in entries.iter().enumerate() {
            for b in &entries[..i] {
                if a.name == b.name {
                    return Err(format!("two keys are named {:?}", a.name));
                }
                if a.digest == b.digest {
                    return Err(format!(
                        "keys {:?} and {:?} are the same key: give each consumer a key of its own",
                        b.name, a.name
                    ));
                }
            }
        }
        Ok(KeyRing { entries })
    }

    /// The entry of the key presented, if any. Every entry is compared (no
    /// early exit), each in constant time.
    pub fn find(&self, presented: &str) -> Option<&KeyEntry> {
        self.find_digest(&digest(presented))
    }

    /// The entry with this digest, compared as [`Self::find`] does.
    pub fn find_digest(&self, d: &[u8; 32]) -> Option<&KeyEntry> {
        let mut found = None;
        for e in &self.entries {
            if bool::from(d.ct_eq(&e.digest)) && found.is_none() {
                found = Some(e);
            }
        }
        found
    }

    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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

    fn entry(name: &str, role: Role, key: &str) -> KeyEntry {
        KeyEntry {
            name: name.into(),
            role,
            digest: digest(key),
        }
    }

    #[test]
    fn a_key_ring_finds_the_key_presented() {
        let ring = KeyRing::new(vec![
            entry("wall", Role::Read, "0123456789abcdef0123456789abcdef"),
            entry("ops", Role::Operate, "fedcba9876543210fedcba9876543210"),
        ])
        .unwrap();
        assert_eq!(
            ring.find("0123456789abcdef0123456789abcdef").unwrap().name,
            "wall"
        );
        assert_eq!(
            ring.find("fedcba9876543210fedcba9876543210").unwrap().role,
            Role::Operate
        );
        assert!(ring.find("0123456789abcdef0123456789abcdeF").is_none());
        assert!(ring.find("").is_none());
        let e = KeyRing::new(vec![
            entry("a", Role::Read, "0123456789abcdef0123456789abcdef"),
            entry("b", Role::Admin, "0123456789abcdef0123456789abcdef"),
        ])
        .unwrap_err();
        assert!(e.contains("\"a\" and \"b\" are the same key"), "{e}");
    }

    #[test]
    fn digests_are_written_and_read_back() {
        let d = digest("0123456789abcdef0123456789abcdef");
        let text = digest_text(&d);
        assert!(text.starts_with("sha256:") && text.len() == 7 + 64, "{text}");
        assert_eq!(parse_digest(&text), Ok(d));
        assert_eq!(
            parse_digest(&text.to_uppercase().replace("SHA256", "sha256")),
            Ok(d)
        );
        assert!(digest_short(&d).len() < 30);
        for bad in [
            "",
            "sha256:",
            "sha256:abc",
            &text[7..],
            &format!("{text}00"),
            "sha256:zz",
        ] {
            assert!(parse_digest(bad).is_err(), "{bad:?}");
        }
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
