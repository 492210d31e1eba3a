//! The command line: every subcommand and flag, in one place, so that the
//! man pages and completions can be generated from it.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// The exit codes, as `--help` and the man pages list them.
macro_rules! exit_codes {
    () => {
        "\
Exit codes:
  0  success
  1  error (invalid config, cannot start the daemon, ...)
  2  usage: bad arguments, context or client file; a request the daemon refused as malformed
  3  the daemon is unreachable, or its TLS certificate was refused; no daemon found
  4  unauthorized: the daemon refused the API key (or, after many wrong keys, this address for a while)
  5  not found: no such agent
  6  the daemon answered with a server error
  7  forbidden: the key's role lacks the right
  8  the agent did not reach the state asked for (a start that ended failed or exited, a request
     overtaken by a later one, a stop that left it failed); with several ids, the first failure's code
  9  agents add|edit|rm: the daemon's config file changed meanwhile; nothing was written
With --context all or a,b, the hosts that answered are printed and each that did not is one line
on stderr; the code is then the first failed host's (in name order): 3 if it was unreachable or
did not answer within 10 s, 4 if it refused its key, ..."
    };
}

const EXIT_CODES: &str = exit_codes!();

const MAIN_AFTER_HELP: &str = concat!(
    "\
Files:
  /etc/agentsd/agentsd.toml      the daemon's config, see agentsd.toml(5) [env: AGENTSD_CONFIG]
  ~/.config/agentsd/client.toml  the client's named contexts

",
    exit_codes!()
);

#[derive(Parser, Debug)]
#[command(
    name = "agentsd",
    version,
    about = "Supervise long-running agents and control them over a secure HTTPS API"
)]
#[command(propagate_version = true, after_help = MAIN_AFTER_HELP)]
// `agentsd help X` would be one more command with no page of its own:
// `--help` on every command says it all.
#[command(disable_help_subcommand = true)]
pub struct Cli {
    /// When to colour output: auto (only on a terminal, unless NO_COLOR is set), always, never.
    #[arg(long, global = true, value_enum, default_value_t = ColorWhen::Auto, value_name = "WHEN")]
    pub color: ColorWhen,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorWhen {
    Auto,
    Always,
    Never,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon: supervise the agents of the config file and serve the API.
    ///
    /// Signals: SIGHUP reloads the config (as a change of the file does);
    /// SIGUSR2 upgrades the daemon in place to the binary now at its path,
    /// without restarting any agent (see `agentsd upgrade`); SIGTERM and
    /// SIGINT stop every agent, then the daemon.
    #[cfg(feature = "server")]
    Serve(ServeArgs),
    /// Work with the config file.
    #[cfg(feature = "server")]
    #[command(subcommand)]
    Config(ConfigCommand),
    /// List, inspect, start, stop and restart agents.
    #[command(after_help = EXIT_CODES)]
    Agents {
        #[command(flatten)]
        connect: ConnectFlags,
        #[command(subcommand)]
        command: AgentsCommand,
    },
    /// Show agents' recent log lines, or follow them live with -f (several agents in one stream).
    ///
    /// With one ID, lines are printed as the agent wrote them. With several,
    /// or --all, each line is prefixed with its agent (in a colour of its own
    /// on a terminal, the same in every run), and -f follows them all in one
    /// stream that resumes each agent exactly where it was after a
    /// reconnection, however many agents (cursors that do not fit in one
    /// request line are sent in the body of POST /sse/logs). Lines rotated away before they could be shown are
    /// reported on stderr, per agent. On a terminal, control characters are
    /// shown escaped; --raw passes them through.
    #[command(after_help = EXIT_CODES)]
    Logs {
        #[command(flatten)]
        connect: ConnectFlags,
        #[command(flatten)]
        args: LogsArgs,
    },
    /// Write a line to an agent's stdin (an agent with stdin = "pipe").
    ///
    /// The daemon writes TEXT and a newline to the agent's stdin pipe,
    /// whole or not at all: an agent that does not read (its pipe full) is
    /// said at once (exit 6, "agent_busy"), never waited for. TEXT `-`
    /// reads the message from standard input (one message; a last newline
    /// is dropped). At most 16 KiB, no NUL. An agent without a stdin pipe,
    /// or not running: exit 2. Needs an operate or admin key (exit 7
    /// otherwise); the audit records the message's length, not its text.
    #[command(after_help = EXIT_CODES)]
    Send {
        #[command(flatten)]
        connect: ConnectFlags,
        #[command(flatten)]
        args: SendArgs,
    },
    /// Show an agent's status changes: time, transition, pid, exit code or signal, reason.
    ///
    /// Oldest first, like journalctl: the latest change is printed last,
    /// next to the prompt (the daemon answers newest first). Times are UTC
    /// as the daemon records them (RFC 3339). The daemon keeps the last
    /// `history_keep` changes of each agent.
    #[command(after_help = EXIT_CODES)]
    History {
        #[command(flatten)]
        connect: ConnectFlags,
        #[command(flatten)]
        args: HistoryArgs,
    },
    /// Show the audit trail: who started, stopped or restarted what, from where, and how it ended.
    ///
    /// Oldest first, like journalctl: time, key (role), client address,
    /// request, outcome. Every mutating request made with a valid key is
    /// there, also those its role refused. Needs an admin key (exit 7
    /// otherwise).
    #[command(after_help = EXIT_CODES)]
    Audit {
        #[command(flatten)]
        connect: ConnectFlags,
        #[command(flatten)]
        args: AuditArgs,
    },
    /// Upgrade the daemon in place to the binary now at its path, without restarting any agent.
    ///
    /// The daemon first runs the new binary in its check mode on the
    /// running config and state; a binary that is missing, not executable,
    /// fails, or refuses the config or the state is refused (exit 8, with
    /// the reason) and the daemon goes on as it was. Otherwise it hands its
    /// agents, listening socket and log captures over to the new image in
    /// the same process (same pid; no agent restarts, no log line is lost);
    /// this command waits until the new image answers and prints the
    /// versions and how long the API was away. Needs an admin key (exit 7
    /// otherwise). The same as `kill -USR2` on the daemon's pid, or `POST
    /// /upgrade`.
    #[command(after_help = EXIT_CODES)]
    Upgrade {
        #[command(flatten)]
        connect: ConnectFlags,
        #[command(flatten)]
        args: UpgradeArgs,
    },
    /// The daemon's check of a new binary before an in-place upgrade: the
    /// config and state as this binary would take them over.
    #[cfg(feature = "server")]
    #[command(hide = true)]
    UpgradeCheck(UpgradeCheckArgs),
    /// Make an API key (and optionally a self-signed TLS certificate).
    GenKey(GenKeyArgs),
    /// Install the systemd unit that runs `agentsd serve`, then enable and start it.
    #[cfg(feature = "server")]
    InstallUnit(InstallUnitArgs),
    /// Check this host: config, key, certificate, daemon, directories, limits, unit; a hint for each problem.
    ///
    /// One line a check, `ok`, `warn`, `fail` or `skip`, its name and what
    /// was found, and for a warning or a failure a hint to fix it. Exits 1
    /// when a check fails (a warning does not). Usable before the daemon
    /// starts (what would stop `serve`) and while it runs. The checks:
    ///
    /// config: the file is valid (as `config check`); plain HTTP only on
    /// loopback. Without --config or AGENTSD_CONFIG, /etc/agentsd/agentsd.toml,
    /// else a warning and the embedded default.
    ///
    /// key: `api_key_file` exists, is not readable by group or others
    /// (fail: serve refuses it), belongs to the daemon's user and holds a
    /// key of 32 characters or more. The daemon's user is the unit's
    /// `User=` (none: root); with no unit, the user running doctor.
    ///
    /// certificate: the served certificate (`tls = "self-signed"`: the one
    /// generated under state_dir, if it exists yet) matches its key;
    /// expired or not yet valid: fail; expiring within 14 days: warn; not
    /// naming the host of `public_url`: fail; not naming the `listen`
    /// address: warn (not checked for 0.0.0.0 or ::).
    ///
    /// listen: the port is free to listen on, or held by this config's
    /// daemon; anything else holding it: fail, with the `ss` command that
    /// names it. daemon: it answers GET /health with the key, over TLS
    /// trusting only the config's certificate (version, pid, ok or
    /// degraded and why); not running: warn.
    ///
    /// state_dir, log_dir: each exists (missing: warn, serve creates it),
    /// is writable by the daemon's user (state_dir also owned by it), and
    /// has room: less than 64 MiB or 1 % free fails, less than 5 % warns.
    ///
    /// open_files: serve raises its open-file soft limit to the hard limit,
    /// so the hard limit (of the running daemon, else the unit's
    /// LimitNOFILE=, else this shell's) must cover 2 open files per agent,
    /// 1 more per agent with `stdin = "pipe"`, 28 for the daemon, and the
    /// reserve kept for the API (an eighth of the limit, 16 to 128).
    ///
    /// unit: the installed unit (--unit, else the first of
    /// /etc/systemd/system, /lib/systemd/system, /usr/lib/systemd/system
    /// agentsd.service) against what `install-unit` writes for its
    /// ExecStart= binary and config and its User=; a difference is a
    /// warning shown as a unified diff. systemd: `systemctl is-active` and
    /// `is-enabled` (skip where systemd does not run).
    ///
    /// --json prints {"ok": BOOL, "checks": [{"name", "status", "detail",
    /// "hint", "diff"}]} (status one of ok, warn, fail, skip; hint null when
    /// there is none; diff only for a unit that differs).
    #[cfg(feature = "server")]
    Doctor(DoctorArgs),
    /// Write the man pages and shell completions (for packaging).
    #[command(hide = true)]
    GenerateDocs {
        /// Where `man/` and `completions/` are written.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Show the daemon's health and agent counts, or follow status and health changes with --watch.
    ///
    /// With --json: {"url","health","agents","by_status"} on one line; with
    /// --watch --json, each status event as the daemon sends it
    /// ({"agent_id","old_status","new_status","pid","at"}) and each health
    /// event ({"agent_id","old_health","new_health","detail","at"}), one a line.
    ///
    /// With --context all (or a,b): one line per host (health, version, URL,
    /// agents by status), or one JSON object a line with `host`; with
    /// --watch, every host's events, each line led by its host (a `host`
    /// field in JSON); a host that accepts the connection but does not
    /// answer within 10 s is one line on stderr and is tried again with
    /// backoff, the others followed on.
    #[command(after_help = EXIT_CODES)]
    Status {
        #[command(flatten)]
        connect: ConnectFlags,
        #[command(flatten)]
        args: StatusArgs,
    },
    /// A live dashboard in the terminal: agents, the selected agent's log, recent status changes.
    ///
    /// The agents pane shows each agent's status, pid, uptime, restarts,
    /// messages of the last 24 h, CPU and memory, live from the daemon's
    /// event streams (nothing is polled); below it, the selected agent's
    /// log, followed live and resumed without gap or repeat after a
    /// reconnection, and the latest status changes. It reaches the daemon
    /// like every client command (flags, environment, client file) and
    /// needs a terminal of at least 40x10 (80x24 shows every pane).
    ///
    /// Keys: Up/Down or j/k move (PgUp/PgDn a page, g/G first and last);
    /// Enter shows the selected agent's log full screen; s starts, x stops
    /// (after y/n), r restarts the selected agent, without waiting: an
    /// agent with a request under way is marked *, and the answer or the
    /// error shows on the status line; / filters by id or status; o sorts
    /// by id, status, CPU, memory, restarts or uptime; c switches to
    /// another context of the client file; ? lists the keys; q or Ctrl-C
    /// quits. With a key whose role is read, start, stop and restart are
    /// shown disabled. A daemon that goes away shows "reconnecting…" and
    /// comes back by itself. NO_COLOR or --color never turn colour off.
    /// Without a terminal it exits 2 (scripts have `status --watch --json`).
    ///
    /// With --context all (or a,b, or AGENTSD_CONTEXT set so): one dashboard
    /// over those contexts, each host reached with its own context's URL,
    /// key and trust. The agents pane has a HOST column (rows sorted by
    /// host, then id); a host not live (connecting, unreachable, or one
    /// that refused its key) is one line of it saying why, and an
    /// unreachable one is tried again by itself while the others stay
    /// live. Start, stop, restart and the log pane act on the selected
    /// row's own host, with the rights of that host's key; c does not
    /// switch context there.
    #[command(after_help = EXIT_CODES)]
    Top {
        #[command(flatten)]
        connect: ConnectFlags,
    },
}

/// The connection flags every client command takes.
#[derive(Debug, Clone, Default, Args)]
pub struct ConnectFlags {
    /// The daemon's URL, e.g. https://bots.example.com:8487 [env: AGENTSD_URL].
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// A named context from ~/.config/agentsd/client.toml [env: AGENTSD_CONTEXT]; `all` or a,b: several at once, each with its own key (agents list, status, top; AGENTSD_CONTEXT too).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Read the API key from this file [env: AGENTSD_API_KEY holds the key itself].
    #[arg(long, global = true, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Trust only certificates issued by (or equal to) the one in this PEM file [env: AGENTSD_CA_CERT].
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The config file [default: /etc/agentsd/agentsd.toml, else a built-in default].
    #[arg(long, env = "AGENTSD_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Listen on this address instead of the config's `server.listen`.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
}

#[cfg(feature = "server")]
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate a config file; exits non-zero and prints every error found.
    Check {
        /// The config file [default: /etc/agentsd/agentsd.toml].
        #[arg(long, env = "AGENTSD_CONFIG", value_name = "PATH")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum AgentsCommand {
    /// A table of every agent (or JSON with --json).
    ///
    /// CPU is the percent of one core over the daemon's last sample interval
    /// (above 100% on several cores), MEM the resident memory (K, M, G:
    /// powers of 1024), both summed over every process of the agent; `-`
    /// when nothing runs. --json prints the daemon's raw numbers.
    #[command(after_help = EXIT_CODES)]
    List {
        /// Print JSON (an array of agent summaries) for scripts; with
        /// several contexts, each summary has a `host` (its context).
        #[arg(long)]
        json: bool,
        /// Only the agents with this status.
        #[arg(long, value_name = "STATUS", value_parser = STATUSES)]
        status: Option<String>,
        /// Only the agents whose id contains this text.
        #[arg(long, value_name = "PATTERN")]
        filter: Option<String>,
    },
    /// One agent: status, config (env values hidden) and recent log lines.
    #[command(after_help = EXIT_CODES)]
    Show {
        id: String,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Print log lines exactly as written, control characters included
        /// (on a terminal they are shown escaped, e.g. ESC as \x1b).
        #[arg(long)]
        raw: bool,
    },
    /// Start agents; waits until each is running, and healthy if it has a probe (exit 8 if one ends failed or exited).
    #[command(after_help = EXIT_CODES)]
    Start(Targets),
    /// Stop agents; waits until no process of each is left.
    #[command(after_help = EXIT_CODES)]
    Stop(Targets),
    /// Restart agents; waits until each is up again, and healthy if it has a probe (exit 8 if one ends failed or exited).
    #[command(after_help = EXIT_CODES)]
    Restart(Targets),
    /// Add an agent to the daemon's config file; it starts unless --no-autostart.
    ///
    /// The daemon writes the new `[agents.ID]` table at the end of its
    /// config file (every comment and the rest of the file kept), checks
    /// the file as `config check` does (exit 2 with its message if it is
    /// not valid; nothing is written) and applies it. Needs an admin key
    /// and `api_edits = true` in the daemon's `[server]` (exit 7
    /// otherwise). An agent of that id already there: exit 2 (see `agents
    /// edit`).
    #[command(after_help = EXIT_CODES)]
    Add(AddArgs),
    /// Edit an agent's table of the daemon's config file in $VISUAL or $EDITOR, then apply it.
    ///
    /// The table is opened as TOML in a temporary file; saved unchanged (or
    /// emptied), nothing happens. The daemon checks the whole file with the
    /// edit as `config check` does and writes it only if nobody changed it
    /// since it was opened: an edit that is refused (exit 2) or that
    /// conflicts with one made meanwhile (exit 9) is kept in the temporary
    /// file, and its path is said. An agent whose table changed is
    /// restarted. Needs an admin key and `api_edits = true`, as `agents
    /// add`.
    #[command(after_help = EXIT_CODES)]
    Edit {
        /// The agent.
        id: String,
    },
    /// Remove an agent from the daemon's config file; it is stopped first.
    ///
    /// Returns once the agent has stopped (within its stop timeout) and is
    /// gone. Needs an admin key and `api_edits = true`, as `agents add`.
    #[command(after_help = EXIT_CODES)]
    Rm {
        /// The agent.
        id: String,
    },
}

/// `agents add`: a new agent's table from flags.
#[derive(Args, Debug)]
pub struct AddArgs {
    /// The new agent's id (1 to 63 characters of a-z, 0-9, '_' and '-').
    pub id: String,
    /// An environment variable of the agent, NAME=VALUE; repeat for more.
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Its working directory on the daemon's host [default: the config file's directory].
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// Do not start it now, nor when the daemon starts (`autostart = false`).
    #[arg(long)]
    pub no_autostart: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

/// The statuses an agent can have, as `--status` takes them.
const STATUSES: [&str; 8] = [
    "starting", "running", "stopping", "stopped", "exited", "backoff", "failed", "waiting",
];

#[derive(Args, Debug)]
pub struct Targets {
    /// Agent ids.
    #[arg(required_unless_present = "all", value_name = "ID")]
    pub ids: Vec<String>,
    /// Every agent.
    #[arg(long, conflicts_with = "ids")]
    pub all: bool,
}

/// `logs`: one agent as plain lines; several (or `--all`) in one stream,
/// each line prefixed with its agent.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Agent ids; with more than one, each line is prefixed with its agent.
    #[arg(required_unless_present = "all", value_name = "ID")]
    pub ids: Vec<String>,
    /// Every agent; with -f also those added while following.
    #[arg(long, conflicts_with = "ids")]
    pub all: bool,
    /// How many recent lines of each agent (at most 10000).
    #[arg(short = 'n', long = "lines", default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub lines: u64,
    /// Keep following new lines; reconnects by itself and resumes each agent without gaps.
    #[arg(short, long)]
    pub follow: bool,
    /// Print lines exactly as written, control characters included (on a
    /// terminal they are shown escaped, e.g. ESC as \x1b).
    #[arg(long)]
    pub raw: bool,
    /// One JSON object a line: {"agent","cursor","line"}.
    #[arg(long, conflicts_with = "raw")]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Keep printing every status and health change as it happens.
    #[arg(long)]
    pub watch: bool,
    /// JSON: health and counts by status; with --watch, each status and
    /// health event as the API sends it, one a line (an agent removed from
    /// the config: {"agent_id","removed":true,"at"}).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SendArgs {
    /// The agent.
    pub id: String,
    /// The message; `-` reads it from standard input.
    pub text: String,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// The agent.
    pub id: String,
    /// How many of the latest changes (1 to 1000).
    #[arg(short = 'n', long = "lines", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub lines: u32,
    /// One JSON object a line (the API's history entries), oldest first.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// How many of the latest entries (1 to 1000).
    #[arg(short = 'n', long = "lines", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub lines: u32,
    /// One JSON object a line (the API's audit entries), oldest first.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct UpgradeArgs {
    /// How long to wait for the new image to answer, in seconds.
    #[arg(long, default_value_t = 60, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    /// Print the outcome as JSON ({"from","to","pid","away_ms"}).
    #[arg(long)]
    pub json: bool,
}

#[cfg(feature = "server")]
#[derive(Args, Debug)]
pub struct UpgradeCheckArgs {
    /// The running daemon's config file (none: the built-in default).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The running daemon's --listen.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// The handover format the running daemon writes.
    #[arg(long, value_name = "N")]
    pub handover_version: u32,
}

#[derive(Args, Debug)]
pub struct GenKeyArgs {
    /// Write the key to this file (mode 0600) instead of printing it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
    /// Also write a self-signed certificate (cert.pem) and its key (key.pem) here.
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// A name (DNS or IP) the certificate is for; repeat for more [default: localhost, 127.0.0.1, ::1, this host's name].
    #[arg(long, value_name = "NAME", requires = "tls_dir")]
    pub san: Vec<String>,
    /// Also print the `[keys.NAME]` lines to paste into the daemon's config (with the key's digest, never the key).
    #[arg(long, value_name = "NAME", requires = "role")]
    pub name: Option<String>,
    /// The role of the named key: read (every GET, event streams, metrics), operate (also start/stop/restart), admin (also the audit).
    #[arg(long, value_name = "ROLE", requires = "name", value_parser = ["read", "operate", "admin"])]
    pub role: Option<String>,
}

#[cfg(feature = "server")]
#[derive(Args, Debug)]
pub struct InstallUnitArgs {
    /// The config file the unit passes to `serve`.
    #[arg(long, default_value = "/etc/agentsd/agentsd.toml", value_name = "PATH")]
    pub config: PathBuf,
    /// Run the daemon as this user instead of root.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// The agentsd binary the unit runs [default: this binary].
    #[arg(long, value_name = "PATH")]
    pub bin: Option<PathBuf>,
    /// Print the unit and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Write the unit under this directory (as if it were /) and run nothing.
    #[arg(long, value_name = "DIR", conflicts_with = "dry_run")]
    pub root: Option<PathBuf>,
    /// Do not run `systemctl enable --now`.
    #[arg(long)]
    pub no_enable: bool,
}

#[cfg(feature = "server")]
#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// The config file [default: /etc/agentsd/agentsd.toml, else the built-in default].
    #[arg(long, env = "AGENTSD_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The installed unit to compare [default: the first of /etc/systemd/system, /lib/systemd/system, /usr/lib/systemd/system agentsd.service].
    #[arg(long, value_name = "PATH")]
    pub unit: Option<PathBuf>,
    /// Print JSON for scripts: {"ok", "checks": [{"name", "status", "detail", "hint"}]}.
    #[arg(long)]
    pub json: bool,
}
