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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use baton_sys::spawn::{Child, ExitStatus};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::config::Settings;
use crate::control::{self, ControlSocket, Reply};
use crate::lifecycle::{
    Action, Event, GenId, Level, Lifecycle, ReadyMode, ReloadOutcome, Sd, Slot, StopKind, TimerKey,
};
use crate::listen::Bound;
use crate::notify::NotifySocket;
use crate::output::{Pipe, Stream, Tail};
use crate::signals::{HANDLED, SignalPipe};
use crate::worker::{Placement, spawn_probe, spawn_worker};

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Signal(usize),
    Exit(GenId, Slot),
    Output(GenId, Slot, Stream),
    Ready(GenId, Slot),
    Notify(GenId),
    Probe(GenId),
    Control,
    Client(u64),
    Watch,
}

/// What a control client waits for after its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// Nothing: its request has not arrived yet, or was answered.
    Nothing,
    /// The verdict of its reload; it receives progress lines meanwhile.
    Reload,
    /// baton's exit (`ctl stop`): the connection closes when baton exits.
    Exit,
}

#[derive(Debug)]
struct Client {
    stream: mio::net::UnixStream,
    token: Token,
    input: Vec<u8>,
    output: Vec<u8>,
    /// When it must have sent its request.
    deadline: Option<Instant>,
    waiting: Waiting,
    close_when_flushed: bool,
    want_write: bool,
}

#[derive(Debug)]
struct RtWorker {
    pid: u32,
    /// The pidfd and its token; `None` once reaped.
    child: Option<(Token, Child)>,
    pipes: Vec<(Token, Pipe)>,
    ready: Option<(Token, OwnedFd)>,
    tail: Tail,
}

#[derive(Debug, Default)]
struct RtGeneration {
    notify: Option<(Token, NotifySocket)>,
    chdir: Option<PathBuf>,
    chdir_error: Option<String>,
    probe: Option<(Token, Child)>,
}

/// The supervisor's I/O side. Build it with [`Runtime::new`], then
/// [`Runtime::run`].
#[derive(Debug)]
pub struct Runtime {
    settings: Settings,
    listeners: Vec<Bound>,
    base_env: Vec<OsString>,
    stdin: OwnedFd,
    rundir: tempfile::TempDir,
    poll: Poll,
    tokens: HashMap<Token, Source>,
    next_token: usize,
    signals: Vec<SignalPipe>,
    timers: BTreeMap<TimerKey, Instant>,
    workers: HashMap<(GenId, Slot), RtWorker>,
    generations: HashMap<GenId, RtGeneration>,
    machine: Lifecycle,
    queue: VecDeque<Event>,
    exit: Option<u8>,
    control: Option<(Token, ControlSocket)>,
    clients: HashMap<u64, Client>,
    next_client: u64,
    /// baton's own service manager (systemd), if it gave us NOTIFY_SOCKET.
    service_manager: Option<baton_app::Notifier>,
    started: Instant,
    orphans_to_reap: bool,
    watcher: Option<crate::watch::Watcher>,
    /// Where worker output is passed on.
    sinks: crate::output::Sinks,
}

fn rundir() -> std::io::Result<tempfile::TempDir> {
    // Under $XDG_RUNTIME_DIR when there is one (a tmpfs private to the
    // user), else the system temp dir. tempfile creates it with mode 0700.
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new().prefix("baton.").tempdir_in(base)
}

impl Runtime {
    /// Installs signal handlers and prepares the loop. Call this before
    /// anything slow, so an early `SIGTERM` is not lost.
    pub fn new(
        settings: Settings,
        listeners: Vec<Bound>,
        sinks: crate::output::Sinks,
    ) -> Result<Self, RuntimeError> {
        let poll = Poll::new().map_err(RuntimeError::Poll)?;
        // Orphans of workers (daemonized grandchildren) come to baton, not
        // to init, so none outlives the supervisor unnoticed; as PID 1 in a
        // container baton is their reaper anyway.
        if let Err(e) = baton_sys::spawn::become_subreaper() {
            tracing::debug!("cannot become a subreaper: {e}");
        }
        let service_manager = std::env::var_os("NOTIFY_SOCKET")
            .filter(|s| !s.is_empty())
            .map(|s| baton_app::Notifier::with_socket(s.to_string_lossy()));
        let control = match &settings.control {
            Some(path) => Some(ControlSocket::bind(path).map_err(RuntimeError::Control)?),
            None => None,
        };
        let mut rt = Self {
            machine: Lifecycle::new(settings.policy.clone()),
            settings,
            listeners,
            base_env: crate::worker::base_environment(),
            stdin: baton_sys::spawn::dev_null().map_err(RuntimeError::DevNull)?,
            rundir: rundir().map_err(RuntimeError::RunDir)?,
            poll,
            tokens: HashMap::new(),
            next_token: 0,
            signals: Vec::new(),
            timers: BTreeMap::new(),
            workers: HashMap::new(),
            generations: HashMap::new(),
            queue: VecDeque::new(),
            exit: None,
            control: None,
            clients: HashMap::new(),
            next_client: 1,
            service_manager,
            started: Instant::now(),
            orphans_to_reap: false,
            watcher: None,
            sinks,
        };
        if !rt.settings.watch.is_empty() {
            let mut w = crate::watch::Watcher::new(
                &rt.settings.watch,
                &rt.settings.watch_ignore,
                rt.settings.watch_debounce,
            )
            .map_err(RuntimeError::Watch)?;
            let token = rt.token(Source::Watch);
            rt.poll
                .registry()
                .register(&mut w.wake, token, Interest::READABLE)
                .map_err(RuntimeError::Poll)?;
            rt.watcher = Some(w);
        }
        if let Some(mut sock) = control {
            let token = rt.token(Source::Control);
            rt.poll
                .registry()
                .register(&mut sock.listener, token, Interest::READABLE)
                .map_err(RuntimeError::Poll)?;
            tracing::info!("control socket {}", sock.path.display());
            rt.control = Some((token, sock));
        }
        for (i, sig) in HANDLED.iter().enumerate() {
            let mut pipe = SignalPipe::register(*sig).map_err(|source| RuntimeError::Signal {
                signal: *sig,
                source,
            })?;
            let token = rt.token(Source::Signal(i));
            rt.poll
                .registry()
                .register(&mut pipe.read, token, Interest::READABLE)
                .map_err(RuntimeError::Poll)?;
            rt.signals.push(pipe);
        }
        Ok(rt)
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
    pub fn run(mut self) -> Result<u8, RuntimeError> {
        let actions = self.machine.start(Instant::now());
        self.execute(actions);
        let mut events = Events::with_capacity(64);
        while self.exit.is_none() {
            let next_client_deadline = self.clients.values().filter_map(|c| c.deadline).min();
            let timeout = self
                .timers
                .values()
                .copied()
                .chain(next_client_deadline)
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
            if self.orphans_to_reap {
                self.orphans_to_reap = false;
                self.reap_orphans();
            }
            let now = Instant::now();
            self.expire_clients(now);
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
            while let Some(event) = self.queue.pop_front() {
                let actions = self.machine.handle(event, Instant::now());
                self.execute(actions);
            }
        }
        for l in &self.listeners {
            l.remove_file();
        }
        // Last words to clients (a `ctl stop` waits for this connection to
        // close); then the control socket goes.
        let ids: Vec<u64> = self.clients.keys().copied().collect();
        for id in ids {
            self.flush(id);
        }
        self.clients.clear();
        if let Some((_, sock)) = &self.control {
            sock.remove_file();
        }
        Ok(self.exit.unwrap_or(1))
    }

    fn dispatch(&mut self, source: Source) {
        match source {
            Source::Signal(i) => {
                let n = self.signals[i].drain();
                if n == 0 {
                    return;
                }
                match self.signals[i].signal {
                    libc::SIGHUP => self.queue.push_back(Event::Reload),
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
                    _ => {
                        for _ in 0..n.min(2) {
                            self.queue.push_back(Event::Stop(StopKind::Graceful));
                        }
                    }
                }
            }
            Source::Exit(g, slot) => self.on_exit_readable(g, slot),
            Source::Output(g, slot, stream) => self.pump_output(g, slot, Some(stream)),
            Source::Ready(g, slot) => self.on_ready_fd(g, slot),
            Source::Notify(g) => self.on_notify(g),
            Source::Probe(g) => self.on_probe_exit(g),
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
                    self.queue.push_back(Event::Reload);
                }
            }
            Source::Control => self.accept_clients(),
            Source::Client(id) => self.on_client(id),
        }
    }

    /// Reads whatever a worker printed; with `only`, just that stream.
    fn pump_output(&mut self, g: GenId, slot: Slot, only: Option<Stream>) {
        let Some(w) = self.workers.get_mut(&(g, slot)) else {
            return;
        };
        let mut closed = Vec::new();
        for (i, (token, pipe)) in w.pipes.iter_mut().enumerate() {
            if only.is_some_and(|s| s != pipe.stream) {
                continue;
            }
            if !pipe.pump(&mut w.tail, &mut self.sinks) {
                closed.push((i, *token));
            }
        }
        for (i, token) in closed.into_iter().rev() {
            let (_, pipe) = w.pipes.remove(i);
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&pipe.fd.as_raw_fd()));
            self.tokens.remove(&token);
        }
    }

    fn on_exit_readable(&mut self, g: GenId, slot: Slot) {
        // Take the last words first, so a failure report includes them.
        self.pump_output(g, slot, None);
        let Some(w) = self.workers.get_mut(&(g, slot)) else {
            return;
        };
        let Some((_, child)) = w.child.as_ref() else {
            return;
        };
        let status = match baton_sys::spawn::try_reap(child) {
            Ok(Some(status)) => status,
            Ok(None) => return,
            Err(e) => {
                tracing::error!("cannot reap worker {slot} of generation {g}: {e}");
                return;
            }
        };
        let child = w.child.take();
        let ready = w.ready.take();
        if let Some((token, child)) = child {
            self.deregister_fd(&child.pidfd, token);
        }
        if let Some((token, fd)) = ready {
            self.deregister_fd(&fd, token);
        }
        self.queue.push_back(Event::WorkerExited {
            generation: g,
            slot,
            status,
        });
    }

    fn on_ready_fd(&mut self, g: GenId, slot: Slot) {
        let Some(w) = self.workers.get_mut(&(g, slot)) else {
            return;
        };
        let Some((token, fd)) = w.ready.as_ref() else {
            return;
        };
        let mut buf = [0u8; 64];
        let (ready, closed) = match rustix::io::read(fd, &mut buf) {
            Ok(0) => (false, true),
            Ok(n) => (crate::worker::says_ready(&buf[..n]), false),
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => (false, false),
            Err(_) => (false, true),
        };
        let token = *token;
        if (ready || closed)
            && let Some((_, fd)) = w.ready.take()
        {
            self.deregister_fd(&fd, token);
        }
        if ready {
            self.queue.push_back(Event::WorkerReady {
                generation: g,
                slot,
            });
        }
    }

    fn on_notify(&mut self, g: GenId) {
        loop {
            let Some((_, sock)) = self.generations.get(&g).and_then(|r| r.notify.as_ref()) else {
                return;
            };
            let msg = match sock.recv() {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!("reading the notify socket of generation {g} failed: {e}");
                    return;
                }
            };
            let Some(pid) = msg.pid else {
                tracing::warn!("ignoring a notify message without sender credentials");
                continue;
            };
            let slot = self.worker_for(g, pid);
            let Some(slot) = slot else {
                tracing::warn!(
                    "ignoring notify message {:?} from pid {pid}: not a worker of generation {g} or one of its children",
                    msg.text
                );
                continue;
            };
            if let Some(status) = msg.get("STATUS") {
                tracing::debug!("worker {slot} of generation {g}: STATUS={status}");
            }
            if msg.get("MAINPID").is_some() {
                tracing::warn!(
                    "worker {slot} of generation {g} sent MAINPID=; baton tracks its own workers and ignores it"
                );
            }
            if msg.is_ready() {
                self.queue.push_back(Event::WorkerReady {
                    generation: g,
                    slot,
                });
            }
        }
    }

    /// The worker of generation `g` that `pid` is, or belongs to (same
    /// process group: a wrapper's child reporting for it).
    fn worker_for(&self, g: GenId, pid: u32) -> Option<Slot> {
        let mine = |p: u32| {
            self.workers
                .iter()
                .find(|((wg, _), w)| *wg == g && w.pid == p && w.child.is_some())
                .map(|((_, s), _)| *s)
        };
        mine(pid).or_else(|| crate::notify::process_group(pid).and_then(mine))
    }

    fn on_probe_exit(&mut self, g: GenId) {
        let Some(rg) = self.generations.get_mut(&g) else {
            return;
        };
        let Some((_, child)) = rg.probe.as_ref() else {
            return;
        };
        let status = match baton_sys::spawn::try_reap(child) {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                tracing::error!("cannot reap the readiness command: {e}");
                return;
            }
        };
        if let Some((token, child)) = rg.probe.take() {
            self.deregister_fd(&child.pidfd, token);
        }
        tracing::debug!("readiness command for generation {g} exited with {status}");
        self.queue.push_back(Event::ProbeDone {
            generation: g,
            success: status == ExitStatus::Code(0),
        });
    }

    fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::PrepareGeneration { generation } => self.prepare(generation),
                Action::Spawn { generation, slot } => self.spawn(generation, slot),
                Action::RunProbe { generation } => self.run_probe(generation),
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
                    if let Some(w) = self.workers.get(&(generation, slot)) {
                        if let Some((_, child)) = &w.child {
                            let _ = baton_sys::spawn::signal(child, libc::SIGKILL);
                        }
                        let _ = baton_sys::spawn::signal_group(w.pid, libc::SIGKILL);
                    }
                }
                Action::ReapGroup { generation, slot } => {
                    if let Some(w) = self.workers.get(&(generation, slot)) {
                        // ESRCH (nothing left) is the common, good case.
                        let _ = baton_sys::spawn::signal_group(w.pid, libc::SIGKILL);
                    }
                }
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

    fn prepare(&mut self, g: GenId) {
        let mut rg = RtGeneration::default();
        if let Some(dir) = &self.settings.chdir {
            // Resolved once per generation, so every worker of it runs from
            // the same release even if a `current` symlink moves meanwhile.
            match std::fs::canonicalize(dir) {
                Ok(p) => rg.chdir = Some(p),
                Err(e) => {
                    rg.chdir_error = Some(format!("cannot resolve --chdir {}: {e}", dir.display()));
                }
            }
        }
        if self.settings.policy.ready == ReadyMode::Notify {
            let path = self.rundir.path().join(format!("notify-{g}.sock"));
            match NotifySocket::bind(&path) {
                Ok(sock) => match self.register_fd(&sock.sock, Source::Notify(g)) {
                    Ok(token) => rg.notify = Some((token, sock)),
                    Err(e) => tracing::error!("cannot watch {}: {e}", path.display()),
                },
                Err(e) => tracing::error!("cannot create notify socket {}: {e}", path.display()),
            }
        }
        self.generations.insert(g, rg);
    }

    fn spawn(&mut self, g: GenId, slot: Slot) {
        let rg = self.generations.get(&g);
        if let Some(err) = rg.and_then(|r| r.chdir_error.clone()) {
            self.queue.push_back(Event::SpawnFailed {
                generation: g,
                slot,
                error: err,
            });
            return;
        }
        let notify = rg
            .and_then(|r| r.notify.as_ref())
            .map(|(_, s)| s.path.clone());
        let chdir = rg.and_then(|r| r.chdir.clone());
        let started = spawn_worker(
            &self.settings,
            &self.listeners,
            &self.base_env,
            std::os::fd::AsFd::as_fd(&self.stdin),
            Placement {
                generation: g,
                slot,
                notify: notify.as_deref(),
                chdir: chdir.as_deref(),
            },
        );
        let started = match started {
            Ok(s) => s,
            Err(error) => {
                self.queue.push_back(Event::SpawnFailed {
                    generation: g,
                    slot,
                    error,
                });
                return;
            }
        };
        let pid = started.child.pid;
        let mut w = RtWorker {
            pid,
            child: None,
            pipes: Vec::new(),
            ready: None,
            tail: Tail::default(),
        };
        let mut exit_token = None;
        let registered = (|| -> std::io::Result<()> {
            exit_token = Some(self.register_fd(&started.child.pidfd, Source::Exit(g, slot))?);
            for pipe in [started.stdout, started.stderr] {
                let t = self.register_fd(&pipe.fd, Source::Output(g, slot, pipe.stream))?;
                w.pipes.push((t, pipe));
            }
            if let Some(fd) = started.ready {
                let t = self.register_fd(&fd, Source::Ready(g, slot))?;
                w.ready = Some((t, fd));
            }
            Ok(())
        })();
        if let Err(e) = registered {
            // Without its pidfd watched the worker could not be supervised:
            // kill it and report a failed spawn instead.
            let _ = baton_sys::spawn::signal(&started.child, libc::SIGKILL);
            wait_briefly(&started.child);
            if let Some(t) = exit_token {
                self.deregister_fd(&started.child.pidfd, t);
            }
            self.forget(w);
            self.queue.push_back(Event::SpawnFailed {
                generation: g,
                slot,
                error: format!("cannot watch the new worker: {e}"),
            });
            return;
        }
        w.child = exit_token.map(|t| (t, started.child));
        // A previous incarnation of this slot (restart) leaves its record.
        if let Some(old) = self.workers.remove(&(g, slot)) {
            self.forget(old);
        }
        self.workers.insert((g, slot), w);
        self.queue.push_back(Event::Spawned {
            generation: g,
            slot,
            pid,
        });
    }

    /// Drops a worker record's registrations.
    fn forget(&mut self, w: RtWorker) {
        for (token, pipe) in w.pipes {
            self.deregister_fd(&pipe.fd, token);
        }
        if let Some((token, fd)) = w.ready {
            self.deregister_fd(&fd, token);
        }
        if let Some((token, child)) = w.child {
            self.deregister_fd(&child.pidfd, token);
        }
    }

    fn run_probe(&mut self, g: GenId) {
        let ReadyMode::Exec(cmd) = &self.settings.policy.ready else {
            return;
        };
        let pids: Vec<u32> = self
            .machine
            .worker_pids(g)
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        let chdir = self.generations.get(&g).and_then(|r| r.chdir.clone());
        match spawn_probe(cmd, &self.base_env, g, &pids, chdir.as_deref()) {
            Ok(child) => match self.register_fd(&child.pidfd, Source::Probe(g)) {
                Ok(token) => {
                    if let Some(rg) = self.generations.get_mut(&g) {
                        rg.probe = Some((token, child));
                    }
                }
                Err(e) => {
                    tracing::error!("cannot watch the readiness command: {e}");
                }
            },
            Err(e) => {
                tracing::warn!("{e}");
                self.queue.push_back(Event::ProbeDone {
                    generation: g,
                    success: false,
                });
            }
        }
    }

    fn release(&mut self, g: GenId) {
        if let Some(rg) = self.generations.remove(&g) {
            if let Some((token, sock)) = rg.notify {
                self.deregister_fd(&sock.sock, token);
            }
            if let Some((token, child)) = rg.probe {
                let _ = baton_sys::spawn::signal(&child, libc::SIGKILL);
                let _ = baton_sys::spawn::signal_group(child.pid, libc::SIGKILL);
                self.deregister_fd(&child.pidfd, token);
                // SIGKILLed: it is gone in a moment; reap it so no zombie stays.
                wait_briefly(&child);
            }
        }
        let slots: Vec<(GenId, Slot)> = self
            .workers
            .keys()
            .filter(|(wg, _)| *wg == g)
            .copied()
            .collect();
        for key in slots {
            if let Some(w) = self.workers.remove(&key) {
                self.forget(w);
            }
        }
    }
}

impl Runtime {
    fn accept_clients(&mut self) {
        loop {
            let Some((_, sock)) = &self.control else {
                return;
            };
            let mut stream = match sock.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("control socket accept failed: {e}");
                    return;
                }
            };
            let me = rustix::process::geteuid().as_raw();
            match rustix::net::sockopt::socket_peercred(&stream) {
                Ok(cred) if control::uid_allowed(cred.uid.as_raw(), me) => {}
                Ok(cred) => {
                    tracing::warn!(
                        "refused a control client of uid {} (pid {}): only uid {me} and root may control this baton",
                        cred.uid.as_raw(),
                        cred.pid.as_raw_nonzero()
                    );
                    let line = Reply::Error {
                        message: format!(
                            "permission denied: this baton runs as uid {me}; only that user and root may control it"
                        ),
                    }
                    .to_line();
                    let _ = std::io::Write::write(&mut stream, &line);
                    continue;
                }
                Err(e) => {
                    tracing::warn!("cannot check a control client's credentials: {e}");
                    continue;
                }
            }
            let id = self.next_client;
            self.next_client += 1;
            let token = self.token(Source::Client(id));
            if let Err(e) = self
                .poll
                .registry()
                .register(&mut stream, token, Interest::READABLE)
            {
                tracing::warn!("cannot watch a control client: {e}");
                self.tokens.remove(&token);
                continue;
            }
            self.clients.insert(
                id,
                Client {
                    stream,
                    token,
                    input: Vec::new(),
                    output: Vec::new(),
                    deadline: Some(Instant::now() + control::CLIENT_TIMEOUT),
                    waiting: Waiting::Nothing,
                    close_when_flushed: false,
                    want_write: false,
                },
            );
        }
    }

    fn on_client(&mut self, id: u64) {
        self.flush(id);
        let mut closed = false;
        let mut request = None;
        let mut too_large = false;
        {
            let Some(c) = self.clients.get_mut(&id) else {
                return;
            };
            let mut buf = [0u8; 4096];
            loop {
                match std::io::Read::read(&mut c.stream, &mut buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => {
                        // Only the first line counts; later input is ignored.
                        if c.deadline.is_some() {
                            c.input.extend_from_slice(&buf[..n]);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            if c.deadline.is_some() {
                if let Some(end) = c.input.iter().position(|b| *b == b'\n') {
                    request = Some(c.input[..end].to_vec());
                    c.input.clear();
                    c.deadline = None;
                } else if c.input.len() > control::MAX_REQUEST {
                    too_large = true;
                    c.deadline = None;
                }
            }
        }
        if too_large {
            self.reply_and_close(
                id,
                &Reply::Error {
                    message: format!("request longer than {} bytes", control::MAX_REQUEST),
                },
            );
        } else if let Some(line) = request {
            self.handle_request(id, &line);
        }
        if closed {
            // A client that goes away simply stops hearing; a reload it asked
            // for still runs to its end.
            self.close_client(id);
        }
    }

    fn handle_request(&mut self, id: u64, line: &[u8]) {
        let request = match control::parse_request(line) {
            Ok(r) => r,
            Err(message) => {
                self.reply_and_close(id, &Reply::Error { message });
                return;
            }
        };
        match request.cmd {
            control::Command::Status => {
                let status = self.status();
                self.reply_and_close(id, &Reply::Status(Box::new(status)));
            }
            control::Command::Reload => {
                if let Some(c) = self.clients.get_mut(&id) {
                    c.waiting = Waiting::Reload;
                }
                self.queue.push_back(Event::ReloadRequest(id));
            }
            control::Command::Stop { fast } => {
                self.reply(
                    id,
                    &Reply::Ok {
                        message: if fast {
                            "stopping immediately".into()
                        } else {
                            "stopping gracefully".into()
                        },
                    },
                );
                if let Some(c) = self.clients.get_mut(&id) {
                    c.waiting = Waiting::Exit;
                }
                self.queue.push_back(Event::Stop(if fast {
                    StopKind::Immediate
                } else {
                    StopKind::Graceful
                }));
            }
            control::Command::Scale { workers } => {
                if workers == 0 || workers > MAX_WORKERS {
                    self.reply_and_close(
                        id,
                        &Reply::Error {
                            message: format!(
                                "cannot scale to {workers} workers: use 1 to {MAX_WORKERS}"
                            ),
                        },
                    );
                } else {
                    self.queue.push_back(Event::Scale(workers));
                    self.reply_and_close(
                        id,
                        &Reply::Ok {
                            message: format!("scaling to {workers} workers per generation"),
                        },
                    );
                }
            }
        }
    }

    fn reply(&mut self, id: u64, reply: &Reply) {
        let too_much = match self.clients.get_mut(&id) {
            Some(c) => {
                c.output.extend_from_slice(&reply.to_line());
                c.output.len() > control::MAX_PENDING_OUTPUT
            }
            None => return,
        };
        if too_much {
            tracing::warn!("dropping a control client that does not read its replies");
            self.close_client(id);
            return;
        }
        self.flush(id);
    }

    fn reply_and_close(&mut self, id: u64, reply: &Reply) {
        if let Some(c) = self.clients.get_mut(&id) {
            c.close_when_flushed = true;
            c.waiting = Waiting::Nothing;
            c.deadline = None;
        }
        self.reply(id, reply);
    }

    /// Writes what the client can take now; never blocks.
    fn flush(&mut self, id: u64) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        let mut failed = false;
        while !c.output.is_empty() {
            match std::io::Write::write(&mut c.stream, &c.output) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => {
                    c.output.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        let want_write = !c.output.is_empty();
        if !failed && want_write != c.want_write {
            c.want_write = want_write;
            let interest = if want_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let _ = self
                .poll
                .registry()
                .reregister(&mut c.stream, c.token, interest);
        }
        if failed || (c.output.is_empty() && c.close_when_flushed) {
            self.close_client(id);
        }
    }

    fn close_client(&mut self, id: u64) {
        if let Some(mut c) = self.clients.remove(&id) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            self.tokens.remove(&c.token);
        }
    }

    fn expire_clients(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.reply_and_close(
                id,
                &Reply::Error {
                    message: format!(
                        "no complete request within {} s",
                        control::CLIENT_TIMEOUT.as_secs()
                    ),
                },
            );
        }
    }

    fn reload_done(&mut self, tickets: &[u64], outcome: &ReloadOutcome) {
        let reply = match outcome {
            ReloadOutcome::Ready { generation, took } => Reply::Reloaded {
                generation: *generation,
                took_ms: took.as_millis() as u64,
            },
            ReloadOutcome::Failed {
                generation,
                serving,
                reason,
                tail,
            } => Reply::ReloadFailed {
                generation: *generation,
                serving: *serving,
                reason: reason.clone(),
                output: tail
                    .and_then(|key| self.workers.get(&key))
                    .map(|w| w.tail.lines().map(str::to_owned).collect())
                    .unwrap_or_default(),
            },
            ReloadOutcome::Refused(why) => Reply::Error {
                message: format!("reload refused: {why}"),
            },
        };
        for id in tickets {
            self.reply_and_close(*id, &reply);
        }
    }

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

    /// Reaps exited children that are not workers or probes: orphans that
    /// were reparented to baton as a subreaper (or PID 1).
    fn reap_orphans(&mut self) {
        loop {
            let pid = match baton_sys::spawn::peek_exited_child() {
                Ok(Some(pid)) => pid,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!("waitid: {e}");
                    return;
                }
            };
            let tracked = self
                .workers
                .values()
                .any(|w| w.child.as_ref().is_some_and(|(_, c)| c.pid == pid))
                || self
                    .generations
                    .values()
                    .any(|g| g.probe.as_ref().is_some_and(|(_, c)| c.pid == pid));
            if tracked {
                // Its pidfd reports it; look again once that is handled.
                self.orphans_to_reap = true;
                return;
            }
            match baton_sys::spawn::reap_pid(pid) {
                Ok(Some(status)) => tracing::debug!("reaped orphan pid {pid} ({status})"),
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!("cannot reap orphan pid {pid}: {e}");
                    return;
                }
            }
        }
    }

    fn status(&self) -> control::Status {
        let now = Instant::now();
        control::Status {
            pid: std::process::id(),
            uptime_ms: now.saturating_duration_since(self.started).as_millis() as u64,
            serving: self.machine.serving(),
            workers_per_generation: self.machine.workers(),
            reloads: self.machine.reloads_done(),
            last_reload: self.machine.last_reload().and_then(|o| match o {
                ReloadOutcome::Ready { generation, took } => Some(control::LastReload {
                    ok: true,
                    generation: *generation,
                    detail: format!("ready in {} ms", took.as_millis()),
                }),
                ReloadOutcome::Failed {
                    generation, reason, ..
                } => Some(control::LastReload {
                    ok: false,
                    generation: *generation,
                    detail: reason.clone(),
                }),
                ReloadOutcome::Refused(_) => None,
            }),
            listeners: self
                .listeners
                .iter()
                .map(|l| control::ListenerStatus {
                    name: l.name.clone(),
                    address: l.display.clone(),
                })
                .collect(),
            generations: self
                .machine
                .snapshot()
                .into_iter()
                .map(|g| control::GenerationStatus {
                    id: g.id,
                    state: g.state.to_owned(),
                    age_ms: now.saturating_duration_since(g.started).as_millis() as u64,
                    ready_after_ms: g.ready_after.map(|d| d.as_millis() as u64),
                    workers: g
                        .workers
                        .into_iter()
                        .map(|w| control::WorkerStatus {
                            slot: w.slot,
                            pid: w.pid,
                            state: w.state.to_owned(),
                            restarts: w.restarts,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// Reaps a child that was just sent `SIGKILL`, waiting at most a second.
fn wait_briefly(child: &Child) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        let mut fds = [rustix::event::PollFd::new(
            &child.pidfd,
            rustix::event::PollFlags::IN,
        )];
        let _ = rustix::event::poll(
            &mut fds,
            Some(&rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 100_000_000,
            }),
        );
        if let Ok(Some(_)) = baton_sys::spawn::try_reap(child) {
            return;
        }
    }
}
