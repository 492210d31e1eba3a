//! `cargo bench`: starts the real daemon (the build that ships: `cargo build
//! --release`, made first in `target/shipped`) on loopback and prints the
//! figures of the spec's targets, beside supervisord's where the measure
//! applies. Every loop is bounded in count and time; all traffic
//! goes to 127.0.0.1.
//!
//! `cargo bench --bench bench -- NAME...` runs only the named measures:
//! lag, list, idle, busy, capture, followers, start, restart, cli, streams,
//! churn, stalled, scale, snapshot, observe, top, auth, tails, slots,
//! dashboard, supervisord, probes, waves, upgrade. `tails` and `slots` run against another build
//! with `AGENTSD_TEST_BIN=PATH` (the figures before a change). `issue21`
//! (only when named) prints every row of issue #21's table; `fleet` (only
//! when named) runs 50 daemons on 127.0.0.11-60 and a nats-server.
//!
//! `dashboard` drives a headless Chromium (Debian's `chromium` and
//! `chromium-driver`; skipped, saying so, without them); its soak lasts
//! `AGENTSD_BENCH_SOAK_S` seconds (default 300).
//!
//! It installs nothing system-wide unless asked: supervisord is compared
//! when it is on PATH, or installed from Debian's package (as root) only with
//! `AGENTSD_BENCH_INSTALL=1`; otherwise it says how and skips the comparison.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../tests/util/mod.rs"]
mod util;

mod auth;
mod dashboard;
mod emit;
mod fleet;
mod health;
mod issue21;
mod measures;
mod readkey;
mod stats;
mod supervisord;
mod upgrade;

use stats::Row;

/// Measures the build that ships, not this bench's own build of the binary:
/// that one has the features the dev-dependencies add (tokio's test-util,
/// salvo's test, ...), so other code and other function names, which the
/// link order (`order/agentsd.order`) does not know. Unless
/// `AGENTSD_TEST_BIN` names a build, `cargo build --release` makes it in
/// its own target directory (so the two builds do not replace each other).
fn shipped() {
    if std::env::var_os("AGENTSD_TEST_BIN").is_some() {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), Into::into);
    let dir = target.join("shipped");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "--bin",
            "agentsd",
            "--target-dir",
        ])
        .arg(&dir)
        .current_dir(root)
        .status()
        .expect("cannot run cargo to build the shipped binary");
    assert!(status.success(), "cargo build --release failed");
    let bin = dir.join("release/agentsd");
    println!("measuring {} (cargo build --release)", bin.display());
    util::use_bin(bin.display().to_string());
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The benchmark re-runs itself as the agents it measures.
    if let Some(code) = emit::run(&args) {
        std::process::exit(code);
    }
    let wanted: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let on = |name: &str| wanted.is_empty() || wanted.contains(&name);
    shipped();
    raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("agentsd benchmark: {}", stats::machine());
    println!("(medians of {} runs unless noted; loopback only)\n", stats::RUNS);
    let mut rows: Vec<Row> = Vec::new();
    // Installs nothing unless AGENTSD_BENCH_INSTALL=1.
    let sup = if on("supervisord") {
        match supervisord::Supervisord::find_or_install() {
            Ok(s) => Some(s),
            Err(why) => {
                println!("{why}\n");
                None
            }
        }
    } else {
        None
    };
    rt.block_on(async {
        // Only when named: it repeats rows of the measures below.
        if wanted.contains(&"issue21") {
            rows.extend(issue21::issue21().await);
        }
        // Only when named: 50 daemons and a nats-server.
        if wanted.contains(&"fleet") {
            rows.extend(fleet::fleet().await);
        }
        if on("lag") {
            rows.extend(measures::lag().await);
        }
        if on("list") {
            rows.extend(measures::list_1000().await);
        }
        if on("idle") || on("busy") {
            rows.extend(measures::resources(on("idle"), on("busy")).await);
        }
        if on("capture") {
            rows.extend(measures::capture().await);
        }
        if on("followers") {
            rows.extend(measures::followers().await);
        }
        if on("start") {
            rows.extend(measures::start_100().await);
        }
        if on("restart") {
            rows.extend(measures::restart_one().await);
        }
        if on("cli") {
            rows.extend(measures::cli_list().await);
        }
        if on("streams") {
            rows.extend(measures::streams().await);
        }
        if on("churn") {
            rows.extend(measures::churn().await);
        }
        if on("stalled") {
            rows.extend(measures::stalled().await);
        }
        if on("scale") {
            rows.extend(measures::scale().await);
        }
        if on("snapshot") {
            rows.extend(measures::snapshot().await);
        }
        if on("observe") {
            rows.extend(measures::observe().await);
        }
        if on("auth") {
            rows.extend(auth::wrong_keys().await);
        }
        if on("tails") {
            rows.extend(readkey::tails().await);
        }
        if on("slots") {
            rows.extend(readkey::slots().await);
        }
        if on("top") {
            rows.extend(measures::top().await);
        }
        if on("dashboard") {
            rows.extend(dashboard::dashboard().await);
        }
        if on("probes") {
            rows.extend(health::probes().await);
        }
        if on("waves") {
            rows.extend(health::waves().await);
        }
        if on("upgrade") {
            rows.extend(upgrade::upgrade().await);
        }
    });
    if let Some(sup) = &sup {
        supervisord::compare(sup, &mut rows);
    }
    stats::print_table(&rows);
}

fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
