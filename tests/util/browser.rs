//! A real headless Chromium, driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`, through `fantoccini`), for the dashboard's tests and
//! benchmark. It trusts exactly the daemons' self-signed certificates (by
//! the SHA-256 of their public keys), runs on a profile of its own, and
//! everything it started is ended when it is dropped, also after a panic.

use super::free_port;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Browser {
    pub client: Client,
    driver: Child,
    /// Chromium's profile; also the mark its processes carry.
    profile: tempfile::TempDir,
}

/// Base64 of the SHA-256 of the public key of the TLS key in `key_pem`: what
/// `--ignore-certificate-errors-spki-list` takes.
pub fn spki_of(key_pem: &Path) -> String {
    use rcgen::PublicKeyData;
    let pem = std::fs::read_to_string(key_pem).unwrap();
    let key = rcgen::KeyPair::from_pem(&pem).unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, &key.subject_public_key_info());
    data_encoding::BASE64.encode(digest.as_ref())
}

/// The SPKI hash of the certificate of the daemon whose home is `home`.
pub fn daemon_spki(home: &Path) -> String {
    spki_of(&home.join("state/tls/key.pem"))
}

fn find(program: &str) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

/// Whether this host has what the browser tests need; if not, what to
/// install.
pub fn missing() -> Option<String> {
    let lacks: Vec<&str> = [("chromium", "chromium"), ("chromedriver", "chromium-driver")]
        .into_iter()
        .filter(|(bin, _)| find(bin).is_none())
        .map(|(_, pkg)| pkg)
        .collect();
    (!lacks.is_empty()).then(|| {
        format!(
            "needs Debian's {} (apt-get install {})",
            lacks.join(" and "),
            lacks.join(" ")
        )
    })
}

impl Browser {
    /// Starts chromedriver and a headless Chromium that trusts the
    /// certificates with these SPKI hashes, with a window of `w` x `h`.
    pub async fn start(spki: &[String], size: (u32, u32), extra: &[&str]) -> Browser {
        if let Some(why) = missing() {
            panic!("the browser tests {why}");
        }
        let profile = tempfile::Builder::new()
            .prefix("agentsd-chromium-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let log = std::fs::File::create(profile.path().join("chromedriver.log")).unwrap();
        // Its own process group, and a mark in the environment of every
        // process below it, so that Drop finds them all.
        let driver = {
            use std::os::unix::process::CommandExt;
            Command::new(find("chromedriver").unwrap())
                .arg(format!("--port={port}"))
                .env("AGENTSD_BROWSER_SCOPE", profile.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let mut browser_args = vec![
            "--headless=new".to_string(),
            // Root in a container: Chromium's sandbox cannot start.
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--no-first-run".into(),
            "--disable-extensions".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--enable-precise-memory-info".into(),
            "--js-flags=--expose-gc".into(),
            format!("--window-size={},{}", size.0, size.1),
            // Honoured only with a profile of its own.
            format!("--user-data-dir={}", profile.path().join("profile").display()),
        ];
        if !spki.is_empty() {
            browser_args.push(format!(
                "--ignore-certificate-errors-spki-list={}",
                spki.join(",")
            ));
        }
        browser_args.extend(extra.iter().map(|s| s.to_string()));
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": find("chromium").unwrap(),
                "args": browser_args,
            },
        });
        let caps = match caps {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let mut b = Browser {
            client: loop_connect(port, caps, &profile).await,
            driver,
            profile,
        };
        // Headless windows are not always the asked size at first.
        b.client.set_window_size(size.0, size.1).await.ok();
        b.driver_alive();
        b
    }

    fn driver_alive(&mut self) {
        if let Ok(Some(st)) = self.driver.try_wait() {
            panic!(
                "chromedriver exited ({st}): {}",
                std::fs::read_to_string(self.profile.path().join("chromedriver.log")).unwrap_or_default()
            );
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
    }

    /// Runs `script` (a function body: `return ...`) in the page.
    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Runs `script` until it returns something other than null, false or
    /// "", at most `within`; returns that.
    pub async fn wait_js(&self, within: Duration, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + within;
        let mut last: Value;
        loop {
            match self.client.execute(script, vec![]).await {
                Ok(v) if !(v.is_null() || v == Value::Bool(false) || v == "") => return v,
                Ok(v) => last = v,
                Err(e) => last = Value::String(e.to_string()),
            }
            if Instant::now() >= deadline {
                let page = self
                    .client
                    .execute("return document.body ? document.body.innerText : ''", vec![])
                    .await
                    .unwrap_or_default();
                panic!("not within {within:?}: {what}\nlast: {last}\npage text:\n{page}");
            }
            // The poll interval of `wait_js`, bounded by its deadline.
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Types `text` into the element `css`.
    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        e.send_keys(text).await.unwrap();
    }

    pub async fn click(&self, css: &str) {
        let e = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        e.click().await.unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Opens `base`/ui/, signs in with `key`, and waits for the dashboard
    /// (the agents table filled from the first snapshot).
    pub async fn sign_in(&self, base: &str, key: &str) {
        self.goto(&format!("{base}/ui/")).await;
        self.wait_js(
            Duration::from_secs(10),
            "the sign-in form",
            "return !document.getElementById('signin').hidden",
        )
        .await;
        self.type_into("#key", key).await;
        self.click("#signin-button").await;
        self.wait_js(
            Duration::from_secs(10),
            "the dashboard after signing in",
            "return !document.getElementById('dash').hidden && document.getElementById('conn-live').textContent === 'live'",
        )
        .await;
    }

    /// A PNG of the whole window.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.client.screenshot().await.unwrap()
    }
}

async fn loop_connect(
    port: u16,
    caps: serde_json::Map<String, Value>,
    profile: &tempfile::TempDir,
) -> Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await;
        match c {
            Ok(c) => return c,
            Err(e) if Instant::now() >= deadline => panic!(
                "cannot start Chromium through chromedriver: {e}\n{}",
                std::fs::read_to_string(profile.path().join("chromedriver.log")).unwrap_or_default()
            ),
            // chromedriver not listening yet: retried until the deadline.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill, killpg};
        use nix::unistd::Pid;
        let group = Pid::from_raw(self.driver.id() as i32);
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.driver.wait();
        // Chromium's processes that left the group: by the mark they carry.
        let mark = format!("AGENTSD_BROWSER_SCOPE={}", self.profile.path().display());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = marked(&mark);
            if left.is_empty() || Instant::now() >= deadline {
                break;
            }
            for pid in left {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            // Killed processes take a moment to go: looked for again until
            // none is left or the deadline passes.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Live processes whose environment holds `mark`.
fn marked(mark: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|kv| kv == mark.as_bytes()) && super::pid_alive(pid) {
            pids.push(pid);
        }
    }
    pids
}
