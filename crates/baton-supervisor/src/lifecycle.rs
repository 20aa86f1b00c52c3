//! The lifecycle of generations, as a pure state machine.
//!
//! [`Lifecycle::handle`] takes an [`Event`] and the current time and returns
//! the [`Action`]s the runtime must carry out. It performs no I/O, so every
//! transition is tested without spawning a process.
//!
//! The whole table of transitions is the one `match (phase, event)` in
//! `Lifecycle::step`, in this file; the handlers it calls live beside it by
//! concern: `generations` (start, ready, retire, fail), `workers` (spawned,
//! ready, exited, restarts), `strategy` (rolling and restart reloads, their
//! rollback, `--max-draining`), `timers`, `scale`, `stop`, `status`,
//! `accepting` and `dispatch` (a worker that does not answer a dispatch).
//!
//! # Invariants
//!
//! 1. At most one generation serves, at most one is starting, at most one
//!    is being killed after a failed start, and at most
//!    [`Policy::max_draining`] drain (the oldest past that is killed at once,
//!    and only [`Role`] `Killed` ones, on their way out within moments, come
//!    on top). With the default of one draining generation that is at most
//!    three generations with processes that matter.
//! 2. A reload starts while earlier generations still drain (it never waits
//!    for a slow drain); it waits for a failed generation to be gone, and
//!    runs one reload at a time.
//! 3. The serving generation is told to drain only after every worker of the
//!    new generation reported ready (or the generation-wide readiness check
//!    passed). With `--strategy rolling`, one old worker drains for each new
//!    worker that reported ready, and never more; with `--strategy restart`
//!    the old generation stops first and the new one starts only once no
//!    process of any other generation is left (an app that cannot run twice
//!    never does).
//! 4. A failed start (a worker exits or crashes before ready, cannot be
//!    spawned, or the readiness deadline passes) kills the new generation and
//!    never signals the serving one. In a rolling or restart reload, the old
//!    generation's workers that had already been stopped are started again
//!    from its own release (its pinned program), and the verdict says so.
//! 5. A reload requested while another is in flight is queued and coalesced:
//!    exactly one more reload runs after the current one has finished, never
//!    two at once and never none.
//! 6. A worker of the serving generation that dies is restarted with an
//!    exponential backoff; the backoff resets once a worker stayed up for
//!    [`STABLE_AFTER`]. Under `--dispatch`, a worker that does not answer
//!    in time is killed alone (`WorkerUnresponsive`) and then restarted the
//!    same way: the generation keeps serving.
//! 7. Every worker that exits has what remains of its process group killed,
//!    so no grandchild outlives its worker. (The runtime does it while the
//!    worker is still an unreaped zombie, so the group id cannot have been
//!    reused; see `baton_sys::spawn::Child::signal_group`.)
//! 8. During a rolling reload, the old and the new generation together never
//!    have more than the new generation's workers plus
//!    [`Policy::max_surge`] live processes (its rollback included; when the
//!    reload also scales down, the old generation's larger count replaces
//!    the new one's).
//! 9. With quiet boot ([`Policy::quiet_boot`]), a worker of a starting
//!    generation starts at the lowest CPU priority ([`Action::Spawn`]'s
//!    `quiet`) and gets its normal priority back ([`Action::NormalPriority`])
//!    as soon as it, or its generation, is ready, is told to stop, or has
//!    not been ready within [`quiet_limit`].

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

/// How long a starting generation may boot quietly at most.
pub const QUIET_BOOT_AT_MOST: Duration = Duration::from_secs(1);

/// How long a starting generation may boot quietly before it goes on at
/// the normal priority: [`QUIET_BOOT_AT_MOST`], or a third of its
/// `--ready-timeout` if that is sooner. On a machine with no idle CPU (the
/// serving generation under saturating load, or other work: `SCHED_IDLE`
/// yields to every process) a quiet worker hardly boots at all, so quiet
/// boot can add this much to a reload there, and never make it miss its
/// deadline. (5 s, the first choice, made every reload under a saturating
/// load 2 to 5 s slower: the e2e suite's 50-reload tests took 4 times as
/// long.)
pub fn quiet_limit(policy: &Policy) -> Duration {
    QUIET_BOOT_AT_MOST.min(policy.ready_timeout / 3)
}
/// Pause between runs of an `exec:` readiness probe.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// `--ready accepting`: the first look at a starting worker comes this long
/// after it started (no server listens sooner), and looks are never closer
/// together than [`ACCEPT_CHECK_MIN`].
pub const ACCEPT_CHECK_FIRST: Duration = Duration::from_micros(500);
/// `--ready accepting`: the shortest pause between looks.
pub const ACCEPT_CHECK_MIN: Duration = Duration::from_micros(250);
/// `--ready accepting`: the longest pause between looks.
pub const ACCEPT_CHECK_MAX: Duration = Duration::from_millis(100);
/// `--ready accepting`: the pause between looks grows with the time spent
/// looking, as this fraction of it (1/10: a worker seen accepting at most
/// about 10% later than it started to, and never more than
/// [`ACCEPT_CHECK_MAX`] later).
pub const ACCEPT_CHECK_DIVISOR: u32 = 10;

/// How a generation tells it is ready.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ReadyMode {
    /// `READY=1` on `NOTIFY_SOCKET`, per worker.
    Notify,
    /// A newline on the fd in `BATON_READY_FD`, per worker.
    Fd,
    /// A fixed warm-up after the generation's workers started.
    Delay(Duration),
    /// A command (run by `sh -c`) that exits 0 when the generation is ready.
    Exec(String),
    /// Per worker: a process of its tree waits for connections on one of
    /// the generation's listeners, as `/proc` shows (see
    /// [`crate::accepting`]).
    Accepting,
    /// `accepting+exec:CMD`: every worker accepting, and the command
    /// exiting 0 (both checks run side by side).
    AcceptingAndExec(String),
    /// `notify|accepting`: per worker, `READY=1` or accepting, whichever
    /// comes first.
    NotifyOrAccepting,
    /// Per worker: `ready` on its `--dispatch` channel (the worker asks
    /// for connections; see `runtime::dispatch`).
    Dispatch,
}

impl ReadyMode {
    /// Whether each worker must be found ready.
    pub fn per_worker(&self) -> bool {
        matches!(
            self,
            ReadyMode::Notify
                | ReadyMode::Fd
                | ReadyMode::Accepting
                | ReadyMode::AcceptingAndExec(_)
                | ReadyMode::NotifyOrAccepting
                | ReadyMode::Dispatch
        )
    }

    /// Whether a generation-wide check (a delay, a command) must pass.
    pub fn gen_wide(&self) -> bool {
        matches!(
            self,
            ReadyMode::Delay(_) | ReadyMode::Exec(_) | ReadyMode::AcceptingAndExec(_)
        )
    }

    /// Whether workers are looked at in `/proc` (see [`crate::accepting`]).
    pub fn accepting(&self) -> bool {
        matches!(
            self,
            ReadyMode::Accepting | ReadyMode::AcceptingAndExec(_) | ReadyMode::NotifyOrAccepting
        )
    }

    /// Whether workers get a `NOTIFY_SOCKET`.
    pub fn uses_notify(&self) -> bool {
        matches!(self, ReadyMode::Notify | ReadyMode::NotifyOrAccepting)
    }

    /// The `exec:` command, if the mode has one.
    pub fn exec_command(&self) -> Option<&str> {
        match self {
            ReadyMode::Exec(cmd) | ReadyMode::AcceptingAndExec(cmd) => Some(cmd),
            ReadyMode::Notify
            | ReadyMode::Fd
            | ReadyMode::Delay(_)
            | ReadyMode::Accepting
            | ReadyMode::NotifyOrAccepting
            | ReadyMode::Dispatch => None,
        }
    }
}

/// The lifecycle's settings.
///
/// Fields added after the first state schema carry a default, so a state
/// written by an older image (an upgrade in place) still reads.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    pub workers: usize,
    pub ready: ReadyMode,
    pub ready_timeout: Duration,
    pub grace: Duration,
    pub stop_signal: i32,
    /// How a reload replaces the serving generation (the new generation's
    /// setting decides).
    #[serde(default)]
    pub strategy: Strategy,
    /// `--strategy rolling`: how many processes beyond `workers` the old
    /// and the new generation may have together (so how many new workers
    /// start at a time).
    #[serde(default = "default_max_surge")]
    pub max_surge: usize,
    /// How many replaced generations may drain at once; past it the oldest
    /// is killed (a reload never waits for a slow drain).
    #[serde(default = "default_max_draining")]
    pub max_draining: usize,
    /// Start the workers of a starting generation at the lowest CPU
    /// priority until they are ready (invariant 9).
    #[serde(default = "default_quiet_boot")]
    pub quiet_boot: bool,
}

/// Default of [`Policy::max_surge`].
pub const DEFAULT_MAX_SURGE: usize = 1;
/// Default of [`Policy::max_draining`].
pub const DEFAULT_MAX_DRAINING: usize = 1;

fn default_max_surge() -> usize {
    DEFAULT_MAX_SURGE
}

fn default_max_draining() -> usize {
    DEFAULT_MAX_DRAINING
}

fn default_quiet_boot() -> bool {
    true
}

impl Policy {
    /// The settings baton runs with when nothing else is said.
    pub fn new(workers: usize, ready: ReadyMode) -> Self {
        Self {
            workers,
            ready,
            ready_timeout: Duration::from_secs(60),
            grace: Duration::from_secs(30),
            stop_signal: 15,
            strategy: Strategy::Overlap,
            max_surge: DEFAULT_MAX_SURGE,
            max_draining: DEFAULT_MAX_DRAINING,
            quiet_boot: true,
        }
    }
}

pub use strategy::Strategy;

/// How to stop.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum StopKind {
    /// Send the stop signal, wait for the grace period, then `SIGKILL`.
    Graceful,
    /// `SIGKILL` now.
    Immediate,
}

/// Timers the machine arms; a timer that fires after its purpose is gone
/// is ignored.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum TimerKey {
    ReadyDeadline(GenId),
    ReadyHint(GenId),
    ReadyDelay(GenId),
    ProbeRetry(GenId),
    Grace(GenId),
    Restart(GenId, Slot),
    /// Grace of one worker removed by scaling down.
    WorkerGrace(GenId, Slot),
    /// Quiet boot gives way: the generation's workers boot on at the
    /// normal priority ([`quiet_limit`]).
    QuietOver(GenId),
}

/// Identifies a client waiting for a reload's verdict (`baton ctl reload`).
pub type Ticket = u64;

/// The verdict of a reload, for the clients that asked for it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// A signal to pass on to the serving generation's workers (`SIGUSR1`:
    /// reopen log files).
    Forward(i32),
    /// New settings (a re-read config file) for the generations started
    /// from now on; running ones keep theirs.
    Configure(Policy),
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
    /// `--ready accepting`: a look asked for by [`Action::CheckAccepting`]
    /// is done (the workers it saw accepting were reported before, as
    /// [`Event::WorkerReady`]); what it saw of each of the others, for the
    /// readiness messages.
    AcceptLooked {
        generation: GenId,
        seen: Vec<(Slot, String)>,
    },
    /// An `exec:` readiness probe finished.
    ProbeDone {
        generation: GenId,
        success: bool,
    },
    /// `--dispatch`: a worker did not answer in time (a connection it was
    /// sent, an order to accept, or its first `ready`): it is killed, and
    /// restarted like any worker that dies.
    WorkerUnresponsive {
        generation: GenId,
        slot: Slot,
        pid: u32,
        what: String,
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
    /// With `quiet`, at the lowest CPU priority (quiet boot), until
    /// [`Action::NormalPriority`] names it.
    Spawn {
        generation: GenId,
        slot: Slot,
        quiet: bool,
    },
    /// Quiet boot is over for these workers (each with its whole process
    /// tree) and, with `whole`, for the generation as such (its cgroup's
    /// CPU weight, where that is how it was kept quiet): give them their
    /// normal CPU priority back.
    NormalPriority {
        generation: GenId,
        slots: Vec<Slot>,
        whole: bool,
    },
    /// Run the `exec:` readiness probe once; answer with [`Event::ProbeDone`].
    RunProbe {
        generation: GenId,
    },
    /// `--ready accepting`: after `after`, look once at the running workers
    /// of the generation that are not ready; answer with
    /// [`Event::WorkerReady`] for each one that accepts, then
    /// [`Event::AcceptLooked`]. (The runtime times the look itself, to the
    /// microsecond, rather than through a timer of the loop.)
    CheckAccepting {
        generation: GenId,
        after: Duration,
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
    /// Something happened, for `baton ctl events` and the metrics.
    Notice(crate::events::Notice),
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// Was draining, and more generations than `--max-draining` drained:
    /// `SIGKILL`ed, on its way out.
    Killed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum WorkerState {
    /// Waits for its turn: a rolling reload starts it once the process
    /// budget allows, a restart once the other generation is gone, a
    /// rollback once the failed generation's processes make room.
    Pending,
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
    /// Told to stop by a rolling reload (a new worker took its place) or a
    /// restart (its generation stops before the new one starts).
    Replaced {
        pid: u32,
    },
    Exited,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Worker {
    state: WorkerState,
    #[serde(with = "crate::stamp::option")]
    started: Option<Instant>,
    backoff: Duration,
    quick_restarts: u32,
    restarts: u32,
    /// `--ready accepting`: what the last look found, while not ready.
    #[serde(default)]
    accept_seen: Option<String>,
    /// Started at the lowest CPU priority (quiet boot) and not yet given
    /// its normal one back.
    #[serde(default)]
    quiet: bool,
    /// It was ready once (a restart of it is ready "again"; a worker
    /// added by scaling, or one a rolling reload's generation started
    /// after it began to serve, is ready for the first time).
    #[serde(default)]
    was_ready: bool,
}

impl Worker {
    fn new() -> Self {
        Self {
            state: WorkerState::Spawning,
            started: None,
            backoff: BACKOFF_START,
            quick_restarts: 0,
            restarts: 0,
            accept_seen: None,
            quiet: false,
            was_ready: false,
        }
    }

    /// A slot that waits for its turn ([`WorkerState::Pending`]).
    fn pending() -> Self {
        Self {
            state: WorkerState::Pending,
            ..Self::new()
        }
    }

    fn alive(&self) -> bool {
        matches!(
            self.state,
            WorkerState::Spawning
                | WorkerState::Running { .. }
                | WorkerState::Removing { .. }
                | WorkerState::Replaced { .. }
        )
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Generation {
    id: GenId,
    /// The settings it was started with: a config reload changes them for
    /// later generations only.
    policy: Policy,
    role: Role,
    workers: Vec<Worker>,
    #[serde(with = "crate::stamp")]
    started: Instant,
    /// How long it took to become ready, once it did.
    ready_after: Option<Duration>,
    /// Generation-wide readiness (delay and exec modes).
    gen_ready: bool,
    /// `--ready accepting`: since when its workers are being looked at
    /// (`None`: they are not), which sets the pause between looks.
    #[serde(default, with = "crate::stamp::option")]
    accept_since: Option<Instant>,
    /// When it was told to drain or stop (for the drain's duration).
    #[serde(default, with = "crate::stamp::option")]
    retired_at: Option<Instant>,
    /// Some worker of it had to be sent `SIGKILL`.
    #[serde(default)]
    killed: bool,
    /// On the serving generation: the rolling or restart reload that is
    /// replacing it (a worker it stopped exits for good rather than being
    /// started again).
    #[serde(default)]
    replacement: Option<GenId>,
    /// On the serving generation, during a rolling reload: how many of its
    /// workers were told to make room so far (one per new ready worker).
    #[serde(default)]
    rolled_out: usize,
    /// On a restart's new generation: how long after the old one was told
    /// to stop its first worker was ready (what clients waited at most).
    #[serde(default)]
    first_ready: Option<Duration>,
    /// Quiet boot is over for the generation as such (see
    /// [`Action::NormalPriority`]).
    #[serde(default)]
    quiet_over: bool,
}

impl Generation {
    fn alive(&self) -> bool {
        self.workers.iter().any(Worker::alive)
    }

    /// Its live processes (spawning, running or on their way out).
    fn live(&self) -> usize {
        self.workers.iter().filter(|w| w.alive()).count()
    }

    fn ready(&self) -> bool {
        let mode = &self.policy.ready;
        self.workers.iter().all(|w| match w.state {
            WorkerState::Running { ready, .. } => ready || !mode.per_worker(),
            _ => false,
        }) && (self.gen_ready || !mode.gen_wide())
    }
}

/// What happened over baton's whole life, for `baton ctl status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// Reloads that started a new generation (a queued or coalesced request
    /// counts once, when its generation starts).
    pub reloads_started: u64,
    /// Reloads whose new generation became ready and serves.
    pub reloads_succeeded: u64,
    /// Reloads that were rolled back. Started reloads that are neither
    /// succeeded nor failed are in progress, or were cut short by a stop.
    pub reloads_failed: u64,
    /// Worker restarts after a crash or exit, in every generation.
    pub restarts: u64,
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
    /// Restarts of this slot in this generation.
    pub restarts: u32,
    /// Restarts of this slot over baton's whole life, in every generation.
    pub lifetime_restarts: u64,
    /// When its process started (`None` while there is none).
    pub started: Option<Instant>,
}

/// Where the supervisor as a whole is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Lifecycle {
    policy: Policy,
    phase: Phase,
    gens: Vec<Generation>,
    next_id: GenId,
    reload_pending: bool,
    /// Exit code decided by a failure (boot failed); otherwise derived.
    exit_override: Option<u8>,
    /// A worker had to be killed during the stop in progress (exit code 7).
    /// Set only while stopping, so a drain that ended in `SIGKILL` during an
    /// earlier reload does not colour a later clean stop.
    killed_any: bool,
    counters: Counters,
    /// Restarts of each worker slot over baton's whole life.
    slot_restarts: Vec<u64>,
    /// Clients waiting for the queued reload.
    queued_tickets: Vec<Ticket>,
    /// Clients waiting for the reload in progress.
    inflight_tickets: Vec<Ticket>,
    last_reload: Option<ReloadOutcome>,
    /// When the last reload got its verdict.
    #[serde(default, with = "crate::stamp::option")]
    last_reload_at: Option<Instant>,
    /// The rolling or restart reload in progress, or its rollback.
    #[serde(default)]
    handover: Option<strategy::Handover>,
    /// Actions of the step in progress (always empty between steps).
    #[serde(skip)]
    out: Vec<Action>,
    /// The time of the step in progress, for the handlers that are not
    /// given it.
    #[serde(skip)]
    now: Option<Instant>,
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
            counters: Counters::default(),
            slot_restarts: Vec::new(),
            queued_tickets: Vec::new(),
            inflight_tickets: Vec::new(),
            last_reload: None,
            last_reload_at: None,
            handover: None,
            out: Vec::new(),
            now: None,
        }
    }

    /// Starts the first generation.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        self.now = Some(now);
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
        self.counters.reloads_succeeded
    }

    /// Reloads and restarts over baton's whole life.
    pub fn counters(&self) -> Counters {
        self.counters
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
        self.now = Some(now);
        if let Err(e) = self.step(&event, now) {
            self.log(Level::Error, e.to_string());
        }
        // Whatever the event made possible in a rolling or restart reload
        // (a worker to start, one to drain) happens now.
        self.advance(now);
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
            // Generations that only drain do not hold a reload back (it
            // starts at once; --max-draining bounds them); a failed one, or a
            // rollback still under way, does.
            (Retiring, Event::Reload | Event::ReloadRequest(_)) => {
                self.take_ticket(event);
                if self.can_start_reload() {
                    self.start_generation(now);
                } else {
                    self.queue_reload(self.why_reload_waits());
                }
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

            (Booting | Serving | Reloading | Retiring, Event::Scale(n)) => self.scale(*n, now),
            (Stopping(_) | Done, Event::Scale(_)) => {
                self.log(Level::Info, "scale ignored: baton is stopping".into());
            }

            (Booting | Serving | Reloading | Retiring, Event::Forward(signal)) => {
                self.forward(*signal);
            }
            (Booting | Serving | Reloading | Retiring, Event::Configure(policy)) => {
                self.policy = policy.clone();
                // A lower --max-draining holds at once.
                self.enforce_max_draining();
            }
            (Stopping(_) | Done, Event::Forward(signal)) => {
                self.log(
                    Level::Info,
                    format!(
                        "{} not forwarded: baton is stopping",
                        baton_sys::spawn::signal_name(*signal)
                    ),
                );
            }

            (Booting | Serving | Reloading | Retiring, Event::Stop(kind)) => {
                self.stop(*kind, now);
            }
            (Stopping(StopKind::Graceful), Event::Stop(_)) => {
                self.stop(StopKind::Immediate, now);
            }
            // Nothing more to do: already stopping at once, or stopped; and
            // settings for generations that will never start.
            (Stopping(StopKind::Immediate) | Done, Event::Stop(_))
            | (Stopping(_) | Done, Event::Configure(_)) => {}

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
                Event::AcceptLooked { generation, seen },
            ) => {
                self.on_accept_looked(*generation, seen, now);
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
                Booting | Serving | Reloading | Retiring | Stopping(_),
                Event::WorkerUnresponsive {
                    generation,
                    slot,
                    pid,
                    what,
                },
            ) => self.on_unresponsive(*generation, *slot, *pid, what),
            (
                Done,
                Event::Spawned { .. }
                | Event::SpawnFailed { .. }
                | Event::WorkerReady { .. }
                | Event::AcceptLooked { .. }
                | Event::ProbeDone { .. }
                | Event::WorkerExited { .. }
                | Event::WorkerUnresponsive { .. }
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

    fn notice(&mut self, notice: crate::events::Notice) {
        self.out.push(Action::Notice(notice));
    }

    /// The time of the step in progress.
    fn clock(&self) -> Instant {
        self.now.unwrap_or_else(Instant::now)
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

    /// Whether baton is stopping (or has stopped).
    pub fn is_stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping(_) | Phase::Done)
    }

    /// Workers per generation now.
    pub fn workers(&self) -> usize {
        self.policy.workers
    }

    /// The settings the machine runs with now (the last reload's).
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Checks invariants 1 and 8 after every step (debug builds panic, so
    /// tests catch a violation at the transition that caused it).
    fn check_invariants(&self) {
        let count = |role: Role| self.gens.iter().filter(|g| g.role == role).count();
        let roles = || self.gens.iter().map(|g| (g.id, g.role)).collect::<Vec<_>>();
        debug_assert!(
            count(Role::Serving) <= 1,
            "one serving generation: {:?}",
            roles()
        );
        debug_assert!(
            count(Role::Starting) <= 1,
            "one starting generation: {:?}",
            roles()
        );
        if !matches!(self.phase, Phase::Stopping(_) | Phase::Done) {
            debug_assert!(
                count(Role::Failed) <= 1,
                "invariant 1: one failed generation: {:?}",
                roles()
            );
            debug_assert!(
                count(Role::Draining) <= self.policy.max_draining.max(1),
                "invariant 1: at most {} draining: {:?}",
                self.policy.max_draining,
                roles()
            );
        }
        if let Some(h) = &self.handover
            && h.strategy == Strategy::Rolling
        {
            let live: usize = self
                .gens
                .iter()
                .filter(|g| g.id == h.old || g.id == h.new)
                .map(Generation::live)
                .sum();
            debug_assert!(
                live <= h.budget,
                "invariant 8: {live} processes in a rolling reload allowed {}",
                h.budget
            );
        }
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

mod accepting;
mod dispatch;
mod generations;
mod scale;
mod status;
mod stop;
mod strategy;
mod timers;
mod workers;

#[cfg(test)]
mod tests;
