//! Provisioning a host: API keys and TLS certificates.

pub mod keys;
pub mod tls;
pub mod unit;
