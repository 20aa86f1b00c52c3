//! Self-upgrade without a supervisor: a running server starts the new
//! version of itself, hands it the listening sockets, waits until it is
//! ready, and only then stops accepting and drains.
//!
//! ```no_run
//! use baton_app::upgrade::Upgrader;
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let upgrader = Upgrader::builder()
//!     .ready_timeout(Duration::from_secs(30))
//!     .pid_file("/run/myserver.pid")
//!     .build()?;
//! // Inherited from the previous process if it passed one named "web",
//! // bound fresh otherwise.
//! let listener = upgrader.tcp_listener("web", "127.0.0.1:8080")?;
//! // ... start serving on `listener` ...
//! upgrader.ready()?; // the previous process (if any) may now drain
//!
//! // Later, on SIGHUP (from a signal thread or spawn_blocking):
//! match upgrader.upgrade() {
//!     Ok(handover) => { /* stop accepting, drain, exit */ }
//!     Err(e) => eprintln!("upgrade failed, still serving: {e}"),
//! }
//! # drop(listener);
//! # Ok(())
//! # }
//! ```
//!
//! # How it works
//!
//! [`Upgrader::upgrade`] executes the program at the path this process was
//! started from (re-read from disk, so a replaced binary is picked up) with
//! the same arguments. The child gets every registered listener at fds 3..
//! with `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES` (so the same code
//! path also works under systemd socket activation and `baton run`), a pipe
//! in `BATON_READY_FD` on which its [`Upgrader::ready`] writes a newline, and
//! optionally a state payload in `BATON_STATE_FD`.
//!
//! # Invariants and failure modes
//!
//! * The old process keeps serving until the child reported ready. If the
//!   child exits, crashes or misses the deadline, it is killed and reaped and
//!   `upgrade` returns an error saying which; the old process serves on.
//! * One upgrade runs at a time: a concurrent call returns
//!   [`UpgradeError::InProgress`]; a call after a successful hand-over
//!   returns [`UpgradeError::HandedOver`].
//! * Back-to-back upgrades work: the child may upgrade again as soon as it
//!   is ready, even while its parent is still draining. Each process bounds
//!   its own drain (see [`exit_after`]), so at most
//!   `drain deadline / upgrade interval` old processes exist at once.
//! * The pid file, if asked for, is replaced atomically (temporary file and
//!   rename) by the process that becomes ready, so it always names the
//!   process that accepts new connections. Under systemd the parent sends
//!   `MAINPID=<child>` once the child is ready, so the unit follows it.
//! * Nothing is inherited by accident: the child's descriptors are exactly
//!   0–2, the listeners, the readiness pipe and the state, if any.

use std::ffi::OsString;
use std::io::Write as _;
use std::net::{TcpListener, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use baton_sys::spawn::{Child, Command, ExitStatus};

use crate::listeners::{InheritError, Inherited, Listener};
use crate::notify::{Notifier, NotifyError};

/// The default readiness deadline for an upgraded child.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The default largest state payload.
pub const DEFAULT_MAX_STATE: usize = 64 * 1024 * 1024;

const STATE_MAGIC: &[u8; 8] = b"BATONST1";
const STATE_HEADER: usize = 8 + 4 + 8;

/// Variables the upgrader sets for the child; inherited values are dropped.
const OWN_VARS: [&str; 7] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "BATON_READY_FD",
    "BATON_STATE_FD",
    "BATON_GENERATION",
    UPGRADED_FROM,
];

/// Set for a process started by [`Upgrader::upgrade`]: the parent's pid.
const UPGRADED_FROM: &str = "BATON_UPGRADED_FROM";

/// Why an upgrade, or setting one up, failed.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("an upgrade is already in progress")]
    InProgress,
    #[error("this process already handed over to pid {0} and is draining")]
    HandedOver(u32),
    #[error("the new process (pid {pid}) exited with {status} before it was ready")]
    ChildExited { pid: u32, status: ExitStatus },
    #[error("the new process (pid {pid}) was not ready within {timeout:?}; it was killed")]
    NotReady { pid: u32, timeout: Duration },
    #[error("cannot start the new process {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: baton_sys::spawn::SpawnError,
    },
    #[error("cannot find this program's own path (/proc/self/exe): {0}")]
    OwnPath(#[source] std::io::Error),
    #[error("state payload of {size} bytes exceeds the limit of {limit} bytes")]
    StateTooLarge { size: usize, limit: usize },
    #[error("listener name {0:?} is not usable: it must be non-empty and without ':'")]
    BadName(String),
    #[error("cannot bind {what}: {source}")]
    Bind {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("inherited socket {name:?} is not usable: {source}")]
    Inherit {
        name: String,
        #[source]
        source: InheritError,
    },
    #[error(transparent)]
    Notify(#[from] NotifyError),
    #[error("cannot write the pid file {path}: {source}")]
    PidFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Why the state handed over by the previous process cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "the state was written by format version {found}, this program reads version {expected}"
    )]
    VersionMismatch { found: u32, expected: u32 },
    #[error("the state is not in baton's format (bad magic)")]
    BadMagic,
    #[error("the state is truncated: expected {expected} bytes, got {got}")]
    Truncated { expected: u64, got: u64 },
    #[error("the state of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: u64, limit: usize },
    #[error("BATON_STATE_FD={0:?} is not a descriptor number")]
    BadFd(String),
    #[error("cannot read the state: {0}")]
    Io(#[source] std::io::Error),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> UpgradeError {
    move |source| UpgradeError::Io { what, source }
}

/// Configures an [`Upgrader`].
#[derive(Debug, Clone)]
pub struct UpgraderBuilder {
    ready_timeout: Duration,
    pid_file: Option<PathBuf>,
    max_state: usize,
    state_version: u32,
}

/// The result of a successful upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handover {
    /// The new process, now serving.
    pub child_pid: u32,
    /// From the start of the upgrade until the child reported ready.
    pub ready_after: Duration,
}

#[derive(Debug)]
enum Phase {
    Serving,
    Upgrading,
    HandedOver(u32),
}

#[derive(Debug)]
struct Inner {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<OsString>,
    generation: u64,
    /// The parent's pid, when this process was started by an upgrade.
    upgraded_from: Option<u32>,
    /// Set by the first [`Upgrader::ready`].
    reported_ready: std::sync::atomic::AtomicBool,
    ready_timeout: Duration,
    pid_file: Option<PathBuf>,
    max_state: usize,
    state_version: u32,
    notifier: Notifier,
    inherited: Mutex<Inherited>,
    /// What is handed to the next process, in order: name and a duplicate
    /// of each listener this process serves on.
    registered: Mutex<Vec<(String, OwnedFd)>>,
    state: Mutex<Option<OwnedFd>>,
    phase: Mutex<Phase>,
    /// Children that did not become ready are reaped at once; the one that
    /// did is kept here so it is not reaped (it outlives us).
    successor: Mutex<Option<Child>>,
}

/// Hands a running server over to a new copy of itself. Cheap to clone;
/// all clones share one state.
#[derive(Debug, Clone)]
pub struct Upgrader {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for UpgraderBuilder {
    fn default() -> Self {
        Self {
            ready_timeout: DEFAULT_READY_TIMEOUT,
            pid_file: None,
            max_state: DEFAULT_MAX_STATE,
            state_version: 1,
        }
    }
}

impl UpgraderBuilder {
    /// How long a new process may take to report ready.
    #[must_use]
    pub fn ready_timeout(mut self, d: Duration) -> Self {
        self.ready_timeout = d;
        self
    }

    /// Keep a pid file naming the serving process.
    #[must_use]
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.pid_file = Some(path.into());
        self
    }

    /// The largest state payload accepted in either direction.
    #[must_use]
    pub fn max_state(mut self, bytes: usize) -> Self {
        self.max_state = bytes;
        self
    }

    /// The version of the application's state format. A child whose
    /// version differs refuses the state with
    /// [`StateError::VersionMismatch`].
    #[must_use]
    pub fn state_version(mut self, version: u32) -> Self {
        self.state_version = version;
        self
    }

    /// Reads the environment once (inherited sockets, readiness channel,
    /// state) and returns the upgrader.
    pub fn build(self) -> Result<Upgrader, UpgradeError> {
        let program = std::fs::read_link("/proc/self/exe").map_err(UpgradeError::OwnPath)?;
        let inherited = Inherited::from_env().map_err(|source| UpgradeError::Inherit {
            name: "(all)".into(),
            source,
        })?;
        let notifier = Notifier::from_env()?;
        let state = match std::env::var("BATON_STATE_FD") {
            Ok(v) => {
                let fd = v.trim().parse().map_err(|_| UpgradeError::Io {
                    what: "BATON_STATE_FD is not a number",
                    source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
                })?;
                Some(baton_sys::fd::claim_fd(fd).map_err(io("cannot claim BATON_STATE_FD"))?)
            }
            Err(_) => None,
        };
        let upgraded_from = std::env::var(UPGRADED_FROM)
            .ok()
            .and_then(|p| p.trim().parse().ok());
        let generation = std::env::var("BATON_GENERATION")
            .ok()
            .and_then(|g| g.parse().ok())
            .unwrap_or(1);
        let env = std::env::vars_os()
            .filter(|(k, _)| !OWN_VARS.iter().any(|v| k == v))
            .map(|(k, v)| {
                let mut kv = k;
                kv.push("=");
                kv.push(v);
                kv
            })
            .collect();
        Ok(Upgrader {
            inner: Arc::new(Inner {
                program,
                args: std::env::args_os().collect(),
                env,
                generation,
                upgraded_from,
                reported_ready: std::sync::atomic::AtomicBool::new(false),
                ready_timeout: self.ready_timeout,
                pid_file: self.pid_file,
                max_state: self.max_state,
                state_version: self.state_version,
                notifier,
                inherited: Mutex::new(inherited),
                registered: Mutex::new(Vec::new()),
                state: Mutex::new(state),
                phase: Mutex::new(Phase::Serving),
                successor: Mutex::new(None),
            }),
        })
    }
}

impl Upgrader {
    pub fn builder() -> UpgraderBuilder {
        UpgraderBuilder::default()
    }

    /// This process's place in the chain of upgrades: 1 for the first
    /// process, 2 for its successor, and so on (`BATON_GENERATION`).
    pub fn generation(&self) -> u64 {
        self.inner.generation
    }

    /// Whether this process was started by a previous one's upgrade.
    pub fn is_successor(&self) -> bool {
        self.inner.upgraded_from.is_some()
    }

    /// The pid of the process that started this one by an upgrade, if one
    /// did.
    pub fn upgraded_from(&self) -> Option<u32> {
        self.inner.upgraded_from
    }

    fn register(&self, name: &str, fd: &impl AsFd) -> Result<(), UpgradeError> {
        check_name(name)?;
        let dup = fd
            .as_fd()
            .try_clone_to_owned()
            .map_err(io("cannot duplicate a listener"))?;
        lock(&self.inner.registered).push((name.to_owned(), dup));
        Ok(())
    }

    /// The socket named `name`: taken from the inherited ones with `take`,
    /// or made with `bind` (`what` names it for errors); registered to be
    /// passed on to the next process under the same name.
    fn inherit_or_bind<T: AsFd>(
        &self,
        name: &str,
        take: impl FnOnce(&mut Inherited, &str) -> Result<Option<T>, InheritError>,
        what: impl FnOnce() -> String,
        bind: impl FnOnce() -> std::io::Result<T>,
    ) -> Result<T, UpgradeError> {
        check_name(name)?;
        let inherited = take(&mut lock(&self.inner.inherited), name).map_err(|source| {
            UpgradeError::Inherit {
                name: name.to_owned(),
                source,
            }
        })?;
        let socket = match inherited {
            Some(s) => s,
            None => bind().map_err(|source| UpgradeError::Bind {
                what: what(),
                source,
            })?,
        };
        self.register(name, &socket)?;
        Ok(socket)
    }

    /// The TCP listener named `name`: inherited if the previous process (or
    /// systemd) passed one by that name, bound to `addr` otherwise. It is
    /// passed on to the next process under the same name.
    pub fn tcp_listener(
        &self,
        name: &str,
        addr: impl ToSocketAddrs + std::fmt::Debug,
    ) -> Result<TcpListener, UpgradeError> {
        self.inherit_or_bind(
            name,
            Inherited::take_tcp,
            || format!("{addr:?}"),
            || TcpListener::bind(&addr),
        )
    }

    /// The Unix stream listener named `name`, inherited or bound at `path`.
    pub fn unix_listener(&self, name: &str, path: &Path) -> Result<UnixListener, UpgradeError> {
        self.inherit_or_bind(
            name,
            Inherited::take_unix,
            || path.display().to_string(),
            || UnixListener::bind(path),
        )
    }

    /// The UDP socket named `name`, inherited or bound to `addr`.
    pub fn udp_socket(
        &self,
        name: &str,
        addr: impl ToSocketAddrs + std::fmt::Debug,
    ) -> Result<UdpSocket, UpgradeError> {
        self.inherit_or_bind(
            name,
            Inherited::take_udp,
            || format!("{addr:?}"),
            || UdpSocket::bind(&addr),
        )
    }

    /// Any other inherited listener by name, without binding a fallback.
    pub fn take_inherited(&self, name: &str) -> Result<Option<Listener>, UpgradeError> {
        let taken =
            lock(&self.inner.inherited)
                .take(name)
                .map_err(|source| UpgradeError::Inherit {
                    name: name.to_owned(),
                    source,
                })?;
        if let Some(l) = &taken {
            match l {
                Listener::Tcp(t) => self.register(name, t)?,
                Listener::Unix(u) => self.register(name, u)?,
            }
        }
        Ok(taken)
    }

    /// The state the previous process handed over, if any (taken once).
    pub fn take_state(&self) -> Result<Option<Vec<u8>>, StateError> {
        let Some(fd) = lock(&self.inner.state).take() else {
            return Ok(None);
        };
        read_state(&fd, self.inner.state_version, self.inner.max_state).map(Some)
    }

    /// Reports that this process serves: writes the pid file, then tells
    /// the previous process (which then drains) or the service manager.
    ///
    /// A state payload that was handed over but not taken with
    /// [`Upgrader::take_state`] is closed here: after `ready`, this
    /// process holds no descriptor it inherited other than its listeners.
    ///
    /// A process started by an upgrade reports only to its parent (on the
    /// readiness pipe); the parent forwards `MAINPID=` and `READY=1` to
    /// systemd, which accepts them only from the unit's main process.
    pub fn ready(&self) -> Result<(), UpgradeError> {
        if lock(&self.inner.state).take().is_some() {
            tracing::debug!("the handed-over state was not taken; closing it");
        }
        if let Some(path) = &self.inner.pid_file {
            write_pid_file(path, std::process::id())?;
        }
        self.inner
            .reported_ready
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if self.inner.upgraded_from.is_some() {
            self.inner.notifier.ready_fd()?;
        } else {
            self.inner.notifier.ready()?;
        }
        Ok(())
    }

    /// Starts the new process and waits until it is ready (at most the
    /// ready timeout). On success this process should stop accepting, drain
    /// and exit; on failure it keeps serving, and the error says why.
    pub fn upgrade(&self) -> Result<Handover, UpgradeError> {
        self.upgrade_inner(None)
    }

    /// Like [`Upgrader::upgrade`], handing `state` to the new process, which
    /// reads it with [`Upgrader::take_state`] before it reports ready.
    pub fn upgrade_with_state(&self, state: &[u8]) -> Result<Handover, UpgradeError> {
        self.upgrade_inner(Some(state))
    }

    /// The pid of the process this one handed over to, if it has.
    pub fn handed_over_to(&self) -> Option<u32> {
        match *lock(&self.inner.phase) {
            Phase::HandedOver(pid) => Some(pid),
            Phase::Serving | Phase::Upgrading => None,
        }
    }

    fn upgrade_inner(&self, state: Option<&[u8]>) -> Result<Handover, UpgradeError> {
        {
            let mut phase = lock(&self.inner.phase);
            match *phase {
                Phase::Upgrading => return Err(UpgradeError::InProgress),
                Phase::HandedOver(pid) => return Err(UpgradeError::HandedOver(pid)),
                Phase::Serving => *phase = Phase::Upgrading,
            }
        }
        // Back to `Serving` however `run_upgrade` ends, a panic included,
        // unless it handed over.
        let mut guard = PhaseGuard {
            inner: &self.inner,
            handed_over: None,
        };
        let _ = self.inner.notifier.reloading().map_err(|e| {
            tracing::warn!("cannot tell the service manager about the upgrade: {e}");
        });
        let result = self.run_upgrade(state);
        match &result {
            Ok(h) => guard.handed_over = Some(h.child_pid),
            Err(e) => self.after_failure(e),
        }
        result
    }

    /// Puts things back after a failed upgrade: the pid file names this
    /// process again (the child may have written it just before it was
    /// killed at the deadline), and the service manager learns that the
    /// reload is over.
    fn after_failure(&self, e: &UpgradeError) {
        if let Some(path) = &self.inner.pid_file
            && self
                .inner
                .reported_ready
                .load(std::sync::atomic::Ordering::SeqCst)
            && std::fs::read_to_string(path).ok().as_deref().map(str::trim)
                != Some(std::process::id().to_string().as_str())
            && let Err(e) = write_pid_file(path, std::process::id())
        {
            tracing::error!("after a failed upgrade: {e}");
        }
        let why = e.to_string().replace('\n', " ");
        let _ = self
            .inner
            .notifier
            .send(&format!("READY=1\nSTATUS=upgrade failed: {why}"));
    }

    fn run_upgrade(&self, state: Option<&[u8]>) -> Result<Handover, UpgradeError> {
        let started = Instant::now();
        let inner = &self.inner;
        let state_fd = match state {
            Some(bytes) => Some(write_state(bytes, inner.state_version, inner.max_state)?),
            None => None,
        };
        let (ready_r, ready_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| UpgradeError::Io {
                what: "cannot create the readiness pipe",
                source: e.into(),
            })?;
        let registered = lock(&inner.registered);
        let mut fds: Vec<_> = registered.iter().map(|(_, fd)| fd.as_fd()).collect();
        let names: Vec<&str> = registered.iter().map(|(n, _)| n.as_str()).collect();
        let mut env = inner.env.clone();
        let var = |k: &str, v: String| OsString::from(format!("{k}={v}"));
        env.push(var("LISTEN_FDS", fds.len().to_string()));
        env.push(var("LISTEN_FDNAMES", names.join(":")));
        env.push(var("BATON_GENERATION", (inner.generation + 1).to_string()));
        env.push(var(UPGRADED_FROM, std::process::id().to_string()));
        env.push(var("BATON_READY_FD", (3 + fds.len()).to_string()));
        fds.push(ready_w.as_fd());
        if let Some(fd) = &state_fd {
            env.push(var("BATON_STATE_FD", (3 + fds.len()).to_string()));
            fds.push(fd.as_fd());
        }
        let child = baton_sys::spawn::spawn(&Command {
            program: &inner.program,
            args: &inner.args,
            env: &env,
            listen_pid: true,
            fds: &fds,
            stdio: [None, None, None],
            chdir: None,
            new_process_group: false,
            // The child must outlive this process: no parent-death signal.
            parent_death_signal: None,
            // The successor gets this process's limits, unchanged.
            nofile_soft_limit: None,
            cgroup: None,
            program_fd: None,
            credentials: None,
            no_new_privs: false,
        })
        .map_err(|source| UpgradeError::Spawn {
            program: inner.program.display().to_string(),
            source,
        })?;
        drop(registered);
        drop(ready_w);
        drop(state_fd);
        let pid = child.pid;
        tracing::info!("upgrade: started pid {pid}, waiting for it to be ready");
        match wait_ready(&child, &ready_r, inner.ready_timeout) {
            Wait::Ready => {
                let ready_after = started.elapsed();
                tracing::info!("upgrade: pid {pid} ready after {ready_after:?}; handing over");
                // Under systemd the unit follows the new main process. The
                // child serves already: failing to tell systemd must not
                // turn this into a failed upgrade (two processes would then
                // accept, and neither would drain), so it is only logged.
                if let Err(e) = inner.notifier.send(&format!("MAINPID={pid}\nREADY=1")) {
                    tracing::warn!(
                        "upgrade: cannot send MAINPID={pid} to the service manager: {e}"
                    );
                }
                *lock(&inner.successor) = Some(child);
                Ok(Handover {
                    child_pid: pid,
                    ready_after,
                })
            }
            Wait::Exited(status) => Err(UpgradeError::ChildExited { pid, status }),
            Wait::Timeout => {
                let _ = baton_sys::spawn::signal(&child, rustix::process::Signal::KILL.as_raw());
                reap_blocking(&child);
                Err(UpgradeError::NotReady {
                    pid,
                    timeout: inner.ready_timeout,
                })
            }
        }
    }
}

/// Restores [`Phase::Serving`] unless the upgrade handed over.
struct PhaseGuard<'a> {
    inner: &'a Inner,
    handed_over: Option<u32>,
}

impl Drop for PhaseGuard<'_> {
    fn drop(&mut self) {
        *lock(&self.inner.phase) = match self.handed_over {
            Some(pid) => Phase::HandedOver(pid),
            None => Phase::Serving,
        };
    }
}

fn check_name(name: &str) -> Result<(), UpgradeError> {
    if name.is_empty() || name.contains(':') {
        return Err(UpgradeError::BadName(name.to_owned()));
    }
    Ok(())
}

enum Wait {
    Ready,
    Exited(ExitStatus),
    Timeout,
}

/// Waits for a newline on `ready`, the child's exit, or the deadline.
fn wait_ready(child: &Child, ready: &OwnedFd, timeout: Duration) -> Wait {
    use rustix::event::{PollFd, PollFlags};
    let deadline = Instant::now() + timeout;
    let mut eof = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Wait::Timeout;
        }
        let ts = rustix::time::Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut fds = vec![PollFd::new(&child.pidfd, PollFlags::IN)];
        if !eof {
            fds.push(PollFd::new(ready, PollFlags::IN));
        }
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => return Wait::Timeout,
        }
        let ready_revents = fds.get(1).map(PollFd::revents);
        let exit_revents = fds[0].revents();
        if let Some(rev) = ready_revents
            && !rev.is_empty()
        {
            let mut buf = [0u8; 16];
            match rustix::io::read(ready, &mut buf) {
                Ok(n) if buf[..n].contains(&b'\n') => return Wait::Ready,
                Ok(0) | Err(_) => eof = true,
                Ok(_) => {}
            }
        }
        if !exit_revents.is_empty()
            && let Ok(Some(status)) = baton_sys::spawn::try_reap(child)
        {
            return Wait::Exited(status);
        }
    }
}

fn reap_blocking(child: &Child) {
    loop {
        let mut fds = [rustix::event::PollFd::new(
            &child.pidfd,
            rustix::event::PollFlags::IN,
        )];
        let _ = rustix::event::poll(&mut fds, None);
        match baton_sys::spawn::try_reap(child) {
            Ok(None) => {}
            Ok(Some(_)) | Err(_) => return,
        }
    }
}

fn write_pid_file(path: &Path, pid: u32) -> Result<(), UpgradeError> {
    let err = |source| UpgradeError::PidFile {
        path: path.display().to_string(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    writeln!(tmp, "{pid}").map_err(err)?;
    // No fsync: the rename makes the switch atomic for readers, which is
    // what a pid file needs; durability across a crash is not (a pid means
    // nothing after a reboot), and an fsync costs milliseconds on the
    // hand-over's critical path.
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

fn write_state(bytes: &[u8], version: u32, limit: usize) -> Result<OwnedFd, UpgradeError> {
    if bytes.len() > limit {
        return Err(UpgradeError::StateTooLarge {
            size: bytes.len(),
            limit,
        });
    }
    let fd =
        rustix::fs::memfd_create("baton-state", rustix::fs::MemfdFlags::CLOEXEC).map_err(|e| {
            UpgradeError::Io {
                what: "cannot create the state memfd",
                source: e.into(),
            }
        })?;
    let mut file = std::fs::File::from(fd);
    file.write_all(STATE_MAGIC)
        .and_then(|()| file.write_all(&version.to_le_bytes()))
        .and_then(|()| file.write_all(&(bytes.len() as u64).to_le_bytes()))
        .and_then(|()| file.write_all(bytes))
        .map_err(io("cannot write the state"))?;
    Ok(file.into())
}

fn read_state(fd: &OwnedFd, expected: u32, limit: usize) -> Result<Vec<u8>, StateError> {
    let mut header = [0u8; STATE_HEADER];
    pread_exact(fd, &mut header, 0)?;
    if &header[..8] != STATE_MAGIC {
        return Err(StateError::BadMagic);
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&header[8..12]);
    let found = u32::from_le_bytes(v);
    if found != expected {
        return Err(StateError::VersionMismatch { found, expected });
    }
    let mut l = [0u8; 8];
    l.copy_from_slice(&header[12..20]);
    let len = u64::from_le_bytes(l);
    if len > limit as u64 {
        return Err(StateError::TooLarge { size: len, limit });
    }
    let mut payload = vec![0u8; len as usize];
    pread_exact(fd, &mut payload, STATE_HEADER as u64).map_err(|e| match e {
        StateError::Truncated { got, .. } => StateError::Truncated { expected: len, got },
        other => other,
    })?;
    Ok(payload)
}

fn pread_exact(fd: &OwnedFd, buf: &mut [u8], offset: u64) -> Result<(), StateError> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(fd, &mut buf[done..], offset + done as u64) {
            Ok(0) => {
                return Err(StateError::Truncated {
                    expected: buf.len() as u64,
                    got: done as u64,
                });
            }
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(StateError::Io(e.into())),
        }
    }
    Ok(())
}

/// Ends the process with status 1 once `deadline` has passed, whatever is
/// still running: the bound on a drain after a hand-over, so old processes
/// never pile up. Returns at once; the timer runs on its own thread.
pub fn exit_after(deadline: Duration) {
    let spawned = std::thread::Builder::new()
        .name("baton-drain-deadline".into())
        .spawn(move || {
            std::thread::sleep(deadline);
            tracing::warn!("drain deadline of {deadline:?} passed; exiting");
            std::process::exit(1);
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the drain deadline thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_checks_version_and_size() {
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let fd = write_state(&payload, 7, DEFAULT_MAX_STATE).expect("write");
        assert_eq!(
            read_state(&fd, 7, DEFAULT_MAX_STATE).expect("read"),
            payload
        );
        assert!(matches!(
            read_state(&fd, 8, DEFAULT_MAX_STATE),
            Err(StateError::VersionMismatch {
                found: 7,
                expected: 8
            })
        ));
        assert!(matches!(
            read_state(&fd, 7, 10),
            Err(StateError::TooLarge {
                size: 100_000,
                limit: 10
            })
        ));
        assert!(matches!(
            write_state(&payload, 7, 10),
            Err(UpgradeError::StateTooLarge { .. })
        ));
        let empty = write_state(&[], 1, 0).expect("empty");
        assert_eq!(read_state(&empty, 1, 0).expect("read"), Vec::<u8>::new());
    }

    #[test]
    fn state_rejects_foreign_and_truncated_data() {
        let fd = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
        let mut f = std::fs::File::from(fd);
        f.write_all(b"not baton state at all").expect("write");
        let fd: OwnedFd = f.into();
        assert!(matches!(read_state(&fd, 1, 100), Err(StateError::BadMagic)));

        let fd = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
        let mut f = std::fs::File::from(fd);
        f.write_all(STATE_MAGIC).expect("write");
        f.write_all(&1u32.to_le_bytes()).expect("write");
        f.write_all(&50u64.to_le_bytes()).expect("write");
        f.write_all(&[1, 2, 3]).expect("write");
        let fd: OwnedFd = f.into();
        assert!(matches!(
            read_state(&fd, 1, 100),
            Err(StateError::Truncated {
                expected: 50,
                got: 3
            })
        ));
    }

    #[test]
    fn pid_file_is_replaced_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("server.pid");
        write_pid_file(&path, 41).expect("write");
        write_pid_file(&path, 42).expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "42\n");
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("ls").count(),
            1,
            "no temp files left"
        );
    }
}
