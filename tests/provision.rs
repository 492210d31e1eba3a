//! gen-key, install-unit, and the generated docs.

use crate::util::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A key as gen-key writes it: 64 lowercase hex characters and a newline.
fn assert_key(k: &str) {
    let hex = k
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("no newline after {k:?}"));
    assert_eq!(hex.len(), 64, "{k:?}");
    assert!(hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')), "{k:?}");
}

#[test]
fn gen_key_prints_64_hex_characters_new_each_time() {
    // Through the binary, as an operator gets them: never one twice.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..100 {
        let o = run(&["gen-key"]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let k = text(&o.stdout);
        assert_key(&k);
        assert!(seen.insert(k.clone()), "{k:?} came twice");
    }
}

#[test]
fn gen_key_out_writes_64_hex_characters_0600_and_a_new_key_each_time() {
    let home = Home::new();
    let mut seen = std::collections::HashSet::new();
    for i in 0..20 {
        let p = home.path().join(format!("k{i}"));
        // However permissive the umask: 0600 is the daemon's requirement.
        let o = Command::new("sh")
            .args(["-c", "umask 000 && exec \"$0\" gen-key --out \"$1\""])
            .arg(bin())
            .arg(&p)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let k = std::fs::read_to_string(&p).unwrap();
        assert_key(&k);
        assert!(!text(&o.stdout).contains(k.trim_end()), "the key was printed");
        assert!(seen.insert(k.clone()), "{k:?} came twice");
    }
}

#[test]
fn gen_key_out_writes_0600_and_never_overwrites_without_force() {
    let home = Home::new();
    let p = home.path().join("keys/api.key");
    let o = run(&["gen-key", "--out", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let first = std::fs::read_to_string(&p).unwrap();
    assert_key(&first);
    assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!text(&o.stdout).contains(first.trim_end()), "the key was printed");

    let o = run(&["gen-key", "--out", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("already exists (use --force to replace it)"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(std::fs::read_to_string(&p).unwrap(), first);

    let o = run(&["gen-key", "--out", p.to_str().unwrap(), "--force"]);
    assert!(o.status.success());
    let second = std::fs::read_to_string(&p).unwrap();
    assert_key(&second);
    assert_ne!(second, first);
    assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    // The daemon accepts what gen-key writes.
    agentsd::secret::read_key_file(&p).unwrap();
}

#[test]
fn gen_key_tls_dir_writes_a_certificate_and_prints_its_fingerprint() {
    let home = Home::new();
    let dir = home.path().join("tls");
    let o = run(&[
        "gen-key",
        "--out",
        home.path().join("k").to_str().unwrap(),
        "--tls-dir",
        dir.to_str().unwrap(),
        "--san",
        "bots.example.com",
        "--san",
        "10.0.0.5",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let fp = agentsd::certs::fingerprint_of_pem(&dir.join("cert.pem")).unwrap();
    assert!(
        out.contains(&format!("fingerprint (pin it in a client context): {fp}")),
        "{out}"
    );
    assert!(out.contains("bots.example.com, 10.0.0.5"));
    for f in ["cert.pem", "key.pem"] {
        assert_eq!(
            std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let o = run(&["gen-key", "--tls-dir", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "overwrote the certificate");
    let o = run(&["gen-key", "--san", "x"]);
    assert_eq!(o.status.code(), Some(2), "--san without --tls-dir");
}

#[test]
fn install_unit_dry_run_and_root() {
    let o = run(&[
        "install-unit",
        "--dry-run",
        "--bin",
        "/usr/bin/agentsd",
        "--config",
        "/etc/agentsd/agentsd.toml",
    ]);
    assert!(o.status.success());
    let unit = text(&o.stdout);
    for line in [
        "Type=notify",
        "ExecStart=/usr/bin/agentsd serve --config /etc/agentsd/agentsd.toml",
        "EnvironmentFile=-/etc/agentsd/agentsd.env",
        "Restart=always",
        // A cgroup per agent below the unit's.
        "Delegate=yes",
        "WantedBy=multi-user.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing {line:?} in\n{unit}");
    }
    assert!(!unit.contains("User="));
    // It would make the delegated cgroup read-only.
    assert!(!unit.contains("ProtectControlGroups"), "{unit}");

    let home = Home::new();
    let o = run(&[
        "install-unit",
        "--root",
        home.path().to_str().unwrap(),
        "--bin",
        "/opt/agentsd/bin/agentsd",
        "--user",
        "bots",
        "--config",
        "/srv/agentsd.toml",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let path = home.path().join("etc/systemd/system/agentsd.service");
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(written.contains("ExecStart=/opt/agentsd/bin/agentsd serve --config /srv/agentsd.toml\n"));
    assert!(written.contains("\nUser=bots\n") && !written.contains("Group="));
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert!(!written.contains("ReadWritePaths"), "{written}");

    // With api_edits on, the daemon writes its config: only then is the
    // config's directory writable to the unit.
    let conf = home.path().join("conf dir");
    std::fs::create_dir(&conf).unwrap();
    let config = conf.join("agentsd.toml");
    std::fs::write(&config, "[server]\napi_edits = true\n").unwrap();
    let o = run(&[
        "install-unit",
        "--dry-run",
        "--bin",
        "/usr/bin/agentsd",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let unit = text(&o.stdout);
    assert!(
        unit.contains(&format!("\nReadWritePaths=\"{}\"\n", conf.display())),
        "{unit}"
    );
}

#[test]
fn dist_unit_is_the_generated_one() {
    let o = run(&["install-unit", "--dry-run", "--bin", "/usr/bin/agentsd"]);
    let dist = std::fs::read_to_string(repo().join("dist/agentsd.service")).unwrap();
    assert_eq!(
        text(&o.stdout),
        dist,
        "dist/agentsd.service is out of date: run `cargo run -- install-unit --dry-run --bin /usr/bin/agentsd > dist/agentsd.service`"
    );
}

#[test]
fn the_debian_package_unit_is_the_generated_one_for_the_user_agentsd() {
    let o = run(&[
        "install-unit",
        "--dry-run",
        "--bin",
        "/usr/bin/agentsd",
        "--user",
        "agentsd",
    ]);
    let deb = std::fs::read_to_string(repo().join("dist/debian/agentsd.service")).unwrap();
    assert_eq!(
        text(&o.stdout),
        deb,
        "dist/debian/agentsd.service is out of date: run `cargo run -- install-unit --dry-run --bin /usr/bin/agentsd --user agentsd > dist/debian/agentsd.service`"
    );
}

#[test]
fn the_debian_changelog_names_this_version() {
    let changelog = std::fs::read_to_string(repo().join("dist/debian/changelog")).unwrap();
    let first = changelog.lines().next().unwrap();
    let want = format!("agentsd ({}-", env!("CARGO_PKG_VERSION"));
    assert!(
        first.starts_with(&want),
        "dist/debian/changelog's first entry is {first:?}: add an entry for {}",
        env!("CARGO_PKG_VERSION")
    );
}

#[test]
#[ignore = "needs systemd-analyze, Debian's systemd package (`cargo test -- --ignored`, as .ci/run does)"]
fn the_unit_passes_systemd_analyze_verify() {
    let v = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .expect("systemd-analyze (Debian package systemd) is needed");
    assert!(v.status.success(), "{}", text(&v.stderr));
    let home = Home::new();
    // The real binary, so that verify can check ExecStart.
    let o = run(&[
        "install-unit",
        "--root",
        home.path().to_str().unwrap(),
        "--bin",
        bin(),
    ]);
    assert!(o.status.success());
    let unit = home.path().join("etc/systemd/system/agentsd.service");
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let err = text(&o.stderr);
    // Warnings about the host (no systemd running in a container) are not about the unit.
    let about_unit: Vec<&str> = err.lines().filter(|l| l.contains("agentsd.service")).collect();
    assert!(
        o.status.success() && about_unit.is_empty(),
        "systemd-analyze verify: {err}"
    );
}

#[test]
#[ignore = "needs root on a host where systemd is not running (`cargo test -- --ignored`, as .ci/run does)"]
fn install_unit_without_systemd_says_so() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: as anyone else install-unit stops at the permission check"
    );
    // Where systemd runs, install-unit would install and start the unit.
    assert!(
        !Path::new("/run/systemd/system").exists(),
        "systemd is running on this host: not run, to leave the host alone"
    );
    let o = run(&["install-unit", "--bin", "/usr/bin/agentsd"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("systemd is not running on this host"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn man_pages_and_completions_are_in_sync() {
    let home = Home::new();
    let o = run(&["generate-docs", "--out", home.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let hint = "man/ and completions/ are out of date: run `cargo run -- generate-docs --out .` and commit the result";
    for dir in ["man", "completions"] {
        let mut fresh: Vec<_> = std::fs::read_dir(home.path().join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let mut checked_in: Vec<_> = std::fs::read_dir(repo().join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        fresh.sort();
        checked_in.sort();
        assert_eq!(fresh, checked_in, "{hint}");
        for f in fresh {
            let a = std::fs::read(home.path().join(dir).join(&f)).unwrap();
            let b = std::fs::read(repo().join(dir).join(&f)).unwrap();
            assert!(a == b, "{dir}/{}: {hint}", f.to_string_lossy());
        }
    }
    // A second run writes the very same bytes.
    let again = Home::new();
    let o = run(&["generate-docs", "--out", again.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        std::fs::read(again.path().join("man/agentsd.1")).unwrap(),
        std::fs::read(home.path().join("man/agentsd.1")).unwrap()
    );
}

#[test]
fn man_pages_name_no_help_command_and_document_every_config_key() {
    let o = run(&["help"]);
    assert_eq!(o.status.code(), Some(2), "`agentsd help` is not a command");
    let home = Home::new();
    let o = run(&["generate-docs", "--out", home.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let man = home.path().join("man");
    for e in std::fs::read_dir(&man).unwrap() {
        let page = std::fs::read_to_string(e.unwrap().path()).unwrap();
        assert!(!page.contains("help(1)"), "{page}");
    }
    assert!(!man.join("agentsd-help.1").exists());
    let main = std::fs::read_to_string(man.join("agentsd.1")).unwrap();
    assert!(
        main.contains("agentsd.toml(5)"),
        "the main page points to the config page"
    );
    let page = std::fs::read_to_string(man.join("agentsd.toml.5")).unwrap();
    assert!(page.contains(".TH agentsd.toml 5 "), "{page}");
    // Every key of SPEC's config section, and every key the shipped example uses.
    let mut keys: std::collections::BTreeSet<String> = [
        "listen",
        "api_key_file",
        "tls",
        "cert",
        "key",
        "state_dir",
        "log_dir",
        "restart",
        "stop_signal",
        "stop_timeout",
        "start_window",
        "backoff",
        "initial",
        "max",
        "max_restarts",
        "log_max_size",
        "log_keep",
        "log_timestamps",
        "command",
        "cwd",
        "env",
        "env_file",
        "user",
        "autostart",
        "stats",
        "db",
        "query",
    ]
    .map(String::from)
    .into();
    let example: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo().join("dist/agentsd.example.toml")).unwrap()).unwrap();
    fn collect(t: &toml::Table, keys: &mut std::collections::BTreeSet<String>, is_agents: bool) {
        for (k, v) in t {
            if !is_agents {
                keys.insert(k.clone());
            }
            if let toml::Value::Table(inner) = v {
                collect(inner, keys, k == "agents");
            }
        }
    }
    collect(&example, &mut keys, false);
    for section in ["server", "defaults", "agents"] {
        keys.remove(section);
    }
    for k in keys {
        assert!(
            page.contains(&format!("\\fB{k} ="))
                || page.contains(&format!("{{ {k} ="))
                || page.contains(&format!(", {k} =")),
            "agentsd.toml(5) does not document `{k}`"
        );
    }
}
