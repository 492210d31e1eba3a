//! What ships in dist/: configs that pass `config check`, and a demo that runs.

use crate::util::*;
use agentsd::wire::{AgentSummary, Status};
use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn config_check(path: &Path) -> std::process::Output {
    Command::new(bin())
        .args(["config", "check", "--config"])
        .arg(path)
        .env_remove("AGENTSD_API_KEY")
        .output()
        .unwrap()
}

#[test]
fn every_config_in_dist_passes_config_check_once_its_host_is_provisioned() {
    let home = Home::new();
    let etc = home.path().join("etc/agentsd");
    let mut checked = Vec::new();
    for e in std::fs::read_dir(repo().join("dist")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        // The example names /etc/agentsd: provision a copy of that under
        // the temp dir, as the README's steps do on a host.
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("/etc/agentsd/", &format!("{}/", etc.display()));
        let copy = home.path().join(p.file_name().unwrap());
        std::fs::write(&copy, &text).unwrap();
        let to_check = if text.contains(&etc.display().to_string()) {
            // Not provisioned yet: refused, as `serve` would refuse it.
            let out = config_check(&copy);
            assert_eq!(out.status.code(), Some(1), "{}", p.display());
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("api.key"), "{err}");
            let out = Command::new(bin())
                .args(["gen-key", "--out"])
                .arg(etc.join("api.key"))
                .arg("--tls-dir")
                .arg(etc.join("tls"))
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            copy.clone()
        } else {
            // Relative paths stay the repository's.
            p.clone()
        };
        let out = config_check(&to_check);
        assert!(
            out.status.success(),
            "{}: {}",
            p.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(": ok ("));
        checked.push(p.file_name().unwrap().to_string_lossy().into_owned());
    }
    checked.sort();
    assert_eq!(checked, ["agentsd.example.toml", "demo.toml"]);
}

#[test]
fn config_check_refuses_what_serve_refuses() {
    let home = Home::new();
    let check = |name: &str, text: &str| {
        let p = home.path().join(name);
        std::fs::write(&p, text).unwrap();
        let out = config_check(&p);
        let serve = Command::new(bin())
            .args(["serve", "--config"])
            .arg(&p)
            .env_remove("AGENTSD_API_KEY")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "config check passed {name}");
        assert_eq!(serve.status.code(), Some(1), "serve ran {name}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = check(
        "http.toml",
        "[server]\nlisten = \"0.0.0.0:0\"\napi_key_file = \"api.key\"\nstate_dir = \"s\"\n",
    );
    assert!(e.contains("refusing to serve plain HTTP on 0.0.0.0:0"), "{e}");
    let e = check(
        "certs.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\napi_key_file = \"api.key\"\nstate_dir = \"s\"\ntls = { cert = \"no/cert.pem\", key = \"no/key.pem\" }\n",
    );
    assert!(
        e.contains("cannot read certificate") && e.contains("no/cert.pem"),
        "{e}"
    );
    let open_key = home.path().join("open.key");
    std::fs::write(&open_key, format!("{KEY}\n")).unwrap();
    std::fs::set_permissions(&open_key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let e = check(
        "mode.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\napi_key_file = \"open.key\"\nstate_dir = \"s\"\n",
    );
    assert!(e.contains("readable by group or others (mode 0644)"), "{e}");
}

#[test]
fn config_check_reports_every_error_and_fails() {
    let home = Home::new();
    let p = home.path().join("bad.toml");
    std::fs::write(
        &p,
        "[agents.a]\ncommand = []\n[agents.b]\ncommand = [\"x\"]\nstop_timeout = \"soon\"\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["config", "check", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:5:16: invalid duration \"soon\""), "{err}");
    let out = Command::new(bin())
        .args(["config", "check", "--config"])
        .arg(home.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the config file"));
}

#[tokio::test]
async fn the_demo_config_runs_and_shows_every_status() {
    let home = Home::new();
    // A copy laid out like the repository, so its relative paths stay inside.
    let dist = home.path().join("dist");
    std::fs::create_dir_all(dist.join("demo")).unwrap();
    std::fs::copy(repo().join("dist/demo.toml"), dist.join("demo.toml")).unwrap();
    std::fs::copy(repo().join("dist/demo/bot.db"), dist.join("demo/bot.db")).unwrap();
    let d = home.start_config(
        &dist.join("demo.toml"),
        &home.path().join("target/demo/tls/cert.pem"),
        &["--listen", "127.0.0.1:0"],
    );
    let mut d = d;
    d.key = std::fs::read_to_string(home.path().join("target/demo/api.key"))
        .unwrap()
        .trim()
        .to_string();
    d.wait_status("crasher", Status::Failed).await;
    d.wait_status("migrate", Status::Exited).await;
    let list: Vec<AgentSummary> = serde_json::from_value(d.get("/agents").await).unwrap();
    let status = |id: &str| list.iter().find(|a| a.id == id).unwrap().status;
    assert_eq!(status("ticker"), Status::Running);
    assert_eq!(status("assistant-bot"), Status::Running);
    assert_eq!(status("manual"), Status::Stopped);
    assert_eq!(status("broken"), Status::Failed);
    let bot = list.iter().find(|a| a.id == "assistant-bot").unwrap();
    assert_eq!(bot.msg_count_24h, Some(42));
}
