//! In-place upgrades: the daemon's image replaced by the binary now at the
//! path it was started from, in the same process, so that the agents stay
//! its children and never restart.
//!
//! - The check: the new binary run in its check mode (`agentsd
//!   upgrade-check`) on the running config and state; it must exit 0.
//! - The handover: a versioned JSON document ([`State`]) in a memfd whose
//!   descriptor is in `AGENTSD_HANDOVER`, the listening socket, every
//!   agent's output pipe and the writing end of every stdin pipe: the only
//!   descriptors without close-on-exec, and only for the exec. The exec is made by the fork thread (see
//!   `supervisor::spawn`): the agents' parent-death signal follows it.

use crate::supervisor::{self, Exec, Forker, handover};
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ffi::CString;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The handover's format. A release reads every version up to its own
/// (fields a later version adds have defaults); its check refuses a
/// newer one, so a downgrade across a format change is refused, not
/// half-read.
pub const VERSION: u32 = 1;

/// The variable that tells a new image which descriptor holds the handover.
pub const ENV: &str = "AGENTSD_HANDOVER";

/// How long the new binary's check may take.
pub const CHECK_LIMIT: Duration = Duration::from_secs(10);

/// What passes from one image of the daemon to the next.
#[derive(Serialize, Deserialize, Debug)]
pub struct State {
    pub version: u32,
    /// The version of agentsd that wrote it.
    pub from: String,
    /// When the daemon first started (milliseconds since the Unix epoch):
    /// an upgrade does not reset it.
    pub started_at_ms: u64,
    /// The listening socket's descriptor.
    pub listener: RawFd,
    /// The open-file soft limit agents are started with (the daemon's own
    /// was raised since).
    #[serde(default)]
    pub agents_nofile: Option<u64>,
    pub agents: handover::Agents,
}

/// A handover as the new image takes it.
pub struct Incoming {
    pub from: String,
    pub started_at: SystemTime,
    pub listener: OwnedFd,
    pub agents_nofile: Option<u64>,
    pub handed: supervisor::Handed,
}

/// Milliseconds since the Unix epoch.
pub fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

/// Takes a descriptor handed over by number: it must be open; it is
/// closed at the next exec again. (Descriptors named by number are the
/// one thing here that needs `unsafe`.)
#[allow(unsafe_code)]
fn adopt(fd: RawFd) -> anyhow::Result<OwnedFd> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    // SAFETY: F_GETFD only asks whether `fd` is open.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    fcntl(borrowed, FcntlArg::F_GETFD).with_context(|| format!("descriptor {fd} was not handed over"))?;
    // SAFETY: open (checked above), and named by the handover for this
    // image alone: nothing else in the process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).context("cannot mark a handed-over descriptor")?;
    Ok(owned)
}

/// The handover that started this image, if one did. (Its variable stays
/// in the environment unread: agents get none of the daemon's `AGENTSD_*`
/// variables, the check never gets it, and the next exec sets its own.)
pub fn incoming() -> anyhow::Result<Option<Incoming>> {
    let Some(value) = std::env::var_os(ENV) else {
        return Ok(None);
    };
    let fd: RawFd = value
        .to_str()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{ENV}={value:?} is not a descriptor"))?;
    let mut file = std::fs::File::from(adopt(fd)?);
    let mut text = String::new();
    file.read_to_string(&mut text)
        .context("cannot read the handover")?;
    let state: State = serde_json::from_str(&text).context("cannot read the handover")?;
    if state.version > VERSION {
        bail!(
            "the handover is version {}, this agentsd reads up to {VERSION}",
            state.version
        );
    }
    let listener = adopt(state.listener).context("the listening socket")?;
    let mut fds = HashMap::new();
    for a in &state.agents.agents {
        let Some(live) = a.live.as_ref() else { continue };
        for (fd, what) in [(live.output, "output pipe"), (live.stdin, "stdin pipe")] {
            let Some(fd) = fd else { continue };
            match adopt(fd) {
                Ok(owned) => {
                    fds.insert(fd, owned);
                }
                Err(e) => tracing::error!(agent = a.id, "its {what} was not handed over: {e:#}"),
            }
        }
    }
    Ok(Some(Incoming {
        from: state.from,
        started_at: UNIX_EPOCH + Duration::from_millis(state.started_at_ms),
        listener,
        agents_nofile: state.agents_nofile,
        handed: (state.agents, fds),
    }))
}

/// The check the new binary makes: how to run it, and how its answer
/// reads.
pub struct Check {
    pub exe: PathBuf,
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
}

impl Check {
    /// The command that runs the check.
    pub fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.exe);
        cmd.arg("upgrade-check")
            .arg("--handover-version")
            .arg(VERSION.to_string());
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        if let Some(l) = &self.listen {
            cmd.arg("--listen").arg(l);
        }
        cmd.env_remove(ENV)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd
    }

    /// Its answer: the new version, or why it refused.
    pub fn verdict(
        &self,
        exit: Option<supervisor::lifecycle::Exit>,
        out: &[u8],
        err: &[u8],
    ) -> Result<String, String> {
        let last = |b: &[u8]| {
            let text = String::from_utf8_lossy(b);
            let text = text.trim();
            // The end says why; a screenful is enough.
            text[text.floor_char_boundary(text.len().saturating_sub(1000))..].to_string()
        };
        let exe = self.exe.display();
        match exit {
            None => Err(format!(
                "{exe} upgrade-check did not finish within {} s",
                CHECK_LIMIT.as_secs()
            )),
            Some(e) if !e.success() => {
                let said = last(err);
                Err(if said.is_empty() {
                    format!("{exe} upgrade-check failed ({e})")
                } else {
                    format!("{exe} upgrade-check failed ({e}): {said}")
                })
            }
            Some(_) => {
                let version = last(out);
                match version.strip_prefix("agentsd ") {
                    Some(v) if !v.is_empty() && !v.contains(char::is_whitespace) => Ok(v.to_string()),
                    _ => Err(format!(
                        "{exe} upgrade-check did not say its version (said {version:?}): is it agentsd?"
                    )),
                }
            }
        }
    }
}

/// Replaces the image: writes `state` to a memfd, leaves it, the listener
/// and `outputs` open across the exec, and has the fork thread exec `exe`
/// with this process's arguments and environment. Returns only when the
/// exec failed (of `exe`, then of the running image's own file).
/// Blocking.
pub fn exec(
    forker: &Forker,
    exe: &Path,
    state: &State,
    listener: &OwnedFd,
    outputs: &[OwnedFd],
) -> anyhow::Error {
    match prepare_exec(state, listener, outputs) {
        Err(e) => e,
        Ok((memfd, argv, envp)) => {
            let mut why = Vec::new();
            for path in [exe, Path::new("/proc/self/exe")] {
                match exec_one(forker, path, &argv, &envp) {
                    Ok(()) => unreachable!("an exec that succeeded returns nothing"),
                    Err(e) => {
                        tracing::error!("cannot exec {}: {e}", path.display());
                        why.push(format!("{}: {e}", path.display()));
                    }
                }
            }
            drop(memfd);
            anyhow::anyhow!("cannot exec the new image ({})", why.join("; "))
        }
    }
}

type Prepared = (OwnedFd, Vec<CString>, Vec<CString>);

fn prepare_exec(state: &State, listener: &OwnedFd, outputs: &[OwnedFd]) -> anyhow::Result<Prepared> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    let memfd = nix::sys::memfd::memfd_create(c"agentsd-handover", nix::sys::memfd::MFdFlags::empty())
        .context("cannot make the handover's memfd")?;
    let mut file = std::fs::File::from(memfd);
    serde_json::to_writer(&mut file, state).context("cannot write the handover")?;
    file.flush().context("cannot write the handover")?;
    file.rewind().context("cannot write the handover")?;
    let memfd = OwnedFd::from(file);
    for fd in [memfd.as_fd(), listener.as_fd()]
        .into_iter()
        .chain(outputs.iter().map(AsFd::as_fd))
    {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))
            .context("cannot keep a descriptor open across the exec")?;
    }
    let c = |b: &[u8]| CString::new(b).context("an argument or variable holds a NUL byte");
    let argv = std::env::args_os()
        .map(|a| c(a.as_bytes()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut envp = std::env::vars_os()
        .filter(|(k, _)| k != ENV)
        .map(|(k, v)| c(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    envp.push(c(format!("{ENV}={}", memfd.as_raw_fd()).as_bytes())?);
    Ok((memfd, argv, envp))
}

fn exec_one(forker: &Forker, path: &Path, argv: &[CString], envp: &[CString]) -> std::io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a NUL byte in the path"))?;
    let (failed, why) = std::sync::mpsc::channel();
    forker.exec(Exec {
        path,
        argv: argv.to_vec(),
        envp: envp.to_vec(),
        failed,
    })?;
    Err(why
        .recv()
        .unwrap_or_else(|_| std::io::Error::other("the fork thread is gone")))
}

/// The path of the running binary as it was started (before a package
/// replaced the file): where the new one is looked for.
pub fn own_path() -> Option<PathBuf> {
    let p = std::env::current_exe().ok()?;
    // A file replaced since reads "(deleted)" at its end.
    let s = p.as_os_str().as_bytes();
    Some(match s.strip_suffix(b" (deleted)") {
        Some(base) => PathBuf::from(std::ffi::OsStr::from_bytes(base)),
        None => p,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use supervisor::lifecycle::Exit;

    fn check() -> Check {
        Check {
            exe: "/usr/bin/agentsd".into(),
            config: None,
            listen: None,
        }
    }

    #[test]
    fn the_check_answers_with_the_new_version_or_why_it_refused() {
        let c = check();
        assert_eq!(
            c.verdict(Some(Exit::Code(0)), b"agentsd 0.9.0\n", b""),
            Ok("0.9.0".into())
        );
        let e = c.verdict(
            Some(Exit::Code(1)),
            b"",
            b"invalid config:\nt.toml: unknown key\n",
        );
        assert_eq!(
            e,
            Err(
                "/usr/bin/agentsd upgrade-check failed (exit code 1): invalid config:\nt.toml: unknown key"
                    .into()
            )
        );
        let e = c.verdict(Some(Exit::Code(0)), b"hello\n", b"").unwrap_err();
        assert!(e.contains("did not say its version"), "{e}");
        let e = c.verdict(None, b"", b"").unwrap_err();
        assert!(e.contains("did not finish within 10 s"), "{e}");
        let e = c
            .verdict(Some(Exit::Signal(nix::sys::signal::SIGSEGV)), b"", b"")
            .unwrap_err();
        assert_eq!(e, "/usr/bin/agentsd upgrade-check failed (killed by SIGSEGV)");
    }

    #[test]
    fn a_handover_round_trips_and_a_later_field_has_a_default() {
        let state = State {
            version: VERSION,
            from: "0.1.0".into(),
            started_at_ms: 1_700_000_000_000,
            listener: 7,
            agents_nofile: Some(1024),
            agents: Default::default(),
        };
        let text = serde_json::to_string(&state).unwrap();
        let back: State = serde_json::from_str(&text).unwrap();
        assert_eq!((back.listener, back.agents_nofile), (7, Some(1024)));
        // An earlier writer without the optional fields.
        let old = r#"{"version":1,"from":"0.0.1","started_at_ms":5,"listener":3,"agents":{"next_run":4,"agents":[]}}"#;
        let back: State = serde_json::from_str(old).unwrap();
        assert_eq!((back.agents.next_run, back.agents_nofile), (4, None));
    }
}
