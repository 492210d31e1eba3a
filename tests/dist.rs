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
    let dirs = [repo().join("dist"), repo().join("dist/debian")];
    for e in dirs.iter().flat_map(|d| std::fs::read_dir(d).unwrap()) {
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
        let provisioned = etc.join("api.key").exists();
        let to_check = if text.contains(&etc.display().to_string()) && provisioned {
            // Provisioned for an earlier file.
            copy.clone()
        } else if text.contains(&etc.display().to_string()) {
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
    assert_eq!(checked, ["agentsd.example.toml", "agentsd.toml", "demo.toml"]);
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
    // The bot's database: a copy of the shipped one (42 messages), which
    // it adds to where the sqlite3 command is installed.
    d.wait_for("assistant-bot", std::time::Duration::from_secs(15), |a| {
        a.msg_count_24h.is_some_and(|n| n >= 42)
    })
    .await;
    // Its messages, as the dashboard's Messages panel shows them.
    let mut sse = Sse::open(&d, "/sse/agents/assistant-bot/messages?n=3", None).await;
    let ev = sse.next(std::time::Duration::from_secs(10)).await.unwrap();
    assert_eq!(ev.name, "message", "{ev:?}");
    let row: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
    for column in ["id", "at", "sender", "body"] {
        assert!(!row[column].is_null(), "{column} in {row}");
    }
}

// Monitoring: dist/prometheus.yml and dist/grafana-agentsd.json.

/// A YAML subset, read strictly: block mappings and sequences by
/// indentation, plain and quoted scalars, flow sequences of scalars,
/// comments. Anything else (anchors, tags, flow mappings, block scalars,
/// tabs, several documents) is refused, so a file that passes has nothing
/// this reading could get wrong.
mod yaml {
    use serde_json::Value;

    struct Line {
        no: usize,
        indent: usize,
        text: String,
    }

    pub fn parse(src: &str) -> Result<Value, String> {
        let mut lines = Vec::new();
        for (i, raw) in src.lines().enumerate() {
            let no = i + 1;
            let body = strip_comment(raw).trim_end().to_string();
            if body.trim().is_empty() {
                continue;
            }
            let indent = body.len() - body.trim_start_matches(' ').len();
            if body[indent..].starts_with('\t') {
                return Err(format!("line {no}: a tab in the indentation"));
            }
            if body == "---" || body == "..." {
                return Err(format!("line {no}: several documents"));
            }
            lines.push(Line {
                no,
                indent,
                text: body[indent..].to_string(),
            });
        }
        let mut i = 0;
        let v = match lines.first() {
            None => Value::Null,
            Some(first) => {
                let indent = first.indent;
                block(&mut lines, &mut i, indent)?
            }
        };
        match lines.get(i) {
            None => Ok(v),
            Some(l) => Err(format!("line {}: unexpected indentation", l.no)),
        }
    }

    /// The line up to a comment (a `#` at its start or after a space,
    /// outside quotes).
    fn strip_comment(s: &str) -> &str {
        let mut quote = None;
        let mut prev = ' ';
        for (i, c) in s.char_indices() {
            match (quote, c) {
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, '#') if prev == ' ' => return &s[..i],
                _ => {}
            }
            prev = c;
        }
        s
    }

    fn block(lines: &mut [Line], i: &mut usize, indent: usize) -> Result<Value, String> {
        if lines[*i].text == "-" || lines[*i].text.starts_with("- ") {
            sequence(lines, i, indent)
        } else {
            mapping(lines, i, indent)
        }
    }

    fn sequence(lines: &mut [Line], i: &mut usize, indent: usize) -> Result<Value, String> {
        let mut items = Vec::new();
        while *i < lines.len() && lines[*i].indent == indent && lines[*i].text.starts_with('-') {
            let l = &mut lines[*i];
            let rest = l.text[1..].trim_start().to_string();
            if rest.is_empty() {
                *i += 1;
                match lines.get(*i) {
                    Some(n) if n.indent > indent => {
                        let inner = n.indent;
                        items.push(block(lines, i, inner)?);
                    }
                    _ => items.push(Value::Null),
                }
            } else if !(rest.starts_with('-') || is_entry(&rest)) {
                items.push(scalar(&rest, l.no)?);
                *i += 1;
            } else {
                // `- key: value` opens a mapping whose keys line up with `key`.
                let offset = l.text.len() - rest.len();
                l.indent += offset;
                l.text = rest;
                let inner = l.indent;
                items.push(block(lines, i, inner)?);
            }
        }
        Ok(Value::Array(items))
    }

    /// Whether `s` is `key: value` or `key:` (a quoted or flow scalar is not).
    fn is_entry(s: &str) -> bool {
        !s.starts_with(['"', '\'', '[']) && (s.contains(": ") || s.ends_with(':'))
    }

    fn mapping(lines: &mut [Line], i: &mut usize, indent: usize) -> Result<Value, String> {
        let mut map = serde_json::Map::new();
        while *i < lines.len() && lines[*i].indent == indent {
            let (no, text) = (lines[*i].no, lines[*i].text.clone());
            if text.starts_with('-') {
                return Err(format!("line {no}: a sequence item where a key was expected"));
            }
            let (key, value) = match text.find(": ") {
                Some(p) => (&text[..p], text[p + 2..].trim()),
                None => match text.strip_suffix(':') {
                    Some(k) => (k, ""),
                    None => return Err(format!("line {no}: expected `key: value`, found {text:?}")),
                },
            };
            let key = match scalar(key, no)? {
                Value::String(s) => s,
                other => other.to_string(),
            };
            if map.contains_key(&key) {
                return Err(format!("line {no}: {key:?} twice"));
            }
            *i += 1;
            let v = if !value.is_empty() {
                scalar(value, no)?
            } else {
                match lines.get(*i) {
                    Some(n) if n.indent > indent => {
                        let inner = n.indent;
                        block(lines, i, inner)?
                    }
                    // A sequence may sit at its key's own indentation.
                    Some(n) if n.indent == indent && n.text.starts_with('-') => sequence(lines, i, indent)?,
                    _ => Value::Null,
                }
            };
            map.insert(key, v);
        }
        Ok(Value::Object(map))
    }

    fn scalar(s: &str, no: usize) -> Result<Value, String> {
        let s = s.trim();
        match s.chars().next() {
            Some('"') => serde_json::from_str(s).map_err(|e| format!("line {no}: {s}: {e}")),
            Some('\'') => s
                .strip_prefix('\'')
                .and_then(|r| r.strip_suffix('\''))
                .map(|r| Value::String(r.replace("''", "'")))
                .ok_or_else(|| format!("line {no}: unterminated {s}")),
            Some('[') => {
                let inner = s
                    .strip_prefix('[')
                    .and_then(|r| r.strip_suffix(']'))
                    .ok_or_else(|| format!("line {no}: unterminated {s}"))?;
                let mut items = Vec::new();
                let mut quote = None;
                let mut start = 0;
                for (j, c) in inner.char_indices() {
                    match (quote, c) {
                        (None, '"' | '\'') => quote = Some(c),
                        (Some(q), c) if c == q => quote = None,
                        (None, '[' | '{') => return Err(format!("line {no}: nested flow collections")),
                        (None, ',') => {
                            items.push(scalar(&inner[start..j], no)?);
                            start = j + 1;
                        }
                        _ => {}
                    }
                }
                if !inner[start..].trim().is_empty() {
                    items.push(scalar(&inner[start..], no)?);
                }
                Ok(Value::Array(items))
            }
            Some('{' | '&' | '*' | '!' | '|' | '>' | '%' | '@' | '`') => {
                Err(format!("line {no}: {s:?} is outside the YAML this test reads"))
            }
            _ => Ok(match s {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                "null" | "~" | "" => Value::Null,
                _ => match s.parse::<i64>() {
                    Ok(n) => n.into(),
                    Err(_) => match s.parse::<f64>() {
                        Ok(f) if f.is_finite() => f.into(),
                        _ => Value::String(s.to_string()),
                    },
                },
            }),
        }
    }
}

#[test]
fn the_yaml_reader_reads_what_dist_uses_and_refuses_the_rest() {
    let v = yaml::parse(
        "# c\na: 1\nb:\n  c: \"x # y\"   # z\n  d: [\"p\", q, 3]\ne:\n  - f: g\n    h: i\n  - j\nk:\n- l\nm: 'it''s'\nn: 15s\n",
    )
    .unwrap();
    assert_eq!(
        v,
        serde_json::json!({"a": 1, "b": {"c": "x # y", "d": ["p", "q", 3]},
            "e": [{"f": "g", "h": "i"}, "j"], "k": ["l"], "m": "it's", "n": "15s"})
    );
    for bad in [
        "a: &x 1\n",
        "a: {b: 1}\n",
        "a: |\n  x\n",
        "a: 1\n  b: 2\n",
        "a: 1\na: 2\n",
        "\ta: 1\n",
        "a\n",
    ] {
        assert!(yaml::parse(bad).is_err(), "{bad:?}");
    }
}

/// The metric names a PromQL expression reads: its identifiers that are
/// not functions, aggregations, keywords, label names or Grafana variables.
fn metric_names(expr: &str) -> Vec<String> {
    const AGGREGATIONS: [&str; 14] = [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const KEYWORDS: [&str; 11] = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let b = expr.as_bytes();
    let mut names = Vec::new();
    let mut i = 0;
    // Skips from an opening bracket to its match, strings included.
    let skip = |i: &mut usize, open: u8, close: u8| {
        let mut depth = 0;
        let mut quote = None;
        while *i < b.len() {
            let c = b[*i];
            match quote {
                Some(_) if c == b'\\' => *i += 1,
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == b'"' || c == b'\'' || c == b'`' => quote = Some(c),
                None if c == open => depth += 1,
                None if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        *i += 1;
                        return;
                    }
                }
                None => {}
            }
            *i += 1;
        }
    };
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    while i < b.len() {
        let c = b[i];
        match c {
            b'{' => skip(&mut i, b'{', b'}'),
            b'[' => skip(&mut i, b'[', b']'),
            b'"' | b'\'' | b'`' => {
                let q = c;
                i += 1;
                while i < b.len() && b[i] != q {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            // Grafana variables: $name, ${name}.
            b'$' => {
                i += 1;
                if b.get(i) == Some(&b'{') {
                    skip(&mut i, b'{', b'}');
                } else {
                    while i < b.len() && ident(b[i]) {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit() || c == b'.' => {
                while i < b.len() && (ident(b[i]) || b[i] == b'.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let start = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                let word = &expr[start..i];
                let mut j = i;
                while j < b.len() && b[j] == b' ' {
                    j += 1;
                }
                let call = b.get(j) == Some(&b'(');
                if KEYWORDS.contains(&word) {
                    // by (le, route): label names, not metrics.
                    if call {
                        i = j;
                        skip(&mut i, b'(', b')');
                    }
                } else if !call && !AGGREGATIONS.contains(&word) {
                    names.push(word.to_string());
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le, route) (rate(agentsd_http_request_duration_seconds_bucket{job=~\"$job\", x=\"a}b\"}[$__rate_interval])))"
        ),
        ["agentsd_http_request_duration_seconds_bucket"]
    );
    assert_eq!(
        metric_names(
            "time() - agentsd_agent_start_time_seconds{agent=~\"$agent\"} > 5m or on(agent) up offset 1h"
        ),
        ["agentsd_agent_start_time_seconds", "up"]
    );
    assert_eq!(
        metric_names("sum without (status) (x) / ignoring(a) group_left y"),
        ["x", "y"]
    );
}

/// What a Grafana templating query reads: `label_values(EXPR, label)`
/// reads EXPR.
fn templating_expr(query: &str) -> String {
    match query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        Some(args) => match args.rsplit_once(',') {
            Some((expr, _label)) => expr.to_string(),
            None => String::new(),
        },
        None => query.to_string(),
    }
}

/// Every PromQL expression of the dashboard: its panels' targets and its
/// templating queries.
fn dashboard_exprs(dash: &serde_json::Value) -> Vec<String> {
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().or(v["query"].as_str()).unwrap();
            exprs.push(templating_expr(q));
        }
    }
    exprs
}

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(repo().join("dist/grafana-agentsd.json")).unwrap();
    serde_json::from_str(&text).expect("dist/grafana-agentsd.json is not JSON")
}

/// A daemon whose /metrics has every family: a running agent with a stats
/// query (resources, messages), and requests already answered.
async fn daemon_with_every_metric(home: &Home) -> Daemon {
    std::fs::copy(repo().join("dist/demo/bot.db"), home.path().join("bot.db")).unwrap();
    home.write_config(&format!(
        "sample_interval = \"100ms\"\n{FAST}[agents.bot]\ncommand = [\"sleep\", \"1000\"]\nstats = {{ db = \"bot.db\", query = \"SELECT count(*) FROM messages\" }}\n\
         [agents.svc]\ncommand = [\"sleep\", \"1000\"]\nhealth = {{ exec = [\"true\"], interval = \"1s\" }}\n"
    ));
    let d = home.start();
    d.wait_for("bot", std::time::Duration::from_secs(15), |a| {
        a.resources.is_some() && a.msg_count_24h.is_some()
    })
    .await;
    d.wait_for("svc", std::time::Duration::from_secs(15), |a| {
        a.health == Some(agentsd::wire::HealthState::Healthy)
    })
    .await;
    d
}

#[tokio::test]
async fn prometheus_and_grafana_examples_parse_and_name_only_metrics_the_daemon_has() {
    // The scrape job: HTTPS, the key from a file, a CA file.
    let dirs = [repo().join("dist"), repo().join("dist/debian")];
    for e in dirs.iter().flat_map(|d| std::fs::read_dir(d).unwrap()) {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yml" || x == "yaml") {
            let text = std::fs::read_to_string(&p).unwrap();
            yaml::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
    }
    let prom = yaml::parse(&std::fs::read_to_string(repo().join("dist/prometheus.yml")).unwrap()).unwrap();
    let jobs = prom["scrape_configs"].as_array().unwrap();
    let job = jobs.iter().find(|j| j["job_name"] == "agentsd").unwrap();
    assert_eq!(job["scheme"], "https");
    assert_eq!(job["metrics_path"], "/metrics");
    assert_eq!(job["authorization"]["type"], "Bearer");
    assert!(job["authorization"]["credentials_file"].is_string(), "{job}");
    assert!(job["tls_config"]["ca_file"].is_string(), "{job}");
    assert!(job["static_configs"][0]["targets"][0].is_string(), "{job}");

    // The dashboard: panels in a 24-column grid, each on the chosen data
    // source, every variable defined.
    let dash = dashboard();
    let panels = dash["panels"].as_array().unwrap();
    let mut ids = std::collections::BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "panel id twice: {p}");
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{}",
            p["title"]
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        assert!(!p["targets"].as_array().unwrap().is_empty(), "{}", p["title"]);
    }
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    let exprs = dashboard_exprs(&dash);
    for e in &exprs {
        for (i, _) in e.match_indices('$') {
            let name: String = e[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                name.starts_with("__") || vars.contains(&name.as_str()),
                "${name} is not defined: {e}"
            );
        }
    }
    let used: std::collections::BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    // What the issue asks the dashboard to show.
    for m in [
        "agentsd_agent_status",
        "agentsd_agent_restarts_total",
        "agentsd_agent_cpu_seconds_total",
        "agentsd_agent_resident_memory_bytes",
        "agentsd_agent_log_lines_total",
        "agentsd_agent_log_dropped_lines_total",
        "agentsd_http_request_duration_seconds_bucket",
        "agentsd_agent_healthy",
    ] {
        assert!(used.contains(m), "the dashboard does not show {m}");
    }

    // Every name exists in what a real daemon serves.
    let home = Home::new();
    let d = daemon_with_every_metric(&home).await;
    let metrics = d.metrics().await;
    let served: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();
    let missing: Vec<&String> = used.iter().filter(|m| !served.contains(m.as_str())).collect();
    assert!(
        missing.is_empty(),
        "the dashboard reads metrics the daemon does not serve: {missing:?}\nserved: {served:?}"
    );
}

/// Runs promtool (Debian package prometheus) with `input` on stdin.
fn promtool(args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run promtool (Debian package prometheus): {e}"));
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test]
#[ignore = "needs promtool (Debian package prometheus)"]
async fn promtool_passes_the_metrics_the_scrape_config_and_the_dashboard_queries() {
    let home = Home::new();
    let d = daemon_with_every_metric(&home).await;
    // A restart and a refused key, so that those counters have moved.
    d.control("bot", "restart").await;
    let res = d
        .client
        .get(format!("{}/agents", d.url))
        .bearer_auth("wrong-key-wrong-key-wrong-key-wrong-key")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let metrics = d.metrics().await;
    assert!(
        metrics.contains("\nagentsd_agent_healthy{agent=\"svc\"} 1\n"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("agentsd_agent_healthy{agent=\"bot\"}"),
        "no probe, no health: {metrics}"
    );
    let o = promtool(&["check", "metrics"], &metrics);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "promtool check metrics: {said}\n{metrics}");
    assert_eq!(said.trim(), "", "promtool check metrics has remarks:\n{metrics}");

    // The scrape config, with its key and CA files where it names them.
    let key = home.path().join("prometheus-agentsd.key");
    std::fs::write(&key, KEY).unwrap();
    let ca = home.path().join("state/tls/cert.pem");
    let config = std::fs::read_to_string(repo().join("dist/prometheus.yml"))
        .unwrap()
        .replace("/etc/prometheus/agentsd.key", key.to_str().unwrap())
        .replace("/etc/prometheus/agentsd-ca.pem", ca.to_str().unwrap());
    let path = home.path().join("prometheus.yml");
    std::fs::write(&path, config).unwrap();
    let o = promtool(&["check", "config", path.to_str().unwrap()], "");
    assert!(
        o.status.success(),
        "promtool check config: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    // Every query of the dashboard is valid PromQL: checked as recording
    // rules, with Grafana's variables given values.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in dashboard_exprs(&dashboard()).iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "1m")
            .replace("$__range", "1h")
            .replace("$job", ".*")
            .replace("$instance", ".*")
            .replace("$agent", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let path = home.path().join("dashboard-rules.yml");
    std::fs::write(&path, &rules).unwrap();
    let o = promtool(&["check", "rules", path.to_str().unwrap()], "");
    assert!(
        o.status.success(),
        "promtool check rules: {}{}\n{rules}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
