//! Many hosts (`[fleet]`): this daemon's status, health and summary
//! events, and a heartbeat every 5 s, published over NATS on
//! `agentsd.<host>.status` and `agentsd.<host>.heartbeat`. NATS carries
//! no commands: control stays on each host's API and its keys.
//!
//! NATS down or slow never blocks the daemon: events are handed to a
//! bounded queue (`[fleet] queue`, 10,000 by default) with `try_send` (a
//! full queue drops the event and counts it), and one task drains the
//! queue into the client while it is connected; the client reconnects by
//! itself with backoff.

use crate::config::FleetConfig;
use crate::supervisor::{Change, Handle};
use crate::wire::FleetHost;
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How often a heartbeat is published.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// The longest wait between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A host without a heartbeat for this long is `stale`.
pub const STALE: Duration = Duration::from_secs(15);
/// Agent events of the fleet kept for a slow `/sse/fleet` reader.
const EVENTS_BACKLOG: usize = 1024;

/// Every host this daemon heard from (`view = true`), by name.
pub type Hosts = Arc<BTreeMap<String, FleetHost>>;

/// The fleet as the viewer sees it: its hosts (replaced whenever one
/// changes), and the agent events every host publishes, as published.
#[derive(Clone)]
pub struct View {
    pub hosts: watch::Receiver<Hosts>,
    pub events: tokio::sync::broadcast::Sender<Bytes>,
}

/// The NATS connection as `/health` and `/metrics` show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub connected: bool,
    /// The last error the client reported, until it connects again.
    pub error: Option<String>,
}

/// The publisher, as the rest of the daemon sees it.
#[derive(Clone)]
pub struct Fleet {
    pub nats: String,
    pub host: String,
    link: watch::Receiver<Link>,
    dropped: Arc<AtomicU64>,
    queue: mpsc::Sender<(String, Bytes)>,
    /// The queue's bound.
    bound: usize,
    /// With `view = true`.
    pub view: Option<View>,
}

impl Fleet {
    pub fn link(&self) -> Link {
        self.link.borrow().clone()
    }

    /// Events dropped since the daemon started (the queue was full).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Events waiting for NATS now.
    pub fn queued(&self) -> usize {
        self.bound - self.queue.capacity()
    }
}

/// Starts publishing: one task turns the supervisor's changes and a
/// heartbeat into messages, another sends them. `url` is where this
/// daemon's API is reached (the heartbeat says it). Must be called inside
/// the tokio runtime.
pub fn start(cfg: &FleetConfig, handle: Handle, url: String) -> Fleet {
    let (tx, rx) = mpsc::channel(cfg.queue.max(1));
    let dropped = Arc::new(AtomicU64::new(0));
    let (link_tx, link) = watch::channel(Link::default());
    let (hosts_tx, hosts) = watch::channel(Hosts::default());
    let view = cfg.view.then(|| View {
        hosts,
        events: tokio::sync::broadcast::channel(EVENTS_BACKLOG).0,
    });
    let fleet = Fleet {
        nats: redacted(&cfg.nats),
        host: cfg.host.clone(),
        link,
        dropped: dropped.clone(),
        queue: tx.clone(),
        bound: cfg.queue.max(1),
        view: view.clone(),
    };
    tokio::spawn(produce(handle, cfg.host.clone(), url, tx, dropped.clone()));
    let viewer = view.map(|v| (hosts_tx, v.events));
    tokio::spawn(publish(cfg.clone(), rx, Arc::new(link_tx), dropped, viewer));
    fleet
}

/// The URL without its password, to be shown.
fn redacted(u: &url::Url) -> String {
    let mut u = u.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    u.to_string()
}

/// Into the queue, or dropped and counted.
fn enqueue(
    tx: &mpsc::Sender<(String, Bytes)>,
    dropped: &AtomicU64,
    subject: &str,
    body: Option<Bytes>,
) -> bool {
    let Some(body) = body else { return true };
    match tx.try_send((subject.to_string(), body)) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            dropped.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

async fn produce(
    handle: Handle,
    host: String,
    url: String,
    tx: mpsc::Sender<(String, Bytes)>,
    dropped: Arc<AtomicU64>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let Ok(mut events) = handle.subscribe().await else {
        return;
    };
    let status = format!("agentsd.{host}.status");
    let beat = format!("agentsd.{host}.heartbeat");
    let mut ticks = tokio::time::interval(HEARTBEAT);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let sent = tokio::select! {
            ev = events.recv() => match ev {
                Ok(change) => enqueue(&tx, &dropped, &status, event(&host, &change)),
                Err(RecvError::Lagged(n)) => {
                    dropped.fetch_add(n, Ordering::Relaxed);
                    true
                }
                Err(RecvError::Closed) => false,
            },
            _ = ticks.tick() => match handle.counts().await {
                Ok(counts) => enqueue(&tx, &dropped, &beat, heartbeat(&host, &url, &counts)),
                Err(crate::supervisor::Error::ShuttingDown) => false,
                Err(_) => true,
            },
        };
        if !sent {
            return;
        }
    }
}

/// A change as published: the event as `/sse/status` sends it, with
/// `event` (its name there) and `host`. Resource samples are not sent.
fn event(host: &str, c: &Change) -> Option<Bytes> {
    let (name, value) = match c {
        Change::Status(e) => ("status", serde_json::to_value(&**e)),
        Change::Health(e) => ("health", serde_json::to_value(&**e)),
        Change::Summary(l) => ("summary", serde_json::to_value(&l.summary)),
        Change::Removed(e) => ("removed", serde_json::to_value(&**e)),
        Change::Resources(_) => return None,
    };
    let mut value = value.ok()?;
    let o = value.as_object_mut()?;
    o.insert("event".into(), name.into());
    o.insert("host".into(), host.into());
    serde_json::to_vec(&value).ok().map(Bytes::from)
}

/// `{"host","url","version","agents","by_status"}`.
fn heartbeat(host: &str, url: &str, counts: &[(crate::wire::Status, usize)]) -> Option<Bytes> {
    let by_status: serde_json::Map<String, serde_json::Value> = counts
        .iter()
        .map(|(s, n)| (s.as_str().to_string(), (*n).into()))
        .collect();
    let body = serde_json::json!({
        "host": host,
        "url": url,
        "version": env!("CARGO_PKG_VERSION"),
        "agents": counts.iter().map(|(_, n)| n).sum::<usize>(),
        "by_status": by_status,
    });
    serde_json::to_vec(&body).ok().map(Bytes::from)
}

async fn publish(
    cfg: FleetConfig,
    mut rx: mpsc::Receiver<(String, Bytes)>,
    link: Arc<watch::Sender<Link>>,
    dropped: Arc<AtomicU64>,
    viewer: Option<(watch::Sender<Hosts>, tokio::sync::broadcast::Sender<Bytes>)>,
) {
    let said = link.clone();
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("agentsd {}", cfg.host))
        .retry_on_initial_connect()
        .reconnect_delay_callback(|attempts| {
            let n = u32::try_from(attempts.min(10)).unwrap_or(10);
            (Duration::from_millis(100) * 2u32.pow(n)).min(MAX_BACKOFF)
        })
        .event_callback(move |ev| {
            let said = said.clone();
            async move {
                use async_nats::Event;
                match ev {
                    Event::Connected => {
                        tracing::info!("fleet: connected to NATS");
                        said.send_replace(Link {
                            connected: true,
                            error: None,
                        });
                    }
                    Event::Disconnected => {
                        tracing::warn!("fleet: disconnected from NATS; reconnecting");
                        said.send_modify(|l| l.connected = false);
                    }
                    Event::ClientError(e) => {
                        tracing::warn!("fleet: {e}");
                        said.send_modify(|l| l.error = Some(e.to_string()));
                    }
                    Event::ServerError(e) => {
                        tracing::warn!("fleet: the NATS server said: {e}");
                        said.send_modify(|l| l.error = Some(e.to_string()));
                    }
                    _ => {}
                }
            }
        });
    if cfg.nats.scheme() == "tls" {
        opts = opts.require_tls(true);
    }
    if let Some(ca) = &cfg.nats_ca {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let Some(creds) = &cfg.nats_creds {
        opts = match opts.credentials_file(creds).await {
            Ok(o) => o,
            Err(e) => {
                let why = format!("cannot read nats_creds {}: {e}", creds.display());
                tracing::error!("fleet: {why}; nothing is published");
                link.send_replace(Link {
                    connected: false,
                    error: Some(why),
                });
                return;
            }
        };
    }
    let client = match opts.connect(cfg.nats.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            let why = format!("cannot connect to NATS at {}: {e}", redacted(&cfg.nats));
            tracing::error!("fleet: {why}; nothing is published");
            link.send_replace(Link {
                connected: false,
                error: Some(why),
            });
            return;
        }
    };
    if let Some((hosts, events)) = viewer {
        tokio::spawn(view(client.clone(), hosts, events));
    }
    // Taken from the queue only while connected: the client would buffer
    // them itself meanwhile, out of the queue's bound and count.
    let mut linked = link.subscribe();
    loop {
        if linked.wait_for(|l| l.connected).await.is_err() {
            return;
        }
        let Some((subject, body)) = rx.recv().await else {
            return;
        };
        if let Err(e) = client.publish(subject, body).await {
            dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("fleet: an event was not published: {e}");
        }
    }
}

/// A heartbeat as hosts publish it.
#[derive(serde::Deserialize)]
struct Beat {
    url: String,
    version: String,
    agents: u64,
    by_status: BTreeMap<String, u64>,
}

/// The host a subject names: `agentsd.<host>.<what>`.
fn host_of(subject: &str) -> Option<&str> {
    let mut parts = subject.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("agentsd"), Some(host), Some(_), None) => Some(host),
        _ => None,
    }
}

/// What a heartbeat on `subject` makes of its host (`None`: not one).
fn heard(subject: &str, payload: &[u8], at: std::time::SystemTime) -> Option<FleetHost> {
    let host = host_of(subject)?;
    let beat: Beat = serde_json::from_slice(payload).ok()?;
    Some(FleetHost {
        host: host.to_string(),
        url: beat.url,
        version: beat.version,
        agents: beat.agents,
        by_status: beat.by_status,
        last_heartbeat: crate::wire::rfc3339(at),
        stale: false,
    })
}

/// The viewer: every host's heartbeats and agent events, from NATS (the
/// subscriptions are the client's: it subscribes again after a reconnect).
async fn view(
    client: async_nats::Client,
    hosts: watch::Sender<Hosts>,
    events: tokio::sync::broadcast::Sender<Bytes>,
) {
    let subscribed = async {
        let beats = client.subscribe("agentsd.*.heartbeat").await?;
        let status = client.subscribe("agentsd.*.status").await?;
        Ok::<_, async_nats::SubscribeError>((beats, status))
    };
    let (mut beats, mut status) = match subscribed.await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(
                "fleet: cannot subscribe to the fleet's subjects: {e}; the fleet view stays empty"
            );
            // The view's readers keep waiting, as for a fleet not heard from.
            return std::future::pending().await;
        }
    };
    let mut seen: BTreeMap<String, (FleetHost, std::time::Instant)> = BTreeMap::new();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let changed = tokio::select! {
            Some(m) = beats.next() => match heard(m.subject.as_str(), &m.payload, std::time::SystemTime::now()) {
                Some(h) => {
                    seen.insert(h.host.clone(), (h, std::time::Instant::now()));
                    true
                }
                None => false,
            },
            Some(m) = status.next() => {
                // Nobody listening is fine.
                let _ = events.send(m.payload);
                false
            }
            _ = ticks.tick() => {
                let mut flipped = false;
                for (h, at) in seen.values_mut() {
                    let stale = at.elapsed() >= STALE;
                    flipped |= h.stale != stale;
                    h.stale = stale;
                }
                flipped
            }
            else => return std::future::pending().await,
        };
        if changed {
            let now: BTreeMap<String, FleetHost> =
                seen.iter().map(|(k, (h, _))| (k.clone(), h.clone())).collect();
            hosts.send_replace(Arc::new(now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Status, StatusEvent};

    #[test]
    fn an_event_is_the_streams_with_its_name_and_host() {
        let ev = Change::Status(Arc::new(StatusEvent {
            agent_id: "bot".into(),
            old_status: Status::Running,
            new_status: Status::Stopped,
            pid: None,
            at: "2026-12-05T08:00:00.000Z".into(),
        }));
        let body: serde_json::Value = serde_json::from_slice(&event("web-1", &ev).unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"event": "status", "host": "web-1", "agent_id": "bot",
                "old_status": "running", "new_status": "stopped", "pid": null,
                "at": "2026-12-05T08:00:00.000Z"})
        );
        let beat = heartbeat(
            "web-1",
            "https://web-1:8487",
            &[(Status::Running, 3), (Status::Failed, 1)],
        )
        .unwrap();
        let beat: serde_json::Value = serde_json::from_slice(&beat).unwrap();
        assert_eq!(beat["agents"], 4);
        assert_eq!(beat["by_status"], serde_json::json!({"running": 3, "failed": 1}));
        assert_eq!(beat["url"], "https://web-1:8487");
    }

    #[test]
    fn a_heartbeat_names_its_host_by_its_subject() {
        let at = std::time::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
        let body = heartbeat("web-1", "https://web-1:8487", &[(Status::Running, 2)]).unwrap();
        let h = heard("agentsd.web-1.heartbeat", &body, at).unwrap();
        assert_eq!((h.host.as_str(), h.agents, h.stale), ("web-1", 2, false));
        assert_eq!(h.by_status["running"], 2);
        assert!(heard("agentsd.web-1.x.heartbeat", &body, at).is_none());
        assert!(heard("other.web-1.heartbeat", &body, at).is_none());
        assert!(heard("agentsd.web-1.heartbeat", b"{}", at).is_none());
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (tx, _rx) = mpsc::channel(2);
        let dropped = AtomicU64::new(0);
        for _ in 0..5 {
            assert!(enqueue(&tx, &dropped, "s", Some(Bytes::from_static(b"x"))));
        }
        assert_eq!(dropped.load(Ordering::Relaxed), 3);
        drop(_rx);
        assert!(!enqueue(&tx, &dropped, "s", Some(Bytes::from_static(b"x"))));
        assert_eq!(
            redacted(&url::Url::parse("nats://u:secret@h:4222").unwrap()),
            "nats://u:***@h:4222"
        );
    }
}
