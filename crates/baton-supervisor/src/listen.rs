//! Listen specs (`-l/--listen`): parsing, binding, and cleanup.
//!
//! Every listener is bound once, when baton starts, and kept for its whole
//! life. All generations receive the same sockets, so they share one accept
//! queue: a connection waiting in it survives every reload. baton never uses
//! `SO_REUSEPORT` to split a port between generations, because closing such
//! a socket drops the connections queued on it (nginx ticket #1300).
//!
//! A `udp://HOST:PORT` listener is a bound datagram socket, passed like the
//! others (`LISTEN_FDS`, `LISTEN_FDNAMES`). All generations read from the
//! one socket, so its receive queue carries over a reload as an accept
//! queue does: a datagram is read by whichever worker reads first, old or
//! new.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::net::{AddressFamily, SocketType};

/// The listen backlog. The kernel caps it at `net.core.somaxconn`.
pub const BACKLOG: i32 = 4096;

const VALID_FORMS: &str = "valid forms: tcp://HOST:PORT, HOST:PORT, :PORT, [::1]:PORT, udp://HOST:PORT, unix:PATH, unix:PATH?mode=0660, each optionally prefixed by NAME= (e.g. web=tcp://0.0.0.0:8080)";

/// What to listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP host and port, resolved at bind time.
    Tcp { host: String, port: u16 },
    /// A Unix stream socket at a path, with an optional file mode.
    Unix { path: PathBuf, mode: Option<u32> },
    /// A UDP host and port (`udp://`), resolved at bind time.
    Udp { host: String, port: u16 },
}

impl ListenAddr {
    /// Whether `other` is the same socket address (a Unix socket's mode
    /// aside: the file stays the same).
    pub fn same_socket(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Tcp { host: a, port: p }, Self::Tcp { host: b, port: q })
            | (Self::Udp { host: a, port: p }, Self::Udp { host: b, port: q }) => a == b && p == q,
            (Self::Unix { path: a, .. }, Self::Unix { path: b, .. }) => a == b,
            _ => false,
        }
    }

    /// Whether this is a datagram socket (`udp://`): nothing to accept.
    pub fn is_datagram(&self) -> bool {
        matches!(self, Self::Udp { .. })
    }
}

/// A spec crosses an exec as the text the user wrote, parsed again.
impl serde::Serialize for ListenSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for ListenSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One `--listen` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSpec {
    /// For `LISTEN_FDNAMES`; `None` gets `listen<N>`.
    pub name: Option<String>,
    pub addr: ListenAddr,
    /// The argument as the user wrote it.
    pub text: String,
}

/// A malformed listen spec: the text, where the problem starts, and what it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecError {
    pub text: String,
    pub at: usize,
    pub problem: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let caret = " ".repeat(self.text[..self.at.min(self.text.len())].chars().count());
        write!(
            f,
            "invalid listen spec: {}\n  {}\n  {caret}^\n{VALID_FORMS}",
            self.problem, self.text
        )
    }
}

fn err(text: &str, at: usize, problem: impl Into<String>) -> SpecError {
    SpecError {
        text: text.to_owned(),
        at,
        problem: problem.into(),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl std::str::FromStr for ListenSpec {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        let mut rest = text;
        let mut offset = 0;
        let mut name = None;
        // `NAME=` prefix: only if what precedes '=' has no ':' or '/',
        // so `unix:/path=x` stays a path.
        if let Some(eq) = rest.find('=') {
            let candidate = &rest[..eq];
            if !candidate.contains([':', '/', '[']) {
                if !valid_name(candidate) {
                    return Err(err(
                        text,
                        0,
                        format!(
                            "{candidate:?} is not a valid name (letters, digits, '_', '-', '.')"
                        ),
                    ));
                }
                name = Some(candidate.to_owned());
                rest = &rest[eq + 1..];
                offset = eq + 1;
            }
        }
        if rest.is_empty() {
            return Err(err(text, offset, "missing address"));
        }
        for scheme in ["udp", "tcp"] {
            if let Some(after) = rest.strip_prefix(scheme).and_then(|r| r.strip_prefix(':'))
                && !after.starts_with("//")
            {
                return Err(err(
                    text,
                    offset,
                    format!("write {scheme}://{after} (with two slashes)"),
                ));
            }
        }
        let addr = if let Some(path) = rest.strip_prefix("unix:") {
            parse_unix(text, offset + 5, path)?
        } else if let Some(body) = rest.strip_prefix("udp://") {
            match parse_tcp(text, offset + 6, body)? {
                ListenAddr::Tcp { host, port } => ListenAddr::Udp { host, port },
                other => other,
            }
        } else {
            let (body, body_at) = match rest.strip_prefix("tcp://") {
                Some(b) => (b, offset + 6),
                None => {
                    if let Some(scheme_end) = rest.find("://") {
                        return Err(err(
                            text,
                            offset,
                            format!("unknown scheme {:?}", &rest[..scheme_end]),
                        ));
                    }
                    (rest, offset)
                }
            };
            parse_tcp(text, body_at, body)?
        };
        Ok(ListenSpec {
            name,
            addr,
            text: text.to_owned(),
        })
    }
}

fn parse_unix(text: &str, at: usize, rest: &str) -> Result<ListenAddr, SpecError> {
    let (path, mode) = match rest.rfind("?mode=") {
        Some(q) => {
            let digits = &rest[q + 6..];
            let mode = u32::from_str_radix(digits, 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    err(
                        text,
                        at + q + 6,
                        format!("mode {digits:?} is not an octal file mode like 0660"),
                    )
                })?;
            (&rest[..q], Some(mode))
        }
        None => (rest, None),
    };
    // `?mod=0660`, `?perm=0660`: an option baton does not
    // know would otherwise be part of the path, silently.
    if let Some(q) = path.find('?') {
        let option = &path[q + 1..];
        return Err(err(
            text,
            at + q + 1,
            format!(
                "unknown option {:?} after '?': the one option is mode (unix:PATH?mode=0660); a '?' cannot be part of a socket path here",
                option.split('=').next().unwrap_or(option)
            ),
        ));
    }
    if path.is_empty() {
        return Err(err(text, at, "missing socket path after 'unix:'"));
    }
    if path.starts_with('@') {
        return Err(err(
            text,
            at,
            "abstract Unix sockets (@name) are not supported; use a path",
        ));
    }
    if path.len() >= 108 {
        return Err(err(
            text,
            at,
            format!(
                "the socket path is {} bytes long; Unix socket paths must be shorter than 108 bytes",
                path.len()
            ),
        ));
    }
    Ok(ListenAddr::Unix {
        path: PathBuf::from(path),
        mode,
    })
}

fn parse_tcp(text: &str, at: usize, body: &str) -> Result<ListenAddr, SpecError> {
    let (host, port_str, port_at) = if let Some(inner) = body.strip_prefix('[') {
        let close = inner
            .find(']')
            .ok_or_else(|| err(text, at, "'[' without a closing ']' around an IPv6 address"))?;
        let host = &inner[..close];
        let after = &inner[close + 1..];
        let port = after.strip_prefix(':').ok_or_else(|| {
            err(
                text,
                at + close + 2,
                "expected ':PORT' after the IPv6 address",
            )
        })?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(err(
                text,
                at + 1,
                format!("{host:?} is not an IPv6 address"),
            ));
        }
        (host.to_owned(), port, at + close + 3)
    } else {
        let colon = body.rfind(':').ok_or_else(|| {
            err(
                text,
                at + body.len(),
                "missing ':PORT' (a TCP or UDP address needs a port; for a Unix socket write unix:PATH)",
            )
        })?;
        let host = &body[..colon];
        if host.contains(':') {
            return Err(err(
                text,
                at,
                "an IPv6 address must be written in brackets, like [::1]:8080",
            ));
        }
        let host = if host.is_empty() { "0.0.0.0" } else { host };
        if host.contains(['/', ' ', '?', '#']) {
            return Err(err(
                text,
                at,
                format!("{host:?} is not a host name or IP address"),
            ));
        }
        (host.to_owned(), &body[colon + 1..], at + colon + 1)
    };
    let port: u16 = port_str.parse().map_err(|_| {
        err(
            text,
            port_at,
            format!("{port_str:?} is not a port number (0-65535)"),
        )
    })?;
    Ok(ListenAddr::Tcp { host, port })
}

/// A bound listener, kept for baton's lifetime.
#[derive(Debug)]
pub struct Bound {
    /// The `--listen` it came from (`None`: adopted without one).
    pub spec: Option<ListenSpec>,
    /// Whether it was inherited from baton's own parent (socket activation).
    pub adopted: bool,
    /// The name passed in `LISTEN_FDNAMES`.
    pub name: String,
    pub fd: OwnedFd,
    /// What it is bound to, for logs: `tcp://127.0.0.1:43121`.
    pub display: String,
    /// For Unix sockets: the file and its identity, removed at final stop if
    /// it is still ours.
    pub unix_file: Option<(PathBuf, u64, u64)>,
}

/// Why a listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot resolve {host:?} (from --listen {spec}): {source}")]
    Resolve {
        spec: String,
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot bind {addr} (from --listen {spec}): {problem}")]
    Bind {
        spec: String,
        addr: String,
        problem: String,
    },
    #[error("cannot adopt the inherited socket {name:?}: {problem}")]
    Adopt { name: String, problem: String },
    #[error("cannot use {path} (from --listen {spec}): {problem}")]
    Path {
        spec: String,
        path: String,
        problem: String,
    },
}

pub(crate) fn explain(errno: rustix::io::Errno, addr: &str, port: Option<u16>) -> String {
    use rustix::io::Errno;
    match errno {
        Errno::ADDRINUSE => format!(
            "address already in use: another process listens on {addr}; stop it or choose another port"
        ),
        Errno::ACCESS if port.is_some_and(|p| p < 1024) => {
            "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)".into()
        }
        Errno::ACCESS => "permission denied".into(),
        Errno::ADDRNOTAVAIL => {
            "address not available: no interface of this machine has that IP".into()
        }
        other => std::io::Error::from(other).to_string(),
    }
}

impl Bound {
    /// A TCP or UDP socket bound at `addr` by `bind` (`scheme` names it in
    /// messages and in the display).
    fn bind_inet(
        spec: &ListenSpec,
        name: String,
        addr: SocketAddr,
        scheme: &str,
        bind: fn(SocketAddr) -> Result<OwnedFd, rustix::io::Errno>,
    ) -> Result<Self, BindError> {
        let shown = if scheme == "tcp" {
            addr.to_string()
        } else {
            format!("{scheme}://{addr}")
        };
        let fd = bind(addr).map_err(|e| BindError::Bind {
            spec: spec.text.clone(),
            addr: shown.clone(),
            problem: explain(e, &shown, Some(addr.port())),
        })?;
        let local = rustix::net::getsockname(&fd)
            .ok()
            .and_then(|a| SocketAddr::try_from(a).ok())
            .unwrap_or(addr);
        Ok(Self {
            spec: Some(spec.clone()),
            adopted: false,
            name,
            fd,
            display: format!("{scheme}://{local}"),
            unix_file: None,
        })
    }

    /// Binds `spec`; `index` gives the default name `listen<index>`.
    pub fn bind(spec: &ListenSpec, index: usize) -> Result<Self, BindError> {
        let name = spec
            .name
            .clone()
            .unwrap_or_else(|| format!("listen{index}"));
        match &spec.addr {
            ListenAddr::Tcp { host, port } => {
                Self::bind_inet(spec, name, resolve(spec, host, *port)?, "tcp", bind_tcp)
            }
            ListenAddr::Udp { host, port } => {
                Self::bind_inet(spec, name, resolve(spec, host, *port)?, "udp", bind_udp)
            }
            ListenAddr::Unix { path, mode } => {
                let fd = bind_unix(spec, path, *mode)?;
                let meta = std::fs::symlink_metadata(path).map_err(|e| BindError::Path {
                    spec: spec.text.clone(),
                    path: path.display().to_string(),
                    problem: e.to_string(),
                })?;
                Ok(Self {
                    spec: Some(spec.clone()),
                    adopted: false,
                    name,
                    fd,
                    display: format!("unix:{}", path.display()),
                    unix_file: Some((path.clone(), meta.dev(), meta.ino())),
                })
            }
        }
    }

    /// Adopts an already-bound listening socket (systemd socket
    /// activation). Its file, if any, belongs to whoever made it and is
    /// never removed by baton.
    pub fn adopt(spec: Option<&ListenSpec>, name: String, fd: OwnedFd) -> Self {
        let display = describe_fd(&fd);
        Self {
            spec: spec.cloned(),
            adopted: true,
            name,
            fd,
            display,
            unix_file: None,
        }
    }

    /// Whether this is a datagram (UDP) socket, bound or adopted: nothing
    /// accepts on it, so `--ready accepting` does not look for it.
    pub fn is_datagram(&self) -> bool {
        rustix::net::sockopt::socket_type(&self.fd).is_ok_and(|t| t == SocketType::DGRAM)
    }

    /// Removes the socket file, if this is a Unix listener and the file at
    /// its path is still the one it created.
    pub fn remove_file(&self) {
        if let Some((path, dev, ino)) = &self.unix_file
            && let Ok(meta) = std::fs::symlink_metadata(path)
            && meta.dev() == *dev
            && meta.ino() == *ino
            && let Err(e) = std::fs::remove_file(path)
        {
            tracing::warn!("cannot remove socket file {}: {e}", path.display());
        }
    }
}

/// A listener closes with its last holder (the generations that have it,
/// the settings in force); its socket file, if baton made one, goes too.
impl Drop for Bound {
    fn drop(&mut self) {
        self.remove_file();
    }
}

fn resolve(spec: &ListenSpec, host: &str, port: u16) -> Result<SocketAddr, BindError> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let mut addrs = (host, port)
        .to_socket_addrs()
        .map_err(|source| BindError::Resolve {
            spec: spec.text.clone(),
            host: host.to_owned(),
            source,
        })?;
    let first = addrs.next().ok_or_else(|| BindError::Resolve {
        spec: spec.text.clone(),
        host: host.to_owned(),
        source: std::io::Error::other("no addresses"),
    })?;
    tracing::debug!("{host} resolved to {first}");
    Ok(first)
}

pub(crate) fn bind_tcp(addr: SocketAddr) -> Result<OwnedFd, rustix::io::Errno> {
    let fd = inet_socket(addr, SocketType::STREAM)?;
    // SO_REUSEADDR lets baton rebind after a restart while old connections
    // sit in TIME_WAIT; it does not let two live listeners share the port.
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, BACKLOG)?;
    Ok(fd)
}

fn bind_udp(addr: SocketAddr) -> Result<OwnedFd, rustix::io::Errno> {
    // No SO_REUSEADDR here, unlike TCP: UDP has no TIME_WAIT to wait out,
    // and on a UDP socket it would let another process that sets it too
    // bind the same port and take the datagrams meant for the workers.
    let fd = inet_socket(addr, SocketType::DGRAM)?;
    rustix::net::bind(&fd, &addr)?;
    Ok(fd)
}

/// A close-on-exec socket of `kind` for `addr`'s family; an IPv6 one is
/// IPv6 only (`[::]:PORT` means IPv6 alone; IPv4 needs its own --listen).
fn inet_socket(addr: SocketAddr, kind: SocketType) -> Result<OwnedFd, rustix::io::Errno> {
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = rustix::net::socket_with(family, kind, rustix::net::SocketFlags::CLOEXEC, None)?;
    if addr.is_ipv6() {
        rustix::net::sockopt::set_ipv6_v6only(&fd, true)?;
    }
    Ok(fd)
}

/// Binds a Unix socket at `path` with `mode`, safely:
/// * an existing symlink at the path is refused, never followed;
/// * an existing socket is replaced only if nobody accepts on it (stale);
/// * anything else at the path is refused;
/// * the socket is bound under a temporary name, given its mode, then
///   renamed into place, so it never exists with wider permissions.
fn bind_unix(spec: &ListenSpec, path: &Path, mode: Option<u32>) -> Result<OwnedFd, BindError> {
    let perr = |problem: String| BindError::Path {
        spec: spec.text.clone(),
        path: path.display().to_string(),
        problem,
    };
    let stale = match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            let ft = meta.file_type();
            if ft.is_symlink() {
                return Err(perr(
                    "it is a symbolic link; baton refuses to follow it (remove it or choose another path)".into(),
                ));
            }
            if !ft.is_socket() {
                return Err(perr(
                    "a file that is not a socket exists there; remove it or choose another path"
                        .into(),
                ));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(perr(
                    "another process is listening on this socket; stop it or choose another path"
                        .into(),
                ));
            }
            tracing::info!("replacing stale socket file {}", path.display());
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(perr(e.to_string())),
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(perr(format!(
            "the directory {} does not exist; create it first",
            dir.display()
        )));
    }
    if path.file_name().is_none() {
        return Err(perr("the path has no file name".into()));
    }
    if stale {
        std::fs::remove_file(path)
            .map_err(|e| perr(format!("cannot remove the stale socket: {e}")))?;
    }
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| perr(std::io::Error::from(e).to_string()))?;
    let addr = rustix::net::SocketAddrUnix::new(path)
        .map_err(|e| perr(std::io::Error::from(e).to_string()))?;
    // Bound at its own path, so that getsockname (in baton and in every
    // worker) names the path clients use. With a mode to set, the socket is
    // created with none at all (umask 0777 around the bind, as systemd does
    // for SocketMode=), so it never exists wider than asked, and its mode is
    // then set through a descriptor of the very file (O_PATH|O_NOFOLLOW),
    // never by a path that could have become a symlink meanwhile. bind()
    // itself never follows a symlink: it fails if anything is at the path.
    let bound = match mode {
        Some(_) => {
            let old = rustix::process::umask(rustix::fs::Mode::from_bits_truncate(0o777));
            let r = rustix::net::bind(&fd, &addr);
            rustix::process::umask(old);
            r
        }
        None => rustix::net::bind(&fd, &addr),
    };
    bound.map_err(|e| perr(explain(e, &path.display().to_string(), None)))?;
    let cleanup = |e: String| {
        let _ = std::fs::remove_file(path);
        perr(e)
    };
    if let Some(mode) = mode {
        set_mode_nofollow(path, mode).map_err(cleanup)?;
    }
    rustix::net::listen(&fd, BACKLOG).map_err(|e| cleanup(std::io::Error::from(e).to_string()))?;
    Ok(fd)
}

/// Sets the mode of the socket file at `path` without following a symlink:
/// opens the path itself (`O_PATH | O_NOFOLLOW`), checks that it is a
/// socket, and changes the mode of that very inode through
/// `/proc/self/fd/N`.
fn set_mode_nofollow(path: &Path, mode: u32) -> Result<(), String> {
    use rustix::fs::{FileType, Mode, OFlags};
    let file = rustix::fs::open(
        path,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open the new socket to set its mode: {e}"))?;
    let st = rustix::fs::fstat(&file).map_err(|e| format!("cannot stat the new socket: {e}"))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Socket {
        return Err(
            "the socket file was replaced while baton set it up (by a symbolic link or another file); check who else writes to its directory"
                .into(),
        );
    }
    let via = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file));
    rustix::fs::chmod(via.as_str(), Mode::from_raw_mode(mode))
        .map_err(|e| format!("cannot set mode {mode:o}: {e}"))
}

/// Sets up every listener: adopts the sockets baton's own parent passed
/// (systemd socket activation: `LISTEN_FDS` with `LISTEN_PID` equal to
/// baton's pid) and binds the rest.
///
/// Matching is by name: `--listen web=tcp://…` adopts the inherited socket
/// named `web` (`FileDescriptorName=web` in the `.socket` unit). Without any
/// `--listen`, every inherited socket is adopted under its own name. An
/// inherited socket that no `--listen` names is closed, with a warning.
pub fn open_all(
    specs: &[ListenSpec],
    inherited: &mut baton_app::Inherited,
) -> Result<Vec<Bound>, BindError> {
    let mut out: Vec<Bound> = Vec::with_capacity(specs.len().max(inherited.len()));
    let fail = |out: &[Bound], e: BindError| {
        for b in out {
            b.remove_file();
        }
        e
    };
    if specs.is_empty() {
        for i in 0..inherited.len() {
            let name = inherited.names().nth(i).unwrap_or("unknown").to_owned();
            // A UDP socket (systemd's ListenDatagram=) is not a listener
            // to `take_at`: take it as what it is.
            let taken = match inherited.take_udp_at(i) {
                Ok(Some(u)) => Ok(Some(OwnedFd::from(u))),
                _ => inherited.take_at(i).map(|o| o.map(listener_fd)),
            };
            match taken {
                Ok(Some(fd)) => out.push(Bound::adopt(None, name, fd)),
                Ok(None) => {}
                Err(e) => {
                    return Err(fail(
                        &out,
                        BindError::Adopt {
                            name,
                            problem: e.to_string(),
                        },
                    ));
                }
            }
        }
        return Ok(out);
    }
    for (i, spec) in specs.iter().enumerate() {
        let adopted = match spec.name.as_deref() {
            Some(name) if spec.addr.is_datagram() => inherited
                .take_udp(name)
                .map(|o| o.map(OwnedFd::from))
                .map_err(|e| {
                    fail(
                        &out,
                        BindError::Adopt {
                            name: name.to_owned(),
                            problem: e.to_string(),
                        },
                    )
                })?,
            Some(name) => inherited
                .take(name)
                .map(|o| o.map(listener_fd))
                .map_err(|e| {
                    fail(
                        &out,
                        BindError::Adopt {
                            name: name.to_owned(),
                            problem: e.to_string(),
                        },
                    )
                })?,
            None => None,
        };
        let b = match adopted {
            Some(fd) => Bound::adopt(
                Some(spec),
                spec.name.clone().unwrap_or_else(|| format!("listen{i}")),
                fd,
            ),
            None => {
                Bound::bind(spec, i).map_err(|e| fail(&out, overlapping(&specs[..i], spec, e)))?
            }
        };
        out.push(b);
    }
    let names: Vec<String> = inherited.names().map(str::to_owned).collect();
    let leftover: Vec<String> = names
        .into_iter()
        .enumerate()
        .filter(|(i, _)| inherited.take_at(*i).ok().flatten().is_some())
        .map(|(_, n)| n)
        .collect();
    if !leftover.is_empty() {
        tracing::warn!(
            "closing inherited sockets that no --listen names: {}; name a --listen after them (e.g. -l {}=…) to use them",
            leftover.join(", "),
            leftover[0]
        );
    }
    Ok(out)
}

/// A bind that failed because an earlier `--listen` of the same baton
/// holds the address (the same one given twice, or `127.0.0.1:8080` after
/// `0.0.0.0:8080`) is not "another process": say which listener it is.
fn overlapping(earlier: &[ListenSpec], spec: &ListenSpec, e: BindError) -> BindError {
    let clash = earlier.iter().find(|o| match (&o.addr, &spec.addr) {
        (ListenAddr::Tcp { port: a, .. }, ListenAddr::Tcp { port: b, .. })
        | (ListenAddr::Udp { port: a, .. }, ListenAddr::Udp { port: b, .. }) => *a != 0 && a == b,
        (ListenAddr::Unix { path: a, .. }, ListenAddr::Unix { path: b, .. }) => a == b,
        _ => false,
    });
    let Some(clash) = clash else {
        return e;
    };
    let problem = format!(
        "it overlaps --listen {} given before it (the same address, or the same port where one of them is every interface); give each address once",
        clash.text
    );
    match e {
        BindError::Bind {
            spec,
            addr,
            problem: p,
        } if p.starts_with("address already in use") => BindError::Bind {
            spec,
            addr,
            problem,
        },
        BindError::Path {
            spec,
            path,
            problem: p,
        } if p.starts_with("another process") => BindError::Path {
            spec,
            path,
            problem,
        },
        other => other,
    }
}

fn listener_fd(l: baton_app::Listener) -> OwnedFd {
    match l {
        baton_app::Listener::Tcp(t) => t.into(),
        baton_app::Listener::Unix(u) => u.into(),
    }
}

/// The family of a bound listener, for display of adopted sockets.
pub fn describe_fd(fd: &OwnedFd) -> String {
    match rustix::net::getsockname(fd.as_fd()) {
        Ok(addr) => match SocketAddr::try_from(addr.clone()) {
            Ok(sa)
                if rustix::net::sockopt::socket_type(fd).is_ok_and(|t| t == SocketType::DGRAM) =>
            {
                format!("udp://{sa}")
            }
            Ok(sa) => format!("tcp://{sa}"),
            Err(_) => match rustix::net::SocketAddrUnix::try_from(addr) {
                Ok(u) => u.path().map_or_else(
                    || "unix:(unnamed)".into(),
                    |p| format!("unix:{}", p.to_string_lossy()),
                ),
                Err(_) => "(socket)".into(),
            },
        },
        Err(_) => "(socket)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::fs::PermissionsExt;

    fn parse(s: &str) -> Result<ListenSpec, SpecError> {
        s.parse()
    }

    fn tcp(host: &str, port: u16) -> ListenAddr {
        ListenAddr::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn accepted_forms() {
        assert_eq!(
            parse("tcp://0.0.0.0:8080").expect("ok").addr,
            tcp("0.0.0.0", 8080)
        );
        assert_eq!(
            parse("127.0.0.1:80").expect("ok").addr,
            tcp("127.0.0.1", 80)
        );
        assert_eq!(parse(":8080").expect("ok").addr, tcp("0.0.0.0", 8080));
        assert_eq!(parse("[::1]:9000").expect("ok").addr, tcp("::1", 9000));
        assert_eq!(parse("tcp://[::]:0").expect("ok").addr, tcp("::", 0));
        assert_eq!(parse("localhost:1").expect("ok").addr, tcp("localhost", 1));
        let s = parse("web=tcp://127.0.0.1:1").expect("ok");
        assert_eq!(s.name.as_deref(), Some("web"));
        assert_eq!(
            parse("unix:/run/app.sock").expect("ok").addr,
            ListenAddr::Unix {
                path: "/run/app.sock".into(),
                mode: None
            }
        );
        let s = parse("dns=udp://127.0.0.1:5353").expect("ok");
        assert_eq!(s.name.as_deref(), Some("dns"));
        assert_eq!(
            s.addr,
            ListenAddr::Udp {
                host: "127.0.0.1".into(),
                port: 5353
            }
        );
        assert!(s.addr.is_datagram());
        assert_eq!(
            parse("udp://[::1]:0").expect("ok").addr,
            ListenAddr::Udp {
                host: "::1".into(),
                port: 0
            }
        );
        assert!(!s.addr.same_socket(&tcp("127.0.0.1", 5353)));
        let s = parse("admin=unix:rel/a.sock?mode=0660").expect("ok");
        assert_eq!(s.name.as_deref(), Some("admin"));
        assert_eq!(
            s.addr,
            ListenAddr::Unix {
                path: "rel/a.sock".into(),
                mode: Some(0o660)
            }
        );
    }

    /// A misspelt option was part of the path, silently: the socket
    /// was bound at "/a.sock?mod=0660" with the default mode.
    #[test]
    fn a_misspelt_unix_socket_option_is_refused_not_made_part_of_the_path() {
        for typo in [
            "unix:/a.sock?mod=0660",
            "unix:/a.sock?foo",
            "unix:/a?x=1?mode=0660",
        ] {
            assert!(
                parse(typo)
                    .expect_err(typo)
                    .problem
                    .contains("unknown option"),
                "{typo}"
            );
        }
    }

    #[test]
    fn errors_point_at_the_problem() {
        let e = parse("tcp://127.0.0.1:80x").expect_err("bad port");
        assert_eq!(e.at, 16);
        assert!(e.problem.contains("\"80x\" is not a port"));
        let shown = e.to_string();
        assert!(
            shown.contains("tcp://127.0.0.1:80x\n                  ^"),
            "{shown}"
        );
        assert!(shown.contains("valid forms"));

        assert!(
            parse("127.0.0.1")
                .expect_err("no port")
                .problem
                .contains("missing ':PORT'")
        );
        assert!(
            parse("::1:80")
                .expect_err("v6")
                .problem
                .contains("brackets")
        );
        assert!(
            parse("[::1]80")
                .expect_err("v6")
                .problem
                .contains("':PORT'")
        );
        assert!(
            parse("[zz]:80")
                .expect_err("v6")
                .problem
                .contains("not an IPv6")
        );
        assert!(
            parse("sctp://1.2.3.4:5")
                .expect_err("scheme")
                .problem
                .contains("unknown scheme")
        );
        assert!(
            parse("udp://1.2.3.4")
                .expect_err("no port")
                .problem
                .contains("missing ':PORT'")
        );
        assert!(
            parse("udp://::1:53")
                .expect_err("v6")
                .problem
                .contains("brackets")
        );
        assert!(
            parse("dns=udp:127.0.0.1:53")
                .expect_err("one slash short")
                .problem
                .contains("write udp://127.0.0.1:53")
        );
        assert!(
            parse("unix:")
                .expect_err("path")
                .problem
                .contains("missing socket path")
        );
        assert!(
            parse("unix:/a?mode=999")
                .expect_err("mode")
                .problem
                .contains("octal")
        );
        assert!(
            parse("b@d=:80")
                .expect_err("name")
                .problem
                .contains("not a valid name")
        );
        assert!(
            parse("")
                .expect_err("empty")
                .problem
                .contains("missing address")
        );
        assert!(
            parse("x=")
                .expect_err("empty")
                .problem
                .contains("missing address")
        );
        assert!(
            parse(":99999")
                .expect_err("range")
                .problem
                .contains("not a port")
        );
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC{0,40}") {
            let _ = parse(&s);
        }

        #[test]
        fn tcp_round_trip(a in 0u8..=255, b in 0u8..=255, port in 0u16..) {
            let text = format!("tcp://10.{a}.{b}.1:{port}");
            prop_assert_eq!(parse(&text).expect("valid").addr, tcp(&format!("10.{a}.{b}.1"), port));
        }
    }

    #[test]
    fn binds_ephemeral_tcp_and_reports_the_port() {
        let b = Bound::bind(&parse("127.0.0.1:0").expect("ok"), 0).expect("bind");
        assert!(b.display.starts_with("tcp://127.0.0.1:"));
        assert!(!b.display.ends_with(":0"));
        assert_eq!(b.name, "listen0");
    }

    #[test]
    fn binds_ephemeral_udp_that_answers_and_is_told_apart() {
        let b = Bound::bind(&parse("dns=udp://127.0.0.1:0").expect("ok"), 0).expect("bind");
        assert!(b.display.starts_with("udp://127.0.0.1:"), "{}", b.display);
        assert!(!b.display.ends_with(":0"));
        assert!(b.is_datagram());
        assert_eq!(b.name, "dns");
        assert_eq!(describe_fd(&b.fd), b.display);
        let port: u16 = b
            .display
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        // Taken: a second bind of the same port is refused by name.
        let e = Bound::bind(&parse(&format!("udp://127.0.0.1:{port}")).expect("ok"), 0)
            .expect_err("in use");
        assert!(e.to_string().contains("already in use"), "{e}");
        let tcp = Bound::bind(&parse("127.0.0.1:0").expect("ok"), 0).expect("bind");
        assert!(!tcp.is_datagram());
        // Datagrams reach the socket.
        let sock = std::net::UdpSocket::from(b.fd.try_clone().expect("dup"));
        let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("client");
        client.send_to(b"ping", ("127.0.0.1", port)).expect("send");
        let mut buf = [0u8; 16];
        let (n, _) = sock.recv_from(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"ping");
    }

    /// The same address given twice (`-l 127.0.0.1:8080 -l
    /// 127.0.0.1:8080`, or after `0.0.0.0:8080`) was "another process
    /// listens on 127.0.0.1:8080; stop it": there was none, the first
    /// `--listen` held it.
    #[test]
    fn an_address_given_twice_names_the_other_listen_not_another_process() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = free.local_addr().expect("addr").port();
        drop(free);
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("a.sock");
        for (first, second) in [
            (format!("127.0.0.1:{port}"), format!("127.0.0.1:{port}")),
            (format!("0.0.0.0:{port}"), format!("127.0.0.1:{port}")),
            (
                format!("unix:{}", sock.display()),
                format!("unix:{}", sock.display()),
            ),
        ] {
            let specs = [parse(&first).expect("ok"), parse(&second).expect("ok")];
            let mut none = baton_app::Inherited::default();
            let e = open_all(&specs, &mut none).expect_err("twice");
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("it overlaps --listen {first} given before it"))
                    && !msg.contains("another process"),
                "{first} then {second}: {msg}"
            );
        }
    }

    #[test]
    fn address_in_use_names_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let e =
            Bound::bind(&parse(&format!("127.0.0.1:{port}")).expect("ok"), 0).expect_err("in use");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("127.0.0.1:{port}")) && msg.contains("already in use"),
            "{msg}"
        );
    }

    #[test]
    fn unix_socket_gets_mode_replaces_stale_refuses_symlink_and_live() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app.sock");
        let spec: ListenSpec = format!("unix:{}?mode=0600", path.display())
            .parse()
            .expect("ok");
        // A stale socket file (nobody listening) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("stale"));
        let b = Bound::bind(&spec, 0).expect("bind over stale");
        let meta = std::fs::symlink_metadata(&path).expect("exists");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // A live one is refused.
        let e = Bound::bind(&spec, 0).expect_err("live");
        assert!(
            e.to_string().contains("another process is listening"),
            "{e}"
        );
        b.remove_file();
        assert!(!path.exists());
        // A symlink is refused, and its target is untouched.
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").expect("write");
        std::os::unix::fs::symlink(&target, &path).expect("symlink");
        let e = Bound::bind(&spec, 0).expect_err("symlink");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read(&target).expect("read"), b"keep");
        // A regular file is refused.
        std::fs::remove_file(&path).expect("rm");
        std::fs::write(&path, b"x").expect("write");
        assert!(
            Bound::bind(&spec, 0)
                .expect_err("file")
                .to_string()
                .contains("not a socket")
        );
    }

    #[test]
    fn remove_file_leaves_a_replaced_file_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s");
        let b =
            Bound::bind(&format!("unix:{}", path.display()).parse().expect("ok"), 0).expect("bind");
        std::fs::remove_file(&path).expect("rm");
        std::fs::write(&path, b"someone else's").expect("write");
        b.remove_file();
        assert!(
            path.exists(),
            "a file baton did not create is never removed"
        );
    }
}
