//! `--ready accepting`: a worker is ready once a process of its tree (the
//! worker or a descendant) waits for connections on one of its generation's
//! listeners, as Linux shows it in `/proc`, without the app's help.
//!
//! Two ways of waiting are visible:
//!
//! * **An epoll set watching the listener for input** (event-loop servers:
//!   libuv, tokio, asyncio, Go's netpoller, nginx, Java NIO). Each epoll
//!   descriptor's `/proc/PID/fdinfo/FD` lists the files it watches, one
//!   line each, with the watched file's inode and device:
//!
//!   ```text
//!   tfd:        7 events:       19 data:                7  pos:0 ino:4e9fa5 sdev:9
//!   ```
//!
//!   The inode is the socket's own, so a `dup` of baton's fd 3 (uvicorn
//!   watches fd 7, Go's `net.FileListener` a copy of its own) still
//!   matches; `events` must include `EPOLLIN` (a disarmed `EPOLLONESHOT`
//!   entry is not waiting).
//! * **A thread blocked in `accept`/`accept4`** on the listener (blocking
//!   servers): `/proc/PID/task/TID/syscall` names the call and its first
//!   argument, the fd, which `/proc/PID/fd/FD` resolves to `socket:[INODE]`.
//! * **A thread blocked in `poll`/`ppoll` or `select`/`pselect6`** with the
//!   listener in its set for input (pre-forking servers such as gunicorn's
//!   sync workers, small C servers): the set is in the process's memory, at
//!   the address the call's arguments give, and is read from
//!   `/proc/PID/mem` (the `pollfd` array, or the first `nfds` bits of the
//!   read set). The kernel lets a process read the memory of its own
//!   descendants of the same user (and root any process); the set is read
//!   while the thread is blocked in the call, so it is the one it waits on.
//! * **A connection accepted on the listener**, held by a process of the
//!   tree: a busy blocking server (every sync worker serving) is seldom
//!   caught waiting, but it is plainly serving from the listener. When no
//!   process was seen waiting, each socket of a process that holds a
//!   listener is copied into baton (`pidfd_getfd`) and closed again after
//!   a `getsockname`: one that is not listening and has the listener's
//!   local address was accepted on it (TCP and Unix alike).
//!
//! What it cannot see, and reports as such when a generation times out:
//! a server that waits in io_uring (the accept is a request inside the
//! ring), or on a socket it opened itself instead of baton's. Those apps
//! need `--ready notify`, `fd` or `exec:`.
//!
//! The descendants come from `/proc/PID/task/TID/children` (every thread's
//! children: a child belongs to the thread that forked it). Reading another
//! process's fds and syscall needs the right to ptrace it: baton has it for
//! its own children of the same user, not for a worker that changed user
//! (unless baton is root), and says so.
//!
//! The scan runs on a thread of its own ([`Watcher`]), never on the event
//! loop: reading `/proc/PID/task/TID/syscall` takes the target's
//! `exec_update_lock` and waits for the task to be off its CPU, and a
//! process in the middle of `execve` holds that lock for as long as its
//! exec takes. A scan of a small server costs tens of microseconds.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::mpsc;
use std::time::Instant;

use crate::lifecycle::{GenId, Slot};

/// The most processes of one worker's tree that a scan looks at.
pub const MAX_PROCESSES: usize = 256;
/// The most fds of one process that a scan looks at.
pub const MAX_FDS: usize = 4096;

/// `EPOLLIN`: the watched file is waited on for input.
const EPOLLIN: u32 = 0x1;
/// `POLLIN`, in a `struct pollfd`'s `events`.
const POLLIN: i16 = 0x1;
/// The bytes of one `struct pollfd` (`int fd; short events; short revents`).
const POLLFD_SIZE: usize = 8;

/// A socket as the kernel names it: its inode and its filesystem's device
/// (sockfs), in the kernel's own encoding, the one epoll's fdinfo prints as
/// `sdev:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketId {
    pub ino: u64,
    pub sdev: u64,
}

impl SocketId {
    /// The identity of the socket `fd`.
    pub fn of(fd: impl AsFd) -> std::io::Result<Self> {
        let st = rustix::fs::fstat(fd)?;
        let dev = st.st_dev;
        Ok(Self {
            ino: st.st_ino,
            sdev: kernel_dev(rustix::fs::major(dev), rustix::fs::minor(dev)),
        })
    }
}

/// A device number in the kernel's internal encoding (`MKDEV`: major in
/// the top 12 of 32 bits), which `stat` does not use (`new_encode_dev`).
fn kernel_dev(major: u32, minor: u32) -> u64 {
    (u64::from(major) << 20) | u64::from(minor)
}

/// One of a generation's listeners, as a scan matches and names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub id: SocketId,
    /// `tcp://127.0.0.1:8080`, for messages.
    pub display: String,
    /// Its local address (`getsockname`): a connection accepted on it has
    /// the same one. `None` if it could not be read.
    pub local: Option<rustix::net::SocketAddrAny>,
}

/// One file watched by an epoll set (a line of its fdinfo).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watched {
    /// The fd it was added as, in the process that added it.
    pub tfd: i32,
    pub events: u32,
    pub id: SocketId,
}

/// The files an epoll set watches, from its `/proc/PID/fdinfo/FD`. Lines
/// that are not `tfd:` lines (`pos:`, `flags:`, ...) are skipped, and so are
/// malformed ones.
pub fn parse_epoll_fdinfo(text: &str) -> Vec<Watched> {
    text.lines().filter_map(parse_tfd_line).collect()
}

fn parse_tfd_line(line: &str) -> Option<Watched> {
    let rest = line.trim_start().strip_prefix("tfd:")?;
    let mut words = rest.split_whitespace();
    let tfd = words.next()?.parse().ok()?;
    let (mut events, mut ino, mut sdev) = (None, None, None);
    // The fields come as `events: 19` (value in the next word) and
    // `ino:4e9fa5` (value in the same word); accept either form for each.
    while let Some(word) = words.next() {
        let (key, value) = match word.split_once(':') {
            Some((k, "")) => (k, words.next()?),
            Some((k, v)) => (k, v),
            None => continue,
        };
        match key {
            "events" => events = u32::from_str_radix(value, 16).ok(),
            "ino" => ino = u64::from_str_radix(value, 16).ok(),
            "sdev" => sdev = u64::from_str_radix(value, 16).ok(),
            _ => {}
        }
    }
    Some(Watched {
        tfd,
        events: events?,
        id: SocketId {
            ino: ino?,
            sdev: sdev?,
        },
    })
}

/// What `/proc/PID/task/TID/syscall` says a thread is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Syscall {
    /// On a CPU right now (`running`).
    Running,
    /// Blocked, but not in a system call (`-1 SP PC`).
    None,
    /// Blocked in system call `nr` with these arguments.
    In { nr: i64, args: Vec<u64> },
}

/// Parses `/proc/PID/task/TID/syscall`: `running`, `-1 SP PC`, or
/// `NR ARG1..ARG6 SP PC` (the arguments in hex).
pub fn parse_syscall(text: &str) -> Option<Syscall> {
    let text = text.trim();
    if text == "running" {
        return Some(Syscall::Running);
    }
    let mut words = text.split_whitespace();
    let nr: i64 = words.next()?.parse().ok()?;
    if nr < 0 {
        return Some(Syscall::None);
    }
    let args = words
        .take(6)
        .map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16).ok())
        .collect::<Option<Vec<u64>>>()?;
    Some(Syscall::In { nr, args })
}

/// Parses `/proc/PID/task/TID/children`: pids separated by spaces.
pub fn parse_children(text: &str) -> Vec<u32> {
    text.split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// The inode in a `/proc/PID/fd/N` link to a socket (`socket:[5152677]`).
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Whether a `/proc/PID/fd/N` link is an epoll instance.
pub fn is_epoll(link: &str) -> bool {
    link == "anon_inode:[eventpoll]"
}

/// The system calls a scan tells apart: the ones that accept, and the ones
/// a server may wait in that baton cannot look into.
fn syscall_name(nr: i64) -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    const ARCH: &[(i64, &str)] = &[
        (libc::SYS_accept, "accept"),
        (libc::SYS_poll, "poll"),
        (libc::SYS_select, "select"),
        (libc::SYS_epoll_wait, "epoll_wait"),
    ];
    #[cfg(not(target_arch = "x86_64"))]
    const ARCH: &[(i64, &str)] = &[(libc::SYS_accept, "accept")];
    const ALL: &[(i64, &str)] = &[
        (libc::SYS_accept4, "accept4"),
        (libc::SYS_ppoll, "ppoll"),
        (libc::SYS_pselect6, "pselect6"),
        (libc::SYS_epoll_pwait, "epoll_pwait"),
        (libc::SYS_epoll_pwait2, "epoll_pwait2"),
        (libc::SYS_io_uring_enter, "io_uring_enter"),
    ];
    ARCH.iter()
        .chain(ALL)
        .find(|(n, _)| *n == nr)
        .map(|(_, name)| *name)
}

/// How a worker was seen waiting for connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepting {
    /// An epoll set of process `pid` watches the listener for input.
    Epoll { pid: u32, listener: String },
    /// Thread `tid` of process `pid` is blocked in `accept` on it.
    Accept {
        pid: u32,
        tid: u32,
        listener: String,
    },
    /// Process `pid` holds a connection accepted on the listener: it is
    /// serving from it (a busy blocking server is seldom caught waiting).
    Serves { pid: u32, listener: String },
    /// Thread `tid` of process `pid` waits in `call` (`poll`, `select`,
    /// ...) with the listener in its set for input.
    Polls {
        pid: u32,
        tid: u32,
        call: &'static str,
        listener: String,
    },
}

impl std::fmt::Display for Accepting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Accepting::Epoll { pid, listener } => {
                write!(f, "an epoll set of pid {pid} watches {listener}")
            }
            Accepting::Accept { pid, tid, listener } => {
                write!(f, "thread {tid} of pid {pid} is in accept on {listener}")
            }
            Accepting::Serves { pid, listener } => {
                write!(f, "pid {pid} holds a connection accepted on {listener}")
            }
            Accepting::Polls {
                pid,
                tid,
                call,
                listener,
            } => write!(
                f,
                "thread {tid} of pid {pid} waits in {call}() for {listener}"
            ),
        }
    }
}

/// What one scan of one worker's tree found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// Set when the worker waits for connections: it is ready.
    pub accepting: Option<Accepting>,
    /// Processes looked at (the worker and its descendants).
    pub processes: usize,
    /// Whether the tree has more processes than a scan looks at.
    pub truncated: bool,
    /// Epoll sets found, and the files they watch that are not listeners.
    pub epoll_sets: usize,
    pub other_watched: usize,
    /// Whether some process of the tree has one of the listeners open.
    pub holds_listener: bool,
    /// Threads in `accept` on a socket that is not one of the listeners.
    pub accept_elsewhere: usize,
    /// Calls threads wait in that baton cannot look into (io_uring).
    pub opaque: Vec<&'static str>,
    /// `poll`/`select` calls (by name) whose sets do not hold a listener.
    pub polling_elsewhere: Vec<&'static str>,
    /// The first thing that could not be read, if any (`/proc/42/fd:
    /// permission denied`).
    pub unreadable: Option<String>,
    /// The worker itself is gone (it exited meanwhile).
    pub gone: bool,
}

impl Seen {
    /// One sentence for the readiness messages: what was seen of worker
    /// `slot` (pid `pid`) that is not waiting on `listeners`.
    pub fn describe(&self, slot: Slot, pid: u32, listeners: &[Listener]) -> String {
        if let Some(how) = &self.accepting {
            return format!("worker {slot} (pid {pid}) accepts: {how}");
        }
        if self.gone {
            return format!("worker {slot} (pid {pid}) is gone");
        }
        let names: Vec<&str> = listeners.iter().map(|l| l.display.as_str()).collect();
        let names = if names.is_empty() {
            "a listener (the generation has none)".to_owned()
        } else {
            names.join(" or ")
        };
        let mut s = format!(
            "worker {slot} (pid {pid}) has no epoll set watching {names} and is not in accept on it"
        );
        let procs = if self.processes == 1 {
            "1 process".to_owned()
        } else {
            format!(
                "{}{} processes",
                self.processes,
                if self.truncated { "+" } else { "" }
            )
        };
        let _ = write!(s, " ({procs}");
        if self.epoll_sets > 0 {
            let _ = write!(
                s,
                "; {} epoll set{} watching {} other file{}",
                self.epoll_sets,
                if self.epoll_sets == 1 { "" } else { "s" },
                self.other_watched,
                if self.other_watched == 1 { "" } else { "s" }
            );
        }
        if !self.polling_elsewhere.is_empty() {
            let calls: Vec<String> = self
                .polling_elsewhere
                .iter()
                .map(|c| format!("{c}()"))
                .collect();
            let _ = write!(
                s,
                "; a thread waits in {} on other descriptors",
                calls.join(", ")
            );
        }
        if !self.opaque.is_empty() {
            let calls: Vec<String> = self.opaque.iter().map(|c| format!("{c}()")).collect();
            let _ = write!(
                s,
                "; a thread waits in {}, which baton cannot look into: io_uring servers are not seen",
                calls.join(", ")
            );
        }
        if self.accept_elsewhere > 0 {
            s.push_str("; a thread is in accept on another socket");
        }
        if !self.holds_listener && self.unreadable.is_none() {
            s.push_str(
                "; none of its processes has the listener open: an app that listens on a socket of its own is not seen (give it baton's, fd 3)",
            );
        }
        if let Some(e) = &self.unreadable {
            let _ = write!(s, "; cannot read {e}");
        }
        s.push(')');
        s
    }
}

/// Looks at worker `pid` and its descendants: does any of them wait for
/// connections on one of `listeners`?
pub fn scan(pid: u32, listeners: &[Listener]) -> Seen {
    scan_in(Path::new("/proc"), pid, listeners)
}

/// [`scan`] against a `/proc` at `proc` (a copy, in tests).
pub fn scan_in(proc: &Path, pid: u32, listeners: &[Listener]) -> Seen {
    let mut seen = Seen::default();
    let inodes: HashMap<u64, &Listener> = listeners.iter().map(|l| (l.id.ino, l)).collect();
    let mut todo = vec![pid];
    let mut i = 0;
    // Processes holding a listener and other sockets: looked into at the
    // end, if no process was seen waiting.
    let mut holders: Vec<Holder<'_>> = Vec::new();
    while i < todo.len() {
        let p = todo[i];
        i += 1;
        let Some(children) = scan_process(proc, p, &inodes, &mut seen, &mut holders) else {
            if p == pid {
                seen.gone = true;
                return seen;
            }
            continue;
        };
        seen.processes += 1;
        if seen.accepting.is_some() {
            return seen;
        }
        for c in children {
            if todo.len() >= MAX_PROCESSES {
                seen.truncated = true;
                break;
            }
            if !todo.contains(&c) {
                todo.push(c);
            }
        }
    }
    // Only in the real /proc: the copies are taken from live processes.
    if proc == Path::new("/proc")
        && seen.accepting.is_none()
        && let Some((pid, l)) = serves_from(&holders)
    {
        seen.accepting = Some(Accepting::Serves {
            pid,
            listener: l.display.clone(),
        });
    }
    seen
}

/// A process that holds a listener and other sockets (see [`serves_from`]).
struct Holder<'a> {
    pid: u32,
    listeners: Vec<&'a Listener>,
    /// Its other sockets' fds.
    sockets: Vec<i32>,
}

/// Scans one process into `seen`; returns its children, or `None` if it is
/// gone.
fn scan_process<'a>(
    proc: &Path,
    pid: u32,
    listeners: &HashMap<u64, &'a Listener>,
    seen: &mut Seen,
    holders: &mut Vec<Holder<'a>>,
) -> Option<Vec<u32>> {
    let base = proc.join(pid.to_string());
    let tasks = std::fs::read_dir(base.join("task")).ok()?;
    let mut tids: Vec<u32> = tasks
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    // Its fds: the listeners it holds (fd -> listener), and its epoll sets.
    let mut held: HashMap<i32, &'a Listener> = HashMap::new();
    // Its other sockets: (fd, inode).
    let mut sockets: Vec<(i32, u64)> = Vec::new();
    let mut epolls = Vec::new();
    match std::fs::read_dir(base.join("fd")) {
        Ok(fds) => {
            for entry in fds.filter_map(Result::ok).take(MAX_FDS) {
                let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                    continue;
                };
                let Ok(link) = std::fs::read_link(entry.path()) else {
                    continue;
                };
                let link = link.to_string_lossy();
                if let Some(ino) = socket_inode(&link) {
                    if let Some(l) = listeners.get(&ino) {
                        held.insert(fd, l);
                    } else {
                        sockets.push((fd, ino));
                    }
                } else if is_epoll(&link) {
                    epolls.push(fd);
                }
            }
        }
        Err(e) => note_unreadable(seen, &base.join("fd"), &e),
    }
    if !held.is_empty() {
        seen.holds_listener = true;
    }
    for fd in epolls {
        let path = base.join("fdinfo").join(fd.to_string());
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                note_unreadable(seen, &path, &e);
                continue;
            }
        };
        seen.epoll_sets += 1;
        for w in parse_epoll_fdinfo(&text) {
            // Matched by inode and device, not by fd: the set may watch a
            // dup, or a copy made by another process of the tree.
            match listeners.get(&w.id.ino) {
                Some(l) if l.id == w.id && w.events & EPOLLIN != 0 => {
                    seen.accepting = Some(Accepting::Epoll {
                        pid,
                        listener: l.display.clone(),
                    });
                    return Some(Vec::new());
                }
                Some(l) if l.id == w.id => {}
                _ => seen.other_watched += 1,
            }
        }
    }
    let mut children = Vec::new();
    for tid in tids {
        let task = base.join("task").join(tid.to_string());
        if let Ok(text) = std::fs::read_to_string(task.join("children")) {
            children.extend(parse_children(&text));
        }
        let path = task.join("syscall");
        let call = match std::fs::read_to_string(&path) {
            Ok(text) => parse_syscall(&text),
            Err(e) => {
                note_unreadable(seen, &path, &e);
                continue;
            }
        };
        let Some(Syscall::In { nr, args }) = call else {
            continue;
        };
        match syscall_name(nr) {
            Some("accept" | "accept4") => {
                let fd = args.first().map(|a| *a as i32);
                match fd.and_then(|fd| held.get(&fd)) {
                    Some(l) => {
                        seen.accepting = Some(Accepting::Accept {
                            pid,
                            tid,
                            listener: l.display.clone(),
                        });
                        return Some(Vec::new());
                    }
                    None => {
                        if fd.is_some_and(|fd| sockets.iter().any(|(s, _)| *s == fd)) {
                            seen.accept_elsewhere += 1;
                        }
                    }
                }
            }
            Some(call @ ("poll" | "ppoll" | "select" | "pselect6")) => {
                match polled_listener(&base, call, &args, &held, seen) {
                    Some(l) => {
                        seen.accepting = Some(Accepting::Polls {
                            pid,
                            tid,
                            call,
                            listener: l.display.clone(),
                        });
                        return Some(Vec::new());
                    }
                    None if !seen.polling_elsewhere.contains(&call) => {
                        seen.polling_elsewhere.push(call);
                    }
                    None => {}
                }
            }
            Some(name @ "io_uring_enter") if !seen.opaque.contains(&name) => {
                seen.opaque.push(name);
            }
            _ => {}
        }
    }
    if !held.is_empty() && !sockets.is_empty() {
        holders.push(Holder {
            pid,
            listeners: held.values().copied().collect(),
            sockets: sockets.iter().map(|(fd, _)| *fd).collect(),
        });
    }
    Some(children)
}

/// The most sockets of one process a look takes a copy of.
pub const MAX_SOCKETS: usize = 64;

/// A holder (and the listener) with a socket accepted on one of its
/// listeners: each of its sockets (up to [`MAX_SOCKETS`]) is copied into
/// baton with `pidfd_getfd` (the same right to ptrace as the rest of a
/// look), and one whose local address is a listener's, and which is not
/// listening itself, came from that listener. The copy is closed at once:
/// the connection stays the holder's.
fn serves_from<'a>(holders: &[Holder<'a>]) -> Option<(u32, &'a Listener)> {
    use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags, pidfd_getfd, pidfd_open};
    for h in holders {
        let mine: Vec<(&'a Listener, rustix::net::SocketAddrAny)> = h
            .listeners
            .iter()
            .filter_map(|l| Some((*l, l.local.clone()?)))
            .collect();
        if mine.is_empty() {
            continue;
        }
        let pid = Pid::from_raw(i32::try_from(h.pid).ok()?)?;
        let Ok(pidfd) = pidfd_open(pid, PidfdFlags::empty()) else {
            continue;
        };
        for &fd in h.sockets.iter().take(MAX_SOCKETS) {
            let Ok(copy) = pidfd_getfd(&pidfd, fd, PidfdGetfdFlags::empty()) else {
                continue;
            };
            let listening = rustix::net::sockopt::socket_acceptconn(&copy).unwrap_or(true);
            let Ok(local) = rustix::net::getsockname(&copy) else {
                continue;
            };
            drop(copy);
            if listening {
                continue;
            }
            if let Some((l, _)) = mine.iter().find(|(_, addr)| accepted_on(addr, &local)) {
                return Some((h.pid, *l));
            }
        }
    }
    None
}

/// Whether a connection whose local address is `local` can have been
/// accepted on a listener bound to `listener`: the same address, or the
/// same port on any address for a wildcard listener (`0.0.0.0`, `[::]`,
/// which also takes IPv4 connections as `::ffff:a.b.c.d`).
fn accepted_on(listener: &rustix::net::SocketAddrAny, local: &rustix::net::SocketAddrAny) -> bool {
    if listener == local {
        return true;
    }
    match (
        std::net::SocketAddr::try_from(listener.clone()),
        std::net::SocketAddr::try_from(local.clone()),
    ) {
        (Ok(l), Ok(c)) => l.ip().is_unspecified() && l.port() == c.port(),
        _ => false,
    }
}

/// The listener a thread blocked in `call` waits on for input, if any: its
/// set, read from the process's memory at the address in the call's
/// arguments (`poll(fds, nfds, ..)`, `select(nfds, readfds, ..)`), holds
/// one of the fds in `held`. Hand-written: no crate reads another
/// process's poll set, and the layouts are the kernel's ABI.
fn polled_listener<'a>(
    base: &Path,
    call: &str,
    args: &[u64],
    held: &HashMap<i32, &'a Listener>,
    seen: &mut Seen,
) -> Option<&'a Listener> {
    use std::os::unix::fs::FileExt as _;
    if held.is_empty() {
        return None;
    }
    let path = base.join("mem");
    let read = |addr: u64, len: usize, seen: &mut Seen| -> Option<Vec<u8>> {
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                note_unreadable(seen, &path, &e);
                return None;
            }
        };
        let mut buf = vec![0u8; len];
        match file.read_exact_at(&mut buf, addr) {
            Ok(()) => Some(buf),
            Err(e) => {
                note_unreadable(seen, &path, &e);
                None
            }
        }
    };
    match call {
        "poll" | "ppoll" => {
            let (addr, nfds) = (*args.first()?, usize::try_from(*args.get(1)?).ok()?);
            if addr == 0 || nfds == 0 || nfds > MAX_FDS {
                return None;
            }
            let set = read(addr, nfds * POLLFD_SIZE, seen)?;
            set.chunks_exact(POLLFD_SIZE).find_map(|p| {
                let fd = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
                let events = i16::from_ne_bytes([p[4], p[5]]);
                held.get(&fd).filter(|_| events & POLLIN != 0).copied()
            })
        }
        "select" | "pselect6" => {
            let (nfds, addr) = (usize::try_from(*args.first()?).ok()?, *args.get(1)?);
            if addr == 0 || nfds == 0 || nfds > MAX_FDS {
                return None;
            }
            // An fd_set is an array of longs, bit N of the set is bit
            // N % 64 of long N / 64: in bytes, bit N % 8 of byte N / 8 on a
            // little-endian machine; read whole longs to stay right on a
            // big-endian one.
            let longs = nfds.div_ceil(64);
            let set = read(addr, longs * 8, seen)?;
            held.iter().find_map(|(&fd, l)| {
                let fd = usize::try_from(fd).ok().filter(|&fd| fd < nfds)?;
                let word = set.get(fd / 64 * 8..fd / 64 * 8 + 8)?;
                let word = u64::from_ne_bytes(word.try_into().ok()?);
                (word >> (fd % 64) & 1 == 1).then_some(*l)
            })
        }
        _ => None,
    }
}

fn note_unreadable(seen: &mut Seen, path: &Path, e: &std::io::Error) {
    // A process that exits mid-scan is not "unreadable".
    if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) {
        return;
    }
    if seen.unreadable.is_none() {
        let why = if e.kind() == std::io::ErrorKind::PermissionDenied {
            "permission denied (a worker that runs as another user can be looked into only by a baton running as root)".to_owned()
        } else {
            e.to_string()
        };
        seen.unreadable = Some(format!("{}: {why}", path.display()));
    }
}

/// A request to the watcher thread: look at these workers of a generation
/// at `due`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub generation: GenId,
    /// When to look. The thread sleeps until then with the precision of a
    /// futex wait; the event loop's own timers have whole milliseconds.
    pub due: std::time::Instant,
    /// (slot, pid) of each worker to look at.
    pub workers: Vec<(Slot, u32)>,
    pub listeners: Vec<Listener>,
}

/// The watcher thread's answer to a [`Check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub generation: GenId,
    pub workers: Vec<WorkerSeen>,
}

/// What was seen of one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSeen {
    pub slot: Slot,
    pub pid: u32,
    pub seen: Seen,
    /// [`Seen::describe`], made on the watcher thread.
    pub description: String,
    /// How long the scan took.
    pub took: std::time::Duration,
}

/// Carries out one check.
fn look(check: &Check) -> Checked {
    let workers = check
        .workers
        .iter()
        .map(|&(slot, pid)| {
            let start = Instant::now();
            let seen = scan(pid, &check.listeners);
            let took = start.elapsed();
            let description = seen.describe(slot, pid, &check.listeners);
            WorkerSeen {
                slot,
                pid,
                seen,
                description,
                took,
            }
        })
        .collect();
    Checked {
        generation: check.generation,
        workers,
    }
}

/// The thread that scans (see the module docs for why not the loop).
/// Dropping it ends the thread once it has finished the scan at hand.
#[derive(Debug)]
pub struct Watcher {
    tx: mpsc::Sender<Check>,
    rx: mpsc::Receiver<Checked>,
}

impl Watcher {
    /// Starts the thread; `wake` is called after each answer is queued.
    pub fn start(wake: Box<dyn Fn() + Send>) -> std::io::Result<Self> {
        let (tx, jobs) = mpsc::channel::<Check>();
        let (done, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("baton-accepting".into())
            .spawn(move || {
                let mut pending: Vec<Check> = Vec::new();
                loop {
                    // Sleep until the next look is due or a check arrives.
                    let next = pending.iter().map(|c| c.due).min();
                    let got = match next {
                        None => jobs
                            .recv()
                            .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                        Some(due) => {
                            jobs.recv_timeout(due.saturating_duration_since(Instant::now()))
                        }
                    };
                    match got {
                        Ok(check) => pending.push(check),
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    let now = Instant::now();
                    let (due, later): (Vec<Check>, Vec<Check>) =
                        pending.drain(..).partition(|c| c.due <= now);
                    pending = later;
                    for check in due {
                        if done.send(look(&check)).is_err() {
                            return;
                        }
                        wake();
                    }
                }
            })?;
        Ok(Self { tx, rx })
    }

    /// Queues a check; `false` if the thread is gone.
    pub fn send(&self, check: Check) -> bool {
        self.tx.send(check).is_ok()
    }

    /// The answers that arrived so far.
    pub fn results(&self) -> Vec<Checked> {
        self.rx.try_iter().collect()
    }
}

#[cfg(test)]
mod tests;
