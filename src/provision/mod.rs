//! Provisioning a host: the systemd unit that `install-unit` writes, and
//! `doctor`'s checks of a host against what `serve` needs.

pub mod doctor;
pub mod unit;
