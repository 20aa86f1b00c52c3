//! The receiving end of `NOTIFY_SOCKET`: one datagram socket per generation,
//! in a private 0700 directory, with `SO_PASSCRED` so the kernel tells us
//! which process sent each message. A message is attributed to a worker by
//! that pid (or by the sender's process group, so a wrapper's child counts
//! for its worker); anything else is ignored and logged.

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

/// Largest datagram read; sd_notify messages are a few bytes.
const MAX_MESSAGE: usize = 4096;

/// A bound notify socket.
#[derive(Debug)]
pub struct NotifySocket {
    pub sock: UnixDatagram,
    pub path: PathBuf,
}

/// One received message and its sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The sender's pid, from `SCM_CREDENTIALS`; `None` if the kernel sent
    /// no credentials (never on Linux with `SO_PASSCRED`).
    pub pid: Option<u32>,
    pub text: String,
}

impl Message {
    /// Whether the message contains `READY=1`.
    pub fn is_ready(&self) -> bool {
        self.text.lines().any(|l| l.trim() == "READY=1")
    }

    /// The value of a `KEY=` line, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }
}

impl NotifySocket {
    /// Binds a notify socket at `path` (its directory must be private).
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let sock = UnixDatagram::bind(path)?;
        sock.set_nonblocking(true)?;
        rustix::net::sockopt::set_socket_passcred(&sock, true)?;
        Ok(Self {
            sock,
            path: path.to_path_buf(),
        })
    }

    /// Reads one message; `Ok(None)` when none is waiting.
    pub fn recv(&self) -> std::io::Result<Option<Message>> {
        let mut buf = [0u8; MAX_MESSAGE];
        let mut space =
            [MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1), ScmRights(8))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let res = match rustix::net::recvmsg(
            self.sock.as_fd(),
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(r) => r,
            Err(rustix::io::Errno::AGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut pid = None;
        for msg in control.drain() {
            match msg {
                RecvAncillaryMessage::ScmCredentials(cred) => {
                    pid = Some(cred.pid.as_raw_nonzero().get() as u32);
                }
                // Descriptors sent along (FDSTORE=1) are not supported:
                // dropping them closes them.
                RecvAncillaryMessage::ScmRights(fds) => drop(fds.collect::<Vec<_>>()),
                _ => {}
            }
        }
        let len = res.bytes.min(buf.len());
        Ok(Some(Message {
            pid,
            text: String::from_utf8_lossy(&buf[..len]).into_owned(),
        }))
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The process group of `pid`, if it still exists.
pub fn process_group(pid: u32) -> Option<u32> {
    let p = rustix::process::Pid::from_raw(pid as i32)?;
    rustix::process::getpgid(Some(p))
        .ok()
        .map(|g| g.as_raw_nonzero().get() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_the_senders_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("n.sock");
        let s = NotifySocket::bind(&path).expect("bind");
        assert_eq!(s.recv().expect("recv"), None);
        let c = UnixDatagram::unbound().expect("client");
        c.send_to(b"READY=1\nSTATUS=warming", &path).expect("send");
        let m = s.recv().expect("recv").expect("a message");
        assert_eq!(m.pid, Some(std::process::id()));
        assert!(m.is_ready());
        assert_eq!(m.get("STATUS"), Some("warming"));
        c.send_to(b"READY=0", &path).expect("send");
        assert!(!s.recv().expect("recv").expect("msg").is_ready());
        drop(s);
        assert!(!path.exists(), "socket file removed on drop");
    }
}
