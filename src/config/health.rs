//! An agent's `health` probe and its `depends_on` conditions, as validated:
//! the probe's target and timing, and the dependency graph's checks
//! (unknown ids, `healthy` on an agent without a probe, cycles named with
//! every member).

use super::units::{AgentId, Dur};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// What a probe asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A GET that passes on 2xx or 3xx.
    Http(url::Url),
    /// A command (run like the agent: its user, cwd and environment) that
    /// passes on exit 0.
    Exec(Vec<String>),
    /// A connect to `host:port` that passes once it is accepted.
    Tcp(String),
}

impl Probe {
    /// `http`, `exec` or `tcp`, with the target: what the detail view shows.
    pub fn describe(&self) -> String {
        match self {
            Probe::Http(u) => {
                let mut u = u.clone();
                if u.password().is_some() {
                    let _ = u.set_password(Some("<redacted>"));
                }
                format!("http {u}")
            }
            Probe::Exec(argv) => format!("exec {}", argv.join(" ")),
            Probe::Tcp(t) => format!("tcp {t}"),
        }
    }
}

/// What a failed liveness probe does.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Restart the agent (counted and backed off like a crash).
    Restart,
    /// Only mark it unhealthy.
    Report,
}

/// When a probe runs and what its results mean: the part of `health` the
/// restart policy reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    pub interval: Duration,
    pub timeout: Duration,
    /// A probe that has not passed by then is a failed start.
    pub start_period: Duration,
    /// Misses in a row (after the first pass) that make it unhealthy.
    pub failures: u32,
    pub on_failure: OnFailure,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            start_period: Duration::from_secs(60),
            failures: 3,
            on_failure: OnFailure::Restart,
        }
    }
}

/// What a dependent waits for.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    /// Its process was started (it is `starting` or `running`).
    Started,
    /// Its probe passed (it is `running` and healthy).
    Healthy,
    /// It exited with code 0.
    Succeeded,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Started => "started",
            Condition::Healthy => "healthy",
            Condition::Succeeded => "succeeded",
        }
    }
}

/// `health = { ... }` as written.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub http: Option<String>,
    pub exec: Option<Vec<String>>,
    pub tcp: Option<String>,
    pub interval: Option<Dur>,
    pub timeout: Option<Dur>,
    pub start_period: Option<Dur>,
    pub failures: Option<u32>,
    pub on_failure: Option<OnFailure>,
}

/// `depends_on = { id = "condition", ... }` as written.
pub type RawDepends = BTreeMap<AgentId, Condition>;

/// The most failed probes in a row a config may ask for.
const MAX_FAILURES: u32 = 1000;

/// Validates a `health` table: `Err` holds every problem, one sentence
/// each (the caller adds the agent and the place).
pub fn health(raw: RawHealth) -> Result<(Probe, HealthPolicy), Vec<String>> {
    let mut errors = Vec::new();
    let given = [raw.http.is_some(), raw.exec.is_some(), raw.tcp.is_some()];
    let probe = match (raw.http, raw.exec, raw.tcp) {
        (Some(u), None, None) => match url::Url::parse(&u) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Some(Probe::Http(url)),
            _ => {
                errors.push(format!(
                    "invalid health http {u:?}: expected an http:// or https:// URL, like \"http://127.0.0.1:8080/healthz\""
                ));
                None
            }
        },
        (None, Some(argv), None) => {
            if argv.first().is_none_or(|p| p.trim().is_empty()) {
                errors.push("health exec is empty: expected [\"program\", \"arg\", ...]".into());
                None
            } else {
                Some(Probe::Exec(argv))
            }
        }
        (None, None, Some(t)) => {
            if tcp_target(&t) {
                Some(Probe::Tcp(t))
            } else {
                errors.push(format!(
                    "invalid health tcp {t:?}: expected HOST:PORT, like \"127.0.0.1:5432\" or \"[::1]:5432\""
                ));
                None
            }
        }
        _ => {
            let n = given.iter().filter(|g| **g).count();
            errors.push(format!(
                "health has {} probe{}: expected exactly one of http, exec or tcp",
                if n == 0 { "no".to_string() } else { n.to_string() },
                if n == 1 { "" } else { "s" }
            ));
            None
        }
    };
    let d = HealthPolicy::default();
    let interval = raw.interval.map_or(d.interval, |x| x.0);
    let p = HealthPolicy {
        interval,
        // Unless given, never longer than the interval.
        timeout: raw.timeout.map_or(d.timeout.min(interval), |x| x.0),
        start_period: raw.start_period.map_or(d.start_period, |x| x.0),
        failures: raw.failures.unwrap_or(d.failures),
        on_failure: raw.on_failure.unwrap_or(d.on_failure),
    };
    let show = |d: Duration| humantime::format_duration(d).to_string();
    if p.interval.is_zero() {
        errors.push("health interval is 0: expected a duration like \"10s\"".into());
    }
    if p.timeout.is_zero() {
        errors.push("health timeout is 0: expected a duration like \"5s\"".into());
    } else if p.timeout > p.interval {
        errors.push(format!(
            "health timeout ({}) is longer than its interval ({}): expected timeout <= interval",
            show(p.timeout),
            show(p.interval)
        ));
    }
    if p.start_period.is_zero() {
        errors.push("health start_period is 0: expected the time a start may take to pass its first probe, like \"30s\"".into());
    }
    if p.failures == 0 || p.failures > MAX_FAILURES {
        errors.push(format!(
            "health failures = {} is out of range: expected 1 to {MAX_FAILURES} failed probes in a row",
            p.failures
        ));
    }
    match probe {
        Some(probe) if errors.is_empty() => Ok((probe, p)),
        _ => Err(errors),
    }
}

/// `host:port` with a host and a port number (an IPv6 address in brackets).
fn tcp_target(t: &str) -> bool {
    if t.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    match t.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(':')
                && !host.contains(char::is_whitespace)
                && port.parse::<u16>().is_ok_and(|p| p != 0)
        }
        None => false,
    }
}

/// What the graph check needs of one agent.
pub struct Node<'a> {
    pub depends_on: &'a BTreeMap<String, Condition>,
    pub has_probe: bool,
    pub restarts_always: bool,
}

/// Every problem of the dependency graph, by the agent it is found on
/// (unknown ids, conditions its dependency cannot meet, cycles).
pub fn check_graph(nodes: &BTreeMap<&str, Node<'_>>) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for (id, node) in nodes {
        for (dep, cond) in node.depends_on {
            let Some(target) = nodes.get(dep.as_str()) else {
                problems.push((
                    id.to_string(),
                    format!("agent {id:?} depends on {dep:?}, which is not an agent of this config"),
                ));
                continue;
            };
            match cond {
                Condition::Healthy if !target.has_probe => problems.push((
                    id.to_string(),
                    format!(
                        "agent {id:?} depends on {dep:?} being healthy, but {dep:?} has no health probe: add health = {{ ... }} to it, or depend on \"started\""
                    ),
                )),
                Condition::Succeeded if target.restarts_always => problems.push((
                    id.to_string(),
                    format!(
                        "agent {id:?} depends on {dep:?} having succeeded, but {dep:?} has restart = \"always\" and never ends: give it restart = \"on-failure\" or \"never\""
                    ),
                )),
                _ => {}
            }
        }
    }
    for cycle in cycles(nodes) {
        let first = cycle[0].clone();
        problems.push((first, format!("dependency cycle: {}", cycle.join(" -> "))));
    }
    problems
}

/// Each cycle of the graph as a closed walk that names every agent of its
/// strongly connected component (`a -> b -> c -> a`), starting from its
/// first id.
fn cycles(nodes: &BTreeMap<&str, Node<'_>>) -> Vec<Vec<String>> {
    let edges = |id: &str| -> Vec<&str> {
        nodes
            .get(id)
            .map(|n| {
                n.depends_on
                    .keys()
                    .map(String::as_str)
                    .filter(|d| nodes.contains_key(d))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for comp in components(nodes, &edges) {
        let self_loop = comp.len() == 1 && edges(comp[0]).contains(&comp[0]);
        if comp.len() < 2 && !self_loop {
            continue;
        }
        let members: BTreeSet<&str> = comp.iter().copied().collect();
        // From the first, on to the nearest member not named yet, then back
        // to the first: every arrow is a real dependency, and a ring reads
        // as itself.
        let start = comp[0];
        let mut walk = vec![start.to_string()];
        let mut left: BTreeSet<&str> = members.iter().copied().filter(|m| *m != start).collect();
        let mut at = start;
        while !left.is_empty() {
            let path = path_to(at, |v| left.contains(v), &members, &edges);
            let Some(&end) = path.last().filter(|_| path.len() > 1) else {
                break;
            };
            for v in &path[1..] {
                left.remove(v);
                walk.push(v.to_string());
            }
            at = end;
        }
        let back = path_to(at, |v| v == start, &members, &edges);
        walk.extend(back.into_iter().skip(1).map(str::to_string));
        out.push(walk);
    }
    out
}

/// The strongly connected components (Tarjan's), each sorted by id.
fn components<'a>(
    nodes: &BTreeMap<&'a str, Node<'_>>,
    edges: &dyn Fn(&str) -> Vec<&'a str>,
) -> Vec<Vec<&'a str>> {
    struct T<'a> {
        index: BTreeMap<&'a str, (usize, usize)>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(v: &'a str, t: &mut T<'a>, edges: &dyn Fn(&str) -> Vec<&'a str>) {
        t.index.insert(v, (t.next, t.next));
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        for w in edges(v) {
            if !t.index.contains_key(w) {
                visit(w, t, edges);
                let low = t.index[w].1.min(t.index[v].1);
                t.index.entry(v).and_modify(|e| e.1 = low);
            } else if t.on.contains(w) {
                let low = t.index[w].0.min(t.index[v].1);
                t.index.entry(v).and_modify(|e| e.1 = low);
            }
        }
        if t.index[v].0 == t.index[v].1 {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w);
                if w == v {
                    break;
                }
            }
            comp.sort_unstable();
            t.out.push(comp);
        }
    }
    let mut t = T {
        index: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for &v in nodes.keys() {
        if !t.index.contains_key(v) {
            visit(v, &mut t, edges);
        }
    }
    t.out.sort();
    t.out
}

/// The shortest path from `from` to the nearest vertex `to` picks, through
/// `within` (both ends included); `from` alone when none can be reached.
fn path_to<'a>(
    from: &'a str,
    to: impl Fn(&str) -> bool,
    within: &BTreeSet<&'a str>,
    edges: &dyn Fn(&str) -> Vec<&'a str>,
) -> Vec<&'a str> {
    let mut came: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([from]);
    while let Some(v) = queue.pop_front() {
        for w in edges(v) {
            if !within.contains(w) || came.contains_key(w) {
                continue;
            }
            came.insert(w, v);
            if to(w) {
                let mut path = vec![w];
                let mut at = w;
                while let Some(&p) = came.get(at) {
                    path.push(p);
                    if p == from {
                        break;
                    }
                    at = p;
                }
                path.reverse();
                return path;
            }
            queue.push_back(w);
        }
    }
    vec![from]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An agent of a test graph: its id, its dependencies, whether it has a probe.
    type Spec<'a> = (&'a str, &'a [(&'a str, Condition)], bool);

    fn graph(spec: &[Spec<'_>]) -> Vec<(String, String)> {
        let deps: Vec<BTreeMap<String, Condition>> = spec
            .iter()
            .map(|(_, d, _)| d.iter().map(|(k, c)| (k.to_string(), *c)).collect())
            .collect();
        let nodes = spec
            .iter()
            .zip(&deps)
            .map(|((id, _, probe), d)| {
                (
                    *id,
                    Node {
                        depends_on: d,
                        has_probe: *probe,
                        restarts_always: false,
                    },
                )
            })
            .collect();
        check_graph(&nodes)
    }

    use Condition::{Healthy, Started, Succeeded};

    #[test]
    fn a_cycle_names_every_member() {
        let p = graph(&[
            ("a", &[("b", Started)], false),
            ("b", &[("c", Started)], false),
            ("c", &[("a", Started)], false),
            ("d", &[("a", Started)], false),
        ]);
        assert_eq!(p, [("a".into(), "dependency cycle: a -> b -> c -> a".into())]);
        // A ring given out of order reads as the ring.
        let p = graph(&[
            ("a", &[("c", Started)], false),
            ("b", &[("a", Started)], false),
            ("c", &[("b", Started)], false),
        ]);
        assert_eq!(p, [("a".into(), "dependency cycle: a -> c -> b -> a".into())]);
        // A component that is no single ring: a walk through all of it.
        let p = graph(&[
            ("a", &[("b", Started), ("c", Started)], false),
            ("b", &[("a", Started)], false),
            ("c", &[("a", Started)], false),
        ]);
        assert_eq!(
            p,
            [("a".into(), "dependency cycle: a -> b -> a -> c -> a".into())]
        );
        let p = graph(&[("solo", &[("solo", Succeeded)], false)]);
        assert_eq!(p, [("solo".into(), "dependency cycle: solo -> solo".into())]);
        // Two cycles, two lines.
        let p = graph(&[
            ("a", &[("b", Started)], false),
            ("b", &[("a", Started)], false),
            ("x", &[("y", Started)], false),
            ("y", &[("x", Started)], false),
        ]);
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn unknown_ids_and_unmeetable_conditions_are_refused() {
        let p = graph(&[
            ("api", &[("db", Healthy), ("nope", Started)], false),
            ("db", &[], false),
        ]);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].1.contains("\"db\" has no health probe"), "{p:?}");
        assert!(p[1].1.contains("\"nope\", which is not an agent"), "{p:?}");
        assert!(graph(&[("api", &[("db", Healthy)], false), ("db", &[], true)]).is_empty());
        // A chain is no cycle.
        assert!(
            graph(&[
                ("a", &[("b", Started)], false),
                ("b", &[("c", Started)], false),
                ("c", &[], false)
            ])
            .is_empty()
        );
    }

    fn raw(text: &str) -> RawHealth {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_probe_is_exactly_one_target_with_sane_timing() {
        let (probe, p) = health(raw("tcp = \"127.0.0.1:5432\"")).unwrap();
        assert_eq!(probe, Probe::Tcp("127.0.0.1:5432".into()));
        assert_eq!(p, HealthPolicy::default());
        assert!(health(raw("tcp = \"db.internal:5432\"")).is_ok());
        assert!(health(raw("tcp = \"[::1]:5432\"")).is_ok());
        for bad in ["5432", "host:", ":80", "a:b:80", "host:0", "host:99999"] {
            let e = health(raw(&format!("tcp = {bad:?}"))).unwrap_err();
            assert!(e[0].contains("expected HOST:PORT"), "{bad}: {e:?}");
        }
        let e = health(raw("interval = \"1s\"")).unwrap_err();
        assert_eq!(
            e,
            ["health has no probes: expected exactly one of http, exec or tcp"]
        );
        let e = health(raw("tcp = \"h:1\"\nhttp = \"http://h/\"")).unwrap_err();
        assert!(e[0].starts_with("health has 2 probes"), "{e:?}");
        let e = health(raw("http = \"ftp://h/\"")).unwrap_err();
        assert!(e[0].contains("expected an http:// or https:// URL"), "{e:?}");
        let e = health(raw("exec = []")).unwrap_err();
        assert!(e[0].contains("exec is empty"), "{e:?}");
        let e = health(raw(
            "tcp = \"h:1\"\ninterval = \"1s\"\ntimeout = \"2s\"\nfailures = 0\nstart_period = \"0s\"",
        ))
        .unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].contains("timeout (2s) is longer than its interval (1s)"),
            "{e:?}"
        );
        assert!(e[1].contains("start_period is 0"), "{e:?}");
        assert!(e[2].contains("failures = 0 is out of range"), "{e:?}");
        let (_, p) = health(raw(
            "exec = [\"true\"]\non_failure = \"report\"\nfailures = 2\ninterval = \"1s\"",
        ))
        .unwrap();
        assert_eq!(
            p.timeout,
            Duration::from_secs(1),
            "the default timeout fits the interval"
        );
        assert_eq!((p.on_failure, p.failures), (OnFailure::Report, 2));
    }
}
