//! The runtime: a single-threaded `mio` loop that gathers events for the
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
use crate::lifecycle::{
    Action, Event, GenId, Level, Lifecycle, ReadyMode, Slot, StopKind, TimerKey,
};
use crate::listen::Bound;
use crate::notify::NotifySocket;
use crate::output::{Pipe, Stream, Tail};
use crate::signals::{HANDLED, SignalPipe};
use crate::worker::{Placement, spawn_probe, spawn_worker};

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Signal(usize),
    Exit(GenId, Slot),
    Output(GenId, Slot, Stream),
    Ready(GenId, Slot),
    Notify(GenId),
    Probe(GenId),
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
    pub fn new(settings: Settings, listeners: Vec<Bound>) -> Result<Self, RuntimeError> {
        let poll = Poll::new().map_err(RuntimeError::Poll)?;
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
        };
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

    /// The listeners, as bound.
    pub fn listeners(&self) -> &[Bound] {
        &self.listeners
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
            let timeout = self
                .timers
                .values()
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
            let now = Instant::now();
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
            if !pipe.pump(&mut w.tail) {
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
        if ready || closed {
            if let Some((_, fd)) = w.ready.take() {
                self.deregister_fd(&fd, token);
            }
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
            }
        }
    }

    fn log(&self, level: Level, message: &str, tail: Option<(GenId, Slot)>) {
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
