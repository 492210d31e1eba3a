//! Certificates from ACME (`tls = { acme = ... }`), against Debian's
//! pebble on 127.0.0.1: obtained with tls-alpn-01 on the daemon's own port,
//! cached and reused across a restart, renewed while serving (pebble's
//! short-lived certificates) without dropping an open event stream, and
//! retried with backoff while pebble is down.

use crate::util::pebble::Pebble;
use crate::util::*;
use std::time::Duration;

/// The config for a daemon on `port` getting a certificate for
/// `localhost` from `pebble`.
fn config(home: &Home, port: u16, pebble: &Pebble, rest: &str) {
    home.write_config_at(
        &format!("127.0.0.1:{port}"),
        &format!(
            "{{ acme = {{ domains = [\"localhost\"], contact = \"mailto:ops@example.com\", directory = \"{}\", ca = \"{}\" }} }}",
            pebble.directory(),
            pebble.https_ca().display()
        ),
        "",
        rest,
    );
}

/// pebble (certificates valid `validity` seconds) and a daemon getting its
/// certificate from it, once it serves one: the daemon's home, port,
/// pebble's root and the serial served.
async fn start(validity: Option<u64>) -> (Home, u16, Pebble, Daemon, String, String) {
    let home = Home::new();
    let port = free_port();
    let pebble = Pebble::start(port, validity);
    config(
        &home,
        port,
        &pebble,
        "[agents.a]\ncommand = [\"sleep\", \"600\"]\n",
    );
    let started = std::time::Instant::now();
    let d = home.start_with_ca(&pebble.https_ca());
    let root = pebble.root().await;
    let serial = eventually_with(Duration::from_secs(60), "a certificate from pebble", || {
        served_serial(port, &root)
    })
    .await;
    eprintln!(
        "first certificate served {:?} after the daemon started",
        started.elapsed()
    );
    (home, port, pebble, d, root, serial)
}

/// A client for `https://localhost:PORT` (resolved to 127.0.0.1) that
/// trusts `root` alone.
fn client(port: u16, root: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(root.as_bytes()).unwrap())
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The serial of the certificate served on `port` for `localhost`, the
/// chain verified against `root`.
async fn served_serial(port: u16, root: &str) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(root.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    serial_with(port, config).await
}

/// The serial of the certificate served on `port` for `localhost`, as a
/// client with `config` sees it.
async fn serial_with(port: u16, config: rustls::ClientConfig) -> Result<String, String> {
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| format!("handshake: {e}"))?;
    let (_, conn) = tls.get_ref();
    let leaf = conn.peer_certificates().ok_or("no certificate")?[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| e.to_string())?;
    Ok(data_encoding::HEXUPPER.encode(cert.raw_serial()))
}

async fn health(c: &reqwest::Client, port: u16, key: &str) -> serde_json::Value {
    c.get(format!("https://localhost:{port}/health"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
#[ignore = "needs pebble (Debian's ACME test server; .ci/run installs it)"]
async fn a_certificate_from_pebble_is_served_and_reused_after_a_restart() {
    // Obtained with tls-alpn-01 on the daemon's own port, then served: the
    // chain verifies against pebble's root.
    let (home, port, pebble, mut d, root, serial) = start(None).await;
    let c = client(port, &root);
    let h = health(&c, port, &d.key).await;
    assert_eq!(h["tls"]["source"], "acme", "{h}");
    assert_eq!(h["tls"]["serial"], serial.as_str(), "{h}");
    assert_eq!(h["tls"]["acme_failures"], 0, "{h}");
    assert!(h["tls"]["expires_in_s"].as_i64().unwrap() > 14 * 24 * 3600, "{h}");
    let metrics = c
        .get(format!("https://localhost:{port}/metrics"))
        .bearer_auth(&d.key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("agentsd_tls_certificate_expiry_seconds "),
        "{metrics}"
    );
    // Cached under state_dir/acme, 0600.
    let cached: Vec<_> = std::fs::read_dir(home.path().join("state/acme"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(cached.len(), 2, "account and certificate: {cached:?}");
    for f in &cached {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
            0o600,
            "{f:?}"
        );
    }
    // doctor reports the cached certificate's expiry.
    let out = run(
        cli(&home),
        &[
            "doctor",
            "--json",
            "--config",
            home.config_path().to_str().unwrap(),
        ],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cert = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "certificate")
        .unwrap()
        .clone();
    let detail = cert["detail"].as_str().unwrap();
    assert!(
        detail.contains("state/acme/cert-") && detail.contains("valid until"),
        "{cert}"
    );
    assert_ne!(cert["status"], "fail", "{cert}");
    // (Retries of a rejected nonce may have made more than one.)
    let orders = pebble.log().matches("POST /order-plz").count();
    assert!(orders >= 1, "{}", pebble.log());
    let account = cached
        .iter()
        .find(|f| f.file_name().unwrap().to_string_lossy().starts_with("account-"))
        .unwrap()
        .clone();
    let account_key = std::fs::read(&account).unwrap();
    d.stop();

    // A restart serves the cached certificate: no new order.
    let d = home.start_with_ca(&pebble.https_ca());
    let again = eventually_with(Duration::from_secs(20), "the cached certificate", || {
        served_serial(port, &root)
    })
    .await;
    assert_eq!(again, serial);
    assert!(
        d.stderr_text().contains("serving the cached certificate"),
        "{}",
        d.stderr_text()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        pebble.log().matches("POST /order-plz").count(),
        orders,
        "a new order: {}",
        pebble.log()
    );
    assert_eq!(
        std::fs::read(&account).unwrap(),
        account_key,
        "the account key changed"
    );
    assert!(
        !pebble.log().contains("There are now 2 accounts"),
        "a new account: {}",
        pebble.log()
    );
}

#[tokio::test]
#[ignore = "needs pebble (Debian's ACME test server; .ci/run installs it)"]
async fn a_short_lived_certificate_is_renewed_while_serving_and_pebble_down_is_retried() {
    // Certificates valid 30 s: renewed 20 s after each is issued.
    let (_home, port, mut pebble, mut d, root, first) = start(Some(30)).await;
    // An event stream opened on the first certificate.
    d.url = format!("https://localhost:{port}");
    d.client = client(port, &root);
    let mut sse = Sse::open(&d, "/sse/status", None).await;
    assert!(sse.next(Duration::from_secs(10)).await.is_some(), "no snapshot");

    // Renewed while serving: a new serial, same daemon.
    let second = eventually_with(Duration::from_secs(60), "a renewed certificate", || async {
        let s = served_serial(port, &root).await?;
        if s == first {
            Err("still the first".into())
        } else {
            Ok(s)
        }
    })
    .await;
    assert!(pid_alive(d.pid()));
    // The stream opened before the renewal still carries events.
    d.control("a", "restart").await;
    let mut seen = false;
    for _ in 0..20 {
        match sse.next(Duration::from_secs(10)).await {
            Some(e) if e.data.contains("\"a\"") => {
                seen = true;
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    assert!(
        seen,
        "the event stream opened before the renewal ended or went quiet"
    );

    // pebble down across the next renewal: the daemon keeps serving the
    // second certificate, says so once per attempt, and retries with
    // backoff.
    // (pebble rejects 5 % of nonces: an order may have failed before.)
    let err_lines = |d: &Daemon| {
        d.stderr_text()
            .lines()
            .filter(|l| l.contains("ACME: order") && l.contains("failed"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let before = err_lines(&d).len();
    pebble.stop();
    let failed = eventually_blocking(Duration::from_secs(60), "two failed orders", || {
        let l = err_lines(&d).split_off(before);
        if l.len() >= 2 {
            Ok(l)
        } else {
            Err(format!("{l:?}"))
        }
    });
    assert!(failed[0].contains("next attempt in 1s"), "{failed:?}");
    assert!(failed[1].contains("next attempt in 2s"), "{failed:?}");
    let h = health(&d.client, port, &d.key).await;
    assert!(h["tls"]["acme_failures"].as_u64().unwrap() >= 2, "{h}");
    assert!(h["tls"]["acme_error"].is_string(), "{h}");
    let problems = h["problems"].to_string();
    assert!(
        problems.contains("ACME: ") && problems.contains("failed in a row"),
        "{h}"
    );
    // A 30 s certificate is always within 14 days of its end.
    assert!(problems.contains("the certificate served expire"), "{h}");
    // Still the second certificate served (it may have expired by now: the
    // chain is not checked here, only what is served).
    let served = served_serial_unverified(port).await;
    assert_eq!(served, second);

    // pebble back (a new root): renewed by itself.
    pebble.restart();
    let back = std::time::Instant::now();
    let root2 = pebble.root().await;
    let third = eventually_with(Duration::from_secs(90), "renewed once pebble is back", || {
        served_serial(port, &root2)
    })
    .await;
    assert_ne!(third, second);
    eprintln!("renewed {:?} after pebble came back", back.elapsed());
    let h = health(&client(port, &root2), port, &d.key).await;
    assert_eq!(h["tls"]["acme_failures"], 0, "{h}");
    d.stop();
}

/// The serial served, whatever signs it.
async fn served_serial_unverified(port: u16) -> String {
    #[derive(Debug)]
    struct Any;
    impl rustls::client::danger::ServerCertVerifier for Any {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(Any))
        .with_no_client_auth();
    serial_with(port, config).await.unwrap()
}
