//! Provisioning a host: the systemd unit that `install-unit` writes.

pub mod unit;
