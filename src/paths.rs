//! Facts the daemon and its clients agree on without sharing code: where the
//! daemon's config file is by default, where it listens, and where the
//! embedded default keeps its state. The config reads them to run the daemon;
//! the client reads them to find it.

use std::path::{Path, PathBuf};

/// The config file `serve` reads when no path is given.
pub const DEFAULT_CONFIG: &str = "/etc/agentsd/agentsd.toml";

/// `[server] listen` when the file does not say.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8487";

/// `[server] state_dir` when the file does not say.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/agentsd";

/// `[server] log_dir` when the file does not say (the daemon's alone).
#[cfg(feature = "server")]
pub const DEFAULT_LOG_DIR: &str = "/var/log/agentsd";

/// The state directory of the embedded default (no config file at all):
/// `$XDG_STATE_HOME/agentsd`, else `~/.local/state/agentsd`.
pub fn user_state_dir() -> PathBuf {
    dirs::state_dir()
        .or_else(|| dirs::home_dir().map(|h| h.join(".local/state")))
        .unwrap_or_else(std::env::temp_dir)
        .join("agentsd")
}

/// The API key the embedded default generates on first start.
pub fn embedded_key_file(state_dir: &Path) -> PathBuf {
    state_dir.join("api.key")
}

/// The certificate `tls = "self-signed"` generates under the state dir.
pub fn self_signed_cert(state_dir: &Path) -> PathBuf {
    state_dir.join("tls").join("cert.pem")
}

/// A `listen` address: `IP:PORT`; `localhost:PORT` is taken as 127.0.0.1.
pub fn parse_listen(s: &str) -> Option<std::net::SocketAddr> {
    if let Some(port) = s.strip_prefix("localhost:") {
        return port
            .parse::<u16>()
            .ok()
            .map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], p)));
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client finds the embedded default's daemon from these facts
    /// alone: they must be what the daemon runs on.
    #[cfg(feature = "server")]
    #[test]
    fn the_embedded_default_is_where_the_client_looks() {
        let cfg = crate::config::embedded_default();
        let state = user_state_dir();
        assert_eq!(cfg.server.listen, parse_listen(DEFAULT_LISTEN).unwrap());
        assert_eq!(cfg.server.tls, crate::config::Tls::SelfSigned);
        assert_eq!(cfg.server.state_dir, state);
        assert_eq!(cfg.server.api_key_file, Some(embedded_key_file(&state)));
        assert_eq!(self_signed_cert(&state), state.join("tls/cert.pem"));
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen("localhost:9"), Some(([127, 0, 0, 1], 9).into()));
        assert_eq!(parse_listen("[::1]:9").map(|a| a.ip().is_loopback()), Some(true));
        assert_eq!(parse_listen("bots.example.com:9"), None);
    }
}
