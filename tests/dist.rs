//! What ships in dist/: configs that pass `config check`, and a demo that runs.

use crate::util::*;
use agentsd::wire::{AgentSummary, Status};
use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_config_in_dist_passes_config_check() {
    let mut checked = 0;
    for e in std::fs::read_dir(repo().join("dist")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let out = Command::new(bin())
                .args(["config", "check", "--config"])
                .arg(&p)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                p.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains(": ok ("));
            checked += 1;
        }
    }
    assert!(checked >= 1);
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
