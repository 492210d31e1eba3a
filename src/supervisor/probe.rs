//! Health probes: one task runs every agent's, each bounded by its
//! timeout, and reports each result to the supervisor (which alone decides
//! what it means). Nothing here waits on the supervisor, and no probe
//! waits on another.
//!
//! Until a run's first pass, its probes come soon after each other (after
//! 20 ms, then twice as long each time up to its interval or 1 s, whichever
//! is shorter), so a start is seen healthy within a moment of being so;
//! after it, once per interval, counted from the end of the last probe.
//!
//! An exec probe is started like its agent (its user, working directory,
//! environment, cgroup, on the fork thread); the reaper hands its exit
//! back (see `Msg::ProbeChild`). One that outlives its timeout is killed
//! with its process group.

use super::Msg;
use super::lifecycle::Exit;
use super::spawn;
use crate::config::{AgentConfig, HealthPolicy, Probe};
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::ffi::OsString;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// The first probe of a run comes this long after its start.
const FIRST: Duration = Duration::from_millis(20);
/// Until the first pass, probes come at most this far apart.
const START_CADENCE: Duration = Duration::from_secs(1);
/// Probes due within this long of each other start together.
const COALESCE: Duration = Duration::from_millis(25);
/// How long an exec probe's output is still read after its exit.
const OUTPUT_AFTER_EXIT: Duration = Duration::from_millis(100);
/// A probe's detail is cut to this many bytes.
pub const MAX_DETAIL: usize = 1024;

/// What the prober is told.
pub(super) enum Order {
    /// Probe run `run` of agent `cfg.id` (its probe and timing in `cfg`).
    Watch { cfg: Arc<AgentConfig>, run: u64 },
    /// Stop probing the agent.
    Forget { id: String },
}

/// What an exec probe needs of the supervisor's spawning.
pub(super) struct Spawning {
    pub forker: spawn::Forker,
    pub base_env: Arc<Vec<(OsString, OsString)>>,
    pub instance: Arc<str>,
    pub cgroups: Option<Arc<super::cgroup::Cgroups>>,
}

struct Watched {
    cfg: Arc<AgentConfig>,
    run: u64,
    /// The wait before the next probe, until the first pass.
    cadence: Duration,
    passed: bool,
    /// The last probe passed: another pass changes nothing and is not
    /// reported (the supervisor hears every failure, and the pass after).
    last_passed: bool,
    /// When the next probe is due; `None` while one runs.
    due: Option<Instant>,
}

type Running = Pin<Box<dyn Future<Output = (String, u64, Result<(), String>)> + Send>>;

/// Starts the prober on a thread of its own with a single-threaded
/// runtime: a probe's connection, request and timer stay on that thread
/// (on the daemon's shared workers each probe woke threads for its tasks,
/// which cost more than the probe). Results come to the supervisor as
/// `Msg::Probed`; when the thread cannot be made, the prober runs on the
/// daemon's runtime instead.
pub(super) fn start(tx: mpsc::UnboundedSender<Msg>, spawning: Spawning) -> mpsc::UnboundedSender<Order> {
    let (orders, rx) = mpsc::unbounded_channel();
    // Taken by whoever runs the prober: the thread, or the fallback when
    // the thread could not be made (its closure then never ran).
    let job = Arc::new(std::sync::Mutex::new(Some((rx, tx, Arc::new(spawning)))));
    let take = |job: &std::sync::Mutex<Option<_>>| job.lock().ok().and_then(|mut j| j.take());
    let started = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|rt| {
            let job = job.clone();
            std::thread::Builder::new()
                .name("agentsd-probes".into())
                .spawn(move || {
                    if let Some((rx, tx, spawning)) = take(&job) {
                        rt.block_on(run(rx, tx, spawning));
                    }
                })
        });
    if let Err(e) = started {
        tracing::warn!("health probes run on the daemon's workers: no thread of their own ({e})");
        if let Some((rx, tx, spawning)) = take(&job) {
            tokio::spawn(run(rx, tx, spawning));
        }
    }
    orders
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<Order>,
    tx: mpsc::UnboundedSender<Msg>,
    spawning: Arc<Spawning>,
) {
    let http = match http_client() {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!("http health probes cannot run: {e}");
            None
        }
    };
    let mut watched: HashMap<String, Watched> = HashMap::new();
    let mut timers: BinaryHeap<Reverse<(Instant, String)>> = BinaryHeap::new();
    let mut running: FuturesUnordered<Running> = FuturesUnordered::new();
    loop {
        let next = timers.peek().map(|Reverse((at, _))| *at);
        tokio::select! {
            order = rx.recv() => match order {
                None => break,
                Some(Order::Watch { cfg, run }) => {
                    let id = cfg.id.clone();
                    let due = Instant::now() + FIRST;
                    watched.insert(id.clone(), Watched { cfg, run, cadence: FIRST, passed: false, last_passed: false, due: Some(due) });
                    timers.push(Reverse((due, id)));
                }
                Some(Order::Forget { id }) => {
                    watched.remove(&id);
                }
            },
            () = sleep_until(next) => {
                // What comes due within a moment goes now too: one wake
                // for many probes (1,000 agents probed every 5 s wake this
                // thread 40 times a second rather than 200).
                let now = Instant::now() + COALESCE;
                while let Some(Reverse((at, _))) = timers.peek() {
                    if *at > now {
                        break;
                    }
                    let Some(Reverse((at, id))) = timers.pop() else { break };
                    // A stale timer: forgotten, re-watched, or already run.
                    let Some(w) = watched.get_mut(&id).filter(|w| w.due == Some(at)) else {
                        continue;
                    };
                    w.due = None;
                    running.push(Box::pin(probe_once(id, w.run, w.cfg.clone(), http.clone(), tx.clone(), spawning.clone())));
                }
            }
            Some((id, run, result)) = running.next(), if !running.is_empty() => {
                let mut news = true;
                if let Some(w) = watched.get_mut(&id).filter(|w| w.run == run) {
                    let timing = w.cfg.policy.health.unwrap_or_default();
                    news = !(w.last_passed && result.is_ok());
                    w.last_passed = result.is_ok();
                    if result.is_ok() {
                        w.passed = true;
                    }
                    let wait = if w.passed {
                        timing.interval
                    } else {
                        let now = w.cadence;
                        w.cadence = (w.cadence * 2).min(timing.interval.min(START_CADENCE));
                        now.max(FIRST)
                    };
                    let due = Instant::now() + wait;
                    w.due = Some(due);
                    timers.push(Reverse((due, id.clone())));
                }
                if news && tx.send(Msg::Probed { id, run, result }).is_err() {
                    break;
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn http_client() -> reqwest::Result<reqwest::Client> {
    // The process's provider (the daemon installs the same one at start):
    // reqwest refuses to build a client without one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        // 3xx passes as it is: the probe asks one address.
        .redirect(reqwest::redirect::Policy::none())
        // Each probe connects anew (a kept connection would hide a
        // listener that is gone, and hold a descriptor per agent).
        .pool_max_idle_per_host(0)
        .no_proxy()
        .http1_only()
        // Local services mostly have certificates of their own making: a
        // probe checks that it answers, not who it is (as Kubernetes' do).
        .tls_danger_accept_invalid_certs(true)
        .user_agent(USER_AGENT)
        .build()
}

/// What a probe that ran out of time says.
fn timed_out(limit: Duration) -> String {
    format!("timed out after {}", humantime::format_duration(limit))
}

/// One probe of run `run`, bounded by the timeout.
async fn probe_once(
    id: String,
    run: u64,
    cfg: Arc<AgentConfig>,
    http: Option<reqwest::Client>,
    tx: mpsc::UnboundedSender<Msg>,
    spawning: Arc<Spawning>,
) -> (String, u64, Result<(), String>) {
    let timing: HealthPolicy = cfg.policy.health.unwrap_or_default();
    let limit = timing.timeout;
    let timed_out = || timed_out(limit);
    let result = match &cfg.probe {
        None => Ok(()),
        Some(Probe::Tcp(target)) => {
            match tokio::time::timeout(limit, tokio::net::TcpStream::connect(target.as_str())).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("connect to {target}: {e}")),
                Err(_) => Err(timed_out()),
            }
        }
        Some(Probe::Http(url)) if url.scheme() == "http" => {
            match tokio::time::timeout(limit, plain_http(url)).await {
                Ok(Ok(s)) if s.is_success() || s.is_redirection() => Ok(()),
                Ok(Ok(s)) => Err(format!("HTTP {s}")),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(timed_out()),
            }
        }
        Some(Probe::Http(url)) => match http {
            None => Err("no HTTP client".into()),
            Some(c) => match tokio::time::timeout(limit, c.get(url.clone()).send()).await {
                Ok(Ok(r)) if r.status().is_success() || r.status().is_redirection() => Ok(()),
                Ok(Ok(r)) => Err(format!("HTTP {}", r.status())),
                Ok(Err(e)) => Err(chain(&e)),
                Err(_) => Err(timed_out()),
            },
        },
        Some(Probe::Exec(argv)) => exec(&cfg, argv, limit, &tx, &spawning).await,
    };
    (id, run, result.map_err(|d| cut(d, MAX_DETAIL)))
}

/// A GET of an `http://` URL over a connection of its own, driven on this
/// task: its status.
async fn plain_http(url: &url::Url) -> Result<http::StatusCode, String> {
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs: Vec<std::net::SocketAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => vec![(ip, port).into()],
        Some(url::Host::Ipv6(ip)) => vec![(ip, port).into()],
        Some(url::Host::Domain(d)) => tokio::net::lookup_host((d, port))
            .await
            .map_err(|e| format!("cannot resolve {d}: {e}"))?
            .collect(),
        None => return Err("no host".into()),
    };
    let authority = match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_string(),
    };
    let stream = tokio::net::TcpStream::connect(&addrs[..])
        .await
        .map_err(|e| format!("connect to {authority}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| chain(&e))?;
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, USER_AGENT)
        .header(http::header::CONNECTION, "close")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| chain(&e))?;
    // The connection is driven here, beside the request: no task of its
    // own. Its answer's head is all a probe reads.
    let answer = sender.send_request(request);
    tokio::pin!(conn, answer);
    let answered = tokio::select! {
        r = &mut answer => r,
        c = &mut conn => match c {
            Err(e) => return Err(chain(&e)),
            // Closed after an answer it has not handed over yet.
            Ok(()) => (&mut answer).await,
        },
    };
    answered.map(|res| res.status()).map_err(|e| chain(&e))
}

/// What a probe says it is.
const USER_AGENT: &str = concat!("agentsd/", env!("CARGO_PKG_VERSION"), " health probe");

/// An error with its sources, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let end = s.floor_char_boundary(max.saturating_sub(3));
        s.truncate(end);
        s.push_str("...");
    }
    s
}

/// Runs `argv` as agent `cfg` would run, and judges it by its exit.
async fn exec(
    cfg: &AgentConfig,
    argv: &[String],
    limit: Duration,
    tx: &mpsc::UnboundedSender<Msg>,
    spawning: &Arc<Spawning>,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let mut as_agent = cfg.clone();
    as_agent.command = argv.to_vec();
    as_agent.stdin_pipe = false;
    let sp = spawning.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        spawn::prepare(&as_agent, &sp.base_env, &sp.instance, sp.cgroups.as_deref())
    });
    let prepared = match tokio::time::timeout_at(deadline, prepared).await {
        Ok(Ok(Ok(p))) => p,
        Ok(Ok(Err(e))) => return Err(format!("cannot run the probe: {e}")),
        Ok(Err(e)) => return Err(format!("cannot run the probe: {e}")),
        Err(_) => return Err("timed out before the probe could start".into()),
    };
    let (done, forked) = oneshot::channel();
    let job = spawn::Job {
        prepared,
        done: Box::new(move |r| {
            let _ = done.send(r);
        }),
    };
    if spawning.forker.spawn(job).is_err() {
        return Err("cannot run the probe: the fork thread is gone".into());
    }
    // Once forked, the fork's answer always comes (and must be heard: a
    // child that failed before its exec is the reaper's to collect).
    let forked = match forked.await {
        Ok(Ok(f)) => f,
        Ok(Err(f)) => {
            if let Some(pid) = f.child {
                let _ = tx.send(Msg::FailedChild(pid));
            }
            return Err(format!("cannot run the probe: {}", f.error));
        }
        Err(_) => return Err("cannot run the probe: its fork was dropped".into()),
    };
    let (exit_tx, mut exit_rx) = oneshot::channel();
    let _ = tx.send(Msg::ProbeChild {
        pid: forked.pid,
        before: forked.before,
        exit: exit_tx,
    });
    let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(forked.output).ok();
    let mut tail: Vec<u8> = Vec::new();
    let exit = async {
        let mut buf = [0u8; 512];
        loop {
            tokio::select! {
                exit = &mut exit_rx => {
                    // What it wrote before it exited: read to the end of
                    // the pipe, unless something it started holds it open.
                    if let Some(r) = &reader {
                        let drained = async {
                            loop {
                                if r.readable().await.is_err() {
                                    break;
                                }
                                match r.try_read(&mut buf) {
                                    Ok(0) => break,
                                    Ok(n) => keep_tail(&mut tail, &buf[..n]),
                                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                                    Err(_) => break,
                                }
                            }
                        };
                        let _ = tokio::time::timeout(OUTPUT_AFTER_EXIT, drained).await;
                    }
                    return exit.ok();
                }
                r = async { match &reader { Some(r) => r.readable().await, None => std::future::pending().await } } => {
                    if r.is_err() {
                        return (&mut exit_rx).await.ok();
                    }
                    if let Some(rd) = &reader {
                        match rd.try_read(&mut buf) {
                            Ok(0) => return (&mut exit_rx).await.ok(),
                            Ok(n) => keep_tail(&mut tail, &buf[..n]),
                            Err(_) => {}
                        }
                    }
                }
            }
        }
    };
    let exit = tokio::time::timeout_at(deadline, exit).await;
    let said = last_line(&tail);
    match exit {
        Ok(Some(Exit::Code(0))) => Ok(()),
        Ok(Some(e)) => Err(match said {
            Some(l) => format!("{e}: {l}"),
            None => e.to_string(),
        }),
        Ok(None) => Err("the probe's exit was lost".into()),
        Err(_) => {
            // It and whatever it started in its group go.
            super::process::signal_group(forked.pid, nix::sys::signal::Signal::SIGKILL);
            Err(timed_out(limit))
        }
    }
}

/// Keeps the last `MAX_DETAIL` bytes of a probe's output.
fn keep_tail(tail: &mut Vec<u8>, more: &[u8]) {
    tail.extend_from_slice(more);
    if tail.len() > MAX_DETAIL {
        tail.drain(..tail.len() - MAX_DETAIL);
    }
}

/// The last line of output that is not blank.
fn last_line(tail: &[u8]) -> Option<String> {
    String::from_utf8_lossy(tail)
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detail_is_cut_on_a_character_boundary() {
        assert_eq!(cut("short".into(), 10), "short");
        let long = "é".repeat(600);
        let c = cut(long, MAX_DETAIL);
        assert!(c.len() <= MAX_DETAIL && c.ends_with("..."), "{}", c.len());
    }

    #[test]
    fn the_last_line_said_is_the_detail() {
        let mut tail = Vec::new();
        keep_tail(&mut tail, b"first\nno server on 5432\n\n");
        assert_eq!(last_line(&tail).as_deref(), Some("no server on 5432"));
        keep_tail(&mut tail, &[b'x'; 2000]);
        assert_eq!(tail.len(), MAX_DETAIL);
        assert_eq!(last_line(b""), None);
    }

    #[tokio::test]
    async fn tcp_and_http_probes_pass_and_fail_with_a_detail() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let text =
            format!("[agents.a]\ncommand = [\"x\"]\nhealth = {{ tcp = \"{addr}\", timeout = \"1s\" }}\n");
        let cfg = crate::config::parse(&text, "t", std::path::Path::new("/")).unwrap();
        let a = cfg.agents["a"].clone();
        let (tx, _rx) = mpsc::unbounded_channel();
        let spawning = Arc::new(Spawning {
            forker: spawn::Forker::new().0,
            base_env: Arc::new(vec![]),
            instance: "t".into(),
            cgroups: None,
        });
        let (_, _, r) = probe_once("a".into(), 1, a.clone(), None, tx.clone(), spawning.clone()).await;
        assert_eq!(r, Ok(()));
        drop(listener);
        let (_, _, r) = probe_once("a".into(), 1, a, None, tx.clone(), spawning.clone()).await;
        let e = r.unwrap_err();
        assert!(e.starts_with(&format!("connect to {addr}: ")), "{e}");

        // An HTTP server that answers 503, then 302.
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = server.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            for answer in ["503 Service Unavailable", "302 Found"] {
                let (mut s, _) = server.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 {answer}\r\nlocation: /x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                s.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let text = format!(
            "[agents.a]\ncommand = [\"x\"]\nhealth = {{ http = \"http://127.0.0.1:{port}/healthz\" }}\n"
        );
        let cfg = crate::config::parse(&text, "t", std::path::Path::new("/")).unwrap();
        let a = cfg.agents["a"].clone();
        let http = http_client().unwrap();
        let (_, _, r) = probe_once(
            "a".into(),
            1,
            a.clone(),
            Some(http.clone()),
            tx.clone(),
            spawning.clone(),
        )
        .await;
        assert_eq!(r, Err("HTTP 503 Service Unavailable".into()));
        let (_, _, r) = probe_once("a".into(), 1, a, Some(http), tx, spawning).await;
        assert_eq!(r, Ok(()), "a redirect passes");
    }

    /// The prober's own schedule, on a paused clock: until the first pass,
    /// probes come after 20 ms and then twice as far apart, up to the
    /// interval (here 1 s); a forgotten agent is probed no more.
    #[tokio::test(start_paused = true)]
    async fn probes_come_sooner_until_the_first_pass_then_stop_when_forgotten() {
        // A port nothing listens on: every probe fails at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let text = format!(
            "[agents.a]\ncommand = [\"x\"]\nhealth = {{ tcp = \"127.0.0.1:{port}\", interval = \"1s\", timeout = \"1s\" }}\n"
        );
        let cfg = crate::config::parse(&text, "t", std::path::Path::new("/")).unwrap();
        let (orders, rx) = mpsc::unbounded_channel();
        let (tx, mut results) = mpsc::unbounded_channel();
        let spawning = Arc::new(Spawning {
            forker: spawn::Forker::new().0,
            base_env: Arc::new(vec![]),
            instance: "t".into(),
            cgroups: None,
        });
        tokio::spawn(run(rx, tx, spawning));
        let start = Instant::now();
        orders
            .send(Order::Watch {
                cfg: cfg.agents["a"].clone(),
                run: 7,
            })
            .unwrap();
        let mut at = Vec::new();
        while at.len() < 9 {
            match results.recv().await {
                Some(Msg::Probed { id, run, result }) => {
                    assert_eq!((id.as_str(), run), ("a", 7));
                    assert!(result.is_err());
                    at.push(start.elapsed().as_millis());
                }
                _ => panic!("not a probe's result"),
            }
        }
        let gaps: Vec<u128> = at.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(at[0], 20, "{at:?}");
        assert_eq!(gaps, [20, 40, 80, 160, 320, 640, 1000, 1000], "{at:?}");
        // Forgotten: nothing more comes, however long.
        orders.send(Order::Forget { id: "a".into() }).unwrap();
        let more = tokio::time::timeout(Duration::from_secs(30), results.recv()).await;
        assert!(more.is_err(), "probed after it was forgotten");
    }
}
