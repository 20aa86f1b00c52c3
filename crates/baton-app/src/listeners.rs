//! Listening sockets inherited from the parent (systemd's `LISTEN_FDS`
//! protocol, as spoken by `baton run`, systemd and systemfd).

use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

use rustix::fs::FileType;
use rustix::net::{AddressFamily, SocketType};

pub use baton_sys::fd::LISTEN_FDS_START;

/// Why inherited sockets could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum InheritError {
    #[error(
        "inherited sockets were already claimed in this process (call Inherited::from_env once)"
    )]
    AlreadyClaimed,
    #[error("LISTEN_FDS={0:?} is not a number of descriptors")]
    BadCount(String),
    #[error("LISTEN_PID={0:?} is not a process id")]
    BadPid(String),
    #[error("LISTEN_FDNAMES has {names} names but LISTEN_FDS is {fds}")]
    NameCountMismatch { names: usize, fds: usize },
    #[error("inherited fd {fd} is not open: {source}")]
    NotOpen {
        fd: RawFd,
        #[source]
        source: std::io::Error,
    },
    #[error("inherited fd {fd} ({name}) is not {expected}: it is {found}")]
    WrongKind {
        fd: RawFd,
        name: String,
        expected: &'static str,
        found: String,
    },
    #[error("cannot inspect inherited fd {fd} ({name}): {source}")]
    Inspect {
        fd: RawFd,
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// A listener handed out by [`Inherited::take`].
#[derive(Debug)]
pub enum Listener {
    Tcp(std::net::TcpListener),
    Unix(UnixListener),
}

#[derive(Debug)]
struct Slot {
    name: String,
    fd: Option<OwnedFd>,
    raw: RawFd,
}

/// The sockets this process inherited. Each is handed out at most once.
#[derive(Debug, Default)]
pub struct Inherited {
    slots: Vec<Slot>,
    /// Why nothing was adopted, when nothing was (for logs).
    absent: Option<String>,
}

/// The variables of the protocol, as read from the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenVars {
    pub fds: Option<String>,
    pub pid: Option<String>,
    pub names: Option<String>,
}

impl ListenVars {
    /// Reads `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`.
    pub fn from_env() -> Self {
        let get = |k: &str| std::env::var(k).ok();
        Self {
            fds: get("LISTEN_FDS"),
            pid: get("LISTEN_PID"),
            names: get("LISTEN_FDNAMES"),
        }
    }
}

/// What the variables say, checked: how many descriptors, and their names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Adopt descriptors 3.. with these names.
    Adopt(Vec<String>),
    /// Nothing to adopt, and why.
    Nothing(String),
}

/// Interprets the protocol variables for a process whose pid is `own_pid`.
///
/// Names default to `"unknown"` (systemd's own default) when
/// `LISTEN_FDNAMES` is absent.
pub fn plan(vars: &ListenVars, own_pid: u32) -> Result<Plan, InheritError> {
    let Some(fds) = vars.fds.as_deref() else {
        return Ok(Plan::Nothing("LISTEN_FDS is not set".into()));
    };
    let count: usize = fds
        .trim()
        .parse()
        .map_err(|_| InheritError::BadCount(fds.to_owned()))?;
    let Some(pid) = vars.pid.as_deref() else {
        return Ok(Plan::Nothing(
            "LISTEN_PID is not set, so LISTEN_FDS may belong to another process".into(),
        ));
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| InheritError::BadPid(pid.to_owned()))?;
    if pid != own_pid {
        return Ok(Plan::Nothing(format!(
            "LISTEN_PID is {pid}, not this process ({own_pid})"
        )));
    }
    let names: Vec<String> = match vars.names.as_deref() {
        Some(n) if count > 0 => n.split(':').map(str::to_owned).collect(),
        _ => vec!["unknown".to_owned(); count],
    };
    if names.len() != count {
        return Err(InheritError::NameCountMismatch {
            names: names.len(),
            fds: count,
        });
    }
    Ok(Plan::Adopt(names))
}

impl Inherited {
    /// Reads the environment once and claims the inherited descriptors.
    ///
    /// Returns an empty set (not an error) when the process was not given
    /// any sockets, or when they were meant for another process
    /// (`LISTEN_PID` differs). A second call in the same process returns
    /// [`InheritError::AlreadyClaimed`].
    pub fn from_env() -> Result<Self, InheritError> {
        let own_pid = std::process::id();
        match plan(&ListenVars::from_env(), own_pid)? {
            Plan::Nothing(why) => {
                // Claim nothing, but still close the door on a second call.
                if baton_sys::fd::claim_listen_fds(0).is_none() {
                    return Err(InheritError::AlreadyClaimed);
                }
                tracing::debug!("no inherited sockets: {why}");
                Ok(Self {
                    slots: Vec::new(),
                    absent: Some(why),
                })
            }
            Plan::Adopt(names) => {
                let claimed = baton_sys::fd::claim_listen_fds(names.len())
                    .ok_or(InheritError::AlreadyClaimed)?;
                let mut slots = Vec::with_capacity(names.len());
                for (i, (name, fd)) in names.into_iter().zip(claimed).enumerate() {
                    let raw = LISTEN_FDS_START + i as RawFd;
                    let fd = fd.map_err(|source| InheritError::NotOpen { fd: raw, source })?;
                    slots.push(Slot {
                        name,
                        fd: Some(fd),
                        raw,
                    });
                }
                Ok(Self {
                    slots,
                    absent: None,
                })
            }
        }
    }

    /// How many descriptors were inherited (taken or not).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The names of the inherited descriptors, in fd order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|s| s.name.as_str())
    }

    /// Why nothing was inherited, if nothing was.
    pub fn absent_reason(&self) -> Option<&str> {
        self.absent.as_deref()
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.name == name && s.fd.is_some())
    }

    /// Takes the first not-yet-taken listener named `name`, TCP or Unix.
    pub fn take(&mut self, name: &str) -> Result<Option<Listener>, InheritError> {
        match self.index_of(name) {
            Some(i) => self.take_at(i),
            None => Ok(None),
        }
    }

    /// Takes the listener at position `index` (fd `3 + index`).
    pub fn take_at(&mut self, index: usize) -> Result<Option<Listener>, InheritError> {
        let Some(slot) = self.slots.get_mut(index) else {
            return Ok(None);
        };
        let Some(fd) = slot.fd.take() else {
            return Ok(None);
        };
        match inspect(&fd, slot) {
            Ok(Family::Inet) => Ok(Some(Listener::Tcp(fd.into()))),
            Ok(Family::Unix) => Ok(Some(Listener::Unix(fd.into()))),
            Err(e) => {
                slot.fd = Some(fd);
                Err(e)
            }
        }
    }

    /// Takes the TCP listener named `name`.
    pub fn take_tcp(&mut self, name: &str) -> Result<Option<std::net::TcpListener>, InheritError> {
        match self.index_of(name) {
            Some(i) => self.take_tcp_at(i),
            None => Ok(None),
        }
    }

    /// Takes the TCP listener at position `index`.
    pub fn take_tcp_at(
        &mut self,
        index: usize,
    ) -> Result<Option<std::net::TcpListener>, InheritError> {
        self.take_expecting(index, Family::Inet, "a listening TCP socket")
            .map(|o| o.map(Into::into))
    }

    /// Takes the Unix stream listener named `name`.
    pub fn take_unix(&mut self, name: &str) -> Result<Option<UnixListener>, InheritError> {
        match self.index_of(name) {
            Some(i) => self.take_unix_at(i),
            None => Ok(None),
        }
    }

    /// Takes the Unix stream listener at position `index`.
    pub fn take_unix_at(&mut self, index: usize) -> Result<Option<UnixListener>, InheritError> {
        self.take_expecting(index, Family::Unix, "a listening Unix stream socket")
            .map(|o| o.map(Into::into))
    }

    fn take_expecting(
        &mut self,
        index: usize,
        want: Family,
        expected: &'static str,
    ) -> Result<Option<OwnedFd>, InheritError> {
        let Some(slot) = self.slots.get_mut(index) else {
            return Ok(None);
        };
        let Some(fd) = slot.fd.take() else {
            return Ok(None);
        };
        match inspect(&fd, slot) {
            Ok(f) if f == want => Ok(Some(fd)),
            Ok(f) => {
                let found = match f {
                    Family::Inet => "a listening TCP socket",
                    Family::Unix => "a listening Unix stream socket",
                };
                let err = InheritError::WrongKind {
                    fd: slot.raw,
                    name: slot.name.clone(),
                    expected,
                    found: found.to_owned(),
                };
                slot.fd = Some(fd);
                Err(err)
            }
            Err(e) => {
                slot.fd = Some(fd);
                Err(e)
            }
        }
    }

    /// Takes the UDP socket named `name` (UDP sockets do not listen, so only
    /// the type and family are checked).
    pub fn take_udp(&mut self, name: &str) -> Result<Option<std::net::UdpSocket>, InheritError> {
        match self.index_of(name) {
            Some(i) => self.take_udp_at(i),
            None => Ok(None),
        }
    }

    /// Takes the UDP socket at position `index` (fd `3 + index`); a socket
    /// of another kind stays to be taken as what it is.
    pub fn take_udp_at(
        &mut self,
        index: usize,
    ) -> Result<Option<std::net::UdpSocket>, InheritError> {
        let Some(slot) = self.slots.get_mut(index) else {
            return Ok(None);
        };
        let Some(fd) = slot.fd.take() else {
            return Ok(None);
        };
        let io_err = |source: rustix::io::Errno| InheritError::Inspect {
            fd: slot.raw,
            name: slot.name.clone(),
            source: source.into(),
        };
        let ty = rustix::net::sockopt::socket_type(&fd).map_err(io_err);
        let family = rustix::net::sockopt::socket_domain(&fd).map_err(io_err);
        match (ty, family) {
            (Ok(ty), Ok(f))
                if ty == SocketType::DGRAM
                    && (f == AddressFamily::INET || f == AddressFamily::INET6) =>
            {
                Ok(Some(fd.into()))
            }
            (Err(e), _) | (_, Err(e)) => {
                slot.fd = Some(fd);
                Err(e)
            }
            (Ok(_), Ok(_)) => {
                let err = InheritError::WrongKind {
                    fd: slot.raw,
                    name: slot.name.clone(),
                    expected: "a UDP socket",
                    found: "another kind of socket".into(),
                };
                slot.fd = Some(fd);
                Err(err)
            }
        }
    }

    /// Takes the TCP listener named `name` as a tokio listener.
    ///
    /// The socket is switched to non-blocking mode first (tokio requires
    /// it; since tokio 1.44 a blocking socket panics in debug builds).
    /// Must be called inside a tokio runtime.
    #[cfg(feature = "tokio")]
    pub fn take_tokio_tcp(
        &mut self,
        name: &str,
    ) -> Result<Option<tokio::net::TcpListener>, TokioTakeError> {
        let Some(l) = self.take_tcp(name)? else {
            return Ok(None);
        };
        l.set_nonblocking(true).map_err(TokioTakeError::Io)?;
        Ok(Some(
            tokio::net::TcpListener::from_std(l).map_err(TokioTakeError::Io)?,
        ))
    }

    /// Takes the Unix listener named `name` as a tokio listener.
    #[cfg(feature = "tokio")]
    pub fn take_tokio_unix(
        &mut self,
        name: &str,
    ) -> Result<Option<tokio::net::UnixListener>, TokioTakeError> {
        let Some(l) = self.take_unix(name)? else {
            return Ok(None);
        };
        l.set_nonblocking(true).map_err(TokioTakeError::Io)?;
        Ok(Some(
            tokio::net::UnixListener::from_std(l).map_err(TokioTakeError::Io)?,
        ))
    }
}

/// Errors of the tokio conversions.
#[cfg(feature = "tokio")]
#[derive(Debug, thiserror::Error)]
pub enum TokioTakeError {
    #[error(transparent)]
    Inherit(#[from] InheritError),
    #[error("cannot register the inherited socket with tokio: {0}")]
    Io(#[source] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Inet,
    Unix,
}

/// Checks that `fd` is a listening stream socket and says which family.
fn inspect(fd: &OwnedFd, slot: &Slot) -> Result<Family, InheritError> {
    let io_err = |source: rustix::io::Errno| InheritError::Inspect {
        fd: slot.raw,
        name: slot.name.clone(),
        source: source.into(),
    };
    let wrong = |found: String| InheritError::WrongKind {
        fd: slot.raw,
        name: slot.name.clone(),
        expected: "a listening stream socket",
        found,
    };
    let stat = rustix::fs::fstat(fd.as_fd()).map_err(io_err)?;
    let ft = FileType::from_raw_mode(stat.st_mode);
    if ft != FileType::Socket {
        return Err(wrong(format!("{ft:?}").to_lowercase()));
    }
    let ty = rustix::net::sockopt::socket_type(fd).map_err(io_err)?;
    if ty != SocketType::STREAM {
        return Err(wrong(format!("a socket of type {}", ty.as_raw())));
    }
    if !rustix::net::sockopt::socket_acceptconn(fd).map_err(io_err)? {
        return Err(wrong("a stream socket that is not listening".into()));
    }
    let family = rustix::net::sockopt::socket_domain(fd).map_err(io_err)?;
    if family == AddressFamily::INET || family == AddressFamily::INET6 {
        Ok(Family::Inet)
    } else if family == AddressFamily::UNIX {
        Ok(Family::Unix)
    } else {
        Err(wrong(format!("a socket of family {}", family.as_raw())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(fds: Option<&str>, pid: Option<&str>, names: Option<&str>) -> ListenVars {
        ListenVars {
            fds: fds.map(Into::into),
            pid: pid.map(Into::into),
            names: names.map(Into::into),
        }
    }

    #[test]
    fn no_listen_fds_means_nothing() {
        assert!(matches!(
            plan(&vars(None, None, None), 7),
            Ok(Plan::Nothing(_))
        ));
    }

    #[test]
    fn pid_mismatch_adopts_nothing() {
        let p = plan(&vars(Some("2"), Some("8"), Some("a:b")), 7).expect("valid");
        assert!(matches!(p, Plan::Nothing(ref why) if why.contains("not this process")));
    }

    #[test]
    fn missing_pid_adopts_nothing() {
        let p = plan(&vars(Some("1"), None, None), 7).expect("valid");
        assert!(matches!(p, Plan::Nothing(_)));
    }

    #[test]
    fn names_are_split_and_defaulted() {
        assert_eq!(
            plan(&vars(Some("2"), Some("7"), Some("web:admin")), 7).expect("valid"),
            Plan::Adopt(vec!["web".into(), "admin".into()])
        );
        assert_eq!(
            plan(&vars(Some("2"), Some("7"), None), 7).expect("valid"),
            Plan::Adopt(vec!["unknown".into(), "unknown".into()])
        );
        assert_eq!(
            plan(&vars(Some("0"), Some("7"), Some("")), 7).expect("valid"),
            Plan::Adopt(vec![])
        );
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(matches!(
            plan(&vars(Some("x"), Some("7"), None), 7),
            Err(InheritError::BadCount(_))
        ));
        assert!(matches!(
            plan(&vars(Some("1"), Some("-"), None), 7),
            Err(InheritError::BadPid(_))
        ));
        assert!(matches!(
            plan(&vars(Some("2"), Some("7"), Some("a")), 7),
            Err(InheritError::NameCountMismatch { names: 1, fds: 2 })
        ));
    }

    fn slot_for(fd: &OwnedFd) -> Slot {
        use std::os::fd::AsRawFd;
        Slot {
            name: "t".into(),
            fd: None,
            raw: fd.as_raw_fd(),
        }
    }

    #[test]
    fn inspect_accepts_listening_sockets_only() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let fd: OwnedFd = tcp.into();
        assert_eq!(inspect(&fd, &slot_for(&fd)).expect("tcp"), Family::Inet);

        let dir = tempfile::tempdir().expect("tempdir");
        let ul = UnixListener::bind(dir.path().join("s")).expect("bind unix");
        let fd: OwnedFd = ul.into();
        assert_eq!(inspect(&fd, &slot_for(&fd)).expect("unix"), Family::Unix);

        let (r, _w) = rustix::pipe::pipe().expect("pipe");
        assert!(matches!(
            inspect(&r, &slot_for(&r)),
            Err(InheritError::WrongKind { .. })
        ));

        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let fd: OwnedFd = udp.into();
        assert!(matches!(
            inspect(&fd, &slot_for(&fd)),
            Err(InheritError::WrongKind { .. })
        ));
    }
}
