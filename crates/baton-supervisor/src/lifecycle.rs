//! The lifecycle of generations, as a pure state machine.
//!
//! [`Lifecycle::handle`] takes an [`Event`] and the current time and returns
//! the [`Action`]s the runtime must carry out. It performs no I/O, so every
//! transition is tested without spawning a process.
//!
//! # Invariants
//!
//! 1. At most two generations exist at any time.
//! 2. At most one generation is not serving (the one starting, draining or
//!    being killed after a failed start).
//! 3. The serving generation is told to drain only after every worker of the
//!    new generation reported ready (or the generation-wide readiness check
//!    passed).
//! 4. A failed start (a worker exits or crashes before ready, cannot be
//!    spawned, or the readiness deadline passes) kills the new generation and
//!    never signals the serving one.
//! 5. A reload requested while another is in flight is queued and coalesced:
//!    exactly one more reload runs after the current one has finished, never
//!    two at once and never none.
//! 6. A worker of the serving generation that dies is restarted with an
//!    exponential backoff; the backoff resets once a worker stayed up for
//!    [`STABLE_AFTER`].
//! 7. Every worker that exits has what remains of its process group killed,
//!    so no grandchild outlives its worker.

use std::fmt;
use std::time::{Duration, Instant};

pub use baton_sys::spawn::ExitStatus;

/// A generation's number: 1 for the first, then 2, 3, ...
pub type GenId = u64;
/// A worker's index within its generation: 0..workers.
pub type Slot = usize;

/// First restart delay of a crashed worker.
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A worker that stayed up this long gets its backoff reset.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Consecutive quick restarts after which a crash loop is reported.
pub const CRASH_LOOP_AFTER: u32 = 5;
/// How long a failed generation gets to exit after the stop signal.
pub const ROLLBACK_GRACE: Duration = Duration::from_secs(5);
/// How long to wait before explaining what readiness is still missing.
pub const READY_HINT_AFTER: Duration = Duration::from_secs(5);
/// Pause between runs of an `exec:` readiness probe.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// How a generation tells it is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyMode {
    /// `READY=1` on `NOTIFY_SOCKET`, per worker.
    Notify,
    /// A newline on the fd in `BATON_READY_FD`, per worker.
    Fd,
    /// A fixed warm-up after the generation's workers started.
    Delay(Duration),
    /// A command (run by `sh -c`) that exits 0 when the generation is ready.
    Exec(String),
}

impl ReadyMode {
    fn per_worker(&self) -> bool {
        matches!(self, ReadyMode::Notify | ReadyMode::Fd)
    }
}

/// The lifecycle's settings.
#[derive(Debug, Clone)]
pub struct Policy {
    pub workers: usize,
    pub ready: ReadyMode,
    pub ready_timeout: Duration,
    pub grace: Duration,
    pub stop_signal: i32,
}

/// How to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopKind {
    /// Send the stop signal, wait for the grace period, then `SIGKILL`.
    Graceful,
    /// `SIGKILL` now.
    Immediate,
}

/// Timers the machine arms; a timer that fires after its purpose is gone
/// is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKey {
    ReadyDeadline(GenId),
    ReadyHint(GenId),
    ReadyDelay(GenId),
    ProbeRetry(GenId),
    Grace(GenId),
    Restart(GenId, Slot),
    /// Grace of one worker removed by scaling down.
    WorkerGrace(GenId, Slot),
}

/// Identifies a client waiting for a reload's verdict (`baton ctl reload`).
pub type Ticket = u64;

/// The verdict of a reload, for the clients that asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new generation is ready and serving.
    Ready { generation: GenId, took: Duration },
    /// The new generation failed; the old one keeps serving.
    Failed {
        generation: GenId,
        serving: GenId,
        reason: String,
        /// The worker whose last output explains the failure.
        tail: Option<(GenId, Slot)>,
    },
    /// No reload ran: baton is stopping, or the first generation failed.
    Refused(String),
}

/// What baton tells its own service manager (systemd's `NOTIFY_SOCKET`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sd {
    /// `READY=1`: a generation serves (after boot, a reload, or a rollback).
    Ready {
        serving: GenId,
        note: Option<String>,
    },
    /// `RELOADING=1`: a reload started.
    Reloading { generation: GenId },
    /// `STOPPING=1`.
    Stopping,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `SIGHUP`: reload, nobody waits for the verdict.
    Reload,
    /// A reload asked for by a client that waits for its verdict.
    ReloadRequest(Ticket),
    /// Set the number of workers per generation (`ctl scale`, `TTIN`/`TTOU`).
    Scale(usize),
    /// `SIGTERM`/`SIGINT` (graceful; a second one escalates) or `SIGQUIT`.
    Stop(StopKind),
    /// The runtime started a worker asked for by [`Action::Spawn`].
    Spawned {
        generation: GenId,
        slot: Slot,
        pid: u32,
    },
    /// The runtime could not start it.
    SpawnFailed {
        generation: GenId,
        slot: Slot,
        error: String,
    },
    /// A worker reported ready (notify or fd mode).
    WorkerReady {
        generation: GenId,
        slot: Slot,
    },
    /// An `exec:` readiness probe finished.
    ProbeDone {
        generation: GenId,
        success: bool,
    },
    /// A worker process ended.
    WorkerExited {
        generation: GenId,
        slot: Slot,
        status: ExitStatus,
    },
    Timer(TimerKey),
}

/// Log levels of [`Action::Log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Prepare a generation's shared resources (readiness socket, resolved
    /// working directory) before its first worker is spawned.
    PrepareGeneration {
        generation: GenId,
    },
    /// Start a worker; answer with [`Event::Spawned`] or [`Event::SpawnFailed`].
    Spawn {
        generation: GenId,
        slot: Slot,
    },
    /// Run the `exec:` readiness probe once; answer with [`Event::ProbeDone`].
    RunProbe {
        generation: GenId,
    },
    /// Send a signal to one worker.
    Signal {
        generation: GenId,
        slot: Slot,
        signal: i32,
    },
    /// `SIGKILL` a live worker and everything in its process group.
    KillGroup {
        generation: GenId,
        slot: Slot,
    },
    /// A worker exited: `SIGKILL` whatever is left of its process group
    /// (grandchildren it leaked). Invariant 7.
    ReapGroup {
        generation: GenId,
        slot: Slot,
    },
    SetTimer {
        key: TimerKey,
        after: Duration,
    },
    CancelTimer {
        key: TimerKey,
    },
    /// A generation is gone: free its resources (sockets, probe, pipes).
    ReleaseGeneration {
        generation: GenId,
    },
    /// A generation became the serving one.
    Serving {
        generation: GenId,
    },
    /// Answer the clients waiting for a reload.
    ReloadDone {
        tickets: Vec<Ticket>,
        outcome: ReloadOutcome,
    },
    /// Tell baton's own service manager (systemd) about a state change.
    Notify(Sd),
    /// Write a log line; with `tail`, append that worker's last output lines.
    Log {
        level: Level,
        message: String,
        tail: Option<(GenId, Slot)>,
    },
    /// Everything is stopped: exit with this code.
    Exit(u8),
}

/// Exit codes of `baton run` that the lifecycle decides (see the README).
pub mod exit {
    pub const OK: u8 = 0;
    pub const CANNOT_RUN: u8 = 4;
    pub const FIRST_FAILED: u8 = 5;
    pub const FIRST_NOT_READY: u8 = 6;
    pub const KILLED: u8 = 7;
}

/// A mistake in the machine itself: an event that cannot happen in the
/// state it arrived in. Reported, never acted upon.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("internal error: {event} is impossible while {phase}")]
pub struct Impossible {
    pub phase: &'static str,
    pub event: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Started, not yet ready.
    Starting,
    /// Ready and taking traffic.
    Serving,
    /// Replaced: told to stop, given the grace period.
    Draining,
    /// Failed to start: being killed.
    Failed,
    /// Being stopped because baton stops.
    Stopping,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkerState {
    /// Asked the runtime to spawn it; no answer yet.
    Spawning,
    Running {
        pid: u32,
        ready: bool,
    },
    /// Crashed; a restart timer is armed.
    Restarting,
    /// Told to stop because the generation was scaled down.
    Removing {
        pid: u32,
    },
    Exited,
}

#[derive(Debug, Clone)]
struct Worker {
    state: WorkerState,
    started: Option<Instant>,
    backoff: Duration,
    quick_restarts: u32,
    restarts: u32,
}

impl Worker {
    fn new() -> Self {
        Self {
            state: WorkerState::Spawning,
            started: None,
            backoff: BACKOFF_START,
            quick_restarts: 0,
            restarts: 0,
        }
    }

    fn alive(&self) -> bool {
        matches!(
            self.state,
            WorkerState::Spawning | WorkerState::Running { .. } | WorkerState::Removing { .. }
        )
    }
}

#[derive(Debug, Clone)]
struct Generation {
    id: GenId,
    role: Role,
    workers: Vec<Worker>,
    started: Instant,
    /// How long it took to become ready, once it did.
    ready_after: Option<Duration>,
    /// Generation-wide readiness (delay and exec modes).
    gen_ready: bool,
}

impl Generation {
    fn alive(&self) -> bool {
        self.workers.iter().any(Worker::alive)
    }

    fn ready(&self, per_worker: bool) -> bool {
        if per_worker {
            self.workers
                .iter()
                .all(|w| matches!(w.state, WorkerState::Running { ready: true, .. }))
        } else {
            self.gen_ready
                && self
                    .workers
                    .iter()
                    .all(|w| matches!(w.state, WorkerState::Running { .. }))
        }
    }
}

/// One generation, as `baton ctl status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationInfo {
    pub id: GenId,
    pub state: &'static str,
    pub started: Instant,
    pub ready_after: Option<Duration>,
    pub workers: Vec<WorkerInfo>,
}

/// One worker slot, as `baton ctl status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    pub slot: Slot,
    pub pid: Option<u32>,
    pub state: &'static str,
    pub restarts: u32,
}

/// Where the supervisor as a whole is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The first generation is starting; nothing serves yet.
    Booting,
    /// One generation serves; nothing else exists.
    Serving,
    /// One serves, a new one is starting.
    Reloading,
    /// One serves, another (drained or failed) is on its way out.
    Retiring,
    /// Everything is being stopped.
    Stopping(StopKind),
    /// Exit was requested.
    Done,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Booting => "booting",
            Phase::Serving => "serving",
            Phase::Reloading => "reloading",
            Phase::Retiring => "retiring",
            Phase::Stopping(StopKind::Graceful) => "stopping gracefully",
            Phase::Stopping(StopKind::Immediate) => "stopping immediately",
            Phase::Done => "done",
        }
    }
}

/// The supervisor's lifecycle. See the module docs for its invariants.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    policy: Policy,
    phase: Phase,
    gens: Vec<Generation>,
    next_id: GenId,
    reload_pending: bool,
    /// Exit code decided by a failure (boot failed); otherwise derived.
    exit_override: Option<u8>,
    killed_any: bool,
    reloads_done: u64,
    /// Clients waiting for the queued reload.
    queued_tickets: Vec<Ticket>,
    /// Clients waiting for the reload in progress.
    inflight_tickets: Vec<Ticket>,
    last_reload: Option<ReloadOutcome>,
    out: Vec<Action>,
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

impl Lifecycle {
    /// A lifecycle that has not started anything yet; call [`Lifecycle::start`].
    pub fn new(policy: Policy) -> Self {
        assert!(policy.workers > 0, "validated settings have workers >= 1");
        Self {
            policy,
            phase: Phase::Booting,
            gens: Vec::new(),
            next_id: 1,
            reload_pending: false,
            exit_override: None,
            killed_any: false,
            reloads_done: 0,
            queued_tickets: Vec::new(),
            inflight_tickets: Vec::new(),
            last_reload: None,
            out: Vec::new(),
        }
    }

    /// Starts the first generation.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        self.start_generation(now);
        std::mem::take(&mut self.out)
    }

    /// The serving generation, if any.
    pub fn serving(&self) -> Option<GenId> {
        self.gens
            .iter()
            .find(|g| g.role == Role::Serving)
            .map(|g| g.id)
    }

    /// Number of generations that exist.
    pub fn generation_count(&self) -> usize {
        self.gens.len()
    }

    /// Reloads that completed successfully.
    pub fn reloads_done(&self) -> u64 {
        self.reloads_done
    }

    /// Whether a reload is queued.
    pub fn reload_pending(&self) -> bool {
        self.reload_pending
    }

    /// Pids of the live workers of generation `generation`.
    pub fn worker_pids(&self, generation: GenId) -> Vec<(Slot, u32)> {
        self.gens
            .iter()
            .filter(|g| g.id == generation)
            .flat_map(|g| g.workers.iter().enumerate())
            .filter_map(|(slot, w)| match w.state {
                WorkerState::Running { pid, .. } => Some((slot, pid)),
                _ => None,
            })
            .collect()
    }

    /// Which workers of a starting generation have not reported ready.
    pub fn not_ready(&self, generation: GenId) -> Vec<Slot> {
        self.gens
            .iter()
            .filter(|g| g.id == generation)
            .flat_map(|g| g.workers.iter().enumerate())
            .filter(|(_, w)| !matches!(w.state, WorkerState::Running { ready: true, .. }))
            .map(|(slot, _)| slot)
            .collect()
    }

    /// Feeds one event; returns the actions to carry out, in order.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        if let Err(e) = self.step(&event, now) {
            self.log(Level::Error, e.to_string());
        }
        self.check_invariants();
        std::mem::take(&mut self.out)
    }

    fn step(&mut self, event: &Event, now: Instant) -> Result<(), Impossible> {
        use Phase::{Booting, Done, Reloading, Retiring, Serving, Stopping};
        match (self.phase, event) {
            (Booting, Event::Reload | Event::ReloadRequest(_)) => {
                self.take_ticket(event);
                self.queue_reload("the first generation is still starting");
            }
            (Serving, Event::Reload | Event::ReloadRequest(_)) => {
                self.take_ticket(event);
                self.start_generation(now);
            }
            (Reloading, Event::Reload | Event::ReloadRequest(_)) => {
                self.take_ticket(event);
                self.queue_reload("a reload is in progress");
            }
            (Retiring, Event::Reload | Event::ReloadRequest(_)) => {
                self.take_ticket(event);
                self.queue_reload("the previous generation is still exiting");
            }
            (Stopping(_) | Done, Event::Reload) => {
                self.log(Level::Info, "reload ignored: baton is stopping".into());
            }
            (Stopping(_) | Done, Event::ReloadRequest(ticket)) => {
                self.out.push(Action::ReloadDone {
                    tickets: vec![*ticket],
                    outcome: ReloadOutcome::Refused("baton is stopping".into()),
                });
            }

            (Booting | Serving | Reloading | Retiring, Event::Scale(n)) => self.scale(*n),
            (Stopping(_) | Done, Event::Scale(_)) => {
                self.log(Level::Info, "scale ignored: baton is stopping".into());
            }

            (Booting | Serving | Reloading | Retiring, Event::Stop(kind)) => {
                self.stop(*kind, now);
            }
            (Stopping(StopKind::Graceful), Event::Stop(_)) => {
                self.stop(StopKind::Immediate, now);
            }
            (Stopping(StopKind::Immediate) | Done, Event::Stop(_)) => {}

            (
                Booting | Serving | Reloading | Retiring | Stopping(_),
                Event::Spawned {
                    generation,
                    slot,
                    pid,
                },
            ) => {
                self.on_spawned(*generation, *slot, *pid, now, event)?;
            }
            (
                Booting | Serving | Reloading | Retiring | Stopping(_),
                Event::SpawnFailed {
                    generation,
                    slot,
                    error,
                },
            ) => {
                self.on_spawn_failed(*generation, *slot, error, now, event)?;
            }
            (
                Booting | Serving | Reloading | Retiring | Stopping(_),
                Event::WorkerReady { generation, slot },
            ) => {
                self.on_worker_ready(*generation, *slot, now);
            }
            (
                Booting | Serving | Reloading | Retiring | Stopping(_),
                Event::ProbeDone {
                    generation,
                    success,
                },
            ) => {
                self.on_probe_done(*generation, *success, now);
            }
            (
                Booting | Serving | Reloading | Retiring | Stopping(_),
                Event::WorkerExited {
                    generation,
                    slot,
                    status,
                },
            ) => {
                self.on_worker_exited(*generation, *slot, *status, now, event)?;
            }
            (Booting | Serving | Reloading | Retiring | Stopping(_), Event::Timer(key)) => {
                self.on_timer(*key, now);
            }
            (
                Done,
                Event::Spawned { .. }
                | Event::SpawnFailed { .. }
                | Event::WorkerReady { .. }
                | Event::ProbeDone { .. }
                | Event::WorkerExited { .. }
                | Event::Timer(_),
            ) => {
                return Err(self.impossible(event));
            }
        }
        Ok(())
    }

    fn impossible(&self, event: &Event) -> Impossible {
        Impossible {
            phase: self.phase.name(),
            event: format!("{event:?}"),
        }
    }

    fn log(&mut self, level: Level, message: String) {
        self.out.push(Action::Log {
            level,
            message,
            tail: None,
        });
    }

    fn log_tail(&mut self, level: Level, message: String, generation: GenId, slot: Slot) {
        self.out.push(Action::Log {
            level,
            message,
            tail: Some((generation, slot)),
        });
    }

    fn gen_index(&self, generation: GenId) -> Option<usize> {
        self.gens.iter().position(|g| g.id == generation)
    }

    fn take_ticket(&mut self, event: &Event) {
        if let Event::ReloadRequest(ticket) = event {
            self.queued_tickets.push(*ticket);
        }
    }

    /// Sets the worker count for new generations and adjusts the serving
    /// one; a generation still starting keeps its count and is adjusted
    /// once it serves.
    fn scale(&mut self, n: usize) {
        let before = self.policy.workers;
        self.policy.workers = n;
        self.log(
            Level::Info,
            format!(
                "scaling from {before} to {n} worker{} per generation",
                plural(n)
            ),
        );
        if let Some(gi) = self.gens.iter().position(|g| g.role == Role::Serving) {
            self.apply_scale(gi);
        }
    }

    /// Grows or shrinks serving generation `gi` to `policy.workers`.
    fn apply_scale(&mut self, gi: usize) {
        let want = self.policy.workers;
        let generation = self.gens[gi].id;
        // Slots being removed count as gone.
        let live =
            |w: &Worker| !matches!(w.state, WorkerState::Removing { .. } | WorkerState::Exited);
        let have = self.gens[gi].workers.iter().filter(|w| live(w)).count();
        if want > have {
            // Reuse slots whose workers are gone, then add new ones.
            let mut missing = want - have;
            for slot in 0..self.gens[gi].workers.len() {
                if missing == 0 {
                    break;
                }
                if self.gens[gi].workers[slot].state == WorkerState::Exited {
                    self.gens[gi].workers[slot] = Worker::new();
                    self.out.push(Action::Spawn { generation, slot });
                    missing -= 1;
                }
            }
            for _ in 0..missing {
                let slot = self.gens[gi].workers.len();
                self.gens[gi].workers.push(Worker::new());
                self.out.push(Action::Spawn { generation, slot });
            }
        } else if want < have {
            // Remove the highest slots first.
            let mut extra = have - want;
            for slot in (0..self.gens[gi].workers.len()).rev() {
                if extra == 0 {
                    break;
                }
                let w = &mut self.gens[gi].workers[slot];
                match w.state {
                    WorkerState::Running { pid, .. } => {
                        w.state = WorkerState::Removing { pid };
                        self.out.push(Action::Signal {
                            generation,
                            slot,
                            signal: self.policy.stop_signal,
                        });
                        self.set_timer(TimerKey::WorkerGrace(generation, slot), self.policy.grace);
                        extra -= 1;
                    }
                    WorkerState::Restarting => {
                        w.state = WorkerState::Exited;
                        self.out.push(Action::CancelTimer {
                            key: TimerKey::Restart(generation, slot),
                        });
                        extra -= 1;
                    }
                    // A spawn in flight: its answer arrives before anything
                    // else; remove a running one instead.
                    WorkerState::Spawning | WorkerState::Removing { .. } | WorkerState::Exited => {}
                }
            }
        }
    }

    /// The state of every generation, for `baton ctl status`.
    pub fn snapshot(&self) -> Vec<GenerationInfo> {
        self.gens
            .iter()
            .map(|g| GenerationInfo {
                id: g.id,
                state: match g.role {
                    Role::Starting => "starting",
                    Role::Serving => "serving",
                    Role::Draining => "draining",
                    Role::Failed => "failed",
                    Role::Stopping => "stopping",
                },
                started: g.started,
                ready_after: g.ready_after,
                workers: g
                    .workers
                    .iter()
                    .enumerate()
                    .map(|(slot, w)| WorkerInfo {
                        slot,
                        pid: match w.state {
                            WorkerState::Running { pid, .. } | WorkerState::Removing { pid } => {
                                Some(pid)
                            }
                            WorkerState::Spawning
                            | WorkerState::Restarting
                            | WorkerState::Exited => None,
                        },
                        state: match w.state {
                            WorkerState::Spawning => "spawning",
                            WorkerState::Running { ready: true, .. } => "ready",
                            WorkerState::Running { ready: false, .. } => "running",
                            WorkerState::Restarting => "restarting",
                            WorkerState::Removing { .. } => "removing",
                            WorkerState::Exited => "exited",
                        },
                        restarts: w.restarts,
                    })
                    .collect(),
            })
            .collect()
    }

    /// The verdict of the last reload, if any ran.
    pub fn last_reload(&self) -> Option<&ReloadOutcome> {
        self.last_reload.as_ref()
    }

    /// Workers per generation now.
    pub fn workers(&self) -> usize {
        self.policy.workers
    }

    fn queue_reload(&mut self, why: &str) {
        if self.reload_pending {
            self.log(
                Level::Info,
                format!("reload queued ({why}); it coalesces with the one already queued"),
            );
        } else {
            self.reload_pending = true;
            self.log(Level::Info, format!("reload queued ({why})"));
        }
    }

    fn start_generation(&mut self, now: Instant) {
        let id = self.next_id;
        self.next_id += 1;
        let n = self.policy.workers;
        self.gens.push(Generation {
            id,
            role: Role::Starting,
            workers: (0..n).map(|_| Worker::new()).collect(),
            started: now,
            ready_after: None,
            gen_ready: false,
        });
        self.phase = if self.serving().is_some() {
            self.inflight_tickets = std::mem::take(&mut self.queued_tickets);
            self.out
                .push(Action::Notify(Sd::Reloading { generation: id }));
            Phase::Reloading
        } else {
            Phase::Booting
        };
        self.log(
            Level::Info,
            format!("generation {id} starting ({n} worker{})", plural(n)),
        );
        self.out.push(Action::PrepareGeneration { generation: id });
        for slot in 0..n {
            self.out.push(Action::Spawn {
                generation: id,
                slot,
            });
        }
        self.set_timer(TimerKey::ReadyDeadline(id), self.policy.ready_timeout);
        self.set_timer(TimerKey::ReadyHint(id), READY_HINT_AFTER);
        match &self.policy.ready {
            ReadyMode::Delay(d) => self.set_timer(TimerKey::ReadyDelay(id), *d),
            ReadyMode::Exec(_) => self.out.push(Action::RunProbe { generation: id }),
            ReadyMode::Notify | ReadyMode::Fd => {}
        }
    }

    fn set_timer(&mut self, key: TimerKey, after: Duration) {
        self.out.push(Action::SetTimer { key, after });
    }

    fn cancel_ready_timers(&mut self, generation: GenId) {
        for key in [
            TimerKey::ReadyDeadline(generation),
            TimerKey::ReadyHint(generation),
            TimerKey::ReadyDelay(generation),
            TimerKey::ProbeRetry(generation),
        ] {
            self.out.push(Action::CancelTimer { key });
        }
    }

    fn on_spawned(
        &mut self,
        generation: GenId,
        slot: Slot,
        pid: u32,
        now: Instant,
        event: &Event,
    ) -> Result<(), Impossible> {
        let Some(gi) = self.gen_index(generation) else {
            return Err(self.impossible(event));
        };
        let g = &mut self.gens[gi];
        let Some(w) = g.workers.get_mut(slot) else {
            return Err(self.impossible(event));
        };
        if w.state != WorkerState::Spawning {
            return Err(self.impossible(event));
        }
        w.state = WorkerState::Running { pid, ready: false };
        w.started = Some(now);
        let role = g.role;
        self.log(
            Level::Info,
            format!("worker {slot} of generation {generation} started, pid {pid}"),
        );
        match role {
            // Spawned while being stopped (the stop came between the spawn
            // request and its answer): stop it too.
            Role::Stopping | Role::Draining | Role::Failed => {
                self.out.push(Action::Signal {
                    generation,
                    slot,
                    signal: self.policy.stop_signal,
                });
            }
            Role::Starting | Role::Serving => {}
        }
        Ok(())
    }

    fn on_spawn_failed(
        &mut self,
        generation: GenId,
        slot: Slot,
        error: &str,
        now: Instant,
        event: &Event,
    ) -> Result<(), Impossible> {
        let Some(gi) = self.gen_index(generation) else {
            return Err(self.impossible(event));
        };
        let Some(w) = self.gens[gi].workers.get_mut(slot) else {
            return Err(self.impossible(event));
        };
        w.state = WorkerState::Exited;
        match self.gens[gi].role {
            Role::Starting => {
                let reason = format!("worker {slot} could not be started: {error}");
                self.fail_generation(gi, &reason, None, exit::CANNOT_RUN);
            }
            Role::Serving => {
                self.log(
                    Level::Error,
                    format!(
                        "worker {slot} of generation {generation} could not be restarted: {error}"
                    ),
                );
                self.schedule_restart(gi, slot, now);
            }
            Role::Draining | Role::Failed | Role::Stopping => {}
        }
        self.after_exit(gi, now);
        Ok(())
    }

    fn on_worker_ready(&mut self, generation: GenId, slot: Slot, now: Instant) {
        let Some(gi) = self.gen_index(generation) else {
            return;
        };
        let g = &mut self.gens[gi];
        let role = g.role;
        if let Some(Worker {
            state: WorkerState::Running { ready, .. },
            ..
        }) = g.workers.get_mut(slot)
        {
            if *ready {
                return;
            }
            *ready = true;
        } else {
            return;
        }
        match role {
            Role::Starting => {
                self.log(
                    Level::Debug,
                    format!("worker {slot} of generation {generation} is ready"),
                );
                self.maybe_ready(gi, now);
            }
            Role::Serving => self.log(
                Level::Info,
                format!("worker {slot} of generation {generation} is ready again"),
            ),
            Role::Draining | Role::Failed | Role::Stopping => {}
        }
    }

    fn on_probe_done(&mut self, generation: GenId, success: bool, now: Instant) {
        let Some(gi) = self.gen_index(generation) else {
            return;
        };
        if self.gens[gi].role != Role::Starting {
            return;
        }
        if success {
            self.gens[gi].gen_ready = true;
            self.maybe_ready(gi, now);
        } else {
            self.set_timer(TimerKey::ProbeRetry(generation), PROBE_INTERVAL);
        }
    }

    /// A starting generation became ready if all its workers (and the
    /// generation-wide check, if any) say so.
    fn maybe_ready(&mut self, gi: usize, now: Instant) {
        let per_worker = self.policy.ready.per_worker();
        if !self.gens[gi].ready(per_worker) {
            return;
        }
        let generation = self.gens[gi].id;
        let took = now.saturating_duration_since(self.gens[gi].started);
        self.cancel_ready_timers(generation);
        self.log(
            Level::Info,
            format!("generation {generation} ready in {} ms", ms(took)),
        );
        // Invariant 3: only now is the previous generation told to drain.
        let old = self
            .gens
            .iter()
            .position(|g| g.role == Role::Serving && g.id != generation);
        self.gens[gi].role = Role::Serving;
        self.gens[gi].ready_after = Some(took);
        self.out.push(Action::Serving { generation });
        self.out.push(Action::Notify(Sd::Ready {
            serving: generation,
            note: None,
        }));
        self.apply_scale(gi);
        match old {
            Some(oi) => {
                self.reloads_done += 1;
                self.retire(oi, Role::Draining, self.policy.grace);
                let outcome = ReloadOutcome::Ready { generation, took };
                self.last_reload = Some(outcome.clone());
                self.out.push(Action::ReloadDone {
                    tickets: std::mem::take(&mut self.inflight_tickets),
                    outcome,
                });
                self.phase = Phase::Retiring;
            }
            None => {
                self.phase = Phase::Serving;
                self.run_pending_reload(now);
            }
        }
    }

    /// Sends the stop signal to every live worker of a generation and arms
    /// its grace timer.
    fn retire(&mut self, gi: usize, role: Role, grace: Duration) {
        let generation = self.gens[gi].id;
        self.gens[gi].role = role;
        if role == Role::Draining {
            self.log(Level::Info, format!("generation {generation} draining"));
        }
        let signal = self.policy.stop_signal;
        let mut any = false;
        for slot in 0..self.gens[gi].workers.len() {
            let w = &mut self.gens[gi].workers[slot];
            match w.state {
                WorkerState::Running { .. } => {
                    any = true;
                    self.out.push(Action::Signal {
                        generation,
                        slot,
                        signal,
                    });
                }
                WorkerState::Restarting => {
                    w.state = WorkerState::Exited;
                    self.out.push(Action::CancelTimer {
                        key: TimerKey::Restart(generation, slot),
                    });
                }
                // Its spawn answer will find the generation retiring and
                // stop it then (see on_spawned); a removed worker was
                // already told to stop.
                WorkerState::Spawning | WorkerState::Removing { .. } => any = true,
                WorkerState::Exited => {}
            }
        }
        self.cancel_ready_timers(generation);
        if any {
            self.set_timer(TimerKey::Grace(generation), grace);
        }
    }

    /// Rolls a starting generation back. The caller runs `after_exit` once
    /// afterwards (the generation may already be empty).
    fn fail_generation(&mut self, gi: usize, reason: &str, tail: Option<Slot>, boot_code: u8) {
        let generation = self.gens[gi].id;
        let serving = self.serving();
        let message = match serving {
            Some(s) => format!(
                "reload failed: generation {generation} {reason}; generation {s} keeps serving"
            ),
            None => format!("generation {generation} failed: {reason}"),
        };
        match tail {
            Some(slot) => self.log_tail(Level::Error, message, generation, slot),
            None => self.log(Level::Error, message),
        }
        let grace = ROLLBACK_GRACE.min(self.policy.grace);
        self.retire(gi, Role::Failed, grace);
        match serving {
            Some(s) => {
                let outcome = ReloadOutcome::Failed {
                    generation,
                    serving: s,
                    reason: reason.to_owned(),
                    tail: tail.map(|slot| (generation, slot)),
                };
                self.last_reload = Some(outcome.clone());
                self.out.push(Action::ReloadDone {
                    tickets: std::mem::take(&mut self.inflight_tickets),
                    outcome,
                });
                self.out.push(Action::Notify(Sd::Ready {
                    serving: s,
                    note: Some(format!("reload to generation {generation} failed")),
                }));
                self.phase = Phase::Retiring;
            }
            None => {
                // The first generation failed: baton gives up and exits.
                self.exit_override = Some(boot_code);
                self.reload_pending = false;
                let tickets = std::mem::take(&mut self.queued_tickets);
                if !tickets.is_empty() {
                    self.out.push(Action::ReloadDone {
                        tickets,
                        outcome: ReloadOutcome::Refused(format!(
                            "the first generation failed ({reason}); baton is exiting"
                        )),
                    });
                }
                self.phase = Phase::Stopping(StopKind::Graceful);
            }
        }
    }

    fn on_worker_exited(
        &mut self,
        generation: GenId,
        slot: Slot,
        status: ExitStatus,
        now: Instant,
        event: &Event,
    ) -> Result<(), Impossible> {
        let Some(gi) = self.gen_index(generation) else {
            return Err(self.impossible(event));
        };
        let Some(w) = self.gens[gi].workers.get_mut(slot) else {
            return Err(self.impossible(event));
        };
        let (pid, ready, removed) = match w.state {
            WorkerState::Running { pid, ready } => (pid, ready, false),
            WorkerState::Removing { pid } => (pid, true, true),
            WorkerState::Spawning | WorkerState::Restarting | WorkerState::Exited => {
                return Err(self.impossible(event));
            }
        };
        w.state = WorkerState::Exited;
        let uptime = w
            .started
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        // Invariant 7: whatever is left of its process group goes with it.
        self.out.push(Action::ReapGroup { generation, slot });
        if removed {
            self.out.push(Action::CancelTimer {
                key: TimerKey::WorkerGrace(generation, slot),
            });
            self.log(
                Level::Info,
                format!("worker {slot} of generation {generation} (pid {pid}) removed ({status})"),
            );
            // Drop trailing empty slots so the numbering stays compact.
            let g = &mut self.gens[gi];
            while g.workers.len() > 1
                && g.workers
                    .last()
                    .is_some_and(|w| w.state == WorkerState::Exited)
                && g.role == Role::Serving
            {
                g.workers.pop();
            }
            self.after_exit(gi, now);
            return Ok(());
        }
        match self.gens[gi].role {
            Role::Starting => {
                let when = if ready {
                    "after it was ready"
                } else {
                    "before it was ready"
                };
                let mut reason = format!("worker {slot} (pid {pid}) exited with {status} {when}");
                if status == ExitStatus::Code(0) {
                    reason.push_str(
                        " (a server must keep running; if the command daemonizes, run it in the foreground)",
                    );
                }
                self.fail_generation(gi, &reason, Some(slot), exit::FIRST_FAILED);
            }
            Role::Serving => {
                self.log_tail(
                    Level::Warn,
                    format!(
                        "worker {slot} of generation {generation} (pid {pid}) exited with {status} after {}",
                        humantime::format_duration(Duration::from_millis(uptime.as_millis() as u64))
                    ),
                    generation,
                    slot,
                );
                self.schedule_restart(gi, slot, now);
            }
            Role::Draining | Role::Failed | Role::Stopping => {
                self.log(
                    Level::Debug,
                    format!(
                        "worker {slot} of generation {generation} (pid {pid}) exited with {status}"
                    ),
                );
            }
        }
        self.after_exit(gi, now);
        Ok(())
    }

    fn schedule_restart(&mut self, gi: usize, slot: Slot, now: Instant) {
        let generation = self.gens[gi].id;
        let w = &mut self.gens[gi].workers[slot];
        let uptime = w
            .started
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        if uptime >= STABLE_AFTER {
            w.backoff = BACKOFF_START;
            w.quick_restarts = 0;
        }
        let delay = w.backoff;
        w.backoff = (w.backoff * 2).min(BACKOFF_MAX);
        w.quick_restarts += 1;
        w.restarts += 1;
        w.state = WorkerState::Restarting;
        let quick = w.quick_restarts;
        self.log(
            Level::Info,
            format!(
                "worker {slot} of generation {generation} restarting in {} ms",
                ms(delay)
            ),
        );
        if quick == CRASH_LOOP_AFTER || (quick > CRASH_LOOP_AFTER && delay == BACKOFF_MAX) {
            self.log(
                Level::Error,
                format!(
                    "worker {slot} of generation {generation} is crash-looping: {quick} restarts in a row, each up less than {}; restarts continue with up to {} s between them",
                    humantime::format_duration(STABLE_AFTER),
                    BACKOFF_MAX.as_secs()
                ),
            );
        }
        self.set_timer(TimerKey::Restart(generation, slot), delay);
    }

    /// Called after a worker of generation `gi` ended: removes the
    /// generation when nothing of it is left and moves the phase on.
    fn after_exit(&mut self, gi: usize, now: Instant) {
        let g = &self.gens[gi];
        let gone = !g.alive() && matches!(g.role, Role::Draining | Role::Failed | Role::Stopping);
        if !gone {
            return;
        }
        let generation = g.id;
        self.gens.remove(gi);
        self.out.push(Action::CancelTimer {
            key: TimerKey::Grace(generation),
        });
        self.out.push(Action::ReleaseGeneration { generation });
        self.log(Level::Info, format!("generation {generation} exited"));
        match self.phase {
            Phase::Retiring => {
                self.phase = Phase::Serving;
                self.run_pending_reload(now);
            }
            Phase::Stopping(_) => {
                if self.gens.is_empty() {
                    let code = self.exit_override.unwrap_or(if self.killed_any {
                        exit::KILLED
                    } else {
                        exit::OK
                    });
                    if code == exit::OK {
                        self.log(Level::Info, "stopped".into());
                    } else {
                        self.log(Level::Info, format!("stopped (exit code {code})"));
                    }
                    self.phase = Phase::Done;
                    self.out.push(Action::Exit(code));
                }
            }
            Phase::Booting | Phase::Serving | Phase::Reloading | Phase::Done => {}
        }
    }

    fn run_pending_reload(&mut self, now: Instant) {
        if self.reload_pending && self.phase == Phase::Serving {
            self.reload_pending = false;
            self.log(Level::Info, "running the queued reload".into());
            self.start_generation(now);
        }
    }

    fn stop(&mut self, kind: StopKind, now: Instant) {
        if !matches!(self.phase, Phase::Stopping(_)) {
            self.out.push(Action::Notify(Sd::Stopping));
        }
        self.phase = Phase::Stopping(kind);
        self.reload_pending = false;
        let mut tickets = std::mem::take(&mut self.queued_tickets);
        tickets.append(&mut self.inflight_tickets);
        if !tickets.is_empty() {
            self.out.push(Action::ReloadDone {
                tickets,
                outcome: ReloadOutcome::Refused("baton is stopping".into()),
            });
        }
        match kind {
            StopKind::Graceful => {
                self.log(Level::Info, "stopping (graceful)".into());
                for gi in 0..self.gens.len() {
                    match self.gens[gi].role {
                        // Already told to stop, with their own deadline.
                        Role::Draining | Role::Failed | Role::Stopping => {
                            self.gens[gi].role = Role::Stopping;
                        }
                        Role::Starting | Role::Serving => {
                            self.retire(gi, Role::Stopping, self.policy.grace);
                        }
                    }
                }
            }
            StopKind::Immediate => {
                self.log(Level::Info, "stopping (immediate)".into());
                for gi in 0..self.gens.len() {
                    self.kill_generation(gi);
                    self.gens[gi].role = Role::Stopping;
                }
            }
        }
        // Generations that were already empty are done now.
        let mut gi = 0;
        while gi < self.gens.len() {
            let before = self.gens.len();
            self.after_exit(gi, now);
            if self.gens.len() == before {
                gi += 1;
            }
        }
        if self.gens.is_empty() && self.phase != Phase::Done {
            self.phase = Phase::Done;
            self.out
                .push(Action::Exit(self.exit_override.unwrap_or(exit::OK)));
        }
    }

    /// `SIGKILL` for every live worker of a generation.
    fn kill_generation(&mut self, gi: usize) {
        let generation = self.gens[gi].id;
        self.cancel_ready_timers(generation);
        for slot in 0..self.gens[gi].workers.len() {
            match self.gens[gi].workers[slot].state {
                WorkerState::Running { .. } | WorkerState::Removing { .. } => {
                    self.killed_any = true;
                    self.out.push(Action::KillGroup { generation, slot });
                }
                WorkerState::Restarting => {
                    self.gens[gi].workers[slot].state = WorkerState::Exited;
                    self.out.push(Action::CancelTimer {
                        key: TimerKey::Restart(generation, slot),
                    });
                }
                WorkerState::Spawning | WorkerState::Exited => {}
            }
        }
    }

    fn on_timer(&mut self, key: TimerKey, now: Instant) {
        match key {
            TimerKey::ReadyDeadline(generation) => {
                let Some(gi) = self.gen_index(generation) else {
                    return;
                };
                if self.gens[gi].role != Role::Starting {
                    return;
                }
                let missing = self.describe_missing(gi);
                let reason = format!(
                    "was not ready within {} ({missing}{})",
                    humantime::format_duration(self.policy.ready_timeout),
                    self.ready_hint()
                );
                let tail = self.not_ready(generation).first().copied();
                self.fail_generation(gi, &reason, tail, exit::FIRST_NOT_READY);
                self.after_exit(gi, now);
            }
            TimerKey::ReadyHint(generation) => {
                let Some(gi) = self.gen_index(generation) else {
                    return;
                };
                if self.gens[gi].role != Role::Starting {
                    return;
                }
                let missing = self.describe_missing(gi);
                let hint = self.ready_hint();
                self.log(
                    Level::Warn,
                    format!(
                        "generation {generation} not ready after {} s: {missing}{hint}",
                        READY_HINT_AFTER.as_secs()
                    ),
                );
            }
            TimerKey::ReadyDelay(generation) => {
                let Some(gi) = self.gen_index(generation) else {
                    return;
                };
                if self.gens[gi].role == Role::Starting {
                    self.gens[gi].gen_ready = true;
                    self.maybe_ready(gi, now);
                }
            }
            TimerKey::ProbeRetry(generation) => {
                let Some(gi) = self.gen_index(generation) else {
                    return;
                };
                if self.gens[gi].role == Role::Starting {
                    self.out.push(Action::RunProbe { generation });
                }
            }
            TimerKey::Grace(generation) => {
                let Some(gi) = self.gen_index(generation) else {
                    return;
                };
                if self.gens[gi].alive() {
                    let n = self.gens[gi].workers.iter().filter(|w| w.alive()).count();
                    self.log(
                        Level::Warn,
                        format!(
                            "generation {generation}: {n} worker{} still running at the end of the grace period; sending SIGKILL",
                            plural(n)
                        ),
                    );
                    if self.gens[gi].role == Role::Draining || self.gens[gi].role == Role::Stopping
                    {
                        self.kill_generation(gi);
                    } else {
                        // A failed generation being killed is not a stop
                        // that "had to kill" serving workers.
                        let killed = self.killed_any;
                        self.kill_generation(gi);
                        self.killed_any = killed;
                    }
                }
            }
            TimerKey::WorkerGrace(generation, slot) => {
                let Some(gi) = self.gen_index(generation) else {
                    return;
                };
                if let Some(Worker {
                    state: WorkerState::Removing { .. },
                    ..
                }) = self.gens[gi].workers.get(slot)
                {
                    self.out.push(Action::KillGroup { generation, slot });
                }
            }
            TimerKey::Restart(generation, slot) => {
                let Some(gi) = self.gen_index(generation) else {
                    return;
                };
                let g = &mut self.gens[gi];
                if g.role != Role::Serving {
                    return;
                }
                let Some(w) = g.workers.get_mut(slot) else {
                    return;
                };
                if w.state == WorkerState::Restarting {
                    w.state = WorkerState::Spawning;
                    self.out.push(Action::Spawn { generation, slot });
                }
            }
        }
    }

    /// What to do when an app cannot speak the configured readiness protocol.
    fn ready_hint(&self) -> &'static str {
        match self.policy.ready {
            ReadyMode::Notify => {
                "; if the app does not speak sd_notify, use --ready fd, --ready delay:DURATION or --ready exec:CMD"
            }
            ReadyMode::Fd => {
                "; if the app cannot write to BATON_READY_FD, use --ready delay:DURATION or --ready exec:CMD"
            }
            ReadyMode::Delay(_) | ReadyMode::Exec(_) => "",
        }
    }

    fn describe_missing(&self, gi: usize) -> String {
        let g = &self.gens[gi];
        match &self.policy.ready {
            ReadyMode::Notify | ReadyMode::Fd => {
                let missing: Vec<String> = self
                    .not_ready(g.id)
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                let channel = if self.policy.ready == ReadyMode::Notify {
                    "READY=1 on NOTIFY_SOCKET"
                } else {
                    "a newline on BATON_READY_FD"
                };
                format!(
                    "still waiting for {channel} from worker{} {}",
                    plural(missing.len()),
                    missing.join(", ")
                )
            }
            ReadyMode::Delay(d) => {
                format!("waiting out the {} delay", humantime::format_duration(*d))
            }
            ReadyMode::Exec(cmd) => format!("the readiness command {cmd:?} has not succeeded yet"),
        }
    }

    /// Checks invariants 1 and 2 after every step (debug builds panic, so
    /// tests catch a violation at the transition that caused it).
    fn check_invariants(&self) {
        debug_assert!(
            self.gens.len() <= 2,
            "invariant 1: at most two generations, have {:?}",
            self.gens.iter().map(|g| (g.id, g.role)).collect::<Vec<_>>()
        );
        debug_assert!(
            self.gens.iter().filter(|g| g.role == Role::Serving).count() <= 1,
            "at most one serving generation"
        );
        debug_assert!(
            self.gens.iter().filter(|g| g.role != Role::Serving).count() <= 1
                || matches!(self.phase, Phase::Stopping(_) | Phase::Done),
            "invariant 2: at most one generation that is not serving"
        );
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        })
    }
}

#[cfg(test)]
mod tests;
