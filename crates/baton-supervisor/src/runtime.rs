//! The runtime: a `mio` loop on one thread that gathers events for the
//! [`Lifecycle`](crate::lifecycle::Lifecycle) and carries out its actions.
//!
//! Event sources, all non-blocking and registered with one `Poll`:
//! * one socket pair per handled signal (signal-hook writes a byte per
//!   delivery);
//! * one pidfd per worker: readable when the worker exits, then reaped with
//!   `waitid(P_PIDFD)` — no `SIGCHLD`, no `waitpid(-1)`, no pid reuse races;
//! * each worker's stdout and stderr pipes, and its readiness pipe (fd mode);
//! * each generation's notify socket (notify mode) and readiness probe.
//!
//! Timers live in a sorted map; the poll timeout is the time to the earliest
//! one, so baton sleeps in `epoll_wait` whenever nothing is due: it never
//! polls on an interval.
//!
//! This file holds the loop, the event dispatch and the execution of
//! actions; the handlers live beside it by concern: `workers` (spawning,
//! output, exits, orphans), `readiness` (fd, notify, exec) and `clients`
//! (the control socket's clients).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::config::Settings;
use crate::control::{self, ControlSocket, Reply};
use crate::lifecycle::{Action, Event, GenId, Level, Lifecycle, Sd, Slot, StopKind, TimerKey};
use crate::listen::Bound;
use crate::output::Stream;
use crate::signals::{HANDLED, Ignored, SignalPipe};

mod accepting;
mod clients;
mod dispatch;
mod events;
mod metrics;
mod privileges;
mod quiet;
mod readiness;
mod reconfig;
mod resume;
mod spawner;
mod state;
mod upgrade;
mod workers;

pub use state::{READS as STATE_READS, STATE_SCHEMA};
pub use upgrade::{RESUME_FD, check_answer};

use clients::{Client, Waiting};
use workers::{RtGeneration, RtWorker};

/// The spawner thread's wake-ups (the first token; see `Runtime::token`).
const SPAWNER_TOKEN: Token = Token(0);

/// The most workers a generation may have.
pub const MAX_WORKERS: usize = 1024;

/// Why the runtime could not run.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot set up the event loop: {0}")]
    Poll(#[source] std::io::Error),
    #[error("cannot install the handler for signal {signal}: {source}")]
    Signal {
        signal: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the private runtime directory: {0}")]
    RunDir(#[source] std::io::Error),
    #[error("cannot open /dev/null: {0}")]
    DevNull(#[source] std::io::Error),
    #[error(transparent)]
    Control(control::ControlError),
    #[error(transparent)]
    Watch(crate::watch::WatchError),
    #[error("cannot take over from the previous image: {0}")]
    Resume(String),
    #[error("{0}")]
    Metrics(String),
    #[error(
        "baton's open-files limit is {0} (ulimit -n), too low to start: it needs at least {MIN_NOFILE} (its signal handlers, the control socket, each worker's pipes); raise it: ulimit -n 1024, or LimitNOFILE= under systemd"
    )]
    TooFewDescriptors(u64),
}

/// Below this open-files limit baton cannot install its signal handlers
/// and start a worker beside them (one worker needed about 45): it refuses
/// to start rather than fail half-way with "Too many open files".
pub const MIN_NOFILE: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Signal(usize),
    Ignored,
    Guard,
    Spawner,
    Preflight,
    PreflightOut,
    Exit(GenId, Slot),
    Output(GenId, Slot, Stream),
    Ready(GenId, Slot),
    Notify(GenId),
    Probe(GenId),
    /// The `--ready accepting` watcher thread answered.
    Accepting,
    /// `--dispatch`: a worker's channel.
    Channel(GenId, Slot),
    /// `--dispatch`: a listener baton accepts on (index into the watched).
    Listener(usize),
    /// `--dispatch`: a connection refused with a 503, closing (its token).
    Linger(usize),
    Control,
    Client(u64),
    Watch,
    /// The `--metrics` endpoint's listener, and its clients.
    Metrics,
    MetricsClient(u64),
}

/// The supervisor's I/O side. Build it with [`Runtime::new`], then
/// [`Runtime::run`].
#[derive(Debug)]
pub struct Runtime {
    settings: Settings,
    /// Shared with the spawner thread, which places them at fds 3.. of
    /// each worker.
    listeners: Vec<std::sync::Arc<Bound>>,
    base_env: std::sync::Arc<Vec<OsString>>,
    stdin: std::sync::Arc<OwnedFd>,
    rundir: RunDir,
    poll: Poll,
    tokens: HashMap<Token, Source>,
    next_token: usize,
    signals: Vec<SignalPipe>,
    /// Signals that are logged and otherwise ignored.
    ignored: Option<Ignored>,
    timers: BTreeMap<TimerKey, Instant>,
    workers: HashMap<(GenId, Slot), RtWorker>,
    generations: HashMap<GenId, RtGeneration>,
    machine: Lifecycle,
    queue: VecDeque<Event>,
    exit: Option<u8>,
    control: Option<(Token, ControlSocket)>,
    clients: HashMap<u64, Client>,
    next_client: u64,
    /// How many clients may be connected at once (from the open-files limit).
    max_clients: usize,
    /// Silent clients dropped since the last report, and when that was.
    evicted: u64,
    evicted_reported: Option<Instant>,
    /// Accepting control clients is paused until then (out of descriptors).
    accept_paused_until: Option<Instant>,
    /// baton's own service manager (systemd), if it gave us NOTIFY_SOCKET.
    service_manager: Option<baton_app::Notifier>,
    started: Instant,
    /// The guard process, and its pidfd's token.
    guard: Option<crate::guard::Guard>,
    guard_token: Option<Token>,
    /// The spawner, which starts workers and does every cgroup operation;
    /// its server side until `run` hands it to the main thread.
    spawner: spawner::Spawner,
    spawn_server: Option<spawner::SpawnServer>,
    /// baton's cgroup subtree, once the spawner made it (for the guard).
    cgroup_root: Option<PathBuf>,
    /// Notify messages from workers forked but not registered yet:
    /// (generation, worker pid, message).
    early_notify: Vec<(GenId, u32, crate::notify::Message)>,
    /// When to try reaping orphans again (the spawner was forking).
    orphan_retry_at: Option<Instant>,
    /// The open-files soft limit baton started with, given back to every
    /// child (baton raised its own to the hard limit).
    child_nofile: Option<u64>,
    orphans_to_reap: bool,
    watcher: Option<crate::watch::Watcher>,
    watch_token: Option<Token>,
    /// Where worker output is passed on.
    sinks: crate::output::Sinks,
    /// The in-place upgrade in progress, if any.
    upgrade: Option<upgrade::Upgrade>,
    /// Spawns and probes asked for while an upgrade's exec was prepared.
    deferred: Vec<state::Deferred>,
    /// In-place upgrades over baton's life.
    upgrades: u64,
    /// The binary baton runs from (what an upgrade executes by default),
    /// its argv, and the environment it started with (what the new image
    /// gets).
    exe: PathBuf,
    argv: Vec<OsString>,
    environ: Vec<OsString>,
    /// Set when this image took over from a previous one: what to tell the
    /// client that asked, once the loop runs.
    resumed: Option<resume::Resumed>,
    /// `--ready accepting`: the thread that looks into `/proc`, once needed.
    accept: Option<accepting::AcceptChecks>,
    /// The `--metrics` endpoint, if any.
    endpoint: Option<metrics::Endpoint>,
    /// What is counted over baton's life (carried across upgrades).
    metrics: crate::metrics::Metrics,
    /// `--dispatch`: channels, watched listeners, queue, counters.
    dispatch: dispatch::Dispatcher,
}

/// baton's private directory for the generations' notify sockets, removed
/// when baton ends (not when it re-executes itself: an exec runs no
/// destructor, and the new image adopts the directory).
#[derive(Debug)]
pub(crate) struct RunDir {
    path: PathBuf,
    /// The directory for the notify sockets of generations that run as
    /// another user, once one did (see `crate::privileges`).
    pub(crate) shared: Option<PathBuf>,
}

impl RunDir {
    fn create() -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        // Under $XDG_RUNTIME_DIR when there is one (a tmpfs private to the
        // user), else the system temp dir. Private whatever the umask:
        // anyone who can reach a notify socket in it could send READY=1
        // (the kernel tells baton the sender's pid, but a directory that
        // lists the sockets to everyone is an invitation). Created with at
        // most 0700 (the mode minus the umask), then set to exactly 0700, so
        // it is never wider.
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("baton.")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(base)?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        Ok(Self {
            path: dir.keep(),
            shared: None,
        })
    }

    /// The directories a previous image of this baton made.
    pub(crate) fn adopt(path: PathBuf, shared: Option<PathBuf>) -> Self {
        Self { path, shared }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        if let Some(shared) = &self.shared {
            let _ = std::fs::remove_dir_all(shared);
        }
    }
}

/// What [`Runtime::skeleton`] is built from.
struct Skeleton {
    settings: Settings,
    machine: Lifecycle,
    listeners: Vec<std::sync::Arc<Bound>>,
    base_env: Vec<OsString>,
    stdin: OwnedFd,
    rundir: RunDir,
    sinks: crate::output::Sinks,
    cgroups: crate::config::CgroupMode,
    child_nofile: Option<u64>,
    started: Instant,
    exe: PathBuf,
    argv: Vec<OsString>,
    environ: Vec<OsString>,
}

impl Runtime {
    /// Installs signal handlers and prepares the loop. Call this before
    /// anything slow, so an early `SIGTERM` is not lost.
    pub fn new(
        settings: Settings,
        listeners: Vec<Bound>,
        sinks: crate::output::Sinks,
    ) -> Result<Self, RuntimeError> {
        // Room for many workers and clients: the soft limit goes up to the
        // hard one (children get the old soft limit back).
        let child_nofile = match baton_sys::spawn::raise_nofile_limit() {
            Ok(before) => before,
            Err(e) => {
                tracing::debug!("cannot raise the open-files limit: {e}");
                None
            }
        };
        if let Some(limit) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current
            && limit < MIN_NOFILE
        {
            return Err(RuntimeError::TooFewDescriptors(limit));
        }
        // Orphans of workers (daemonized grandchildren) come to baton, not
        // to init, so none outlives the supervisor unnoticed; as PID 1 in a
        // container baton is their reaper anyway.
        if let Err(e) = baton_sys::spawn::become_subreaper() {
            tracing::debug!("cannot become a subreaper: {e}");
        }
        let control = match &settings.control {
            Some(path) => Some(ControlSocket::bind(path).map_err(RuntimeError::Control)?),
            None => None,
        };
        let cgroups = settings.cgroups;
        let mut rt = Self::skeleton(Skeleton {
            machine: Lifecycle::new(settings.policy.clone()),
            settings,
            listeners: listeners.into_iter().map(std::sync::Arc::new).collect(),
            base_env: crate::worker::base_environment(),
            stdin: baton_sys::spawn::dev_null().map_err(RuntimeError::DevNull)?,
            rundir: RunDir::create().map_err(RuntimeError::RunDir)?,
            sinks,
            cgroups,
            child_nofile,
            started: Instant::now(),
            exe: upgrade::started_as(
                std::env::args_os().next().as_deref(),
                std::env::current_dir().ok().as_deref(),
                std::env::var_os("PATH").as_deref(),
                &std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe")),
            ),
            argv: std::env::args_os().collect(),
            environ: std::env::vars_os()
                .map(|(k, v)| {
                    let mut kv = k;
                    kv.push("=");
                    kv.push(v);
                    kv
                })
                .collect(),
        })?;
        if let Some(sock) = control {
            rt.adopt_control(sock)?;
        }
        rt.open_metrics()?;
        rt.install_sources()?;
        rt.start_guard();
        Ok(rt)
    }

    /// A runtime with nothing running: the parts [`Runtime::new`] and
    /// `Runtime::resume` share.
    fn skeleton(k: Skeleton) -> Result<Self, RuntimeError> {
        let poll = Poll::new().map_err(RuntimeError::Poll)?;
        let waker = std::sync::Arc::new(
            mio::Waker::new(poll.registry(), SPAWNER_TOKEN).map_err(RuntimeError::Poll)?,
        );
        let (spawner, spawn_server) = spawner::Spawner::new(
            Box::new(move || {
                let _ = waker.wake();
            }),
            k.cgroups,
        );
        let service_manager = std::env::var_os("NOTIFY_SOCKET")
            .filter(|s| !s.is_empty())
            .map(|s| baton_app::Notifier::with_socket(s.to_string_lossy()));
        Ok(Self {
            machine: k.machine,
            settings: k.settings,
            listeners: k.listeners,
            base_env: std::sync::Arc::new(k.base_env),
            stdin: std::sync::Arc::new(k.stdin),
            rundir: k.rundir,
            poll,
            tokens: HashMap::from([(SPAWNER_TOKEN, Source::Spawner)]),
            next_token: SPAWNER_TOKEN.0 + 1,
            signals: Vec::new(),
            ignored: None,
            timers: BTreeMap::new(),
            workers: HashMap::new(),
            generations: HashMap::new(),
            queue: VecDeque::new(),
            exit: None,
            control: None,
            clients: HashMap::new(),
            next_client: 1,
            max_clients: control::max_clients(
                rustix::process::getrlimit(rustix::process::Resource::Nofile).current,
            ),
            evicted: 0,
            evicted_reported: None,
            accept_paused_until: None,
            service_manager,
            started: k.started,
            child_nofile: k.child_nofile,
            guard: None,
            guard_token: None,
            spawner,
            spawn_server: Some(spawn_server),
            cgroup_root: None,
            early_notify: Vec::new(),
            orphan_retry_at: None,
            orphans_to_reap: false,
            watcher: None,
            watch_token: None,
            sinks: k.sinks,
            upgrade: None,
            deferred: Vec::new(),
            upgrades: 0,
            exe: k.exe,
            argv: k.argv,
            environ: k.environ,
            resumed: None,
            accept: None,
            endpoint: None,
            metrics: crate::metrics::Metrics {
                started_unix_us: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
                ..crate::metrics::Metrics::default()
            },
            dispatch: dispatch::Dispatcher::default(),
        })
    }

    fn adopt_control(&mut self, mut sock: ControlSocket) -> Result<(), RuntimeError> {
        let token = self.token(Source::Control);
        self.poll
            .registry()
            .register(&mut sock.listener, token, Interest::READABLE)
            .map_err(RuntimeError::Poll)?;
        // In full: a relative --control is relative to baton's directory,
        // and `baton ctl` run from another one needs to be told where.
        let full = std::path::absolute(&sock.path).unwrap_or_else(|_| sock.path.clone());
        tracing::info!("control socket {}", full.display());
        self.control = Some((token, sock));
        Ok(())
    }

    /// Signal handlers and the watcher.
    fn install_sources(&mut self) -> Result<(), RuntimeError> {
        if !self.settings.watch.is_empty() {
            let mut w = crate::watch::Watcher::new(
                &self.settings.watch,
                &self.settings.watch_ignore,
                self.settings.watch_debounce,
            )
            .map_err(RuntimeError::Watch)?;
            let token = self.token(Source::Watch);
            self.poll
                .registry()
                .register(&mut w.wake, token, Interest::READABLE)
                .map_err(RuntimeError::Poll)?;
            self.watcher = Some(w);
            self.watch_token = Some(token);
        }
        for (i, sig) in HANDLED.iter().enumerate() {
            let mut pipe = SignalPipe::register(*sig).map_err(|source| RuntimeError::Signal {
                signal: *sig,
                source,
            })?;
            let token = self.token(Source::Signal(i));
            self.poll
                .registry()
                .register(&mut pipe.read, token, Interest::READABLE)
                .map_err(RuntimeError::Poll)?;
            self.signals.push(pipe);
        }
        let mut ignored = Ignored::register().map_err(|source| RuntimeError::Signal {
            signal: libc::SIGALRM,
            source,
        })?;
        let token = self.token(Source::Ignored);
        self.poll
            .registry()
            .register(ignored.read_mut(), token, Interest::READABLE)
            .map_err(RuntimeError::Poll)?;
        self.ignored = Some(ignored);
        Ok(())
    }

    fn token(&mut self, source: Source) -> Token {
        let t = Token(self.next_token);
        self.next_token += 1;
        self.tokens.insert(t, source);
        t
    }

    fn register_fd(&mut self, fd: &impl AsRawFd, source: Source) -> std::io::Result<Token> {
        let token = self.token(source);
        self.poll
            .registry()
            .register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)?;
        Ok(token)
    }

    fn deregister_fd(&mut self, fd: &impl AsRawFd, token: Token) {
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&fd.as_raw_fd()));
        self.tokens.remove(&token);
    }

    /// Runs until the lifecycle says to exit; returns the exit code.
    ///
    /// The calling thread becomes the spawner (it forks every worker and,
    /// for an upgrade, executes the new baton: see `spawner`), with every
    /// signal blocked; the event loop runs on a thread of its own, which
    /// handles the signals.
    pub fn run(mut self) -> Result<u8, RuntimeError> {
        let server = self
            .spawn_server
            .take()
            .ok_or_else(|| RuntimeError::Poll(std::io::Error::other("the runtime ran twice")))?;
        baton_sys::reexec::block_all().map_err(RuntimeError::Poll)?;
        let event_loop = std::thread::Builder::new()
            .name("baton-loop".into())
            .spawn(move || {
                if let Err(e) = baton_sys::reexec::unblock_all() {
                    tracing::warn!("cannot unblock signals on the event loop: {e}");
                }
                self.run_loop()
            })
            .map_err(RuntimeError::Poll)?;
        server.serve();
        event_loop.join().unwrap_or_else(|_| {
            Err(RuntimeError::Poll(std::io::Error::other(
                "the event loop panicked",
            )))
        })
    }

    fn run_loop(mut self) -> Result<u8, RuntimeError> {
        if self.resumed.is_some() {
            // Taken over from a previous image: the lifecycle goes on where
            // it was.
            self.after_resume();
        } else {
            let actions = self.machine.start(Instant::now());
            self.execute(actions);
        }
        let mut events = Events::with_capacity(64);
        loop {
            // Everything that is already known is handled before the loop
            // sleeps: no event waits for an unrelated wake-up.
            self.settle();
            if self.exit.is_some() {
                break;
            }
            let next_client_deadline = self.clients.values().filter_map(|c| c.deadline).min();
            let timeout = self
                .timers
                .values()
                .copied()
                .chain(next_client_deadline)
                .chain(self.accept_paused_until)
                .chain(self.orphan_retry_at)
                .chain(self.preflight_deadline())
                .chain(self.metrics_deadline())
                .chain(self.dispatch_deadline())
                .min()
                .map(|at| at.saturating_duration_since(Instant::now()));
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(RuntimeError::Poll(e)),
            }
            for ev in &events {
                if let Some(source) = self.tokens.get(&ev.token()).copied() {
                    self.dispatch(source);
                }
            }
        }
        for l in &self.listeners {
            l.remove_file();
        }
        self.end_guard_and_cgroups();
        // Last words to clients (a `ctl stop` waits for this connection to
        // close, a `ctl events` reader for `stopped`); then the control
        // socket goes.
        let code = self.exit.unwrap_or(1);
        self.publish(crate::events::Notice::Stopped { exit_code: code });
        let ids: Vec<u64> = self.clients.keys().copied().collect();
        for id in ids {
            if self
                .clients
                .get(&id)
                .is_some_and(|c| c.waiting == Waiting::Exit)
            {
                self.reply(id, &Reply::Stopped { exit_code: code });
            }
            self.flush(id);
        }
        self.clients.clear();
        if let Some((_, sock)) = &self.control {
            sock.remove_file();
        }
        Ok(self.exit.unwrap_or(1))
    }

    /// Handles every queued event, the actions they lead to and the events
    /// those actions queue in turn, due timers and expired clients, until
    /// nothing is left to do without waiting.
    fn settle(&mut self) {
        loop {
            let now = Instant::now();
            self.expire_clients(now);
            self.expire_metrics_clients(now);
            self.expire_dispatch(now);
            self.resume_accepting(now);
            self.expire_preflight(now);
            if self.orphan_retry_at.is_some_and(|at| at <= now) {
                self.orphans_to_reap = true;
            }
            let due: Vec<TimerKey> = self
                .timers
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(k, _)| *k)
                .collect();
            for key in due {
                self.timers.remove(&key);
                self.queue.push_back(Event::Timer(key));
            }
            let had_events = !self.queue.is_empty();
            while let Some(event) = self.queue.pop_front() {
                let actions = self.machine.handle(event, Instant::now());
                self.execute(actions);
            }
            // After the events: an exited worker is reaped by its ReapGroup
            // action, and until then it hides the orphans behind it.
            if self.orphans_to_reap {
                self.orphans_to_reap = false;
                self.reap_orphans();
            }
            // After the events, so every channel that was readable has
            // been read: a worker that became idle is known before the
            // next connection is handed out.
            self.dispatch_follow_serving();
            self.pump_dispatch();
            if !had_events && self.queue.is_empty() {
                return;
            }
        }
    }

    fn dispatch(&mut self, source: Source) {
        match source {
            Source::Signal(i) => {
                let n = self.signals[i].drain();
                if n == 0 {
                    return;
                }
                match self.signals[i].signal {
                    libc::SIGHUP => self.request_reload(None),
                    libc::SIGQUIT => self.queue.push_back(Event::Stop(StopKind::Immediate)),
                    libc::SIGCHLD => self.orphans_to_reap = true,
                    libc::SIGTTIN => {
                        let want = (self.machine.workers() + n).min(MAX_WORKERS);
                        self.queue.push_back(Event::Scale(want));
                    }
                    libc::SIGTTOU => {
                        let have = self.machine.workers();
                        if have <= 1 {
                            tracing::info!("SIGTTOU ignored: already at 1 worker per generation");
                        } else {
                            self.queue
                                .push_back(Event::Scale(have.saturating_sub(n).max(1)));
                        }
                    }
                    libc::SIGUSR1 => {
                        for _ in 0..n {
                            self.queue.push_back(Event::Forward(libc::SIGUSR1));
                        }
                    }
                    // Upgrade baton itself in place (the binary it runs from).
                    libc::SIGUSR2 => self.start_upgrade(None, None, None),
                    // TERM, INT, PWR: a graceful stop; a second one stops at
                    // once. Deliveries read in one go count once: `timeout`
                    // and some supervisors send the same signal to the
                    // process and to its group within microseconds, which
                    // is one request, not an escalation.
                    _ => self.queue.push_back(Event::Stop(StopKind::Graceful)),
                }
            }
            Source::Guard => self.on_guard_exit(),
            Source::Preflight => self.on_preflight_exit(),
            Source::PreflightOut => self.on_preflight_output(),
            Source::Spawner => self.on_spawner(),
            Source::Ignored => {
                if let Some(ignored) = self.ignored.as_mut() {
                    for sig in ignored.pending() {
                        tracing::info!(
                            "{} ignored: it means nothing to baton (see `baton run --help`, Signals)",
                            baton_sys::spawn::signal_name(sig)
                        );
                    }
                }
            }
            Source::Exit(g, slot) => self.on_exit_readable(g, slot),
            Source::Output(g, slot, stream) => self.pump_output(g, slot, Some(stream)),
            Source::Ready(g, slot) => self.on_ready_fd(g, slot),
            Source::Notify(g) => self.on_notify(g),
            Source::Probe(g) => self.on_probe_exit(g),
            Source::Accepting => self.on_accept_results(),
            Source::Channel(g, slot) => self.on_channel(g, slot),
            Source::Listener(i) => self.on_listener(i),
            Source::Linger(token) => self.on_linger(token),
            Source::Watch => {
                if let Some(change) = self
                    .watcher
                    .as_mut()
                    .and_then(crate::watch::Watcher::changes)
                {
                    let shown: Vec<String> = change
                        .files
                        .iter()
                        .take(5)
                        .map(|p| p.display().to_string())
                        .collect();
                    let more = change.files.len().saturating_sub(shown.len());
                    let more = if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    };
                    tracing::info!(
                        "watch: fingerprint {} -> {}: {}{more} changed; reloading",
                        change.before,
                        change.after,
                        shown.join(", ")
                    );
                    self.request_reload(None);
                }
            }
            Source::Control => self.accept_clients(),
            Source::Client(id) => self.on_client(id),
            Source::Metrics => self.accept_metrics_clients(),
            Source::MetricsClient(id) => self.on_metrics_client(id),
        }
    }

    fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::PrepareGeneration { generation } => self.prepare(generation),
                Action::Spawn {
                    generation,
                    slot,
                    quiet,
                } => self.spawn(generation, slot, quiet),
                Action::NormalPriority {
                    generation,
                    slots,
                    whole: _,
                } => self.normal_priority(generation, &slots),
                Action::RunProbe { generation } => self.run_probe(generation),
                Action::CheckAccepting { generation, after } => {
                    self.check_accepting(generation, after);
                }
                Action::Signal {
                    generation,
                    slot,
                    signal,
                } => {
                    if let Some((_, child)) = self
                        .workers
                        .get(&(generation, slot))
                        .and_then(|w| w.child.as_ref())
                        && let Err(e) = baton_sys::spawn::signal(child, signal)
                    {
                        tracing::debug!("signal to worker {slot} of generation {generation}: {e}");
                    }
                }
                Action::KillGroup { generation, slot } => {
                    // Only while the worker is not reaped: see
                    // Child::signal_group.
                    if let Some((_, child)) = self
                        .workers
                        .get(&(generation, slot))
                        .and_then(|w| w.child.as_ref())
                    {
                        let _ = baton_sys::spawn::signal(child, libc::SIGKILL);
                        let _ = child.signal_group(libc::SIGKILL);
                    }
                }
                Action::ReapGroup { generation, slot } => self.reap_group(generation, slot),
                Action::SetTimer { key, after } => {
                    self.timers.insert(key, Instant::now() + after);
                }
                Action::CancelTimer { key } => {
                    self.timers.remove(&key);
                }
                Action::ReleaseGeneration { generation } => self.release(generation),
                Action::Serving { generation } => {
                    tracing::debug!("generation {generation} is serving");
                }
                Action::Log {
                    level,
                    message,
                    tail,
                } => self.log(level, &message, tail),
                Action::Exit(code) => self.exit = Some(code),
                Action::ReloadDone { tickets, outcome } => self.reload_done(&tickets, &outcome),
                Action::Notify(sd) => self.notify_service_manager(&sd),
                Action::Notice(notice) => self.publish(notice),
            }
        }
    }

    fn log(&mut self, level: Level, message: &str, tail: Option<(GenId, Slot)>) {
        let mut text = message.to_owned();
        if let Some(key) = tail
            && let Some(w) = self.workers.get(&key)
        {
            if w.tail.is_empty() {
                text.push_str("\n  (the worker printed nothing)");
            } else {
                let _ = write!(
                    text,
                    "\n  last output of worker {} of generation {}:",
                    key.1, key.0
                );
                for line in w.tail.lines() {
                    text.push_str("\n  | ");
                    text.push_str(line);
                }
            }
        }
        // Progress for clients waiting on a reload; failures reach them as
        // the verdict itself.
        if matches!(level, Level::Info | Level::Warn) {
            let waiting: Vec<u64> = self
                .clients
                .iter()
                .filter(|(_, c)| c.waiting == Waiting::Reload)
                .map(|(id, _)| *id)
                .collect();
            for id in waiting {
                self.reply(
                    id,
                    &Reply::Progress {
                        message: message.to_owned(),
                    },
                );
            }
        }
        match level {
            Level::Debug => tracing::debug!("{text}"),
            Level::Info => tracing::info!("{text}"),
            Level::Warn => tracing::warn!("{text}"),
            Level::Error => tracing::error!("{text}"),
        }
    }
}

impl Runtime {
    fn notify_service_manager(&self, sd: &Sd) {
        let Some(n) = &self.service_manager else {
            return;
        };
        let result = match sd {
            Sd::Ready { serving, note } => {
                let status = match note {
                    Some(note) => format!("serving generation {serving} ({note})"),
                    None => format!("serving generation {serving}"),
                };
                n.send(&format!("READY=1\nSTATUS={status}"))
            }
            Sd::Reloading { generation } => n
                .reloading()
                .and_then(|()| n.status(&format!("reloading: starting generation {generation}"))),
            Sd::Stopping => n.send("STOPPING=1\nSTATUS=stopping"),
        };
        if let Err(e) = result {
            tracing::warn!("cannot notify the service manager: {e}");
        }
    }
}
