//! Debian's `pebble` (a small ACME server made for tests) on 127.0.0.1,
//! for the ACME tests: its own HTTPS certificate made here, its challenges
//! validated against the daemon's port (`tls_port`).

// Its ports are chosen here: pebble takes no port 0.
use super::{eventually_blocking, free_port};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

pub struct Pebble {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub port: u16,
    pub mgmt: u16,
    tls_port: u16,
    validity: Option<u64>,
}

impl Pebble {
    /// Starts pebble, validating tls-alpn-01 challenges on 127.0.0.1's
    /// `tls_port`; its certificates valid for `validity` seconds (its own
    /// default, years, when `None`).
    pub fn start(tls_port: u16, validity: Option<u64>) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        // Its HTTPS: a CA of ours and a certificate for 127.0.0.1.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "pebble test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        let mut p = Pebble {
            child: None,
            dir,
            port: free_port(),
            mgmt: free_port(),
            tls_port,
            validity,
        };
        p.run();
        p
    }

    fn run(&mut self) {
        let bin = ["/usr/bin/pebble", "/usr/sbin/pebble"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("the ACME tests need Debian's pebble (apt-get install pebble)");
        let d = self.dir.path();
        let mut pebble = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{}", self.port),
            "managementListenAddress": format!("127.0.0.1:{}", self.mgmt),
            "certificate": d.join("cert.pem"),
            "privateKey": d.join("key.pem"),
            "httpPort": free_port(),
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        });
        if let Some(v) = self.validity {
            pebble["certificateValidityPeriod"] = v.into();
        }
        let config = d.join("pebble.json");
        std::fs::write(&config, serde_json::json!({ "pebble": pebble }).to_string()).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("pebble.log"))
            .unwrap();
        let child = Command::new(bin)
            .arg("-config")
            .arg(&config)
            // No random waits before validating; nonces rejected at the
            // default rate (5 %): a client must retry badNonce.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.port;
        eventually_blocking(T, "pebble listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .map(drop)
                .map_err(|e| e.to_string())
        });
    }

    /// The ACME directory URL.
    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The CA of pebble's own HTTPS (for `tls.acme.ca`).
    pub fn https_ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The root that signs the certificates it issues (new at every start
    /// of pebble).
    pub async fn root(&self) -> String {
        let ca = std::fs::read(self.https_ca()).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        client
            .get(format!("https://127.0.0.1:{}/roots/0", self.mgmt))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports (with a new root: pebble keeps
    /// nothing).
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}
