//! A `nats-server` for the fleet's tests and benchmark: Debian's, on
//! 127.0.0.1, on a port of its choosing (read from its ports file).

use super::eventually_blocking;
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(15);

/// A `nats-server` on 127.0.0.1, on a port of its choosing (or `port`).
pub struct Nats {
    child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl Nats {
    pub fn start(port: Option<u16>) -> Nats {
        let bin = ["/usr/bin/nats-server", "/usr/sbin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("the fleet tests need Debian's nats-server (apt-get install nats-server)");
        let dir = tempfile::tempdir().unwrap();
        let port_arg = port.map_or("-1".to_string(), |p| p.to_string());
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port_arg, "-m", "-1", "--ports_file_dir"])
            .arg(dir.path())
            .arg("-l")
            .arg(dir.path().join("log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // It writes the ports it chose once it listens.
        let file = dir.path().join(format!("nats-server_{}.ports", child.id()));
        let port = eventually_blocking(T, "nats-server's ports file", || {
            let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
            let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            let url = v["nats"][0].as_str().ok_or("no nats url yet")?;
            url.rsplit(':')
                .next()
                .and_then(|p| p.parse::<u16>().ok())
                .ok_or_else(|| url.to_string())
        });
        Nats { child, dir, port }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
        let _ = &self.dir;
    }
}
