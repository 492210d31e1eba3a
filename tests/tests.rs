//! Integration tests: the real binary, real child processes, real TLS.

#![allow(clippy::unwrap_used)]

mod util;

mod acme;
mod api;
mod cli;
mod contexts;
mod dashboard;
mod dist;
mod doctor;
mod edits;
mod faults;
mod fleet;
mod health;
mod keys;
mod messages;
mod observe;
mod provision;
mod readkey;
mod stdin;
mod supervise;
mod top;
mod truth;
mod upgrade;
