//! Who is asking, and may they: the key hoop in front of every route but
//! `/health`, the role each route needs, and the budget of failed keys per
//! address.

use super::AppState;
use super::error::ApiError;
use crate::secret::KeyRing;
use crate::wire::{Role, Whoami};
use ipnet::IpNet;
use salvo::http::header::AUTHORIZATION;
use salvo::http::{HeaderMap, HeaderValue};
use salvo::prelude::*;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Failed keys an address may send at once before it is answered 429.
const BUDGET: f64 = 20.0;
/// Failed keys per second an address earns back.
const REFILL_PER_S: f64 = 1.0;
/// Addresses tracked at most; beyond, those back at full budget are
/// forgotten first.
const MAX_TRACKED: usize = 100_000;
/// At most one log line about failed keys this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The key a request was made with, put in the depot by [`require_key`].
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    pub digest: [u8; 32],
    /// The client's address (from `X-Forwarded-For` behind a trusted proxy).
    pub remote: IpAddr,
    pub via: Via,
}

/// How a request presented its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// `Authorization: Bearer <key>`.
    Key,
    /// The dashboard's session cookie (the digest of the session's id).
    Session([u8; 32]),
}

impl Caller {
    /// Resolves once this caller's key is no longer accepted (removed from
    /// the config); never while it is.
    async fn key_revoked(&self, keys: &mut watch::Receiver<Arc<KeyRing>>) {
        let closed = keys
            .wait_for(|ring| ring.find_digest(&self.digest).is_none())
            .await
            .is_err();
        if closed {
            // The daemon is going away; shutdown ends the stream.
            std::future::pending::<()>().await;
        }
    }

    /// Resolves once what this caller signed in with ends: its key is
    /// revoked, or its session is over.
    pub async fn revoked(&self, keys: &mut watch::Receiver<Arc<KeyRing>>, state: &AppState) {
        let Via::Session(id) = self.via else {
            return self.key_revoked(keys).await;
        };
        let mut ended = state.sessions.ended();
        let session_over = async {
            loop {
                // Idle too long is over too: the stream itself does not
                // count as a use of the session.
                let Some(expires) = state.sessions.expires(&id) else {
                    return;
                };
                tokio::select! {
                    changed = ended.changed() => if changed.is_err() {
                        std::future::pending::<()>().await;
                    },
                    _ = tokio::time::sleep_until(expires.into()) => {}
                }
            }
        };
        tokio::select! {
            _ = self.key_revoked(keys) => {}
            _ = session_over => {}
        }
    }
}

/// What the request's key may do: 401 without a valid key, 429 for an
/// address that sent too many wrong ones.
#[handler]
pub async fn require_key(req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
    let state = match super::agents::state_ref(depot) {
        Ok(s) => s.clone(),
        Err(e) => {
            e.render(res);
            ctrl.skip_rest();
            return;
        }
    };
    match authenticate(req, &state) {
        Ok(caller) => {
            depot.insert_typed(caller);
        }
        Err(e) => {
            e.render(res);
            ctrl.skip_rest();
        }
    }
}

/// Refuses (403) a request made with the session cookie that changes
/// something, unless it comes from the dashboard's own origin. After the
/// audit hoop: a refused cross-site attempt is recorded.
#[handler]
pub async fn check_origin(req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
    let checked = super::agents::state_ref(depot).and_then(|state| {
        let session = matches!(caller(depot)?.via, Via::Session(_));
        if session && !is_safe(req.method()) {
            same_origin(req, state)?;
        }
        Ok(())
    });
    if let Err(e) = checked {
        e.render(res);
        ctrl.skip_rest();
    }
}

/// Methods that change nothing.
pub fn is_safe(m: &salvo::http::Method) -> bool {
    use salvo::http::Method;
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The caller of `req`, by its bearer key or else its session cookie, or
/// why not.
pub fn authenticate(req: &Request, state: &AppState) -> Result<Caller, ApiError> {
    let remote = client_addr(req, &state.trusted_proxies);
    if let Err(wait) = state.guard.admit(remote) {
        state.metrics.auth_throttled();
        return Err(ApiError::too_many_failures(wait));
    }
    let ring = state.keys.borrow().clone();
    let bearer = bearer(req.headers());
    let session = req.cookie(super::session::COOKIE).map(|c| c.value().to_string());
    let found = match (bearer, &session) {
        (Some(k), _) => ring.find(k).map(|e| (e, Via::Key)),
        (None, Some(id)) => {
            let id_digest = crate::secret::digest(id);
            match state.sessions.find(id) {
                Some(key) => match ring.find_digest(&key) {
                    Some(e) => Some((e, Via::Session(id_digest))),
                    None => {
                        // Its key was revoked: so is the session.
                        state.sessions.close(&id_digest);
                        None
                    }
                },
                None => None,
            }
        }
        (None, None) => None,
    };
    match found {
        Some((e, via)) => Ok(Caller {
            name: e.name.clone(),
            role: e.role,
            digest: e.digest,
            remote,
            via,
        }),
        None => {
            state.metrics.auth_failed();
            state.guard.failed(remote, bearer.is_some() || session.is_some());
            Err(ApiError::unauthorized())
        }
    }
}

/// A request made with the session cookie that changes something must
/// come from the dashboard's own origin: `[server] public_url`'s, else
/// this request's own scheme and host.
fn same_origin(req: &Request, state: &AppState) -> Result<(), ApiError> {
    let refuse = |why: &str| {
        Err(ApiError::forbidden(format!(
            "cross-origin request refused: {why}"
        )))
    };
    let Some(origin) = req.headers().get("origin").and_then(|o| o.to_str().ok()) else {
        return refuse("a request made with the session cookie must carry an Origin header");
    };
    let Ok(origin) = url::Url::parse(origin) else {
        return refuse("the Origin header is not a URL");
    };
    let expected = match &state.public_origin {
        Some(o) => o.clone(),
        None => {
            let host = req
                .uri()
                .authority()
                .map(|a| a.as_str().to_string())
                .or_else(|| {
                    req.headers()
                        .get(salvo::http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_string)
                })
                .unwrap_or_default();
            let scheme = if state.tls { "https" } else { "http" };
            match url::Url::parse(&format!("{scheme}://{host}")) {
                Ok(u) => u.origin().ascii_serialization(),
                Err(_) => return refuse("the request has no valid Host"),
            }
        }
    };
    if origin.origin().ascii_serialization() == expected {
        Ok(())
    } else {
        refuse(&format!(
            "Origin {} is not {expected} (behind a proxy, set [server] public_url)",
            origin.origin().ascii_serialization()
        ))
    }
}

/// The caller if the request carries a valid key or session, for routes
/// that answer everyone but tell more to a key (`/health`). A wrong key
/// counts against the address's budget; past it the key is not even
/// looked at.
pub fn optional_caller(req: &Request, state: &AppState) -> Option<Caller> {
    if bearer(req.headers()).is_none() && req.cookie(super::session::COOKIE).is_none() {
        return None;
    }
    authenticate(req, state).ok()
}

/// The caller [`require_key`] found.
pub fn caller(depot: &Depot) -> Result<&Caller, ApiError> {
    depot
        .get_typed::<Caller>()
        .map_err(|_| ApiError::internal("no caller"))
}

/// A hoop that refuses (403) a key whose role does not include this one.
pub struct Needs(pub Role);

#[async_trait]
impl Handler for Needs {
    async fn handle(&self, _req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
        let refusal = match caller(depot) {
            Ok(c) if c.role.allows(self.0) => None,
            Ok(c) => Some(ApiError::forbidden(format!(
                "the key {:?} has the role {}; this needs {}",
                c.name, c.role, self.0
            ))),
            Err(e) => Some(e),
        };
        if let Some(e) = refusal {
            e.render(res);
            ctrl.skip_rest();
        }
    }
}

/// The key this request was made with: its name and role.
#[endpoint(tags("auth"), responses((status_code = 200, description = "The caller's key", body = Whoami)))]
pub async fn whoami(depot: &mut Depot) -> Result<Json<Whoami>, ApiError> {
    let c = caller(depot)?;
    let edits = super::agents::state_ref(depot)?.edits.is_some() && c.role == Role::Admin;
    Ok(Json(Whoami {
        name: c.name.clone(),
        role: c.role,
        edits,
    }))
}

/// The token of `Authorization: Bearer <token>` (the scheme is
/// case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
}

fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The client's address: the peer's, or behind a trusted proxy the last
/// address in `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_addr(req: &Request, trusted: &[IpNet]) -> IpAddr {
    let peer = req.remote_addr().ip().unwrap_or(IpAddr::from([0, 0, 0, 0]));
    forwarded_client(peer, req.headers().get_all("x-forwarded-for").iter(), trusted)
}

fn forwarded_client<'a>(
    peer: IpAddr,
    forwarded: impl DoubleEndedIterator<Item = &'a HeaderValue>,
    trusted: &[IpNet],
) -> IpAddr {
    let is_trusted = |a: &IpAddr| trusted.iter().any(|n| n.contains(&canonical(*a)));
    let mut client = canonical(peer);
    if !is_trusted(&client) {
        return client;
    }
    // Right to left: each hop was added by the one after it; the first
    // not trusted is the client. Anything unreadable ends the walk at the
    // last hop that could be believed.
    for value in forwarded.rev() {
        let Ok(text) = value.to_str() else {
            return client;
        };
        for hop in text.rsplit(',') {
            let hop = hop.trim();
            let Some(addr) = hop
                .parse::<IpAddr>()
                .ok()
                .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
            else {
                return client;
            };
            client = canonical(addr);
            if !is_trusted(&client) {
                return client;
            }
        }
    }
    client
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`) is the IPv4 one.
fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

/// What a budget is kept for: an IPv4 address, or an IPv6 /64 (one host
/// usually has a whole /64).
fn budget_key(a: IpAddr) -> IpAddr {
    match canonical(a) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
        v4 => v4,
    }
}

/// Failed keys per address: each address may fail [`BUDGET`] times at
/// once and earns [`REFILL_PER_S`] back per second; past that its requests
/// get 429 (with `Retry-After`) without their key being looked at. Every
/// other address keeps its speed, and no connection is held open.
#[derive(Default)]
pub struct Guard {
    inner: Mutex<GuardInner>,
}

#[derive(Default)]
struct GuardInner {
    budgets: HashMap<IpAddr, Bucket>,
    log: FailureLog,
}

#[derive(Clone, Copy)]
struct Bucket {
    left: f64,
    at: Instant,
}

impl Bucket {
    fn now(self, now: Instant) -> f64 {
        (self.left + now.duration_since(self.at).as_secs_f64() * REFILL_PER_S).min(BUDGET)
    }
}

/// Failed keys, logged at most once per [`LOG_EVERY`].
#[derive(Default)]
struct FailureLog {
    logged: Option<Instant>,
    failures: u64,
    throttled: u64,
    addresses: std::collections::BTreeSet<IpAddr>,
}

impl Guard {
    /// Whether `addr` may try a key now; if not, how long until it may.
    pub fn admit(&self, addr: IpAddr) -> Result<(), Duration> {
        let key = budget_key(addr);
        let now = Instant::now();
        let mut g = self.lock();
        let Some(b) = g.budgets.get(&key).copied() else {
            return Ok(());
        };
        let left = b.now(now);
        if left >= 1.0 {
            return Ok(());
        }
        g.log.throttled += 1;
        Err(Duration::from_secs_f64((1.0 - left) / REFILL_PER_S))
    }

    /// `addr` presented a wrong key (or none, when `presented` is false:
    /// that costs no budget, a client without a key is no guess).
    pub fn failed(&self, addr: IpAddr, presented: bool) {
        let key = budget_key(addr);
        let now = Instant::now();
        let mut g = self.lock();
        if presented {
            if g.budgets.len() >= MAX_TRACKED && !g.budgets.contains_key(&key) {
                g.budgets.retain(|_, b| b.now(now) < BUDGET);
                if g.budgets.len() >= MAX_TRACKED {
                    // Beyond this many guessing addresses at once, the
                    // budget cannot be kept for each; the keys are still
                    // checked.
                    g.budgets.clear();
                }
            }
            let b = g.budgets.entry(key).or_insert(Bucket {
                left: BUDGET,
                at: now,
            });
            *b = Bucket {
                left: b.now(now) - 1.0,
                at: now,
            };
        }
        g.log.note(addr, now);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GuardInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl FailureLog {
    fn note(&mut self, addr: IpAddr, now: Instant) {
        self.failures += 1;
        if self.addresses.len() < 1000 {
            self.addresses.insert(addr);
        }
        if self.logged.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return;
        }
        let shown: Vec<String> = self.addresses.iter().take(5).map(|a| a.to_string()).collect();
        let more = self.addresses.len().saturating_sub(shown.len());
        tracing::warn!(
            "{} request{} with a missing or wrong API key from {}{}{}",
            self.failures,
            if self.failures == 1 { "" } else { "s" },
            shown.join(", "),
            if more > 0 {
                format!(" and {more} other addresses")
            } else {
                String::new()
            },
            if self.throttled > 0 {
                format!("; {} refused (429) for too many wrong keys", self.throttled)
            } else {
                String::new()
            }
        );
        *self = FailureLog {
            logged: Some(now),
            ..FailureLog::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn forwarded(peer: &str, headers: &[&str], trusted: &[&str]) -> IpAddr {
        let values: Vec<HeaderValue> = headers
            .iter()
            .map(|h| HeaderValue::from_str(h).unwrap())
            .collect();
        let trusted: Vec<IpNet> = trusted.iter().map(|t| t.parse().unwrap()).collect();
        forwarded_client(ip(peer), values.iter(), &trusted)
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        // No trusted proxy: the peer, whatever the header says.
        assert_eq!(forwarded("203.0.113.9", &["10.0.0.1"], &[]), ip("203.0.113.9"));
        // Peer not trusted.
        assert_eq!(
            forwarded("203.0.113.9", &["10.0.0.1"], &["127.0.0.0/8"]),
            ip("203.0.113.9")
        );
        // Trusted: the last untrusted hop; a spoofed first entry is ignored.
        assert_eq!(
            forwarded("127.0.0.1", &["6.6.6.6, 198.51.100.7"], &["127.0.0.0/8"]),
            ip("198.51.100.7")
        );
        // Two proxies in a row, over two header lines.
        assert_eq!(
            forwarded(
                "127.0.0.1",
                &["198.51.100.7", "10.1.2.3"],
                &["127.0.0.0/8", "10.0.0.0/8"]
            ),
            ip("198.51.100.7")
        );
        // Garbage ends the walk at the last believable hop.
        assert_eq!(
            forwarded("127.0.0.1", &["198.51.100.7, bogus"], &["127.0.0.0/8"]),
            ip("127.0.0.1")
        );
        // No header: the proxy itself.
        assert_eq!(forwarded("::1", &[], &["::1/128"]), ip("::1"));
        // IPv4 written as IPv6.
        assert_eq!(
            forwarded("::ffff:127.0.0.1", &["[2001:db8::1]:4711"], &["127.0.0.1/32"]),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn an_address_past_its_budget_waits_and_others_do_not() {
        let g = Guard::default();
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        for _ in 0..BUDGET as usize {
            assert!(g.admit(a).is_ok());
            g.failed(a, true);
        }
        let wait = g.admit(a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(g.admit(b).is_ok());
        // No key at all costs nothing.
        for _ in 0..100 {
            g.failed(b, false);
        }
        assert!(g.admit(b).is_ok());
        // One IPv6 host is its /64.
        for _ in 0..BUDGET as usize {
            g.failed(ip("2001:db8::1"), true);
        }
        assert!(g.admit(ip("2001:db8::ffff")).is_err());
        assert!(g.admit(ip("2001:db8:0:1::1")).is_ok());
    }

    #[test]
    fn a_budget_comes_back_with_time() {
        let now = Instant::now();
        let b = Bucket { left: 0.0, at: now };
        assert!(b.now(now + Duration::from_millis(500)) < 1.0);
        assert!(b.now(now + Duration::from_secs(1)) >= 1.0);
        assert_eq!(b.now(now + Duration::from_secs(3600)), BUDGET);
    }
}
