//! `agentsd doctor`: each problem it must find, through the real binary,
//! and a clean bill of health before the daemon starts and while it runs.

use crate::util::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Where `install-unit --root HOME` writes the unit: doctor is always
/// pointed there, so that a unit installed on this host plays no part.
fn unit_path(home: &Home) -> PathBuf {
    home.path().join("etc/systemd/system/agentsd.service")
}

fn doctor_cmd(home: &Home, extra: &[&str]) -> Command {
    let mut c = cli(home);
    c.arg("doctor")
        .arg("--config")
        .arg(home.config_path())
        .arg("--unit")
        .arg(unit_path(home))
        .args(extra);
    c
}

/// `doctor --json`: the exit code and the checks by name (in order).
fn doctor_json(home: &Home) -> (Option<i32>, Vec<Value>) {
    let o = doctor_cmd(home, &["--json"]).output().unwrap();
    let report: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", text(&o.stdout), text(&o.stderr)));
    let checks = report["checks"].as_array().unwrap().clone();
    assert_eq!(
        report["ok"].as_bool(),
        Some(o.status.code() == Some(0)),
        "`ok` is whether doctor succeeded: {report}"
    );
    (o.status.code(), checks)
}

/// `doctor` as a person reads it: the exit code and the lines.
fn doctor_text(home: &Home) -> (Option<i32>, String) {
    let o = doctor_cmd(home, &[]).output().unwrap();
    (o.status.code(), text(&o.stdout))
}

fn check<'a>(checks: &'a [Value], name: &str) -> &'a Value {
    checks
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {checks:#?}"))
}

/// Asserts the check's status, and that its detail holds `detail`.
fn assert_check(checks: &[Value], name: &str, status: &str, detail: &str) {
    let c = check(checks, name);
    assert_eq!(c["status"], status, "{name}: {c}\nall: {checks:#?}");
    assert!(
        c["detail"].as_str().unwrap().contains(detail),
        "{name}: {detail:?} not in {c}"
    );
}

fn hint(checks: &[Value], name: &str) -> String {
    check(checks, name)["hint"]
        .as_str()
        .unwrap_or_else(|| panic!("{name} has no hint: {checks:#?}"))
        .to_string()
}

/// A config on a fixed free port (doctor must find the daemon without
/// asking it), with `agents` agents.
fn setup(home: &Home, agents: usize) -> u16 {
    let port = free_port();
    let mut rest = FAST.to_string();
    for i in 0..agents {
        rest.push_str(&format!("[agents.a{i}]\ncommand = [\"sleep\", \"300\"]\n"));
    }
    write_config_on_port(home, port, &rest);
    port
}

/// Installs the unit under `home`, running the daemon as the user running
/// the tests (who owns the files doctor checks).
fn install_unit(home: &Home) {
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .expect("the test's user has a name");
    let o = run(
        cli(home),
        &[
            "install-unit",
            "--root",
            home.path().to_str().unwrap(),
            "--bin",
            bin(),
            "--config",
            home.config_path().to_str().unwrap(),
            "--user",
            &me.name,
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
}

const NAMES: [&str; 10] = [
    "config",
    "key",
    "certificate",
    "listen",
    "daemon",
    "state_dir",
    "log_dir",
    "open_files",
    "unit",
    "systemd",
];

#[tokio::test]
async fn doctor_passes_before_the_daemon_starts_and_while_it_runs() {
    let home = Home::new();
    let port = setup(&home, 3);
    install_unit(&home);

    // Before the first start: the port is free, nothing fails; what serve
    // makes itself (directories, the certificate) is said.
    let (code, checks) = doctor_json(&home);
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, NAMES);
    for c in &checks {
        let status = c["status"].as_str().unwrap();
        assert!(["ok", "warn", "fail", "skip"].contains(&status), "{c}");
        assert!(c["detail"].is_string(), "{c}");
        assert!(c["hint"].is_null() || c["hint"].is_string(), "{c}");
        assert_ne!(status, "fail", "{checks:#?}");
        assert_eq!(
            c["hint"].is_string(),
            status == "warn",
            "a hint with each warning: {c}"
        );
    }
    assert_eq!(code, Some(0));
    assert_check(&checks, "listen", "ok", &format!("127.0.0.1:{port} is free"));
    assert_check(&checks, "daemon", "warn", "not running");
    assert_check(&checks, "certificate", "ok", "will be generated at first start");
    assert_check(&checks, "state_dir", "warn", "serve creates it");
    assert_check(&checks, "unit", "ok", "is what install-unit writes");
    assert_check(&checks, "open_files", "ok", "3 agents need about 34 open files");

    // Running: every check passes; the daemon answered with the key.
    let d = home.start();
    d.wait_status("a2", agentsd::wire::Status::Running).await;
    let (code, checks) = doctor_json(&home);
    for c in &checks {
        let expected = if c["name"] == "systemd" { "skip" } else { "ok" };
        if c["name"] != "systemd" || !std::path::Path::new("/run/systemd/system").exists() {
            assert_eq!(c["status"], expected, "{c}\nall: {checks:#?}");
        }
    }
    assert_eq!(code, Some(0));
    let pid = d.pid();
    assert_check(
        &checks,
        "daemon",
        "ok",
        &format!("(pid {pid}) answers /health: ok"),
    );
    assert_check(
        &checks,
        "listen",
        "ok",
        &format!("held by the daemon (pid {pid})"),
    );
    assert_check(
        &checks,
        "open_files",
        "ok",
        &format!("the running daemon's, pid {pid}"),
    );
    assert_check(&checks, "certificate", "ok", "valid until");

    // The same as lines: `ok   name: detail`.
    let (code, out) = doctor_text(&home);
    assert_eq!(code, Some(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), NAMES.len(), "{out}");
    for (line, name) in lines.iter().zip(NAMES) {
        assert!(
            line.starts_with(&format!("ok   {name}: ")) || line.starts_with(&format!("skip {name}: ")),
            "{out}"
        );
    }
    assert!(!out.contains('\x1b'), "no colour off a terminal: {out:?}");
}

#[test]
fn doctor_finds_a_key_file_readable_by_others() {
    let home = Home::new();
    setup(&home, 1);
    let key = home.path().join("api.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, checks) = doctor_json(&home);
    assert_eq!(code, Some(1), "{checks:#?}");
    assert_check(&checks, "key", "fail", "mode 0644");
    assert_eq!(hint(&checks, "key"), format!("chmod 600 {}", key.display()));
    let (code, out) = doctor_text(&home);
    assert_eq!(code, Some(1));
    let line = out
        .lines()
        .find(|l| l.starts_with("fail key: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.ends_with(&format!("(hint: chmod 600 {})", key.display())),
        "{line}"
    );
    // Fixed, it passes.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, checks) = doctor_json(&home);
    assert_check(&checks, "key", "ok", "mode 0600");
    assert_eq!(code, Some(0), "{checks:#?}");
}

/// A certificate and key for 127.0.0.1 and localhost that end on the day
/// `days` from now (midnight UTC), written under `home/tls`.
fn certificate_ending_in(home: &Home, days: u64) {
    let end = std::time::SystemTime::now() + Duration::from_secs(days * 86_400);
    let day = humantime::format_rfc3339(end).to_string();
    let ymd: Vec<i32> = day[..10].split('-').map(|p| p.parse().unwrap()).collect();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params.not_after = rcgen::date_time_ymd(ymd[0], ymd[1] as u8, ymd[2] as u8);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let dir = home.path().join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    std::fs::set_permissions(dir.join("key.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn doctor_finds_a_certificate_expiring_in_3_days() {
    let home = Home::new();
    let port = free_port();
    home.write_config_at(
        &format!("127.0.0.1:{port}"),
        "{ cert = \"tls/cert.pem\", key = \"tls/key.pem\" }",
        "",
        FAST,
    );
    certificate_ending_in(&home, 3);
    let (code, checks) = doctor_json(&home);
    let c = check(&checks, "certificate");
    assert_eq!(c["status"], "warn", "{c}");
    let detail = c["detail"].as_str().unwrap();
    // It ends at midnight of the third day: 2 whole days and some hours.
    assert!(
        detail.contains("expires in 2 days") || detail.contains("expires in 3 days"),
        "{detail}"
    );
    assert!(detail.contains("(less than 14)"), "{detail}");
    assert!(hint(&checks, "certificate").contains("renew it"), "{checks:#?}");
    assert_eq!(code, Some(0), "a warning does not fail: {checks:#?}");

    // Expired: a failure.
    let past = std::time::SystemTime::now() - Duration::from_secs(2 * 86_400);
    let day = humantime::format_rfc3339(past).to_string();
    let ymd: Vec<i32> = day[..10].split('-').map(|p| p.parse().unwrap()).collect();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.not_after = rcgen::date_time_ymd(ymd[0], ymd[1] as u8, ymd[2] as u8);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(home.path().join("tls/cert.pem"), cert.pem()).unwrap();
    std::fs::write(home.path().join("tls/key.pem"), key.serialize_pem()).unwrap();
    let (code, checks) = doctor_json(&home);
    assert_check(&checks, "certificate", "fail", "expired on ");
    assert_eq!(code, Some(1));

    // A year: fine.
    certificate_ending_in(&home, 365);
    let (code, checks) = doctor_json(&home);
    assert_check(&checks, "certificate", "ok", "valid until");
    assert_eq!(code, Some(0), "{checks:#?}");
}

#[test]
fn doctor_shows_a_unit_that_differs_from_install_unit_as_a_diff() {
    let home = Home::new();
    setup(&home, 1);
    install_unit(&home);
    let unit = unit_path(&home);
    let installed = std::fs::read_to_string(&unit).unwrap();
    assert!(installed.contains("\nRestartSec=2s\n"));
    std::fs::write(
        &unit,
        installed
            .replace("RestartSec=2s", "RestartSec=30s")
            .replace("ProtectClock=yes\n", ""),
    )
    .unwrap();
    let (code, checks) = doctor_json(&home);
    assert_check(&checks, "unit", "warn", "differs from what install-unit writes");
    let diff = check(&checks, "unit")["diff"].as_str().unwrap().to_string();
    assert!(diff.contains("\n-RestartSec=30s\n+RestartSec=2s\n"), "{diff}");
    assert!(diff.contains("\n+ProtectClock=yes\n"), "{diff}");
    assert!(
        diff.starts_with(&format!("--- {}\n+++ install-unit\n", unit.display())),
        "{diff}"
    );
    assert!(
        hint(&checks, "unit").starts_with("agentsd install-unit --config "),
        "{checks:#?}"
    );
    assert_eq!(code, Some(0), "drift is a warning: {checks:#?}");

    // As lines: the diff under the unit's line, indented.
    let (_, out) = doctor_text(&home);
    let at = out.find("warn unit: ").unwrap_or_else(|| panic!("{out}"));
    let below: Vec<&str> = out[at..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("     "))
        .collect();
    assert!(below.contains(&"     -RestartSec=30s"), "{out}");
    assert!(below.contains(&"     +RestartSec=2s"), "{out}");

    // Put back: no drift.
    std::fs::write(&unit, installed).unwrap();
    let (_, checks) = doctor_json(&home);
    assert_check(&checks, "unit", "ok", "is what install-unit writes");
    assert!(check(&checks, "unit").get("diff").is_none());
}

#[test]
fn doctor_finds_the_port_taken_by_something_else() {
    let home = Home::new();
    // Something else listens on the config's port (and never answers).
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    write_config_on_port(&home, port, FAST);
    let t = Instant::now();
    let (code, checks) = doctor_json(&home);
    assert!(t.elapsed() < Duration::from_secs(20), "took {:?}", t.elapsed());
    assert_eq!(code, Some(1), "{checks:#?}");
    assert_check(
        &checks,
        "listen",
        "fail",
        &format!("127.0.0.1:{port} is taken by something else"),
    );
    assert_eq!(
        hint(&checks, "listen"),
        format!("see who holds it: ss -ltnp 'sport = :{port}'; or choose another listen")
    );
    assert_check(&checks, "daemon", "warn", "no agentsd answers");

    // Freed: ok again.
    drop(squatter);
    let (code, checks) = doctor_json(&home);
    assert_check(&checks, "listen", "ok", "is free");
    assert_eq!(code, Some(0), "{checks:#?}");
}

#[test]
fn doctor_finds_an_open_file_limit_below_the_agent_count() {
    let home = Home::new();
    setup(&home, 40);
    let prlimit = |n: u64| {
        let doctor = doctor_cmd(&home, &["--json"]);
        let mut c = Command::new("prlimit");
        c.arg(format!("--nofile={n}:{n}"))
            .arg(doctor.get_program())
            .args(doctor.get_args());
        for (k, v) in doctor.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        let o = c.output().expect("prlimit (util-linux) is needed");
        let report: Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}{}", text(&o.stdout), text(&o.stderr)));
        (o.status.code(), report["checks"].as_array().unwrap().clone())
    };
    // 40 agents: 2 * 40 + 28 = 108 open files, and 16 kept for the API.
    let (code, checks) = prlimit(64);
    assert_eq!(code, Some(1), "{checks:#?}");
    assert_check(
        &checks,
        "open_files",
        "fail",
        "40 agents need about 108 open files",
    );
    assert_check(
        &checks,
        "open_files",
        "fail",
        "the limit is 64 (this shell's hard limit)",
    );
    assert!(
        hint(&checks, "open_files").contains("LimitNOFILE="),
        "{checks:#?}"
    );
    // 108 + 16 kept free fit in 128... only just not: 124 <= 128.
    let (code, checks) = prlimit(128);
    assert_check(&checks, "open_files", "ok", "the limit is 128");
    assert_eq!(code, Some(0), "{checks:#?}");
}

#[test]
#[ignore = "needs root (a tmpfs mount)"]
fn doctor_finds_a_full_state_directory() {
    let home = Home::new();
    setup(&home, 1);
    let state = home.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mount = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
        .arg(&state)
        .output()
        .expect("`mount` (util-linux) is needed");
    assert!(
        mount.status.success(),
        "cannot mount a tmpfs here (this test needs root and mount rights): {}",
        text(&mount.stderr)
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(state.clone());
    // Filled to the last block.
    let mut f = std::fs::File::create(state.join("filler")).unwrap();
    let block = vec![0u8; 64 * 1024];
    while std::io::Write::write_all(&mut f, &block).is_ok() {}
    let (code, checks) = doctor_json(&home);
    assert_eq!(code, Some(1), "{checks:#?}");
    let c = check(&checks, "state_dir");
    assert_eq!(c["status"], "fail", "{c}");
    let detail = c["detail"].as_str().unwrap();
    assert!(detail.contains("full") && detail.contains("0 B free"), "{detail}");
    assert!(
        hint(&checks, "state_dir").contains("free some space"),
        "{checks:#?}"
    );
    // The log dir, elsewhere, is fine.
    assert_ne!(check(&checks, "log_dir")["status"], "fail", "{checks:#?}");
}

#[tokio::test]
async fn doctor_finds_a_daemon_that_refuses_the_key() {
    let home = Home::new();
    setup(&home, 1);
    let d = home.start();
    d.wait_status("a0", agentsd::wire::Status::Running).await;
    // A new key in the file that the running daemon has not read: it
    // answers /health, but not as to a caller with its key.
    let key = home.path().join("api.key");
    std::fs::write(&key, "another-key-0123456789abcdef0123456789abcdef\n").unwrap();
    let (code, checks) = doctor_json(&home);
    assert_eq!(code, Some(1), "{checks:#?}");
    assert_check(&checks, "key", "ok", "mode 0600");
    assert_check(&checks, "listen", "ok", "held by the daemon");
    assert_check(
        &checks,
        "daemon",
        "fail",
        "answers /health: ok, but refuses the config's key",
    );
    assert!(hint(&checks, "daemon").contains("restart it"), "{checks:#?}");
    // The daemon's own key again: ok.
    std::fs::write(&key, format!("{KEY}\n")).unwrap();
    let (code, checks) = doctor_json(&home);
    assert_check(
        &checks,
        "daemon",
        "ok",
        &format!("(pid {}) answers /health: ok", d.pid()),
    );
    assert_eq!(code, Some(0), "{checks:#?}");
}

#[test]
fn doctor_checks_the_key_and_state_dir_against_the_units_user() {
    let home = Home::new();
    setup(&home, 1);
    std::fs::create_dir_all(home.path().join("state")).unwrap();
    let key = home.path().join("api.key");
    let install = |user: &str| {
        let o = run(
            cli(&home),
            &[
                "install-unit",
                "--root",
                home.path().to_str().unwrap(),
                "--bin",
                bin(),
                "--config",
                home.config_path().to_str().unwrap(),
                "--user",
                user,
            ],
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
    };
    // The unit runs the daemon as nobody; the key and state dir are this
    // user's (not nobody's, unless the test runs as nobody).
    install("nobody");
    let me = nix::unistd::geteuid().as_raw();
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("a user nobody");
    if me != nobody.uid.as_raw() {
        let (code, checks) = doctor_json(&home);
        assert_eq!(code, Some(1), "{checks:#?}");
        assert_check(&checks, "unit", "ok", "is what install-unit writes");
        assert_check(
            &checks,
            "key",
            "fail",
            &format!("belongs to uid {me}, not to the daemon's user nobody"),
        );
        assert_eq!(hint(&checks, "key"), format!("chown nobody {}", key.display()));
        assert_check(&checks, "state_dir", "fail", "not to the daemon's user nobody");
    }
    // A user this host does not have.
    install("no-such-user-agentsd");
    let (code, checks) = doctor_json(&home);
    assert_eq!(code, Some(1), "{checks:#?}");
    assert_check(
        &checks,
        "key",
        "fail",
        "the unit's User=no-such-user-agentsd does not exist on this host",
    );
}

#[test]
fn doctor_finds_an_invalid_config_and_skips_what_depends_on_it() {
    let home = Home::new();
    setup(&home, 1);
    let mut cfg = std::fs::read_to_string(home.config_path()).unwrap();
    cfg.push_str("[agents.bad]\ncommand = []\nnonsense = 1\n");
    std::fs::write(home.config_path(), cfg).unwrap();
    let (code, checks) = doctor_json(&home);
    assert_eq!(code, Some(1), "{checks:#?}");
    let c = check(&checks, "config");
    assert_eq!(c["status"], "fail", "{c}");
    let detail = c["detail"].as_str().unwrap();
    assert!(
        detail.contains("agentsd.toml:") && detail.contains("nonsense"),
        "{detail}"
    );
    assert!(!detail.contains('\n'), "one line: {detail:?}");
    assert_eq!(
        hint(&checks, "config"),
        format!("agentsd config check --config {}", home.config_path().display())
    );
    for name in [
        "key",
        "certificate",
        "listen",
        "daemon",
        "state_dir",
        "log_dir",
        "open_files",
    ] {
        assert_check(&checks, name, "skip", "the config is not valid");
    }
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, NAMES);
}
