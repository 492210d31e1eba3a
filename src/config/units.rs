//! Value types of the config file that parse themselves during
//! deserialization, so that a bad value is reported by the TOML parser with
//! its line and column.

use serde::de::{self, Deserialize, Deserializer, Visitor};
use std::fmt;
use std::time::Duration;

/// A duration written like `"500ms"`, `"10s"`, `"2m"`; at most an hour
/// (every duration of the config is a timeout, a window or a backoff).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

/// The longest duration the config accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let d = humantime::parse_duration(s.trim()).map_err(|e| {
            de::Error::custom(format!(
                "invalid duration {s:?} ({e}): expected a number and a unit, like \"500ms\", \"10s\" or \"2m\""
            ))
        })?;
        if d > MAX_DURATION {
            return Err(de::Error::custom(format!(
                "duration {s:?} is too long: expected at most 1h"
            )));
        }
        Ok(Dur(d))
    }
}

/// A size written like `"50MiB"` or `"512KiB"` (a bare integer is bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size like \"50MiB\" or \"512KiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Size, E> {
                s.trim()
                    .parse::<bytesize::ByteSize>()
                    .map(|b| Size(b.as_u64()))
                    .map_err(|e| {
                        E::custom(format!(
                            "invalid size {s:?} ({e}): expected a number and a unit, like \"50MiB\""
                        ))
                    })
            }
        }
        d.deserialize_any(V)
    }
}

/// A signal name such as `"SIGTERM"` or `"TERM"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalName(pub nix::sys::signal::Signal);

impl<'de> Deserialize<'de> for SignalName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_signal(&s).map(SignalName).ok_or_else(|| {
            de::Error::custom(format!(
                "unknown signal {s:?}: expected a name like \"SIGTERM\", \"SIGINT\" or \"SIGQUIT\""
            ))
        })
    }
}

pub fn parse_signal(s: &str) -> Option<nix::sys::signal::Signal> {
    let upper = s.trim().to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse().ok()
}

/// An agent id: `^[a-z0-9][a-z0-9_-]{0,62}$`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentId(pub String);

impl<'de> Deserialize<'de> for AgentId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if crate::wire::is_agent_id(&s) {
            Ok(AgentId(s))
        } else {
            Err(de::Error::custom(format!(
                "invalid agent id {s:?}: expected 1 to 63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        use nix::sys::signal::Signal;
        assert_eq!(parse_signal("SIGTERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("int"), Some(Signal::SIGINT));
        assert_eq!(parse_signal("SIGNOPE"), None);
    }
}
