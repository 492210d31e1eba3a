//! Dashboard sessions: the page signs in once with the key (`POST
//! /session`) and gets a cookie that every route accepts beside the bearer
//! header. Sessions live in memory: a random id (only its digest is kept),
//! the key that opened it, and when it was last used. One ends after
//! [`IDLE`] without a request, on `DELETE /session`, or when its key is
//! revoked. A daemon that stops cleanly leaves the open sessions (their
//! ids' digests, never the ids) in `state_dir/sessions` for the next one,
//! which reads and removes that file: a page left open goes on by itself
//! across a restart or an upgrade, but no session outlives a crash.

use super::agents::state;
use super::auth::{self, Via};
use super::error::ApiError;
use crate::wire::Whoami;
use salvo::http::StatusCode;
use salvo::http::cookie::{Cookie, SameSite};
use salvo::prelude::*;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The cookie's name.
pub const COOKIE: &str = "agentsd_session";
/// Where a daemon that stops leaves its sessions for the next, in its
/// state_dir.
pub const SESSIONS_FILE: &str = "sessions";
/// A session unused this long is over.
pub const IDLE: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; beyond, the least recently used session of the
/// key that holds the most goes.
const MAX_SESSIONS: usize = 10_000;
/// Sessions one key may hold; beyond, its own least recently used goes: a
/// key that signs in again and again ends only its own sessions.
pub const PER_KEY: usize = 100;

/// The sessions open now.
pub struct Sessions {
    inner: Mutex<HashMap<[u8; 32], Session>>,
    /// Bumped whenever a session ends, so that its event streams end too.
    ended: watch::Sender<u64>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            inner: Mutex::default(),
            ended: watch::channel(0).0,
        }
    }
}

/// The key that gives up a session when all of them are taken: the one
/// holding the most (`opener` if it is among them, else the least digest
/// of them, so that the choice is the same every time).
fn holding_most(per_key: &HashMap<[u8; 32], usize>, opener: [u8; 32]) -> [u8; 32] {
    let most = per_key.values().copied().max().unwrap_or(0);
    if per_key.get(&opener).copied().unwrap_or(0) == most {
        return opener;
    }
    per_key
        .iter()
        .filter(|(_, n)| **n == most)
        .map(|(k, _)| *k)
        .min()
        .unwrap_or(opener)
}

/// A session as one daemon leaves it for the next: digests only.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    /// The digest of the session's id (hex).
    id: String,
    /// The digest of its key (hex).
    key: String,
    /// Seconds since it was last used.
    idle_s: u64,
}

#[derive(Clone, Copy)]
struct Session {
    /// The digest of the key that opened it.
    key: [u8; 32],
    last: Instant,
}

impl Sessions {
    /// Opens a session for the key with this digest; returns the cookie's
    /// value (64 hex characters from the OS random source). A key that
    /// holds [`PER_KEY`] sessions loses its own least recently used; when
    /// all sessions together are at [`MAX_SESSIONS`], the key holding the
    /// most loses its least recently used: one key never ends another's
    /// sessions by opening its own.
    pub fn open(&self, key: [u8; 32]) -> Result<String, ApiError> {
        let id = crate::secret::generate().map_err(|e| ApiError::internal(e.to_string()))?;
        let now = Instant::now();
        let mut s = self.lock();
        let before = s.len();
        s.retain(|_, v| now.duration_since(v.last) < IDLE);
        let mut ended = s.len() < before;
        let own = s.values().filter(|v| v.key == key).count();
        let loser = if own >= PER_KEY {
            Some(key)
        } else if s.len() >= MAX_SESSIONS {
            let mut per_key: HashMap<[u8; 32], usize> = HashMap::new();
            for v in s.values() {
                *per_key.entry(v.key).or_default() += 1;
            }
            Some(holding_most(&per_key, key))
        } else {
            None
        };
        if let Some(loser) = loser
            && let Some(oldest) = s
                .iter()
                .filter(|(_, v)| v.key == loser)
                .min_by_key(|(_, v)| v.last)
                .map(|(k, _)| *k)
        {
            s.remove(&oldest);
            ended = true;
        }
        s.insert(crate::secret::digest(&id), Session { key, last: now });
        drop(s);
        if ended {
            self.ended.send_modify(|n| *n += 1);
        }
        Ok(id)
    }

    /// Ends every session whose key is not in `ring` (a key removed from
    /// the config): put back later, it has to sign in again.
    pub fn end_without_key(&self, ring: &crate::secret::KeyRing) {
        let mut s = self.lock();
        let before = s.len();
        s.retain(|_, v| ring.find_digest(&v.key).is_some());
        let ended = s.len() < before;
        drop(s);
        if ended {
            self.ended.send_modify(|n| *n += 1);
        }
    }

    /// The key digest of the session with this cookie value, if it is
    /// open (and then it counts as used now).
    pub fn find(&self, id: &str) -> Option<[u8; 32]> {
        let d = crate::secret::digest(id);
        let now = Instant::now();
        let mut s = self.lock();
        let session = s.get_mut(&d)?;
        if now.duration_since(session.last) >= IDLE {
            s.remove(&d);
            drop(s);
            self.ended.send_modify(|n| *n += 1);
            return None;
        }
        session.last = now;
        Some(session.key)
    }

    /// Ends the session with this id digest.
    pub fn close(&self, id: &[u8; 32]) {
        if self.lock().remove(id).is_some() {
            self.ended.send_modify(|n| *n += 1);
        }
    }

    /// When the session with this id digest ends unless it is used before
    /// (`None`: it is over: closed, or idle too long).
    pub fn expires(&self, id: &[u8; 32]) -> Option<Instant> {
        let expires = self.lock().get(id)?.last + IDLE;
        (Instant::now() < expires).then_some(expires)
    }

    /// Told whenever a session ends.
    pub fn ended(&self) -> watch::Receiver<u64> {
        self.ended.subscribe()
    }

    /// The sessions a daemon stopped before this one left in `path`, which
    /// is removed (an unreadable file or entry is skipped; no file, no
    /// session; none of a key that is not in `ring`).
    pub fn restore(path: &Path, ring: &crate::secret::KeyRing) -> Sessions {
        let s = Sessions::default();
        let Ok(text) = std::fs::read(path) else {
            return s;
        };
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!("cannot remove {}: {e}", path.display());
        }
        let saved: Vec<Saved> = match serde_json::from_slice(&text) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("ignoring the sessions in {}: {e}", path.display());
                return s;
            }
        };
        let now = Instant::now();
        let hex = |h: &str| -> Option<[u8; 32]> {
            data_encoding::HEXLOWER.decode(h.as_bytes()).ok()?.try_into().ok()
        };
        let mut inner = s.lock();
        for e in saved.into_iter().take(MAX_SESSIONS) {
            let (Some(id), Some(key)) = (hex(&e.id), hex(&e.key)) else {
                continue;
            };
            if ring.find_digest(&key).is_none() {
                continue;
            }
            let idle = Duration::from_secs(e.idle_s);
            if let Some(last) = now.checked_sub(idle).filter(|_| idle < IDLE) {
                inner.insert(id, Session { key, last });
            }
        }
        drop(inner);
        s
    }

    /// Writes the open sessions to `path` (0600) for the next daemon: the
    /// digests of their ids and keys, and how long each has been idle.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let now = Instant::now();
        let saved: Vec<Saved> = self
            .lock()
            .iter()
            .filter(|(_, s)| now.duration_since(s.last) < IDLE)
            .map(|(id, s)| Saved {
                id: data_encoding::HEXLOWER.encode(id),
                key: data_encoding::HEXLOWER.encode(&s.key),
                idle_s: now.duration_since(s.last).as_secs(),
            })
            .collect();
        let text = serde_json::to_vec(&saved)?;
        crate::secret::write_private(path, &text, true)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn cookie(value: String, remove: bool) -> Cookie<'static> {
    let mut c = Cookie::build((COOKIE, value))
        .path("/")
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Strict)
        .build();
    if remove {
        c.make_removal();
    }
    c
}

/// Signs the dashboard in: made with the key as a bearer header, it sets a
/// session cookie (`HttpOnly; Secure; SameSite=Strict`) that every route
/// accepts, and tells what the key may do. The key itself is never stored
/// in the browser.
#[endpoint(tags("auth"), responses((status_code = 200, description = "Signed in; the cookie is set", body = Whoami)))]
pub async fn sign_in(depot: &mut Depot, res: &mut Response) -> Result<Json<Whoami>, ApiError> {
    let state = state(depot)?;
    let caller = auth::caller(depot)?;
    if !matches!(caller.via, Via::Key) {
        return Err(ApiError::bad_request(
            "sign in with the key: Authorization: Bearer <key>",
        ));
    }
    let id = state.sessions.open(caller.digest)?;
    res.add_cookie(cookie(id, false));
    Ok(Json(Whoami {
        name: caller.name.clone(),
        role: caller.role,
        edits: state.edits.is_some() && caller.role == crate::wire::Role::Admin,
    }))
}

/// Signs out: ends the session of the cookie (its event streams end too)
/// and clears the cookie.
#[endpoint(tags("auth"), status_codes(204))]
pub async fn sign_out(depot: &mut Depot, res: &mut Response) -> Result<(), ApiError> {
    let state = state(depot)?;
    if let Via::Session(id) = auth::caller(depot)?.via {
        state.sessions.close(&id);
    }
    res.add_cookie(cookie(String::new(), true));
    res.status_code(StatusCode::NO_CONTENT);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::{KeyEntry, KeyRing};

    /// A ring of keys with these digests `[b; 32]`.
    fn ring(keys: &[u8]) -> KeyRing {
        KeyRing::new(
            keys.iter()
                .map(|b| KeyEntry {
                    name: format!("k{b}"),
                    role: crate::wire::Role::Read,
                    digest: [*b; 32],
                })
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn a_key_signing_in_again_and_again_ends_only_its_own_sessions() {
        let s = Sessions::default();
        let admin = s.open([1; 32]).unwrap();
        let ended = s.ended();
        let mut mine = Vec::new();
        for _ in 0..PER_KEY + 50 {
            mine.push(s.open([2; 32]).unwrap());
        }
        assert_eq!(s.find(&admin), Some([1; 32]), "another key's session ended");
        assert_eq!(s.lock().values().filter(|v| v.key == [2; 32]).count(), PER_KEY);
        // Its own oldest went, its newest stayed.
        assert_eq!(s.find(&mine[0]), None);
        assert_eq!(s.find(mine.last().unwrap()), Some([2; 32]));
        assert!(ended.has_changed().unwrap());
        // At the cap of all sessions, the key holding the most gives one up.
        let counts = HashMap::from([([1; 32], 1), ([2; 32], 100), ([4; 32], 100), ([3; 32], 5)]);
        assert_eq!(holding_most(&counts, [3; 32]), [2; 32]);
        assert_eq!(holding_most(&counts, [4; 32]), [4; 32]);
        assert_eq!(holding_most(&counts, [9; 32]), [2; 32]);
    }

    #[test]
    fn a_session_ends_for_good_when_its_key_leaves() {
        let s = Sessions::default();
        let gone = s.open([1; 32]).unwrap();
        let kept = s.open([2; 32]).unwrap();
        let ended = s.ended();
        s.end_without_key(&ring(&[2]));
        assert!(ended.has_changed().unwrap());
        assert_eq!(s.find(&gone), None);
        assert_eq!(s.find(&kept), Some([2; 32]));
        // The key back: its session is not.
        s.end_without_key(&ring(&[1, 2]));
        assert_eq!(s.find(&gone), None);
    }

    #[test]
    fn a_session_idle_too_long_is_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions");
        let d = crate::secret::digest("abc");
        let hex = |b: &[u8]| data_encoding::HEXLOWER.encode(b);
        let idle = IDLE.as_secs() - 1;
        std::fs::write(
            &path,
            format!(
                r#"[{{"id":"{}","key":"{}","idle_s":{idle}}}]"#,
                hex(&d),
                hex(&[7; 32])
            ),
        )
        .unwrap();
        let s = Sessions::restore(&path, &ring(&[7]));
        let expires = s.expires(&d).expect("open for a second more");
        assert!(expires <= Instant::now() + Duration::from_secs(1));
        std::thread::sleep(expires.saturating_duration_since(Instant::now()));
        assert!(s.expires(&d).is_none(), "open past its idle expiry");
    }

    #[test]
    fn a_session_is_found_by_its_id_until_it_is_closed() {
        let s = Sessions::default();
        let mut ended = s.ended();
        let id = s.open([7; 32]).unwrap();
        assert_eq!(id.len(), 64);
        assert_eq!(s.find(&id), Some([7; 32]));
        assert_eq!(s.find(&id[1..]), None);
        assert!(!ended.has_changed().unwrap());
        s.close(&crate::secret::digest(&id));
        assert_eq!(s.find(&id), None);
        assert!(ended.has_changed().unwrap());
        let _ = ended.borrow_and_update();
        let other = s.open([8; 32]).unwrap();
        assert_ne!(other, id);
        assert!(s.expires(&crate::secret::digest(&other)).is_some());
    }

    #[test]
    fn sessions_outlive_a_clean_restart_once_and_only_as_digests() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions");
        let s = Sessions::default();
        let id = s.open([7; 32]).unwrap();
        let closed = s.open([8; 32]).unwrap();
        s.close(&crate::secret::digest(&closed));
        s.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&id), "the cookie value itself was written");
        assert_eq!(text.lines().count(), 1, "{text}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let next = Sessions::restore(&path, &ring(&[7, 8]));
        assert_eq!(next.find(&id), Some([7; 32]));
        assert_eq!(next.find(&closed), None);
        assert!(!path.exists(), "the file is read once");
        assert_eq!(Sessions::restore(&path, &ring(&[7, 8])).find(&id), None);
        // Garbage and sessions idle too long are skipped.
        let d = data_encoding::HEXLOWER.encode(&crate::secret::digest(&id));
        let k = data_encoding::HEXLOWER.encode(&[7; 32]);
        let old = IDLE.as_secs();
        std::fs::write(
            &path,
            format!(r#"[{{"id":"{d}","key":"{k}","idle_s":{old}}},{{"id":"zz","key":"{k}","idle_s":1}}]"#),
        )
        .unwrap();
        assert_eq!(Sessions::restore(&path, &ring(&[7, 8])).find(&id), None);
        std::fs::write(&path, "junk").unwrap();
        assert_eq!(Sessions::restore(&path, &ring(&[7, 8])).find(&id), None);
        assert!(!path.exists());
    }

    #[test]
    fn the_cookie_is_http_only_secure_and_strict() {
        let c = cookie("abc".into(), false).to_string();
        for part in [
            "agentsd_session=abc",
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/",
        ] {
            assert!(c.contains(part), "{c}");
        }
        let gone = cookie(String::new(), true).to_string();
        assert!(gone.contains("Max-Age=0"), "{gone}");
    }
}
