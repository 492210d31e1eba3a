//! The config file exactly as written: serde structs that reject unknown
//! keys. `super::Config::from_raw` turns them into the validated config.

use super::units::{AgentId, Dur, SignalName, Size};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use toml::Spanned;

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub defaults: RawPolicy,
    #[serde(default)]
    pub agents: BTreeMap<AgentId, Spanned<RawAgent>>,
    #[serde(default)]
    pub keys: BTreeMap<Spanned<String>, Spanned<RawKey>>,
    pub fleet: Option<Spanned<RawFleet>>,
}

/// `[fleet]`: status events and heartbeats published over NATS.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    pub nats: Spanned<String>,
    pub host: Option<Spanned<String>>,
    pub nats_ca: Option<PathBuf>,
    pub nats_creds: Option<PathBuf>,
    pub view: Option<bool>,
    pub queue: Option<Spanned<u32>>,
}

/// One `[keys.NAME]` table: an API key known by its digest.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub digest: Spanned<String>,
    pub role: crate::wire::Role,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Spanned<String>>,
    pub api_key_file: Option<PathBuf>,
    pub tls: Option<Spanned<RawTls>>,
    pub state_dir: Option<PathBuf>,
    pub log_dir: Option<PathBuf>,
    pub sample_interval: Option<Dur>,
    pub history_keep: Option<Spanned<u32>>,
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    pub audit_keep: Option<Spanned<u32>>,
    pub public_url: Option<Spanned<String>>,
    pub cgroups: Option<Spanned<String>>,
    pub api_edits: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RawTls {
    SelfSigned,
    Files { cert: PathBuf, key: PathBuf },
    Acme(RawAcme),
}

/// `tls = { acme = { ... } }`: a certificate from an ACME server.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub domains: Vec<String>,
    pub contact: Option<OneOrMany>,
    pub directory: Option<String>,
    pub ca: Option<PathBuf>,
}

/// A string, or a list of them.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

impl<'de> Deserialize<'de> for RawTls {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawTls;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "\"self-signed\", a table { cert = \"...\", key = \"...\" }, or { acme = { domains = [...], ... } }",
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawTls, E> {
                match s {
                    "self-signed" => Ok(RawTls::SelfSigned),
                    other => Err(E::custom(format!(
                        "invalid tls {other:?}: expected \"self-signed\", a table {{ cert = \"...\", key = \"...\" }}, or {{ acme = {{ domains = [...] }} }}"
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawTls, A::Error> {
                let (mut cert, mut key, mut acme) = (None, None, None);
                while let Some(k) = map.next_key::<String>()? {
                    match k.as_str() {
                        "cert" => cert = Some(map.next_value::<PathBuf>()?),
                        "key" => key = Some(map.next_value::<PathBuf>()?),
                        "acme" => acme = Some(map.next_value::<RawAcme>()?),
                        other => {
                            return Err(de::Error::unknown_field(other, &["cert", "key", "acme"]));
                        }
                    }
                }
                match (cert, key, acme) {
                    (None, None, Some(acme)) => Ok(RawTls::Acme(acme)),
                    (_, _, Some(_)) => Err(de::Error::custom(
                        "tls: `acme` gets the certificate, so it takes no `cert` or `key` beside it",
                    )),
                    (Some(cert), Some(key), None) => Ok(RawTls::Files { cert, key }),
                    (None, _, None) => Err(de::Error::missing_field("cert")),
                    (_, None, None) => Err(de::Error::missing_field("key")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Restart and log policy: the whole of `[defaults]`, and the part of an
/// agent's table that overrides it.
#[derive(Deserialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub restart: Option<RestartPolicy>,
    pub stop_signal: Option<SignalName>,
    pub stop_timeout: Option<Dur>,
    pub start_window: Option<Dur>,
    pub backoff: Option<Spanned<RawBackoff>>,
    pub max_restarts: Option<u32>,
    pub log_max_size: Option<Spanned<Size>>,
    pub log_keep: Option<Spanned<u32>>,
    pub log_timestamps: Option<bool>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
    }
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct RawBackoff {
    pub initial: Option<Dur>,
    pub max: Option<Dur>,
}

/// One `[agents.<id>]` table. The policy keys are repeated here rather than
/// flattened because serde cannot combine `flatten` with
/// `deny_unknown_fields`.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    pub command: Spanned<Vec<String>>,
    pub cwd: Option<PathBuf>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub env_file: Option<PathBuf>,
    pub user: Option<String>,
    pub autostart: Option<bool>,
    pub stats: Option<RawStats>,
    pub restart: Option<RestartPolicy>,
    pub stop_signal: Option<SignalName>,
    pub stop_timeout: Option<Dur>,
    pub start_window: Option<Dur>,
    pub backoff: Option<Spanned<RawBackoff>>,
    pub max_restarts: Option<u32>,
    pub log_max_size: Option<Spanned<Size>>,
    pub log_keep: Option<Spanned<u32>>,
    pub log_timestamps: Option<bool>,
    pub health: Option<Spanned<super::health::RawHealth>>,
    pub depends_on: Option<Spanned<super::health::RawDepends>>,
    pub stdin: Option<Spanned<String>>,
}

impl RawAgent {
    /// The policy part of this agent's table.
    pub fn policy(&self) -> RawPolicy {
        RawPolicy {
            restart: self.restart,
            stop_signal: self.stop_signal,
            stop_timeout: self.stop_timeout,
            start_window: self.start_window,
            backoff: self.backoff.clone(),
            max_restarts: self.max_restarts,
            log_max_size: self.log_max_size.clone(),
            log_keep: self.log_keep.clone(),
            log_timestamps: self.log_timestamps,
        }
    }
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawStats {
    pub db: PathBuf,
    pub query: String,
    /// The query of `GET /sse/agents/{id}/messages` (`?1`: the last cursor).
    pub messages: Option<String>,
}
