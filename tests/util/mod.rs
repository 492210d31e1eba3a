//! The harness: a real `agentsd serve` on port 0 in a temp dir, with real
//! TLS, driven over HTTPS.

#![allow(dead_code)]

use agentsd::wire::{AgentSummary, Status};
use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub mod browser;
pub mod nats;
pub mod pebble;

pub const KEY: &str = "test-key-0123456789abcdef0123456789abcdef";

/// The `[defaults]` table tests start from: an agent counts as started at
/// once, a stop takes at most 5 s, and a crash is retried within 50-200 ms.
/// Tests that need other defaults write their own table instead.
pub const FAST: &str = "[defaults]\nstart_window = \"0s\"\nstop_timeout = \"5s\"\nbackoff = { initial = \"50ms\", max = \"200ms\" }\n";

static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Runs another build than this one's (the bench's: the build that ships).
/// Before the first [`bin`].
#[allow(dead_code)]
pub fn use_bin(path: String) {
    BIN.set(path).expect("use_bin comes before the first bin()");
}

/// The binary under test: this build's, or `AGENTSD_TEST_BIN` (to run the
/// suite against another build, e.g. to see a new test fail on an old one).
pub fn bin() -> &'static str {
    BIN.get_or_init(|| {
        std::env::var("AGENTSD_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_agentsd").to_string())
    })
}

pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A temp dir that holds the config, state, logs and key of one daemon.
pub struct Home {
    pub dir: tempfile::TempDir,
    /// The daemon's `AGENTSD_LOG` filter.
    pub log_level: &'static str,
}

impl Home {
    pub fn new() -> Home {
        init();
        let dir = tempfile::Builder::new()
            .prefix("agentsd-test-")
            .tempdir()
            .unwrap();
        let key = dir.path().join("api.key");
        std::fs::write(&key, format!("{KEY}\n")).unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        Home {
            dir,
            log_level: "debug",
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("agentsd.toml")
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.path().join("logs").join(format!("{id}.log"))
    }

    /// Writes the config: a loopback self-signed server section, then `rest`.
    pub fn write_config(&self, rest: &str) {
        self.write_config_tls("\"self-signed\"", rest)
    }

    /// Writes the config with `tls = <tls>`.
    pub fn write_config_tls(&self, tls: &str, rest: &str) {
        self.write_config_full(tls, "", rest)
    }

    /// Writes the config with more keys of `[server]` (lines).
    pub fn write_config_server(&self, server: &str, rest: &str) {
        self.write_config_full("\"self-signed\"", server, rest)
    }

    fn write_config_full(&self, tls: &str, server: &str, rest: &str) {
        self.write_config_at("127.0.0.1:0", tls, server, rest)
    }

    /// Writes the config with the daemon listening on `listen` (another
    /// loopback address, for many daemons side by side).
    pub fn write_config_at(&self, listen: &str, tls: &str, server: &str, rest: &str) {
        let text = format!(
            "[server]\nlisten = \"{listen}\"\ntls = {tls}\napi_key_file = \"api.key\"\nstate_dir = \"state\"\nlog_dir = \"logs\"\n{server}\n{rest}\n"
        );
        // Written whole and renamed into place, as an editor would.
        let tmp = self.path().join(".agentsd.toml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, self.config_path()).unwrap();
    }

    pub fn start(&self) -> Daemon {
        Daemon::start(
            self,
            &self.config_path(),
            &self.path().join("state/tls/cert.pem"),
            &[],
        )
    }

    /// Starts the daemon with its open-file limit (soft and hard) at `n`.
    pub fn start_with_nofile(&self, n: u64) -> Daemon {
        Daemon::start_via(
            self,
            &self.config_path(),
            &self.path().join("state/tls/cert.pem"),
            &[],
            Some(&format!("ulimit -n {n} && exec \"$0\" \"$@\"")),
        )
    }

    /// Starts the daemon through `sh -c <script>`, which runs it as
    /// `"$0" "$@"` (to start it with other limits or descriptors).
    pub fn start_via_shell(&self, script: &str) -> Daemon {
        Daemon::start_via(
            self,
            &self.config_path(),
            &self.path().join("state/tls/cert.pem"),
            &[],
            Some(script),
        )
    }

    /// Starts the daemon and trusts the certificate in `ca`.
    pub fn start_with_ca(&self, ca: &Path) -> Daemon {
        Daemon::start(self, &self.config_path(), ca, &[])
    }

    /// Starts the daemon on another config file, with extra arguments.
    pub fn start_config(&self, config: &Path, ca: &Path, args: &[&str]) -> Daemon {
        Daemon::start(self, config, ca, args)
    }

    /// Processes alive (not zombies) that agents of this home started,
    /// grandchildren included: they all inherit `TEST_SCOPE`.
    pub fn agent_pids(&self) -> Vec<u32> {
        let marker = format!("TEST_SCOPE={}", self.path().display());
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            if !env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()) {
                continue;
            }
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit(')').next().and_then(|r| r.trim().chars().next());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let is_daemon = cmdline.split(|b| *b == 0).any(|a| a == b"serve");
            if state != Some('Z') && !is_daemon {
                pids.push(pid);
            }
        }
        pids
    }

    /// The live processes of one agent (they carry its id).
    pub fn pids_of(&self, id: &str) -> Vec<u32> {
        let mark = format!("AGENTSD_AGENT_ID={id}");
        self.agent_pids()
            .into_iter()
            .filter(|p| {
                std::fs::read(format!("/proc/{p}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == mark.as_bytes()))
            })
            .collect()
    }

    /// Waits until no agent process of this home is alive.
    pub fn wait_no_agents(&self, within: Duration) {
        eventually_blocking(within, "no agent process is alive", || {
            let pids = self.agent_pids();
            if pids.is_empty() {
                Ok(())
            } else {
                Err(describe(&pids))
            }
        })
    }
}

pub fn describe(pids: &[u32]) -> String {
    pids.iter()
        .map(|p| {
            let c = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            format!("{p}: {}", String::from_utf8_lossy(&c).replace('\0', " "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Open file descriptors of a process.
pub fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

// Waiting. Every wait for a condition in the tests is one of these: the
// condition polled every 20 ms until it holds, failing after a deadline
// with what it waited for and what it saw last. A fixed duration is only
// for what must *not* happen where nothing can be ordered after it
// (`throughout`); where something can, a test waits for that barrier.

const POLL: Duration = Duration::from_millis(20);

fn timed_out(within: Duration, what: &str, seen: &str) -> ! {
    if seen.is_empty() {
        panic!("not within {within:?}: {what}");
    }
    panic!("not within {within:?}: {what}\nlast seen: {seen}");
}

/// Waits until `f` holds, at most `within`; `what` names it in the failure.
pub async fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    eventually_with(within, what, || {
        std::future::ready(if f() { Ok(()) } else { Err(String::new()) })
    })
    .await
}

/// Waits until the future `f` makes is `Ok(value)`, and returns the value;
/// `Err(seen)` means not yet, and the last `seen` is shown if time runs out.
pub async fn eventually_with<T, F: Future<Output = Result<T, String>>>(
    within: Duration,
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= deadline => timed_out(within, what, &seen),
            // The poll interval of a wait on a condition, bounded above.
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// `eventually_with` for code that cannot await (plain `#[test]`s, the
/// harness's blocking helpers).
pub fn eventually_blocking<T>(within: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= deadline => timed_out(within, what, &seen),
            // The poll interval of a wait on a condition, bounded above.
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Checks that the future `f` makes stays `Ok` for all of `during`: for
/// what must *not* happen (a restart, a process appearing), where there is
/// no event to wait for. `Err(seen)` fails at once, showing `seen`.
pub async fn throughout<F: Future<Output = Result<(), String>>>(
    during: Duration,
    what: &str,
    mut f: impl FnMut() -> F,
) {
    let start = Instant::now();
    loop {
        if let Err(seen) = f().await {
            panic!("{what}: not so after {:?}: {seen}", start.elapsed());
        }
        if start.elapsed() >= during {
            return;
        }
        // The poll interval: the check runs again until `during` is over.
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until agent `id`'s log file holds `what`.
pub async fn log_has(home: &Home, id: &str, what: &str) {
    let path = home.log_path(id);
    eventually(
        Duration::from_secs(10),
        &format!("{what:?} in {id}'s log"),
        || std::fs::read_to_string(&path).is_ok_and(|t| t.contains(what)),
    )
    .await;
}

pub fn pid_alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
    match stat {
        Err(_) => false,
        Ok(s) => s.rsplit(')').next().and_then(|r| r.trim().chars().next()) != Some('Z'),
    }
}

pub struct Daemon {
    pub child: Child,
    /// The key requests carry (the harness's own unless a test changes it).
    pub key: String,
    pub url: String,
    pub client: reqwest::Client,
    pub stderr: PathBuf,
    pub home: PathBuf,
}

impl Daemon {
    fn start(home: &Home, config: &Path, ca: &Path, args: &[&str]) -> Daemon {
        Daemon::start_via(home, config, ca, args, None)
    }

    /// Starts the daemon, through `sh -c <shell>` (which runs `"$0" "$@"`)
    /// when given.
    fn start_via(home: &Home, config: &Path, ca: &Path, args: &[&str], shell: Option<&str>) -> Daemon {
        let stderr = home.path().join(format!(
            "daemon-{}.err",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut cmd = match shell {
            Some(script) => {
                let mut c = Command::new("sh");
                c.args(["-c", script, bin()]);
                c
            }
            None => Command::new(bin()),
        };
        let mut child = cmd
            .args(["serve", "--config"])
            .arg(config)
            .args(args)
            .env("TEST_SCOPE", home.path())
            .env("AGENTSD_LOG", home.log_level)
            .env_remove("AGENTSD_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the daemon did not report its address; stderr:\n{}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
        };
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("https://") || w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"))
            .trim_end_matches([';', ','])
            .to_string();
        let mut client = reqwest::Client::builder().timeout(Duration::from_secs(30));
        // A daemon without TLS (loopback, behind a proxy) has no certificate.
        if url.starts_with("https://") {
            let cert = std::fs::read(ca).unwrap();
            client = client.add_root_certificate(reqwest::Certificate::from_pem(&cert).unwrap());
        }
        let client = client.build().unwrap();
        Daemon {
            child,
            key: KEY.to_string(),
            url,
            client,
            stderr,
            home: home.path().to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A client with connections of its own (not the harness client's),
    /// trusting the daemon's self-signed certificate; HTTP/1.1 only when
    /// asked (one connection per concurrent request, as separate clients).
    pub fn new_client(&self, http1_only: bool) -> reqwest::ClientBuilder {
        let ca = std::fs::read(self.home.join("state/tls/cert.pem")).unwrap();
        let b = reqwest::Client::builder().add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap());
        if http1_only { b.http1_only() } else { b }
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub async fn request(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let res = self
            .client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e} ({e:?})"));
        let status = res.status().as_u16();
        let body = res.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// `/metrics` as the harness key scrapes it (200, Prometheus text).
    pub async fn metrics(&self) -> String {
        let res = self
            .client
            .get(format!("{}/metrics", self.url))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        res.text().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, body) = self.request(reqwest::Method::GET, path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    pub async fn post(&self, path: &str) -> Value {
        let (status, body) = self.request(reqwest::Method::POST, path).await;
        assert_eq!(status, 200, "POST {path}: {body}");
        body
    }

    pub async fn agent(&self, id: &str) -> AgentSummary {
        serde_json::from_value(self.get(&format!("/agents/{id}")).await).unwrap()
    }

    pub async fn control(&self, id: &str, what: &str) -> AgentSummary {
        serde_json::from_value(self.post(&format!("/agents/{id}/{what}")).await).unwrap()
    }

    /// Waits until the agent's summary satisfies `pred`.
    pub async fn wait_for(
        &self,
        id: &str,
        within: Duration,
        pred: impl Fn(&AgentSummary) -> bool,
    ) -> AgentSummary {
        let what = format!("agent {id} to get there");
        let pred = &pred;
        eventually_with(within, &what, || async move {
            // Not found yet is fine: it may be about to be added.
            let (code, body) = self.request(reqwest::Method::GET, &format!("/agents/{id}")).await;
            if code == 200 {
                let a: AgentSummary = serde_json::from_value(body.clone()).unwrap();
                if pred(&a) {
                    return Ok(a);
                }
            }
            Err(format!("{code} {body}\ndaemon's stderr:\n{}", self.stderr_text()))
        })
        .await
    }

    pub async fn wait_status(&self, id: &str, status: Status) -> AgentSummary {
        self.wait_for(id, Duration::from_secs(15), |a| a.status == status)
            .await
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    /// Waits for the daemon to exit, at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        eventually_blocking(within, "the daemon to exit", || {
            self.child
                .try_wait()
                .unwrap()
                .ok_or_else(|| "still running".into())
        })
    }

    /// A new TLS connection to the daemon, its handshake done (so the
    /// daemon has accepted it), nothing sent yet; reads time out after 15 s.
    pub fn tls_connection(&self) -> Tls {
        let addr = self.url.trim_start_matches("https://").to_string();
        let ca = std::fs::read(self.home.join("state/tls/cert.pem")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let conn =
            rustls::ClientConnection::new(std::sync::Arc::new(config), "localhost".try_into().unwrap())
                .unwrap();
        let sock = std::net::TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).unwrap();
        }
        tls
    }

    /// SIGTERM, then the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(Duration::from_secs(30))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                // Polls the daemon's exit (a child has no exit event to
                // await here), bounded by the deadline above.
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A raw TLS connection to the daemon ([`Daemon::tls_connection`]).
pub type Tls = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

/// All that comes back on `tls` until the daemon closes it (failing if it
/// does not within the read timeout); `sent` is for the message.
pub fn answer_until_closed(tls: &mut Tls, sent: &[u8]) -> String {
    let mut out = Vec::new();
    if let Err(e) = std::io::Read::read_to_end(tls, &mut out) {
        // A close without TLS's close_notify still ends the answer; a
        // timeout means the daemon hung on the request.
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof,
            "raw request {:?}: {e} after {:?}",
            String::from_utf8_lossy(sent),
            String::from_utf8_lossy(&out)
        );
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads an SSE stream event by event (parsed by `eventsource-stream`, as
/// a browser's EventSource would).
pub struct Sse {
    events: Pin<
        Box<dyn Stream<Item = Result<eventsource_stream::Event, EventStreamError<reqwest::Error>>> + Send>,
    >,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub data: String,
    /// The stream's last event id once this event arrived (what a client
    /// resumes from, like EventSource's `lastEventId`); `None` until the
    /// daemon has sent one.
    pub id: Option<String>,
}

/// What came next on a stream.
enum Next {
    Event(Event),
    Ended,
    TimedOut,
}

impl Sse {
    pub async fn open(d: &Daemon, path: &str, last_event_id: Option<&str>) -> Sse {
        Sse::open_as(d, path, last_event_id, &d.key).await
    }

    /// Opens a stream with another key than the harness's.
    pub async fn open_with_key(d: &Daemon, path: &str, key: &str) -> Sse {
        Sse::open_as(d, path, None, key).await
    }

    async fn open_as(d: &Daemon, path: &str, last_event_id: Option<&str>, key: &str) -> Sse {
        let mut req = d
            .client
            .get(format!("{}{path}", d.url))
            .bearer_auth(key)
            .timeout(Duration::from_secs(3600));
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        Sse::from_response(resp)
    }

    /// Reads events from a response already opened.
    pub fn from_response(resp: reqwest::Response) -> Sse {
        Sse {
            events: Box::pin(resp.bytes_stream().eventsource()),
        }
    }

    async fn poll(&mut self, within: Duration) -> Next {
        match tokio::time::timeout(within, self.events.next()).await {
            Err(_) => Next::TimedOut,
            Ok(None) | Ok(Some(Err(EventStreamError::Transport(_)))) => Next::Ended,
            Ok(Some(Err(e))) => panic!("not a valid event stream: {e}"),
            Ok(Some(Ok(ev))) => Next::Event(Event {
                name: ev.event,
                data: ev.data,
                id: (!ev.id.is_empty()).then_some(ev.id),
            }),
        }
    }

    /// The next event (keep-alive comments skipped), or `None` when the
    /// stream ends or `within` passes.
    pub async fn next(&mut self, within: Duration) -> Option<Event> {
        match self.poll(within).await {
            Next::Event(ev) => Some(ev),
            Next::Ended | Next::TimedOut => None,
        }
    }

    /// Fails unless the daemon ends the stream within `within`, with no
    /// event before the end.
    pub async fn expect_end(&mut self, within: Duration) {
        match self.poll(within).await {
            Next::Ended => {}
            Next::TimedOut => panic!("the stream is still open after {within:?}"),
            Next::Event(ev) => panic!("an event instead of the end of the stream: {ev:?}"),
        }
    }

    /// Fails unless the daemon ends the stream within `within`; events
    /// already on their way (sent before whatever ends it) may come first.
    pub async fn ends_within(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            match self
                .poll(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Next::Ended => return,
                Next::TimedOut => panic!("the stream is still open after {within:?}"),
                Next::Event(_) => {}
            }
        }
    }
}

/// The CLI with a clean environment: no stray client file or AGENTSD_*.
pub fn cli(home: &Home) -> Command {
    let mut c = Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("AGENTSD_") {
            c.env_remove(k);
        }
    }
    // No client file, and no local daemon to fall back on (unless this host
    // has /etc/agentsd/agentsd.toml): the embedded default's state is here.
    c.env("XDG_CONFIG_HOME", home.path().join("client-config"))
        .env("XDG_STATE_HOME", home.path().join("client-state"))
        .env("HOME", home.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    c
}

/// The CLI aimed at `d` with the harness key and the daemon's certificate.
pub fn cli_for(home: &Home, d: &Daemon) -> Command {
    let mut c = cli(home);
    c.env("AGENTSD_URL", &d.url)
        .env("AGENTSD_API_KEY", KEY)
        .env("AGENTSD_CA_CERT", home.path().join("state/tls/cert.pem"));
    c
}

pub fn run(mut c: Command, args: &[&str]) -> Output {
    c.args(args).output().unwrap()
}

/// A child's stdout, line by line, readable with a timeout.
pub fn stdout_lines(stdout: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            if tx.send(l.unwrap()).is_err() {
                break;
            }
        }
    });
    rx
}

/// Output bytes as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A program on a pseudo-terminal of a fixed size, as a person runs it: the
/// terminal is its controlling terminal (`setsid --ctty`), what it draws is
/// read by a terminal emulator (vt100), and every byte it wrote is kept.
pub struct Pty {
    pub child: Child,
    master: std::fs::File,
    /// The terminal's end, kept to read its settings after the program ended.
    slave: std::os::fd::OwnedFd,
    /// Its settings before the program started.
    pub termios_before: nix::sys::termios::Termios,
    parser: std::sync::Arc<std::sync::Mutex<vt100::Parser>>,
    raw: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Pty {
    /// Runs `cmd` (its program, arguments and environment) on a new
    /// terminal of `rows` x `cols`.
    pub fn spawn(cmd: &Command, rows: u16, cols: u16) -> Pty {
        let size = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).unwrap();
        let termios_before = nix::sys::termios::tcgetattr(&pty.slave).unwrap();
        let mut c = Command::new("setsid");
        c.arg("--ctty").arg(cmd.get_program()).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        let end = || Stdio::from(pty.slave.try_clone().unwrap());
        let child = c
            .env("TERM", "xterm-256color")
            .stdin(end())
            .stdout(end())
            .stderr(end())
            .spawn()
            .expect("setsid (util-linux) runs the program on its own terminal");
        let master = std::fs::File::from(pty.master);
        let parser = std::sync::Arc::new(std::sync::Mutex::new(vt100::Parser::new(
            std::num::NonZeroU16::new(rows).unwrap(),
            std::num::NonZeroU16::new(cols).unwrap(),
            0,
        )));
        let raw = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let (p, r) = (parser.clone(), raw.clone());
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 8192];
            // Ends when the terminal closes (EIO once every end is closed).
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                r.lock().unwrap().extend_from_slice(&buf[..n]);
                p.lock().unwrap().process(&buf[..n]);
            }
        });
        Pty {
            child,
            master,
            slave: pty.slave,
            termios_before,
            parser,
            raw,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Types `keys`.
    pub fn send(&mut self, keys: &str) {
        use std::io::Write;
        self.master.write_all(keys.as_bytes()).unwrap();
        self.master.flush().unwrap();
    }

    /// The screen as the terminal shows it, row by row.
    pub fn screen(&self) -> String {
        self.parser.lock().unwrap().screen().contents()
    }

    /// Whether the terminal is on its alternate screen, and whether the
    /// cursor is hidden.
    pub fn modes(&self) -> (bool, bool) {
        let p = self.parser.lock().unwrap();
        (p.screen().alternate_screen(), p.screen().hide_cursor())
    }

    /// Every byte the program wrote so far.
    pub fn raw(&self) -> Vec<u8> {
        self.raw.lock().unwrap().clone()
    }

    /// The terminal's settings (echo, canonical mode, ...).
    pub fn termios(&self) -> nix::sys::termios::Termios {
        nix::sys::termios::tcgetattr(&self.slave).unwrap()
    }

    /// Waits until the screen shows what `pred` looks for; returns the screen.
    pub fn wait_screen(&self, within: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
        eventually_blocking(within, what, || {
            let s = self.screen();
            if pred(&s) {
                Ok(s)
            } else {
                Err(format!("the screen:\n{s}"))
            }
        })
    }

    /// Waits for the program to exit.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        eventually_blocking(within, "the program on the terminal to exit", || {
            self.child
                .try_wait()
                .unwrap()
                .ok_or_else(|| format!("still running; the screen:\n{}", self.screen()))
        })
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An HTTP server on 127.0.0.1:PORT after DELAY seconds (perl, from
/// Debian's essential perl-base): 200, or 503 while a file `sick` is in its
/// working directory; one line in its log per answer, and one when it is
/// told to stop.
pub const HTTP_PL: &str = r#"
use IO::Socket::INET;
$| = 1;
my ($port, $delay) = @ARGV;
$SIG{TERM} = sub { print "terminated\n"; exit 0 };
select(undef, undef, undef, $delay);
my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1:$port", Listen => 64, ReuseAddr => 1) or die "listen: $!";
print "listening on $port\n";
while (1) {
    my $c = $s->accept or next;
    my $line = <$c>;
    while (my $h = <$c>) { last if $h =~ /^\r?\n$/ }
    my $code = -e "sick" ? "503 Service Unavailable" : "200 OK";
    print "answered $code\n";
    print $c "HTTP/1.1 $code\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    close $c;
}
"#;

/// A port free right now, for a daemon that must come back on the same one.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes the config with the daemon's port fixed (the harness uses port 0,
/// which a client cannot find, and a restarted daemon would not keep).
pub fn write_config_on_port(home: &Home, port: u16, rest: &str) {
    home.write_config(rest);
    let cfg = std::fs::read_to_string(home.config_path())
        .unwrap()
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(home.config_path(), cfg).unwrap();
}

/// The value of one sample line of `/metrics` (`name{labels} value`).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A key made by `agentsd gen-key --name NAME --role ROLE`: the key, and
/// the `[keys.NAME]` lines to paste into the config.
pub fn gen_key(home: &Home, name: &str, role: &str) -> (String, String) {
    let out = run(cli(home), &["gen-key", "--name", name, "--role", role]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let key = stdout.lines().next().unwrap().to_string();
    let toml_start = stdout
        .find("[keys.")
        .unwrap_or_else(|| panic!("no [keys.] lines in {stdout:?}"));
    (key, stdout[toml_start..].to_string())
}

impl Daemon {
    /// `method path` with `key` as the bearer.
    pub async fn send_with(&self, method: reqwest::Method, path: &str, key: &str) -> reqwest::Response {
        self.client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The status of `method path` with `key` as the bearer.
    pub async fn status_with(&self, method: reqwest::Method, path: &str, key: &str) -> u16 {
        self.send_with(method, path, key).await.status().as_u16()
    }

    /// Signs in with `key` (`POST /session`): the `Cookie` header to send.
    pub async fn sign_in(&self, key: &str) -> String {
        let res = self.send_with(reqwest::Method::POST, "/session", key).await;
        assert_eq!(res.status(), 200);
        let set = res.headers()["set-cookie"].to_str().unwrap();
        set.split(';').next().unwrap().to_string()
    }

    /// The status of `GET path` with a session cookie instead of a key.
    pub async fn status_with_cookie(&self, path: &str, cookie: &str) -> u16 {
        self.client
            .get(format!("{}{path}", self.url))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .status()
            .as_u16()
    }
}
