use super::*;

fn ok(text: &str) -> Config {
    match parse(text, "t.toml", Path::new("/etc/agentsd")) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

/// The single error of an invalid config, as `file:line:col: message`.
fn err(text: &str) -> String {
    match parse(text, "t.toml", Path::new("/etc/agentsd")) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn full_example_parses_with_defaults_and_resolved_paths() {
    let c = ok(r#"
[server]
listen = "0.0.0.0:9000"
api_key_file = "api.key"
tls = { cert = "tls/cert.pem", key = "/abs/key.pem" }

[defaults]
restart = "always"
stop_timeout = "2s"
backoff = { initial = "100ms", max = "5s" }
log_max_size = "1MiB"

[agents.bot]
command = ["/bin/sleep", "100"]
cwd = "work"
env = { A = "1" }
max_restarts = 3
start_window = "0s"
stats = { db = "bot.db", query = "SELECT 1" }
"#);
    assert_eq!(c.server.listen, "0.0.0.0:9000".parse().unwrap());
    assert_eq!(
        c.server.api_key_file.as_deref(),
        Some(Path::new("/etc/agentsd/api.key"))
    );
    assert_eq!(
        c.server.tls,
        Tls::Files {
            cert: "/etc/agentsd/tls/cert.pem".into(),
            key: "/abs/key.pem".into()
        }
    );
    assert_eq!(c.server.state_dir, Path::new("/var/lib/agentsd"));
    let bot = &c.agents["bot"];
    assert_eq!(bot.policy.restart, RestartPolicy::Always);
    assert_eq!(bot.policy.stop_timeout, Duration::from_secs(2));
    assert_eq!(bot.policy.start_window, Duration::ZERO);
    assert_eq!(bot.policy.backoff_initial, Duration::from_millis(100));
    assert_eq!(bot.policy.max_restarts, 3);
    assert_eq!(bot.log.max_size, 1024 * 1024);
    assert_eq!(bot.log.keep, 5);
    assert_eq!(bot.cwd, Path::new("/etc/agentsd/work"));
    assert_eq!(bot.stats.as_ref().unwrap().db, Path::new("/etc/agentsd/bot.db"));
    assert!(bot.autostart);
}

#[test]
fn empty_file_is_valid() {
    let c = ok("");
    assert!(c.agents.is_empty());
    assert_eq!(c.server.listen, DEFAULT_LISTEN.parse().unwrap());
    assert_eq!(c.server.tls, Tls::Off);
}

#[test]
fn unknown_key_names_place_and_expected_keys() {
    let e = err("[server]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n");
    assert!(e.starts_with("t.toml:3:1: unknown field `listne`"), "{e}");
    assert!(e.contains("expected one of"), "{e}");
}

#[test]
fn unknown_agent_key() {
    let e = err("[agents.a]\ncommand = [\"x\"]\nautostrat = true\n");
    assert!(e.starts_with("t.toml:3:1: unknown field `autostrat`"), "{e}");
}

#[test]
fn bad_duration() {
    let e = err("[defaults]\nstop_timeout = \"10 parsecs\"\n");
    assert!(
        e.starts_with("t.toml:2:16: invalid duration \"10 parsecs\""),
        "{e}"
    );
    assert!(e.contains("like \"500ms\""), "{e}");
}

#[test]
fn bad_size() {
    let e = err("[defaults]\nlog_max_size = \"lots\"\n");
    assert!(e.starts_with("t.toml:2:16: invalid size \"lots\""), "{e}");
}

#[test]
fn tiny_log_size() {
    let e = err("[defaults]\nlog_max_size = \"10B\"\n");
    assert!(
        e.starts_with("t.toml:2:16: log_max_size of 10 bytes is too small"),
        "{e}"
    );
}

#[test]
fn bad_signal() {
    let e = err("[agents.a]\ncommand = [\"x\"]\nstop_signal = \"SIGFOO\"\n");
    assert!(e.starts_with("t.toml:3:15: unknown signal \"SIGFOO\""), "{e}");
}

#[test]
fn bad_restart_policy() {
    let e = err("[defaults]\nrestart = \"sometimes\"\n");
    assert!(e.starts_with("t.toml:2:11: unknown variant `sometimes`"), "{e}");
    assert!(e.contains("on-failure"), "{e}");
}

#[test]
fn bad_agent_id() {
    let e = err("[agents.Bad_Bot]\ncommand = [\"x\"]\n");
    assert!(e.starts_with("t.toml:1:9: invalid agent id \"Bad_Bot\""), "{e}");
}

#[test]
fn empty_command() {
    let e = err("[agents.a]\ncommand = []\n");
    assert_eq!(
        e,
        "t.toml:2:11: agent \"a\": command is empty: expected [\"program\", \"arg\", ...]"
    );
}

#[test]
fn missing_command() {
    let e = err("[agents.a]\ncwd = \"/\"\n");
    assert!(e.contains("missing field `command`"), "{e}");
    assert!(e.starts_with("t.toml:1:1:"), "{e}");
}

#[test]
fn command_must_be_an_array() {
    let e = err("[agents.a]\ncommand = \"sleep 1\"\n");
    assert!(e.starts_with("t.toml:2:11:"), "{e}");
    assert!(e.contains("expected a sequence"), "{e}");
}

#[test]
fn bad_listen() {
    let e = err("[server]\nlisten = \"example.com:80\"\n");
    assert!(
        e.starts_with("t.toml:2:10: invalid listen address \"example.com:80\""),
        "{e}"
    );
}

#[test]
fn bad_tls() {
    let e = err("[server]\ntls = \"yes\"\n");
    assert!(e.starts_with("t.toml:2:7: invalid tls \"yes\""), "{e}");
    let e = err("[server]\ntls = { cert = \"c\" }\n");
    assert!(e.contains("missing field `key`"), "{e}");
}

#[test]
fn backoff_order() {
    let e = err("[defaults]\nbackoff = { initial = \"10s\", max = \"1s\" }\n");
    assert!(
        e.starts_with("t.toml:2:11: backoff initial (10s) is longer than backoff max (1s)"),
        "{e}"
    );
}

#[test]
fn syntax_error_has_place() {
    let e = err("[server\nlisten = 1\n");
    assert!(e.starts_with("t.toml:1:"), "{e}");
}

#[test]
fn several_errors_are_all_reported_in_order() {
    let e = err("[agents.a]\ncommand = []\n[agents.b]\ncommand = [\"\"]\n");
    let lines: Vec<_> = e.lines().collect();
    assert_eq!(lines.len(), 2, "{e}");
    assert!(lines[0].starts_with("t.toml:2:"), "{e}");
    assert!(lines[1].starts_with("t.toml:4:"), "{e}");
}

#[test]
fn agent_overrides_defaults() {
    let c = ok(
        "[defaults]\nrestart = \"never\"\nlog_keep = 2\n[agents.a]\ncommand = [\"x\"]\nrestart = \"always\"\n[agents.b]\ncommand = [\"x\"]\n",
    );
    assert_eq!(c.agents["a"].policy.restart, RestartPolicy::Always);
    assert_eq!(c.agents["b"].policy.restart, RestartPolicy::Never);
    assert_eq!(c.agents["b"].log.keep, 2);
}

#[test]
fn plain_http_only_on_loopback() {
    let c = ok("[server]\nlisten = \"0.0.0.0:1\"\n");
    assert!(
        c.check_listen_security()
            .unwrap_err()
            .contains("refusing to serve plain HTTP on 0.0.0.0:1")
    );
    let c = ok("[server]\nlisten = \"[::1]:1\"\n");
    assert!(c.check_listen_security().is_ok());
    let c = ok("[server]\nlisten = \"0.0.0.0:1\"\ntls = \"self-signed\"\n");
    assert!(c.check_listen_security().is_ok());
}

#[test]
fn embedded_default_is_valid() {
    let c = embedded_default();
    assert!(c.agents.is_empty());
    assert_eq!(c.server.tls, Tls::SelfSigned);
    assert!(c.server.listen.ip().is_loopback());
    assert!(c.server.api_key_file.is_some());
}

#[test]
fn line_col_counts_characters() {
    assert_eq!(line_col("ab\ncdé f", 9), (2, 6));
    assert_eq!(line_col("", 0), (1, 1));
}

#[test]
fn log_keep_is_bounded() {
    let e = err("[defaults]\nlog_keep = 5000\n");
    assert!(e.starts_with("t.toml:2:12: log_keep = 5000 is too many"), "{e}");
}

#[test]
fn an_agent_without_cwd_runs_in_the_config_files_directory() {
    let c = ok("[agents.a]\ncommand = [\"python3\", \"bot.py\"]\n");
    assert_eq!(c.agents["a"].cwd, Path::new("/etc/agentsd"));
}

#[test]
fn durations_are_bounded_to_an_hour() {
    let e = err("[defaults]\nstop_timeout = \"100000000y\"\n");
    assert!(e.starts_with("t.toml:2:16:"), "{e}");
    assert!(e.contains("at most 1h"), "{e}");
    let e = err("[agents.a]\ncommand = [\"x\"]\nbackoff = { max = \"61m\" }\n");
    assert!(e.contains("at most 1h"), "{e}");
    ok("[defaults]\nstop_timeout = \"1h\"\nstart_window = \"60m\"\n");
}

const DIGEST: &str = "sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";

#[test]
fn keys_have_a_name_a_role_and_a_digest() {
    let c = ok(&format!(
        "[keys.wall]\ndigest = \"{DIGEST}\"\nrole = \"read\"\n[keys.\"oncall.laptop\"]\ndigest = \"{}\"\nrole = \"operate\"\n",
        DIGEST.replace("5e88", "0000")
    ));
    let names: Vec<(&str, crate::wire::Role)> = c.keys.iter().map(|k| (k.name.as_str(), k.role)).collect();
    assert_eq!(
        names,
        [
            ("oncall.laptop", crate::wire::Role::Operate),
            ("wall", crate::wire::Role::Read)
        ]
    );
    assert_eq!(crate::secret::digest_text(&c.keys[1].digest), DIGEST);
}

#[test]
fn bad_keys_are_refused_with_their_place() {
    let e = err("[keys.wall]\ndigest = \"md5:abc\"\nrole = \"read\"\n");
    assert!(
        e.starts_with("t.toml:2:10: key \"wall\": invalid digest: expected \"sha256:\""),
        "{e}"
    );
    let e = err(&format!("[keys.wall]\ndigest = \"{DIGEST}\"\nrole = \"root\"\n"));
    assert!(
        e.starts_with("t.toml:3:8:") && e.contains("read") && e.contains("admin"),
        "{e}"
    );
    let e = err(&format!(
        "[keys.\"a b\"]\ndigest = \"{DIGEST}\"\nrole = \"read\"\n"
    ));
    assert!(e.starts_with("t.toml:1:7: invalid key name \"a b\""), "{e}");
    let e = err(&format!(
        "[keys.api_key_file]\ndigest = \"{DIGEST}\"\nrole = \"read\"\n"
    ));
    assert!(e.contains("reserved for the daemon's own key"), "{e}");
    let e = err(&format!(
        "[keys.wall]\ndigest = \"{DIGEST}\"\nrole = \"read\"\nkey = \"x\"\n"
    ));
    assert!(e.contains("unknown field `key`"), "{e}");
    let e = err(&format!(
        "[keys.a]\ndigest = \"{DIGEST}\"\nrole = \"read\"\n[keys.b]\ndigest = \"{DIGEST}\"\nrole = \"admin\"\n"
    ));
    assert!(e.contains("keys \"a\" and \"b\" are the same key"), "{e}");
    let e = err("[keys.wall]\nrole = \"read\"\n");
    assert!(e.contains("missing field `digest`"), "{e}");
}

#[test]
fn trusted_proxies_are_cidrs_or_addresses() {
    let c = ok("[server]\ntrusted_proxies = [\"127.0.0.1\", \"10.1.2.3/8\", \"::1\"]\n");
    let nets: Vec<String> = c.server.trusted_proxies.iter().map(|n| n.to_string()).collect();
    assert_eq!(nets, ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]);
    let e = err("[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n");
    assert!(
        e.starts_with("t.toml:2:20: invalid trusted proxy \"10.0.0.0/33\""),
        "{e}"
    );
    let e = err("[server]\naudit_keep = 0\n");
    assert!(e.contains("audit_keep = 0 is out of range"), "{e}");
}

#[test]
fn public_url_is_an_http_url_without_credentials() {
    let c = ok("[server]\npublic_url = \"https://bots.example.com:8443/\"\n");
    assert_eq!(
        c.server.public_url.unwrap().origin().ascii_serialization(),
        "https://bots.example.com:8443"
    );
    for bad in ["bots.example.com", "ftp://x", "https://u:p@x", "https://"] {
        let e = err(&format!("[server]\npublic_url = \"{bad}\"\n"));
        assert!(e.starts_with("t.toml:2:14: invalid public_url"), "{bad}: {e}");
    }
}

#[test]
fn cgroups_is_auto_or_off() {
    assert_eq!(ok("").server.cgroups, super::Cgroups::Auto);
    assert_eq!(
        ok("[server]\ncgroups = \"auto\"\n").server.cgroups,
        super::Cgroups::Auto
    );
    assert_eq!(
        ok("[server]\ncgroups = \"off\"\n").server.cgroups,
        super::Cgroups::Off
    );
    let e = err("[server]\ncgroups = \"on\"\n");
    assert!(
        e.starts_with("t.toml:2:11: invalid cgroups \"on\": expected \"auto\" or \"off\""),
        "{e}"
    );
}

#[test]
fn health_and_dependencies_parse_and_the_graph_is_checked() {
    let c = ok(r#"
[agents.db]
command = ["db"]
health = { tcp = "127.0.0.1:5432", interval = "2s", timeout = "1s", start_period = "30s" }

[agents.migrate]
command = ["migrate"]
restart = "never"

[agents.api]
command = ["api"]
depends_on = { db = "healthy", migrate = "succeeded" }
health = { http = "http://127.0.0.1:8080/healthz", failures = 2, on_failure = "report" }
"#);
    let db = &c.agents["db"];
    assert_eq!(db.probe, Some(Probe::Tcp("127.0.0.1:5432".into())));
    let h = db.policy.health.unwrap();
    assert_eq!(
        (h.interval, h.timeout, h.start_period, h.failures, h.on_failure),
        (
            Duration::from_secs(2),
            Duration::from_secs(1),
            Duration::from_secs(30),
            3,
            OnFailure::Restart
        )
    );
    let api = &c.agents["api"];
    assert_eq!(api.depends_on["db"], Condition::Healthy);
    assert_eq!(api.depends_on["migrate"], Condition::Succeeded);
    assert_eq!(api.policy.health.unwrap().on_failure, OnFailure::Report);
    assert!(c.agents["migrate"].probe.is_none() && c.agents["migrate"].policy.health.is_none());

    let e = err(
        "[agents.a]\ncommand = [\"x\"]\ndepends_on = { b = \"started\" }\n[agents.b]\ncommand = [\"x\"]\ndepends_on = { c = \"started\" }\n[agents.c]\ncommand = [\"x\"]\ndepends_on = { a = \"started\" }\n",
    );
    assert_eq!(e, "t.toml:3:14: dependency cycle: a -> b -> c -> a");
    let e = err("[agents.a]\ncommand = [\"x\"]\ndepends_on = { ghost = \"started\" }\n");
    assert_eq!(
        e,
        "t.toml:3:14: agent \"a\" depends on \"ghost\", which is not an agent of this config"
    );
    let e = err(
        "[agents.a]\ncommand = [\"x\"]\ndepends_on = { b = \"healthy\" }\n[agents.b]\ncommand = [\"x\"]\n",
    );
    assert!(e.contains("\"b\" has no health probe"), "{e}");
    let e =
        err("[agents.a]\ncommand = [\"x\"]\ndepends_on = { b = \"ready\" }\n[agents.b]\ncommand = [\"x\"]\n");
    assert!(e.contains("unknown variant `ready`"), "{e}");
    let e = err("[agents.a]\ncommand = [\"x\"]\nhealth = { tcp = \"h:1\", timeout = \"20s\" }\n");
    assert_eq!(
        e,
        "t.toml:3:10: agent \"a\": health timeout (20s) is longer than its interval (10s): expected timeout <= interval"
    );
    let e = err("[agents.a]\ncommand = [\"x\"]\nhealth = { tcp = \"h:1\", every = \"1s\" }\n");
    assert!(e.contains("unknown field `every`"), "{e}");
}

#[test]
fn stdin_is_a_pipe_or_null_and_edits_are_off_by_default() {
    let cfg = ok("[agents.a]\ncommand = [\"cat\"]\nstdin = \"pipe\"\n[agents.b]\ncommand = [\"cat\"]\n");
    assert!(cfg.agents["a"].stdin_pipe);
    assert!(!cfg.agents["b"].stdin_pipe);
    assert!(!cfg.server.api_edits);
    assert!(ok("[server]\napi_edits = true\n").server.api_edits);
    assert_eq!(
        err("[agents.a]\ncommand = [\"cat\"]\nstdin = \"tty\"\n"),
        "t.toml:3:9: agent \"a\": invalid stdin \"tty\": expected \"pipe\" or \"null\""
    );
}

#[test]
fn a_messages_query_is_checked_as_far_as_it_can_be_without_its_database() {
    let agent = |q: &str| {
        format!(
            "[agents.bot]\ncommand = [\"bot\"]\nstats = {{ db = \"bot.db\", query = \"SELECT 1\", messages = \"{q}\" }}\n"
        )
    };
    // Its tables are the database's: a query on them is taken as it is.
    let c = ok(&agent(
        "SELECT id, at, sender, body FROM messages WHERE id > ?1 ORDER BY id LIMIT 100",
    ));
    let stats = c.agents["bot"].stats.clone().unwrap();
    assert_eq!(
        stats.messages.as_deref().map(|m| m.starts_with("SELECT id")),
        Some(true)
    );
    assert_eq!(ok("[agents.bot]\ncommand = [\"bot\"]\nstats = { db = \"b.db\", query = \"SELECT 1\" }\n").agents["bot"].stats.clone().unwrap().messages, None);
    for (q, why) in [
        ("  ", "the query is empty"),
        ("SELEC id FROM messages", "not a valid query"),
        ("SELECT ?1 AS id, ?2", "exactly one parameter"),
        ("SELECT 1 AS id", "exactly one parameter"),
        ("SELECT ?1; SELECT 2", "one statement"),
    ] {
        let e = err(&agent(q));
        assert!(
            e.contains("agent \"bot\": stats.messages: ") && e.contains(why),
            "{q}: {e}"
        );
    }
}

#[test]
fn an_acme_table_parses_with_its_defaults() {
    let c = ok(r#"
[server]
listen = "0.0.0.0:443"
tls = { acme = { domains = ["agents.example.com"], contact = "mailto:ops@example.com" } }
"#);
    assert_eq!(
        c.server.tls,
        Tls::Acme(Acme {
            domains: vec!["agents.example.com".into()],
            contact: vec!["mailto:ops@example.com".into()],
            directory: LETS_ENCRYPT.into(),
            ca: None,
        })
    );
    let c = ok(r#"
[server]
tls = { acme = { domains = ["a.example", "b.example"], contact = ["mailto:a@example.com"], directory = "https://127.0.0.1:14000/dir", ca = "pebble.pem" } }
"#);
    let Tls::Acme(a) = c.server.tls else { panic!() };
    assert_eq!(a.ca, Some(PathBuf::from("/etc/agentsd/pebble.pem")));
    assert_eq!(a.directory, "https://127.0.0.1:14000/dir");
}

#[test]
fn a_wrong_acme_table_is_explained() {
    let base = |acme: &str| format!("[server]\ntls = {{ acme = {acme} }}\n");
    for (acme, says) in [
        ("{ domains = [] }", "tls.acme.domains is empty"),
        ("{ domains = [\"192.0.2.1\"] }", "is an IP address"),
        (
            "{ domains = [\"*.example.com\"] }",
            "tls-alpn-01 cannot validate wildcards",
        ),
        ("{ domains = [\"bad name\"] }", "is not a valid DNS name"),
        (
            "{ domains = [\"a.example\"], contact = \"ops@example.com\" }",
            "is not a mailto: address",
        ),
        (
            "{ domains = [\"a.example\"], directory = \"http://acme.example/dir\" }",
            "is not an https:// URL",
        ),
        (
            "{ domains = [\"a.example\"], directory = \"nope\" }",
            "is not a URL",
        ),
        (
            "{ domains = [\"a.example\"], email = \"x\" }",
            "unknown field `email`",
        ),
        ("{ contact = \"mailto:a@b.example\" }", "missing field `domains`"),
    ] {
        let e = err(&base(acme));
        assert!(e.contains(says), "{acme}: {e}");
        assert!(e.starts_with("t.toml:2:"), "{acme}: {e}");
    }
    let e = err("[server]\ntls = { acme = { domains = [\"a.example\"] }, cert = \"c.pem\" }\n");
    assert!(e.contains("takes no `cert` or `key`"), "{e}");
}

#[test]
fn the_fleet_queue_is_bounded() {
    let c = ok("[fleet]\nnats = \"nats://127.0.0.1:4222\"\nhost = \"h\"\n");
    assert_eq!(c.fleet.unwrap().queue, 10_000);
    let c = ok("[fleet]\nnats = \"nats://127.0.0.1:4222\"\nhost = \"h\"\nqueue = 5\n");
    assert_eq!(c.fleet.unwrap().queue, 5);
    for bad in ["0", "1000001"] {
        let e = err(&format!(
            "[fleet]\nnats = \"nats://127.0.0.1:4222\"\nqueue = {bad}\n"
        ));
        assert!(
            e.contains(&format!(
                "queue = {bad} is out of range: expected 1 to 1000000 events waiting for NATS"
            )),
            "{e}"
        );
    }
}
