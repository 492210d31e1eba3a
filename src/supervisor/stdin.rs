//! Messages to an agent's stdin (`stdin = "pipe"`): the daemon holds the
//! writing end of the pipe, non-blocking, and writes a message whole or
//! not at all, never waiting for the agent to read.

use std::os::fd::{AsFd, OwnedFd};

/// Why a message was not written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("no agent named {0:?}")]
    NotFound(String),
    /// It has no stdin pipe, is not running, or closed its stdin.
    #[error("{0}")]
    NoStdin(String),
    /// The pipe has no room for the whole message now: the agent is not
    /// reading (fast enough).
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Unavailable(String),
}

impl super::run::Supervisor {
    /// Writes a message to agent `id`'s stdin pipe.
    pub(super) fn message(&self, id: &str, text: &[u8]) -> Result<(), Refused> {
        let a = self
            .agents
            .get(id)
            .ok_or_else(|| Refused::NotFound(id.to_string()))?;
        if !a.cfg.stdin_pipe {
            return Err(Refused::NoStdin(format!(
                "{id} has no stdin to write to: set stdin = \"pipe\" in its table"
            )));
        }
        match &a.run {
            super::agent::Run::Live(super::agent::Live { stdin: Some(fd), .. }) => deliver(fd, id, text),
            _ => Err(Refused::NoStdin(format!(
                "{id} is not running ({})",
                a.life.status()
            ))),
        }
    }
}

/// Writes `text` and a newline to the pipe `fd` if the pipe has room for
/// all of it now (the daemon is the pipe's only writer, so the room only
/// grows until the write); else nothing.
pub(super) fn deliver(fd: &OwnedFd, id: &str, text: &[u8]) -> Result<(), Refused> {
    let mut message = Vec::with_capacity(text.len() + 1);
    message.extend_from_slice(text);
    message.push(b'\n');
    let size = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETPIPE_SZ)
        .map_err(|e| Refused::Unavailable(format!("cannot size {id}'s stdin pipe: {e}")))?;
    let size = usize::try_from(size).unwrap_or(0);
    let queued = rustix::io::ioctl_fionread(fd.as_fd())
        .map_err(|e| Refused::Unavailable(format!("cannot measure {id}'s stdin pipe: {e}")))?;
    let queued = usize::try_from(queued).unwrap_or(usize::MAX);
    if message.len() > size {
        return Err(Refused::Busy(format!(
            "{id}'s stdin pipe holds at most {size} bytes: the message and its newline are {} bytes",
            message.len()
        )));
    }
    if queued + message.len() > size {
        return Err(Refused::Busy(format!(
            "{id} is not reading its stdin: {queued} bytes wait in its pipe of {size}; try again later"
        )));
    }
    let mut rest = &message[..];
    while !rest.is_empty() {
        match nix::unistd::write(fd, rest) {
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EPIPE) => {
                return Err(Refused::NoStdin(format!("{id} has closed its stdin")));
            }
            // Cannot happen with the room measured; what was written of
            // the message stays (the agent sees a line cut short).
            Err(nix::errno::Errno::EAGAIN) => {
                return Err(Refused::Busy(format!(
                    "{id}'s stdin pipe filled up during the write: {} of {} bytes written",
                    message.len() - rest.len(),
                    message.len()
                )));
            }
            Err(e) => return Err(Refused::Unavailable(format!("cannot write to {id}'s stdin: {e}"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).unwrap();
        (r, w)
    }

    #[test]
    fn a_message_goes_whole_or_not_at_all() {
        let (r, w) = pipe();
        nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096)).unwrap();
        deliver(&w, "bot", b"hello").unwrap();
        let big = vec![b'x'; 3000];
        // 6 + 3001 bytes fit in 4096; a second 3001 does not: nothing of
        // it is written.
        deliver(&w, "bot", &big).unwrap();
        let refused = deliver(&w, "bot", &big).unwrap_err();
        assert!(
            matches!(refused, Refused::Busy(ref m) if m.contains("3007 bytes wait")),
            "{refused:?}"
        );
        let too_big = deliver(&w, "bot", &vec![b'y'; 5000]).unwrap_err();
        assert!(
            matches!(too_big, Refused::Busy(ref m) if m.contains("at most 4096")),
            "{too_big:?}"
        );
        drop(w);
        let mut got = Vec::new();
        std::fs::File::from(r).read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), 6 + 3001);
        assert!(got.starts_with(b"hello\nxxx") && got.ends_with(b"x\n"));
    }

    #[test]
    fn a_closed_stdin_is_said() {
        let (r, w) = pipe();
        drop(r);
        assert_eq!(
            deliver(&w, "bot", b"hi"),
            Err(Refused::NoStdin("bot has closed its stdin".into()))
        );
    }
}
