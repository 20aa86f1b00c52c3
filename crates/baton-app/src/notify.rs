//! Readiness and status reports to the parent: sd_notify datagrams on
//! `NOTIFY_SOCKET`, or the s6 protocol (a newline on an inherited fd whose
//! number is in `BATON_READY_FD`).
//!
//! The datagram side is written against `std::os::unix::net::UnixDatagram`
//! rather than the `sd-notify` crate because that crate re-reads the
//! environment on every call and cannot reach abstract (`@name`) sockets; the
//! protocol itself is one `sendto` of `KEY=VALUE` lines.

use std::io::Write;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;

/// Why a readiness message could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("BATON_READY_FD={0:?} is not a descriptor number")]
    BadReadyFd(String),
    #[error("readiness fd {fd} is not open: {source}")]
    ReadyFdClosed {
        fd: RawFd,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot send to NOTIFY_SOCKET {path}: {source}")]
    Send {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write to the readiness fd {fd}: {source}")]
    Write {
        fd: RawFd,
        #[source]
        source: std::io::Error,
    },
    #[error("status text must not contain a newline")]
    Newline,
}

/// Where readiness goes, read once from the environment.
#[derive(Debug, Default)]
pub struct Notifier {
    socket: Option<String>,
    ready_fd: Mutex<Option<(RawFd, std::fs::File)>>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `BATON_READY_FD` once. With neither set
    /// (no parent listening), every method is a no-op that logs at debug.
    pub fn from_env() -> Result<Self, NotifyError> {
        let socket = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty());
        let ready_fd = match std::env::var("BATON_READY_FD") {
            Ok(v) => {
                let fd: RawFd = v
                    .trim()
                    .parse()
                    .ok()
                    .filter(|n| *n > 2)
                    .ok_or_else(|| NotifyError::BadReadyFd(v.clone()))?;
                let owned = claim_ready_fd(fd)?;
                Some((fd, std::fs::File::from(owned)))
            }
            Err(_) => None,
        };
        Ok(Self {
            socket,
            ready_fd: Mutex::new(ready_fd),
        })
    }

    /// A notifier that sends to `path` only (for tests and custom setups).
    pub fn with_socket(path: impl Into<String>) -> Self {
        Self {
            socket: Some(path.into()),
            ready_fd: Mutex::new(None),
        }
    }

    /// Whether any parent is listening for readiness.
    pub fn is_connected(&self) -> bool {
        self.socket.is_some() || self.ready_fd.lock().is_ok_and(|g| g.is_some())
    }

    /// Reports that the server is ready to take traffic: `READY=1`, or a
    /// newline on the readiness fd (which is then closed, as s6 expects).
    pub fn ready(&self) -> Result<(), NotifyError> {
        if !self.is_connected() {
            tracing::debug!("no parent listens for readiness; not reporting ready");
            return Ok(());
        }
        self.ready_fd()?;
        self.send("READY=1")
    }

    /// Reports readiness on the readiness fd only (a newline, then the fd
    /// is closed), not on `NOTIFY_SOCKET`. Returns whether there was a
    /// readiness fd. Used by a self-upgraded process, whose parent forwards
    /// readiness to the service manager together with `MAINPID=`.
    pub fn ready_fd(&self) -> Result<bool, NotifyError> {
        let taken = match self.ready_fd.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some((fd, mut file)) = taken else {
            return Ok(false);
        };
        file.write_all(b"\n")
            .map_err(|source| NotifyError::Write { fd, source })?;
        // Dropping `file` closes the descriptor: the s6 protocol's end.
        Ok(true)
    }

    /// Reports that the server is reloading its configuration.
    pub fn reloading(&self) -> Result<(), NotifyError> {
        let usec = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let usec = usec.tv_sec as u64 * 1_000_000 + usec.tv_nsec as u64 / 1_000;
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"))
    }

    /// Reports that the server is shutting down.
    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.send("STOPPING=1")
    }

    /// A one-line, human-readable status (`STATUS=`).
    pub fn status(&self, text: &str) -> Result<(), NotifyError> {
        if text.contains('\n') {
            return Err(NotifyError::Newline);
        }
        self.send(&format!("STATUS={text}"))
    }

    /// Sends raw `KEY=VALUE` lines to `NOTIFY_SOCKET`, if set.
    pub fn send(&self, message: &str) -> Result<(), NotifyError> {
        let Some(path) = &self.socket else {
            tracing::debug!("no NOTIFY_SOCKET; not sending {message:?}");
            return Ok(());
        };
        let err = |source| NotifyError::Send {
            path: path.clone(),
            source,
        };
        let sock = UnixDatagram::unbound().map_err(err)?;
        if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt as _;
            let addr =
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).map_err(err)?;
            sock.send_to_addr(message.as_bytes(), &addr).map_err(err)?;
        } else {
            sock.send_to(message.as_bytes(), path).map_err(err)?;
        }
        Ok(())
    }
}

fn claim_ready_fd(fd: RawFd) -> Result<OwnedFd, NotifyError> {
    baton_sys::fd::claim_fd(fd).map_err(|source| NotifyError::ReadyFdClosed { fd, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::with_socket(path.to_string_lossy());
        n.ready().expect("ready");
        n.status("serving 3").expect("status");
        n.stopping().expect("stopping");
        n.reloading().expect("reloading");
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        for _ in 0..4 {
            let len = server.recv(&mut buf).expect("recv");
            got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        assert_eq!(got[0], "READY=1");
        assert_eq!(got[1], "STATUS=serving 3");
        assert_eq!(got[2], "STOPPING=1");
        assert!(
            got[3].starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{}",
            got[3]
        );
        assert!(matches!(n.status("a\nb"), Err(NotifyError::Newline)));
    }

    #[test]
    fn without_a_parent_everything_is_a_noop() {
        let n = Notifier::default();
        assert!(!n.is_connected());
        n.ready().expect("noop");
        n.status("x").expect("noop");
    }
}
