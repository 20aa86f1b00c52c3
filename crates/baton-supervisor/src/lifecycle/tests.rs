//! Transition-by-transition tests of the lifecycle, without processes.
//!
//! `Sim` plays the runtime: it answers `Spawn` with `Spawned` (fake pids),
//! remembers armed timers, signals sent and the exit code, so each test reads
//! as a script of events and the actions they must cause.

use super::*;
use std::collections::BTreeMap;

const TERM: i32 = 15;
const USR1: i32 = 10;

struct Sim {
    m: Lifecycle,
    now: Instant,
    next_pid: u32,
    pids: BTreeMap<(GenId, Slot), u32>,
    timers: BTreeMap<TimerKey, Instant>,
    signals: Vec<(GenId, Slot, i32)>,
    kills: Vec<(GenId, Slot)>,
    reaped: Vec<(GenId, Slot)>,
    logs: Vec<String>,
    exit: Option<u8>,
    probes: Vec<GenId>,
    /// Looks asked for (`CheckAccepting`) and when each is due; the Sim
    /// answers each when due with `AcceptLooked` (nothing seen accepting).
    looks: BTreeMap<GenId, Instant>,
    /// Looks done, in order.
    checks: Vec<GenId>,
    verdicts: Vec<(Vec<Ticket>, ReloadOutcome)>,
    sd: Vec<Sd>,
    /// Spawn requests the test wants to fail, by (generation, slot).
    fail_spawn: Vec<(GenId, Slot)>,
    /// What the lifecycle said happened (`ctl events`, the metrics).
    notices: Vec<crate::events::Notice>,
    all: Vec<Action>,
    /// Workers spawned and not exited yet, as the runtime would see them.
    live: std::collections::BTreeSet<(GenId, Slot)>,
    /// The most processes alive at once during a rolling reload, as
    /// (live, allowed).
    peak: Option<(usize, usize)>,
    /// Workers started quietly and not given their priority back.
    quiet: std::collections::BTreeSet<(GenId, Slot)>,
}

fn policy(workers: usize, ready: ReadyMode) -> Policy {
    Policy {
        stop_signal: TERM,
        ..Policy::new(workers, ready)
    }
}

/// `policy` with a reload strategy.
fn with_strategy(workers: usize, strategy: Strategy, surge: usize) -> Policy {
    Policy {
        strategy,
        max_surge: surge,
        ..policy(workers, ReadyMode::Notify)
    }
}

impl Sim {
    fn new(p: Policy) -> Self {
        Self::with_failing_spawns(p, Vec::new())
    }

    fn with_failing_spawns(p: Policy, fail_spawn: Vec<(GenId, Slot)>) -> Self {
        let mut s = Self {
            m: Lifecycle::new(p),
            now: Instant::now(),
            next_pid: 1000,
            pids: BTreeMap::new(),
            timers: BTreeMap::new(),
            signals: Vec::new(),
            kills: Vec::new(),
            reaped: Vec::new(),
            logs: Vec::new(),
            exit: None,
            probes: Vec::new(),
            looks: BTreeMap::new(),
            checks: Vec::new(),
            verdicts: Vec::new(),
            sd: Vec::new(),
            fail_spawn,
            notices: Vec::new(),
            all: Vec::new(),
            live: std::collections::BTreeSet::new(),
            peak: None,
            quiet: std::collections::BTreeSet::new(),
        };
        let actions = s.m.start(s.now);
        s.apply(actions);
        s
    }

    fn notify(workers: usize) -> Self {
        Self::new(policy(workers, ReadyMode::Notify))
    }

    fn apply(&mut self, actions: Vec<Action>) {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(a) = queue.pop_front() {
            self.all.push(a.clone());
            match a {
                Action::Spawn {
                    generation,
                    slot,
                    quiet,
                } => {
                    if quiet {
                        self.quiet.insert((generation, slot));
                    }
                    let ev = if self.fail_spawn.contains(&(generation, slot)) {
                        Event::SpawnFailed {
                            generation,
                            slot,
                            error: "No such file or directory".into(),
                        }
                    } else {
                        self.next_pid += 1;
                        self.pids.insert((generation, slot), self.next_pid);
                        self.live.insert((generation, slot));
                        Event::Spawned {
                            generation,
                            slot,
                            pid: self.next_pid,
                        }
                    };
                    queue.extend(self.m.handle(ev, self.now));
                }
                Action::SetTimer { key, after } => {
                    self.timers.insert(key, self.now + after);
                }
                Action::CancelTimer { key } => {
                    self.timers.remove(&key);
                }
                Action::Signal {
                    generation,
                    slot,
                    signal,
                } => self.signals.push((generation, slot, signal)),
                Action::KillGroup { generation, slot } => self.kills.push((generation, slot)),
                Action::ReapGroup { generation, slot } => self.reaped.push((generation, slot)),
                Action::Log { message, .. } => self.logs.push(message),
                Action::Exit(code) => {
                    assert!(self.exit.is_none(), "exit requested twice");
                    self.exit = Some(code);
                }
                Action::RunProbe { generation } => self.probes.push(generation),
                // Like the runtime: a look asked for while one of the same
                // generation is in flight is dropped.
                Action::CheckAccepting { generation, after } => {
                    self.looks.entry(generation).or_insert(self.now + after);
                }
                Action::ReloadDone { tickets, outcome } => self.verdicts.push((tickets, outcome)),
                Action::Notify(sd) => self.sd.push(sd),
                Action::Notice(n) => self.notices.push(n),
                // Like the runtime: the answer to a look at a generation
                // that is gone is dropped.
                Action::ReleaseGeneration { generation } => {
                    self.looks.remove(&generation);
                }
                Action::NormalPriority {
                    generation, slots, ..
                } => {
                    for slot in slots {
                        self.quiet.remove(&(generation, slot));
                    }
                }
                Action::PrepareGeneration { .. } | Action::Serving { .. } => {}
            }
        }
        self.sample();
    }

    /// Invariant 8, seen from outside: during a rolling reload the old and
    /// the new generation never have more live processes than allowed.
    fn sample(&mut self) {
        let Some(h) = &self.m.handover else {
            return;
        };
        if h.strategy != Strategy::Rolling {
            return;
        }
        let live = self
            .live
            .iter()
            .filter(|(g, _)| *g == h.old || *g == h.new)
            .count();
        assert!(
            live <= h.budget,
            "{live} processes in a rolling reload that allows {}",
            h.budget
        );
        let peak = self.peak.map_or(0, |(p, _)| p);
        if live >= peak {
            self.peak = Some((live, h.budget));
        }
    }

    fn ev(&mut self, e: Event) {
        let grace_timer_fired = matches!(e, Event::Timer(TimerKey::WorkerGrace(..)));
        // `--dispatch`: one worker that did not answer is killed (then
        // restarted): the generation keeps serving.
        let unresponsive = matches!(e, Event::WorkerUnresponsive { .. });
        // A forwarded signal (USR1) is meant for the serving generation.
        let forwarded = matches!(e, Event::Forward(_));
        let actions = self.m.handle(e, self.now);
        // Invariants 3 and 4: the generation that serves after a step is
        // never the one that step told to stop, except single workers
        // removed by scaling down (stop signal plus their own grace timer,
        // then SIGKILL when that timer fires).
        let serving = self.m.serving();
        for a in &actions {
            let allowed = match a {
                Action::Signal { generation, slot, .. } => forwarded || actions.iter().any(|x| {
                    matches!(x, Action::SetTimer { key: TimerKey::WorkerGrace(g, s), .. } if g == generation && s == slot)
                }),
                Action::KillGroup { .. } => grace_timer_fired || unresponsive,
                _ => true,
            };
            if let Action::Signal { generation, .. } | Action::KillGroup { generation, .. } = a {
                assert!(
                    allowed || serving != Some(*generation),
                    "serving generation {generation} was signalled: {actions:?}"
                );
            }
        }
        self.apply(actions);
    }

    fn ready(&mut self, generation: GenId, slots: impl IntoIterator<Item = Slot>) {
        for slot in slots {
            self.ev(Event::WorkerReady { generation, slot });
        }
    }

    fn exited(&mut self, generation: GenId, slot: Slot, status: ExitStatus) {
        self.live.remove(&(generation, slot));
        self.ev(Event::WorkerExited {
            generation,
            slot,
            status,
        });
    }

    /// Every live worker of `generation` exits with status 0.
    fn all_exit(&mut self, generation: GenId) {
        for slot in self.live_slots(generation) {
            self.exited(generation, slot, ExitStatus::Code(0));
        }
    }

    /// The slots of `generation` with a live process (running, or told to
    /// stop and not gone yet).
    fn live_slots(&self, generation: GenId) -> Vec<Slot> {
        self.m
            .gens
            .iter()
            .filter(|g| g.id == generation)
            .flat_map(|g| g.workers.iter().enumerate())
            .filter(|(_, w)| {
                matches!(
                    w.state,
                    WorkerState::Running { .. }
                        | WorkerState::Removing { .. }
                        | WorkerState::Replaced { .. }
                )
            })
            .map(|(slot, _)| slot)
            .collect()
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        loop {
            let due: Vec<TimerKey> = self
                .timers
                .iter()
                .filter(|(_, at)| **at <= self.now)
                .map(|(k, _)| *k)
                .collect();
            let looks: Vec<GenId> = self
                .looks
                .iter()
                .filter(|(_, at)| **at <= self.now)
                .map(|(g, _)| *g)
                .collect();
            if due.is_empty() && looks.is_empty() {
                break;
            }
            for k in due {
                self.timers.remove(&k);
                self.ev(Event::Timer(k));
            }
            for generation in looks {
                self.looks.remove(&generation);
                self.checks.push(generation);
                self.ev(Event::AcceptLooked {
                    generation,
                    seen: Vec::new(),
                });
            }
        }
    }

    fn logged(&self, needle: &str) -> bool {
        self.logs.iter().any(|l| l.contains(needle))
    }

    fn signalled(&self, generation: GenId) -> bool {
        self.signals.iter().any(|(g, _, _)| *g == generation)
    }

    fn spawns(&self, generation: GenId) -> usize {
        self.all
            .iter()
            .filter(|a| matches!(a, Action::Spawn { generation: g, .. } if *g == generation))
            .count()
    }

    /// Boots generation 1 with `n` ready workers.
    fn serving(n: usize) -> Self {
        let mut s = Self::notify(n);
        s.ready(1, 0..n);
        assert_eq!(s.m.serving(), Some(1));
        s
    }
}

#[test]
fn first_generation_starts_all_workers_and_serves_when_all_are_ready() {
    let mut s = Sim::notify(3);
    assert_eq!(s.spawns(1), 3);
    assert!(s.logged("generation 1 starting (3 workers)"));
    s.ready(1, [0, 1]);
    assert_eq!(s.m.serving(), None, "not ready until every worker is");
    s.now += Duration::from_millis(40);
    s.ready(1, [2]);
    assert_eq!(s.m.serving(), Some(1));
    assert!(s.logged("generation 1 ready in 40 ms"));
    assert!(!s.timers.contains_key(&TimerKey::ReadyDeadline(1)));
}

#[test]
fn usr1_is_forwarded_to_the_serving_generation_only() {
    let mut s = Sim::serving(2);
    s.ev(Event::Reload);
    s.ready(2, [0]);
    s.ev(Event::Forward(USR1));
    assert_eq!(
        s.signals,
        vec![(1, 0, USR1), (1, 1, USR1)],
        "generation 1 serves; generation 2 is still starting"
    );
    assert!(s.logged("SIGUSR1 forwarded to 2 workers of generation 1"));
    s.ready(2, [1]);
    s.all_exit(1);
    s.signals.clear();
    s.ev(Event::Forward(USR1));
    assert_eq!(s.signals, vec![(2, 0, USR1), (2, 1, USR1)]);
    assert_eq!(s.m.serving(), Some(2), "a forwarded signal changes nothing");
}

#[test]
fn usr1_while_booting_reaches_the_first_generation_and_is_dropped_while_stopping() {
    let mut s = Sim::notify(1);
    s.ev(Event::Forward(USR1));
    assert_eq!(s.signals, vec![(1, 0, USR1)]);
    s.ready(1, [0]);
    s.ev(Event::Stop(StopKind::Graceful));
    s.signals.clear();
    s.ev(Event::Forward(USR1));
    assert!(s.signals.is_empty());
    assert!(s.logged("SIGUSR1 not forwarded: baton is stopping"));
}

#[test]
fn new_settings_apply_from_the_next_generation_and_the_old_one_keeps_its_own() {
    let mut s = Sim::serving(2);
    let mut next = policy(3, ReadyMode::Notify);
    next.stop_signal = 2; // SIGINT
    next.grace = Duration::from_secs(7);
    s.ev(Event::Configure(next));
    assert_eq!(
        s.m.worker_pids(1).len(),
        2,
        "the serving generation is untouched"
    );
    s.ev(Event::Reload);
    assert_eq!(
        s.spawns(2),
        3,
        "the new generation has the new worker count"
    );
    s.ready(2, 0..3);
    // Generation 1 drains the way it was started: TERM, 30 s.
    assert_eq!(s.signals, vec![(1, 0, TERM), (1, 1, TERM)]);
    assert_eq!(
        s.timers.get(&TimerKey::Grace(1)),
        Some(&(s.now + Duration::from_secs(30)))
    );
    s.all_exit(1);
    s.ev(Event::Stop(StopKind::Graceful));
    assert!(
        s.signals.contains(&(2, 0, 2)),
        "generation 2 stops with its own signal"
    );
    assert_eq!(
        s.timers.get(&TimerKey::Grace(2)),
        Some(&(s.now + Duration::from_secs(7)))
    );
}

#[test]
fn duplicate_ready_is_harmless() {
    let mut s = Sim::serving(1);
    s.ready(1, [0, 0]);
    assert_eq!(s.m.serving(), Some(1));
}

#[test]
fn reload_drains_old_only_after_new_is_fully_ready() {
    let mut s = Sim::serving(2);
    s.ev(Event::Reload);
    assert_eq!(s.m.generation_count(), 2);
    assert_eq!(s.spawns(2), 2);
    s.ready(2, [0]);
    assert!(
        !s.signalled(1),
        "invariant 3: old not told to drain before new is ready"
    );
    s.ready(2, [1]);
    assert_eq!(s.m.serving(), Some(2));
    assert_eq!(
        s.signals,
        vec![(1, 0, TERM), (1, 1, TERM)],
        "old generation gets the stop signal"
    );
    assert!(s.logged("generation 1 draining"));
    assert!(s.timers.contains_key(&TimerKey::Grace(1)));
    s.all_exit(1);
    assert!(s.logged("generation 1 exited"));
    assert_eq!(s.m.generation_count(), 1);
    assert!(!s.timers.contains_key(&TimerKey::Grace(1)));
    assert_eq!(s.m.reloads_done(), 1);
}

#[test]
fn reload_during_reload_is_queued_and_coalesced() {
    let mut s = Sim::serving(1);
    s.ev(Event::Reload);
    s.ev(Event::Reload);
    s.ev(Event::Reload);
    assert!(s.logged("reload queued"));
    assert_eq!(s.m.generation_count(), 2, "never two reloads at once");
    assert!(s.m.reload_pending());
    s.ready(2, [0]);
    // Generation 1 drains: the queued reload does not wait for it
    // (invariant 2; --max-draining bounds the drainers).
    assert_eq!(s.spawns(3), 1, "exactly one more reload runs");
    assert!(!s.m.reload_pending());
    s.all_exit(1);
    s.ready(3, [0]);
    s.all_exit(2);
    assert_eq!(s.spawns(4), 0, "coalesced: no fourth generation");
    assert_eq!(s.m.serving(), Some(3));
}

#[test]
fn reload_while_booting_runs_after_boot() {
    let mut s = Sim::notify(1);
    s.ev(Event::Reload);
    assert_eq!(s.spawns(2), 0);
    s.ready(1, [0]);
    assert_eq!(s.spawns(2), 1);
}

#[test]
fn failed_start_by_exit_rolls_back() {
    let mut s = Sim::serving(2);
    s.ev(Event::Reload);
    s.ready(2, [0]);
    s.exited(2, 1, ExitStatus::Code(1));
    assert!(s.logged(
        "reload failed: generation 2 worker 1 (pid 1004) exited with status 1 before it was ready; generation 1 keeps serving"
    ));
    assert!(
        !s.signalled(1),
        "invariant 4: the serving generation is untouched"
    );
    assert_eq!(
        s.signals,
        vec![(2, 0, TERM)],
        "the rest of generation 2 is stopped"
    );
    assert!(
        s.reaped.contains(&(2, 1)),
        "exited worker's group is cleaned"
    );
    assert_eq!(s.m.serving(), Some(1));
    // The failed worker's output is attached to the report.
    assert!(s.all.iter().any(|a| matches!(
        a,
        Action::Log {
            tail: Some((2, 1)),
            level: Level::Error,
            ..
        }
    )));
    s.all_exit(2);
    assert_eq!(s.m.generation_count(), 1);
    // A new reload works after a failed one.
    s.ev(Event::Reload);
    assert_eq!(s.spawns(3), 2);
}

#[test]
fn failed_start_by_crash_rolls_back() {
    let mut s = Sim::serving(1);
    s.ev(Event::Reload);
    s.exited(2, 0, ExitStatus::Signal(11));
    assert!(s.logged("exited with signal SIGSEGV before it was ready"));
    assert_eq!(s.m.serving(), Some(1));
    assert_eq!(
        s.m.generation_count(),
        1,
        "an empty failed generation is gone at once"
    );
}

#[test]
fn failed_start_by_readiness_timeout_kills_new_generation() {
    let mut s = Sim::serving(1);
    s.ev(Event::Reload);
    s.advance(Duration::from_secs(5));
    assert!(s.logged(
        "generation 2 not ready after 5 s: still waiting for READY=1 on NOTIFY_SOCKET from worker 0"
    ));
    assert!(s.logged("--ready delay:DURATION"));
    s.advance(Duration::from_secs(55));
    assert!(s.logged("reload failed: generation 2 was not ready within 1m"));
    assert!(
        s.logs
            .iter()
            .any(|l| l.contains("was not ready within") && l.contains("--ready exec:CMD")),
        "the failure itself names the other readiness modes"
    );
    assert_eq!(s.signals, vec![(2, 0, TERM)]);
    // It ignores the stop signal: SIGKILL after the rollback grace.
    s.advance(ROLLBACK_GRACE);
    assert!(s.kills.contains(&(2, 0)));
    s.exited(2, 0, ExitStatus::Signal(9));
    assert_eq!(s.m.generation_count(), 1);
    assert_eq!(s.m.serving(), Some(1));
    assert!(!s.signalled(1));
}

#[test]
fn spawn_failure_during_reload_rolls_back() {
    let mut s = Sim::serving(2);
    s.fail_spawn.push((2, 1));
    s.ev(Event::Reload);
    assert!(s.logged("reload failed: generation 2 worker 1 could not be started: No such file or directory; generation 1 keeps serving"));
    assert_eq!(s.signals, vec![(2, 0, TERM)]);
    s.all_exit(2);
    assert_eq!(s.m.generation_count(), 1);
}

#[test]
fn first_generation_failure_exits_with_its_code() {
    let mut s = Sim::notify(2);
    s.exited(1, 0, ExitStatus::Code(3));
    assert!(s.logged(
        "generation 1 failed: worker 0 (pid 1001) exited with status 3 before it was ready"
    ));
    assert_eq!(s.signals, vec![(1, 1, TERM)]);
    assert_eq!(s.exit, None, "waits for the rest to exit");
    s.exited(1, 1, ExitStatus::Signal(15));
    assert_eq!(s.exit, Some(exit::FIRST_FAILED));
}

/// A plain server under `--dispatch` (pass) gets `LISTEN_FDS=0` and exits
/// saying it has no socket: the failure read as if `-l` were ignored and
/// never said that `--dispatch` needs an app speaking its protocol.
#[test]
fn regression_a_plain_server_exiting_under_dispatch_was_not_told_why() {
    let mut s = Sim::new(policy(1, ReadyMode::Dispatch));
    s.exited(1, 0, ExitStatus::Code(1));
    assert!(s.logged(
        "generation 1 failed: worker 0 (pid 1001) exited with status 1 before it was ready (under --dispatch a worker takes its connections from the channel in BATON_DISPATCH_FD, and with --dispatch=pass it gets no listening socket, LISTEN_FDS=0;"
    ));
    assert!(s.logged("needs baton without --dispatch"));
    let mut s = Sim::notify(1);
    s.exited(1, 0, ExitStatus::Code(1));
    assert!(!s.logged("--dispatch"), "only under --dispatch");
}

#[test]
fn first_generation_not_ready_exits_6() {
    let mut s = Sim::notify(1);
    s.advance(Duration::from_secs(60));
    assert!(s.logged("generation 1 failed: was not ready within 1m"));
    s.exited(1, 0, ExitStatus::Signal(15));
    assert_eq!(s.exit, Some(exit::FIRST_NOT_READY));
}

#[test]
fn first_generation_cannot_spawn_exits_4() {
    let s = Sim::with_failing_spawns(policy(1, ReadyMode::Notify), vec![(1, 0)]);
    assert!(s.logged("generation 1 failed: worker 0 could not be started"));
    assert_eq!(s.exit, Some(exit::CANNOT_RUN));
}

#[test]
fn worker_crash_while_serving_restarts_with_backoff() {
    let mut s = Sim::serving(2);
    s.exited(1, 1, ExitStatus::Code(1));
    assert!(s.logged("worker 1 of generation 1 restarting in 100 ms"));
    assert!(s.reaped.contains(&(1, 1)));
    assert_eq!(s.spawns(1), 2);
    s.advance(Duration::from_millis(100));
    assert_eq!(s.spawns(1), 3, "restarted after the backoff");
    // Crashes again at once: the delay doubles.
    s.exited(1, 1, ExitStatus::Code(1));
    assert!(s.logged("restarting in 200 ms"));
    s.advance(Duration::from_millis(200));
    s.exited(1, 1, ExitStatus::Code(1));
    assert!(s.logged("restarting in 400 ms"));
    assert_eq!(s.m.serving(), Some(1), "the generation keeps serving");
    assert!(!s.signalled(1));
}

#[test]
fn crash_loop_is_reported_and_backoff_caps_then_resets() {
    let mut s = Sim::serving(1);
    for _ in 0..12 {
        s.exited(1, 0, ExitStatus::Code(1));
        let d = *s
            .timers
            .get(&TimerKey::Restart(1, 0))
            .expect("restart armed")
            - s.now;
        assert!(d <= BACKOFF_MAX);
        s.advance(d);
    }
    assert!(s.logged("crash-looping"));
    assert!(s.logged("restarting in 30000 ms"));
    // Stays up long enough: the next crash restarts quickly again.
    s.advance(STABLE_AFTER);
    s.exited(1, 0, ExitStatus::Code(1));
    let d = *s
        .timers
        .get(&TimerKey::Restart(1, 0))
        .expect("restart armed")
        - s.now;
    assert_eq!(d, BACKOFF_START);
}

#[test]
fn crash_during_drain_is_not_restarted() {
    let mut s = Sim::serving(2);
    s.ev(Event::Reload);
    s.ready(2, [0, 1]);
    let spawns_before = s.spawns(1);
    s.exited(1, 0, ExitStatus::Signal(11));
    s.advance(Duration::from_secs(1));
    assert_eq!(s.spawns(1), spawns_before);
    assert_eq!(
        s.m.generation_count(),
        2,
        "worker 1 of generation 1 still draining"
    );
    s.exited(1, 1, ExitStatus::Code(0));
    assert_eq!(s.m.generation_count(), 1);
}

#[test]
fn drain_deadline_kills_stragglers() {
    let mut s = Sim::serving(1);
    s.ev(Event::Reload);
    s.ready(2, [0]);
    s.advance(Duration::from_secs(30));
    assert!(s.logged(
        "generation 1: 1 worker still running at the end of the grace period; sending SIGKILL"
    ));
    assert!(s.kills.contains(&(1, 0)));
}

/// The names of the notices since index `from`, in order.
fn notice_names(s: &Sim, from: usize) -> Vec<String> {
    s.notices[from..]
        .iter()
        .map(|n| {
            serde_json::to_value(n).expect("a notice encodes")["event"]
                .as_str()
                .expect("tagged")
                .to_owned()
        })
        .collect()
}

#[test]
fn a_reload_is_told_as_it_happens_with_its_durations() {
    use crate::events::Notice;
    let mut s = Sim::serving(1);
    let mark = s.notices.len();
    s.ev(Event::Reload);
    s.now += Duration::from_millis(40);
    s.ready(2, [0]);
    let verdict_at = s.now;
    s.now += Duration::from_millis(250);
    s.all_exit(1);
    assert_eq!(
        notice_names(&s, mark),
        [
            "reload_started",
            "generation_starting",
            "worker_started",
            "worker_ready",
            "generation_ready",
            "reload_succeeded",
            "generation_draining",
            "worker_exited",
            "generation_exited",
        ]
    );
    assert!(s.notices.contains(&Notice::ReloadSucceeded {
        generation: 2,
        previous: 1,
        took: Duration::from_millis(40),
    }));
    assert!(s.notices.contains(&Notice::GenerationExited {
        generation: 1,
        drained: Some(Duration::from_millis(250)),
        killed: false,
    }));
    assert!(s.notices.iter().any(|n| matches!(
        n,
        Notice::WorkerExited {
            generation: 1,
            expected: true,
            exit_code: Some(0),
            ..
        }
    )));
    assert_eq!(s.m.last_reload_at(), Some(verdict_at));
}

#[test]
fn a_failed_reload_is_told_once_with_its_reason_and_is_no_drain() {
    use crate::events::Notice;
    let mut s = Sim::serving(1);
    s.ev(Event::Reload);
    s.now += Duration::from_millis(30);
    s.exited(2, 0, ExitStatus::Code(3));
    let failed: Vec<&Notice> = s
        .notices
        .iter()
        .filter(|n| matches!(n, Notice::ReloadFailed { .. }))
        .collect();
    assert_eq!(failed.len(), 1, "{:?}", s.notices);
    assert!(matches!(
        failed[0],
        Notice::ReloadFailed { generation: 2, serving: 1, took, reason }
            if *took == Duration::from_millis(30) && reason.contains("exited with status 3")
    ));
    assert!(s.notices.iter().any(|n| matches!(
        n,
        Notice::WorkerExited {
            generation: 2,
            expected: false,
            ..
        }
    )));
    assert!(s.notices.contains(&Notice::GenerationExited {
        generation: 2,
        drained: None,
        killed: false,
    }));
}

#[test]
fn a_drain_cut_short_by_the_grace_is_told_as_killed() {
    use crate::events::Notice;
    let mut s = Sim::serving(1);
    s.ev(Event::Reload);
    s.ready(2, [0]);
    s.advance(Duration::from_secs(30));
    s.now += Duration::from_millis(5);
    s.exited(1, 0, ExitStatus::Signal(9));
    assert!(
        s.notices.contains(&Notice::GenerationExited {
            generation: 1,
            drained: Some(Duration::from_millis(30_005)),
            killed: true,
        }),
        "{:?}",
        s.notices
    );
}

#[test]
fn a_crash_while_serving_is_told_with_its_restart() {
    use crate::events::Notice;
    let mut s = Sim::serving(2);
    let mark = s.notices.len();
    s.now += Duration::from_secs(1);
    s.exited(1, 1, ExitStatus::Signal(9));
    assert_eq!(
        notice_names(&s, mark),
        ["worker_exited", "worker_restarting"]
    );
    assert!(s.notices.contains(&Notice::WorkerRestarting {
        generation: 1,
        worker: 1,
        delay: BACKOFF_START,
        restarts: 1,
    }));
    assert!(matches!(
        &s.notices[mark],
        Notice::WorkerExited { expected: false, signal: Some(sig), uptime, .. }
            if sig == "SIGKILL" && *uptime == Duration::from_secs(1)
    ));
    s.ev(Event::Stop(StopKind::Graceful));
    assert!(s.notices.contains(&Notice::Stopping {
        kind: "graceful".into()
    }));
}

#[test]
fn graceful_stop_drains_everything_and_exits_0() {
    let mut s = Sim::serving(2);
    s.ev(Event::Stop(StopKind::Graceful));
    assert_eq!(s.signals.len(), 2);
    s.all_exit(1);
    assert_eq!(s.exit, Some(exit::OK));
    assert!(s.logged("stopped"));
}

#[test]
fn stop_that_must_kill_exits_7() {
    let mut s = Sim::serving(1);
    s.ev(Event::Stop(StopKind::Graceful));
    s.advance(Duration::from_secs(30));
    assert!(s.kills.contains(&(1, 0)));
    s.exited(1, 0, ExitStatus::Signal(9));
    assert_eq!(s.exit, Some(exit::KILLED));
}

#[test]
fn second_stop_signal_is_immediate() {
    let mut s = Sim::serving(2);
    s.ev(Event::Stop(StopKind::Graceful));
    assert!(s.kills.is_empty());
    s.ev(Event::Stop(StopKind::Graceful));
    assert!(s.logged("stopping (immediate)"));
    assert_eq!(s.kills, vec![(1, 0), (1, 1)]);
    s.all_exit(1);
    assert_eq!(s.exit, Some(exit::KILLED));
}

#[test]
fn stop_during_reload_stops_both_generations() {
    let mut s = Sim::serving(1);
    s.ev(Event::Reload);
    s.ev(Event::Reload);
    s.ev(Event::Stop(StopKind::Graceful));
    assert!(s.signalled(1) && s.signalled(2));
    assert!(!s.m.reload_pending(), "a stop drops the queued reload");
    // A late readiness report must not make generation 2 serve or drain anything.
    s.ready(2, [0]);
    assert_eq!(s.m.serving(), None);
    s.all_exit(2);
    assert_eq!(s.exit, None);
    s.all_exit(1);
    assert_eq!(s.exit, Some(exit::OK));
    assert_eq!(s.spawns(3), 0);
}

#[test]
fn reload_while_stopping_is_ignored() {
    let mut s = Sim::serving(1);
    s.ev(Event::Stop(StopKind::Graceful));
    s.ev(Event::Reload);
    assert!(s.logged("reload ignored"));
    assert_eq!(s.spawns(2), 0);
}

#[test]
fn stop_while_restart_pending_cancels_it() {
    let mut s = Sim::serving(1);
    s.exited(1, 0, ExitStatus::Code(1));
    s.ev(Event::Stop(StopKind::Graceful));
    assert_eq!(s.exit, Some(exit::OK), "nothing was running");
    assert!(!s.timers.contains_key(&TimerKey::Restart(1, 0)));
}

#[test]
fn delay_mode_is_ready_after_the_delay() {
    let mut s = Sim::new(policy(2, ReadyMode::Delay(Duration::from_millis(500))));
    s.advance(Duration::from_millis(499));
    assert_eq!(s.m.serving(), None);
    s.advance(Duration::from_millis(1));
    assert_eq!(s.m.serving(), Some(1));
}

/// Seen in the e2e test of 200 workers on a loaded machine: spawning them
/// took longer than `--ready delay:500ms`, the delay passed while some
/// were still being spawned, and nothing looked at readiness again, so the
/// generation missed its readiness deadline with every worker running.
#[test]
fn a_delay_that_passes_before_every_worker_started_still_readies_the_generation() {
    let t0 = Instant::now();
    let mut m = Lifecycle::new(policy(2, ReadyMode::Delay(Duration::from_millis(500))));
    let _ = m.start(t0);
    let spawned = |slot, pid| Event::Spawned {
        generation: 1,
        slot,
        pid,
    };
    let _ = m.handle(spawned(0, 1001), t0);
    let _ = m.handle(
        Event::Timer(TimerKey::ReadyDelay(1)),
        t0 + Duration::from_millis(500),
    );
    assert_eq!(m.serving(), None, "worker 1 has not started yet");
    let _ = m.handle(spawned(1, 1002), t0 + Duration::from_secs(5));
    assert_eq!(m.serving(), Some(1), "the delay has passed and both run");
}

#[test]
fn exec_mode_retries_the_probe_until_it_succeeds() {
    let mut s = Sim::new(policy(1, ReadyMode::Exec("true".into())));
    assert_eq!(s.probes, vec![1]);
    s.ev(Event::ProbeDone {
        generation: 1,
        success: false,
    });
    s.advance(PROBE_INTERVAL);
    assert_eq!(s.probes, vec![1, 1]);
    s.ev(Event::ProbeDone {
        generation: 1,
        success: true,
    });
    assert_eq!(s.m.serving(), Some(1));
}

#[test]
fn stale_timers_are_ignored() {
    let mut s = Sim::serving(1);
    for key in [
        TimerKey::ReadyDeadline(1),
        TimerKey::ReadyHint(1),
        TimerKey::ReadyDelay(1),
        TimerKey::Grace(7),
        TimerKey::Restart(1, 0),
        TimerKey::ProbeRetry(9),
    ] {
        s.ev(Event::Timer(key));
    }
    assert_eq!(s.m.serving(), Some(1));
    assert!(s.signals.is_empty() && s.kills.is_empty());
}

#[test]
fn impossible_events_are_reported_not_obeyed() {
    let mut s = Sim::serving(1);
    s.ev(Event::WorkerExited {
        generation: 9,
        slot: 0,
        status: ExitStatus::Code(0),
    });
    assert!(s.logged("internal error"));
    assert_eq!(s.m.serving(), Some(1));
}

#[test]
fn reload_request_gets_its_verdict_after_the_drain_starts() {
    let mut s = Sim::serving(1);
    s.now += Duration::from_millis(5);
    s.ev(Event::ReloadRequest(7));
    assert!(s.verdicts.is_empty());
    s.now += Duration::from_millis(30);
    s.ready(2, [0]);
    assert_eq!(
        s.verdicts,
        vec![(
            vec![7],
            ReloadOutcome::Ready {
                generation: 2,
                took: Duration::from_millis(30)
            }
        )]
    );
    let draining = s.all.iter().position(
        |a| matches!(a, Action::Log { message, .. } if message == "generation 1 draining"),
    );
    let verdict = s
        .all
        .iter()
        .position(|a| matches!(a, Action::ReloadDone { .. }));
    assert!(
        draining < verdict,
        "the client hears about the drain before the verdict"
    );
    assert_eq!(s.m.last_reload(), Some(&s.verdicts[0].1));
}

#[test]
fn coalesced_reload_requests_share_the_verdict_of_the_reload_that_serves_them() {
    let mut s = Sim::serving(1);
    s.ev(Event::ReloadRequest(1));
    // Asked while 2 is starting: served by the *next* reload, which starts
    // from the code as it is after this request.
    s.ev(Event::ReloadRequest(2));
    s.ev(Event::ReloadRequest(3));
    s.ready(2, [0]);
    assert_eq!(s.verdicts.len(), 1);
    assert_eq!(s.verdicts[0].0, vec![1]);
    s.all_exit(1);
    s.exited(3, 0, ExitStatus::Code(9));
    assert_eq!(s.verdicts.len(), 2);
    assert_eq!(s.verdicts[1].0, vec![2, 3]);
    assert!(matches!(
        &s.verdicts[1].1,
        ReloadOutcome::Failed { generation: 3, serving: 2, tail: Some((3, 0)), reason } if reason.contains("status 9")
    ));
}

#[test]
fn reload_requests_are_refused_while_stopping_and_answered_on_stop() {
    let mut s = Sim::serving(1);
    s.ev(Event::ReloadRequest(1));
    s.ev(Event::Stop(StopKind::Graceful));
    assert!(matches!(&s.verdicts[0], (t, ReloadOutcome::Refused(_)) if t == &vec![1]));
    s.ev(Event::ReloadRequest(2));
    assert!(
        matches!(&s.verdicts[1], (t, ReloadOutcome::Refused(why)) if t == &vec![2] && why.contains("stopping"))
    );
}

#[test]
fn reload_request_during_a_failed_boot_is_refused() {
    let mut s = Sim::notify(1);
    s.ev(Event::ReloadRequest(4));
    s.exited(1, 0, ExitStatus::Code(1));
    assert!(
        matches!(&s.verdicts[0], (t, ReloadOutcome::Refused(why)) if t == &vec![4] && why.contains("first generation failed"))
    );
}

#[test]
fn service_manager_hears_ready_reloading_rollback_and_stopping() {
    let mut s = Sim::serving(1);
    assert_eq!(
        s.sd,
        vec![Sd::Ready {
            serving: 1,
            note: None
        }]
    );
    s.ev(Event::Reload);
    s.ready(2, [0]);
    s.all_exit(1);
    s.ev(Event::Reload);
    s.exited(3, 0, ExitStatus::Code(1));
    s.all_exit(3);
    s.ev(Event::Stop(StopKind::Graceful));
    s.ev(Event::Stop(StopKind::Graceful));
    assert_eq!(
        s.sd,
        vec![
            Sd::Ready {
                serving: 1,
                note: None
            },
            Sd::Reloading { generation: 2 },
            Sd::Ready {
                serving: 2,
                note: None
            },
            Sd::Reloading { generation: 3 },
            Sd::Ready {
                serving: 2,
                note: Some("reload to generation 3 failed".into())
            },
            Sd::Stopping,
        ],
        "STOPPING=1 once, even on the escalating second signal"
    );
}

#[test]
fn scale_up_and_down_adjusts_the_serving_generation_and_later_ones() {
    let mut s = Sim::serving(2);
    s.ev(Event::Scale(4));
    assert_eq!(s.spawns(1), 4);
    assert_eq!(s.m.worker_pids(1).len(), 4);
    // An added worker is ready for the first time, not "again".
    s.ready(1, [2]);
    assert!(
        s.logged("worker 2 of generation 1 is ready, "),
        "{:?}",
        s.logs
    );
    assert!(!s.logged("worker 2 of generation 1 is ready again"));
    s.ev(Event::Scale(1));
    // The highest slots go first, with the stop signal and a grace timer.
    assert_eq!(s.signals, vec![(1, 3, TERM), (1, 2, TERM), (1, 1, TERM)]);
    assert!(s.timers.contains_key(&TimerKey::WorkerGrace(1, 3)));
    s.exited(1, 3, ExitStatus::Code(0));
    s.exited(1, 2, ExitStatus::Code(0));
    assert!(s.logged("worker 3 of generation 1 (pid"));
    assert_eq!(s.spawns(1), 4, "removed workers are not restarted");
    // One ignores the stop signal: killed after the grace.
    s.advance(Duration::from_secs(30));
    assert!(s.kills.contains(&(1, 1)));
    s.exited(1, 1, ExitStatus::Signal(9));
    assert_eq!(
        s.m.snapshot()[0].workers.len(),
        1,
        "trailing slots are dropped"
    );
    // A new generation starts with the new count.
    s.ev(Event::Reload);
    assert_eq!(s.spawns(2), 1);
    assert_eq!(s.m.serving(), Some(1));
}

#[test]
fn scale_during_reload_applies_when_the_new_generation_serves() {
    let mut s = Sim::serving(1);
    s.ev(Event::Reload);
    s.ev(Event::Scale(3));
    assert_eq!(s.spawns(1), 3, "the serving generation grows at once");
    assert_eq!(s.spawns(2), 1, "the starting one keeps its count");
    s.ready(2, [0]);
    assert_eq!(s.spawns(2), 3, "and grows once it serves");
}

#[test]
fn snapshot_reports_states_and_ready_time() {
    let mut s = Sim::notify(2);
    s.now += Duration::from_millis(12);
    s.ready(1, [0, 1]);
    s.exited(1, 1, ExitStatus::Code(1));
    let snap = s.m.snapshot();
    assert_eq!(snap[0].state, "serving");
    assert_eq!(snap[0].ready_after, Some(Duration::from_millis(12)));
    assert_eq!(snap[0].workers[0].state, "ready");
    assert_eq!(snap[0].workers[1].state, "restarting");
    assert_eq!(snap[0].workers[1].restarts, 1);
}

/// Runs the machine in 50 µs steps for `total`, returning when each look
/// was done (from the start).
fn check_times(s: &mut Sim, total: Duration) -> Vec<Duration> {
    let start = s.now;
    let mut times = Vec::new();
    let mut seen = s.checks.len();
    while s.now - start < total {
        s.advance(Duration::from_micros(50));
        while seen < s.checks.len() {
            times.push(s.now - start);
            seen += 1;
        }
    }
    times
}

#[test]
fn accepting_looks_within_milliseconds_then_less_and_less_often() {
    let mut s = Sim::new(policy(2, ReadyMode::Accepting));
    assert!(s.checks.is_empty(), "no look before the first pause");
    let times = check_times(&mut s, Duration::from_secs(3));
    assert_eq!(times[0], ACCEPT_CHECK_FIRST);
    // Every ACCEPT_CHECK_MIN at first...
    assert!(
        times[..10]
            .windows(2)
            .all(|w| w[1].saturating_sub(w[0]) == ACCEPT_CHECK_MIN),
        "{times:?}"
    );
    // ...then pauses of a tenth of the time spent looking, at most 100 ms.
    let gaps: Vec<Duration> = times
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .collect();
    assert!(
        gaps.windows(2).all(|g| g[1] >= g[0]),
        "pauses never shrink: {gaps:?}"
    );
    assert_eq!(gaps.last().copied(), Some(ACCEPT_CHECK_MAX));
    let first_second = times
        .iter()
        .filter(|t| **t <= Duration::from_secs(1))
        .count();
    assert!(
        (50..90).contains(&first_second),
        "{first_second} looks in the first second"
    );
    assert_eq!(
        super::accepting::next_check(Duration::from_millis(300)),
        Duration::from_millis(30)
    );
}

#[test]
fn accepting_serves_once_every_worker_accepts_and_stops_looking() {
    let mut s = Sim::new(policy(2, ReadyMode::Accepting));
    s.advance(Duration::from_millis(5));
    s.ready(1, [0]);
    assert_eq!(s.m.serving(), None, "worker 1 does not accept yet");
    assert!(s.looks.contains_key(&1), "still looking at worker 1");
    s.ready(1, [1]);
    assert_eq!(s.m.serving(), Some(1));
    // The look in flight is answered; no other is asked for.
    let n = s.checks.len();
    s.advance(Duration::from_secs(1));
    assert!(
        s.checks.len() <= n + 1,
        "no look once the generation serves"
    );
    assert!(s.looks.is_empty());
    assert!(
        s.logged("worker 1 of generation 1 is ready, 5.000 ms after it started"),
        "{:?}",
        s.logs
    );
}

#[test]
fn a_restarted_worker_of_an_accepting_generation_is_looked_at_until_it_accepts_again() {
    let mut s = Sim::new(policy(1, ReadyMode::Accepting));
    s.ready(1, [0]);
    s.exited(1, 0, ExitStatus::Code(1));
    s.advance(BACKOFF_START);
    let n = s.checks.len();
    s.advance(Duration::from_millis(3));
    assert!(s.checks.len() > n, "the new worker is looked at");
    s.ready(1, [0]);
    assert!(s.logged("worker 0 of generation 1 is ready again"));
    let n = s.checks.len();
    s.advance(Duration::from_secs(1));
    assert!(s.checks.len() <= n + 1, "and no more once it accepts");
    assert!(s.looks.is_empty());
}

#[test]
fn notify_mode_never_looks_into_proc() {
    let mut s = Sim::notify(2);
    s.advance(Duration::from_secs(2));
    assert!(s.checks.is_empty());
}

#[test]
fn accepting_timeout_says_what_was_seen_of_each_worker() {
    let mut p = policy(2, ReadyMode::Accepting);
    p.ready_timeout = Duration::from_secs(10);
    let mut s = Sim::new(p);
    s.ready(1, [1]);
    s.ev(Event::AcceptLooked {
        generation: 1,
        seen: vec![(0, "worker 0 (pid 1001) has no epoll set watching tcp://127.0.0.1:8080 and is not in accept on it (1 process)".into())],
    });
    s.advance(Duration::from_secs(10));
    let line = s
        .logs
        .iter()
        .find(|l| l.contains("was not ready within 10s"))
        .expect("timeout logged");
    assert!(
        line.contains("still waiting for worker 0 to accept connections: worker 0 (pid 1001) has no epoll set watching tcp://127.0.0.1:8080 and is not in accept on it (1 process)"),
        "{line}"
    );
    assert!(
        line.contains("needs --ready notify, fd or exec:CMD"),
        "{line}"
    );
}

#[test]
fn a_worker_not_looked_at_yet_is_said_to_be() {
    let mut p = policy(1, ReadyMode::NotifyOrAccepting);
    p.ready_timeout = Duration::from_millis(1);
    let mut s = Sim::new(p);
    s.advance(Duration::from_millis(1));
    assert!(
        s.logged("still waiting for worker 0 to send READY=1 on NOTIFY_SOCKET or accept connections: worker 0 (pid 1001) has not been looked at yet"),
        "{:?}",
        s.logs
    );
}

#[test]
fn accepting_and_exec_needs_both() {
    let mut s = Sim::new(policy(1, ReadyMode::AcceptingAndExec("true".into())));
    assert_eq!(s.probes, vec![1], "the command runs beside the looks");
    s.ev(Event::ProbeDone {
        generation: 1,
        success: true,
    });
    assert_eq!(s.m.serving(), None, "the worker does not accept yet");
    s.ready(1, [0]);
    assert_eq!(s.m.serving(), Some(1));

    let mut s = Sim::new(policy(1, ReadyMode::AcceptingAndExec("false".into())));
    s.advance(Duration::from_millis(2));
    s.ready(1, [0]);
    assert_eq!(s.m.serving(), None, "the command has not succeeded");
    s.advance(Duration::from_secs(60));
    assert!(
        s.logged("the readiness command \"false\" has not succeeded yet"),
        "{:?}",
        s.logs
    );
    assert!(
        !s.logged("to accept connections"),
        "worker 0 accepted: {:?}",
        s.logs
    );
}

/// Boots generation 1 with these settings and every worker ready.
fn serving_with(p: Policy) -> Sim {
    let n = p.workers;
    let mut s = Sim::new(p);
    s.ready(1, 0..n);
    assert_eq!(s.m.serving(), Some(1));
    s
}

fn stop_signals(s: &Sim, generation: GenId) -> usize {
    s.signals
        .iter()
        .filter(|(g, _, _)| *g == generation)
        .count()
}

#[test]
fn rolling_reload_replaces_one_worker_at_a_time_within_workers_plus_surge() {
    let mut s = serving_with(with_strategy(3, Strategy::Rolling, 1));
    s.ev(Event::Reload);
    assert!(
        s.logged("1 worker at a time (at most 4 processes)"),
        "{:?}",
        s.logs
    );
    assert_eq!(
        s.spawns(2),
        1,
        "one new worker: 3 old + 1 = the budget of 4"
    );
    assert_eq!(stop_signals(&s, 1), 0, "invariant 3: nothing drains yet");
    s.ready(2, [0]);
    assert_eq!(
        stop_signals(&s, 1),
        1,
        "one old worker drains per new ready one"
    );
    assert_eq!(s.spawns(2), 1, "the replaced worker still counts");
    s.exited(1, 2, ExitStatus::Code(0));
    assert_eq!(s.spawns(2), 2);
    s.ready(2, [1]);
    assert_eq!(stop_signals(&s, 1), 2);
    s.exited(1, 1, ExitStatus::Code(0));
    assert_eq!(s.spawns(2), 3);
    s.ready(2, [2]);
    assert_eq!(s.m.serving(), Some(2));
    assert!(matches!(
        s.verdicts.last(),
        Some((_, ReloadOutcome::Ready { generation: 2, .. }))
    ));
    assert_eq!(
        stop_signals(&s, 1),
        3,
        "the last old worker drains at the end"
    );
    s.all_exit(1);
    assert_eq!(s.m.generation_count(), 1);
    assert_eq!(s.peak, Some((4, 4)), "the budget was used, never passed");
}

#[test]
fn rolling_reload_with_a_surge_of_two_starts_two_at_a_time() {
    let mut s = serving_with(with_strategy(4, Strategy::Rolling, 2));
    s.ev(Event::Reload);
    assert_eq!(s.spawns(2), 2);
    s.ready(2, [0, 1]);
    assert_eq!(stop_signals(&s, 1), 2);
    s.exited(1, 3, ExitStatus::Code(0));
    assert_eq!(s.spawns(2), 3, "one more as each replaced worker goes");
}

#[test]
fn rolling_reload_rollback_restarts_the_replaced_old_workers_from_their_release() {
    let mut s = serving_with(with_strategy(3, Strategy::Rolling, 1));
    s.ev(Event::Reload);
    s.ready(2, [0]);
    s.exited(1, 2, ExitStatus::Code(0));
    assert_eq!(s.spawns(2), 2);
    assert_eq!(s.spawns(1), 3);
    // The second new worker crashes before it is ready.
    s.exited(2, 1, ExitStatus::Code(1));
    let (_, outcome) = s.verdicts.last().expect("a verdict");
    let ReloadOutcome::Failed {
        reason, serving, ..
    } = outcome
    else {
        panic!("{outcome:?}");
    };
    assert_eq!(*serving, 1);
    assert!(
        reason.contains("the 1 worker of generation 1 it had replaced starts again from generation 1's own release"),
        "{reason}"
    );
    // Its ready worker is stopped; the failed generation's processes count
    // against the budget until they are gone.
    assert!(s.signalled(2));
    s.all_exit(2);
    assert_eq!(s.spawns(1), 4, "worker 2 of generation 1 started again");
    s.ready(1, [2]);
    assert_eq!(s.m.serving(), Some(1));
    assert!(s.m.handover.is_none(), "the rollback is over");
    assert_eq!(s.live_slots(1).len(), 3, "generation 1 is whole again");
    // The next reload runs normally.
    s.ev(Event::Reload);
    assert_eq!(s.spawns(3), 1);
}

#[test]
fn restart_stops_the_old_generation_before_starting_the_new_one() {
    let mut s = serving_with(with_strategy(2, Strategy::Restart, 1));
    s.ev(Event::Reload);
    assert_eq!(stop_signals(&s, 1), 2, "every old worker is told to stop");
    assert_eq!(s.spawns(2), 0, "the app never runs twice");
    s.exited(1, 0, ExitStatus::Code(0));
    assert_eq!(s.spawns(2), 0);
    s.now += Duration::from_millis(40);
    s.exited(1, 1, ExitStatus::Code(0));
    assert_eq!(
        s.spawns(2),
        2,
        "the new generation starts once the old is gone"
    );
    assert!(
        !s.all
            .iter()
            .any(|a| matches!(a, Action::Spawn { quiet: true, .. })),
        "nobody serves: no quiet boot"
    );
    s.now += Duration::from_millis(60);
    s.ready(2, [0, 1]);
    assert_eq!(s.m.serving(), Some(2));
    assert!(
        s.logged("restart: no worker served for 100 ms"),
        "{:?}",
        s.logs
    );
    assert_eq!(s.m.generation_count(), 1);
}

#[test]
fn restart_that_fails_starts_the_old_generation_again() {
    let mut s = serving_with(with_strategy(1, Strategy::Restart, 1));
    s.ev(Event::Reload);
    s.all_exit(1);
    s.exited(2, 0, ExitStatus::Code(3));
    assert!(s.logged("it had stopped start"), "{:?}", s.logs);
    assert_eq!(s.spawns(1), 2, "generation 1 runs again");
    s.ready(1, [0]);
    assert_eq!(s.m.serving(), Some(1));
}

#[test]
fn back_to_back_reloads_do_not_wait_for_a_slow_drain() {
    let mut s = Sim::serving(1);
    s.ev(Event::Reload);
    s.ready(2, [0]);
    assert!(s.logged("generation 1 draining"));
    // Generation 1 holds on to a long request: the next reload starts at
    // once, not after --grace.
    s.ev(Event::Reload);
    assert_eq!(
        s.spawns(3),
        1,
        "the reload started while generation 1 drains"
    );
    s.ready(3, [0]);
    assert_eq!(s.m.serving(), Some(3));
    assert!(
        s.logged("generation 1 killed while draining (1 worker left): 2 generations were draining and --max-draining is 1"),
        "{:?}",
        s.logs
    );
    assert!(
        s.kills.contains(&(1, 0)) || s.signals.contains(&(1, 0, 9)),
        "{:?} {:?}",
        s.kills,
        s.signals
    );
}

#[test]
fn max_draining_two_keeps_both_old_generations_draining() {
    let mut s = Sim::new(Policy {
        max_draining: 2,
        ..policy(1, ReadyMode::Notify)
    });
    s.ready(1, [0]);
    s.ev(Event::Reload);
    s.ready(2, [0]);
    s.ev(Event::Reload);
    s.ready(3, [0]);
    assert!(!s.logged("killed while draining"), "{:?}", s.logs);
    s.ev(Event::Reload);
    s.ready(4, [0]);
    assert!(
        s.logged("generation 1 killed while draining"),
        "{:?}",
        s.logs
    );
}

#[test]
fn quiet_boot_starts_a_reload_quietly_and_restores_each_ready_worker() {
    let mut s = Sim::serving(2);
    assert!(
        s.quiet.is_empty(),
        "the first generation has nobody to yield to"
    );
    s.ev(Event::Reload);
    assert_eq!(s.quiet.len(), 2, "{:?}", s.all);
    s.ready(2, [0]);
    assert!(
        !s.quiet.contains(&(2, 0)),
        "worker 0 is ready: normal priority"
    );
    assert!(s.quiet.contains(&(2, 1)));
    s.ready(2, [1]);
    assert!(s.quiet.is_empty());

    // A boot slower than 1 s (a machine with no idle CPU) goes on at the
    // normal priority.
    s.ev(Event::Reload);
    assert_eq!(s.quiet.len(), 2);
    s.advance(Duration::from_secs(5));
    assert!(s.quiet.is_empty(), "{:?}", s.logs);
    assert!(s.logged("generation 3: quiet boot over after 1s"));

    // With a short --ready-timeout, quiet boot gives way at a third of it:
    // it may slow a reload, never make it miss its deadline (regression:
    // a 3 s timeout on a busy machine failed reloads when the give-way came
    // at 5 s).
    let mut short = serving_with(Policy {
        ready_timeout: Duration::from_millis(1500),
        ..policy(1, ReadyMode::Notify)
    });
    short.ev(Event::Reload);
    assert_eq!(short.quiet.len(), 1);
    short.advance(Duration::from_millis(400));
    assert_eq!(short.quiet.len(), 1, "still quiet before a third of 1.5 s");
    short.advance(Duration::from_millis(200));
    assert!(short.quiet.is_empty(), "{:?}", short.logs);
    assert!(short.logged("generation 2: quiet boot over after 500ms"));

    let mut off = Sim::new(Policy {
        quiet_boot: false,
        ..policy(1, ReadyMode::Notify)
    });
    off.ready(1, [0]);
    off.ev(Event::Reload);
    assert!(off.quiet.is_empty(), "--quiet-boot off");
}

mod properties {
    use super::*;
    use proptest::prelude::{Just, any, prop_assert, prop_assert_eq, prop_oneof, proptest};
    use proptest::strategy::Strategy as _;

    #[derive(Debug, Clone)]
    enum Op {
        Reload,
        Request,
        Scale(u8),
        Stop,
        Forward,
        Configure(u8),
        Ready(u8, u8),
        NotAccepting(u8, u8),
        Exit(u8, u8, bool),
        Unresponsive(u8, u8),
        Advance(u16),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Reload),
            1 => Just(Op::Request),
            1 => (1u8..5).prop_map(Op::Scale),
            1 => Just(Op::Stop),
            1 => Just(Op::Forward),
            1 => (1u8..4).prop_map(Op::Configure),
            6 => (0u8..4, 0u8..3).prop_map(|(g, w)| Op::Ready(g, w)),
            1 => (0u8..4, 0u8..3).prop_map(|(g, w)| Op::NotAccepting(g, w)),
            3 => (0u8..4, 0u8..3, any::<bool>()).prop_map(|(g, w, ok)| Op::Exit(g, w, ok)),
            1 => (0u8..4, 0u8..3).prop_map(|(g, w)| Op::Unresponsive(g, w)),
            3 => (1u16..40_000).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Random event sequences never break the invariants: at most two
        /// generations (also checked inside `handle`), the serving
        /// generation is never signalled (checked by `Sim::ev`), exit is
        /// requested at most once (checked by `Sim::apply`), and no event
        /// the runtime can produce is "impossible".
        #[test]
        fn invariants_hold(
            ops in proptest::collection::vec(op(), 1..120),
            strategy in 0u8..3,
            surge in 1usize..3,
            max_draining in 1usize..3,
        ) {
            let strategy = [Strategy::Overlap, Strategy::Rolling, Strategy::Restart][usize::from(strategy)];
            let mut s = Sim::new(Policy {
                max_draining,
                ..with_strategy(2, strategy, surge)
            });
            let mut next_ticket: Ticket = 0;
            for op in ops {
                let gens: Vec<GenId> = s.m.gens.iter().map(|g| g.id).collect();
                match op {
                    Op::Reload => s.ev(Event::Reload),
                    Op::Request => {
                        // Tickets are unique, like the client ids they are.
                        next_ticket += 1;
                        s.ev(Event::ReloadRequest(next_ticket));
                    }
                    Op::Scale(n) => s.ev(Event::Scale(usize::from(n))),
                    Op::Stop => s.ev(Event::Stop(StopKind::Graceful)),
                    Op::Forward => s.ev(Event::Forward(USR1)),
                    Op::Configure(n) => {
                        let ready = match n {
                            1 => ReadyMode::Notify,
                            2 => ReadyMode::Accepting,
                            _ => ReadyMode::NotifyOrAccepting,
                        };
                        s.ev(Event::Configure(Policy {
                            ready,
                            max_draining,
                            ..with_strategy(usize::from(n), strategy, surge)
                        }));
                    }
                    Op::NotAccepting(g, w) => {
                        if let Some(&generation) = gens.get(g as usize % gens.len().max(1)) {
                                                    s.ev(Event::AcceptLooked { generation, seen: vec![(w as usize % 2, "nothing".into())] });
                        }
                    }
                    Op::Ready(g, w) => {
                        if let Some(&generation) = gens.get(g as usize % gens.len().max(1)) {
                            s.ev(Event::WorkerReady { generation, slot: w as usize % 2 });
                        }
                    }
                    Op::Exit(g, w, ok) => {
                        if let Some(&generation) = gens.get(g as usize % gens.len().max(1)) {
                            // Workers told to stop exit too, so that rolling
                            // and restart reloads get on.
                            let slots = s.live_slots(generation);
                            if let Some(&slot) = slots.get(w as usize % slots.len().max(1)) {
                                let status = if ok { ExitStatus::Code(0) } else { ExitStatus::Signal(9) };
                                s.exited(generation, slot, status);
                            }
                        }
                    }
                    Op::Unresponsive(g, w) => {
                        // `--dispatch`: the runtime reports any live worker
                        // (and may report one that was restarted since).
                        if let Some(&generation) = gens.get(g as usize % gens.len().max(1)) {
                            let pids = s.m.worker_pids(generation);
                            if let Some(&(slot, pid)) = pids.get(w as usize % pids.len().max(1)) {
                                let pid = if w == 2 { pid + 1 } else { pid };
                                s.ev(Event::WorkerUnresponsive { generation, slot, pid, what: "did not answer".into() });
                            }
                        }
                    }
                    Op::Advance(ms) => s.advance(Duration::from_millis(u64::from(ms))),
                }
                // Invariant 1 (also checked inside `handle`): one serving,
                // one starting, and at most --max-draining draining.
                let count = |r: Role| s.m.gens.iter().filter(|g| g.role == r).count();
                prop_assert!(count(Role::Serving) <= 1);
                prop_assert!(count(Role::Starting) <= 1);
                if !matches!(s.m.phase, Phase::Stopping(_) | Phase::Done) {
                    prop_assert!(count(Role::Draining) <= max_draining, "{:?}", s.m.gens);
                    prop_assert!(count(Role::Failed) <= 1);
                }
                // Invariant 9: a worker that is ready has its normal
                // priority back.
                for g in &s.m.gens {
                    for (slot, w) in g.workers.iter().enumerate() {
                        if matches!(w.state, WorkerState::Running { ready: true, .. }) && g.role != Role::Failed {
                            prop_assert!(!s.quiet.contains(&(g.id, slot)), "worker {slot} of generation {} is ready but still quiet", g.id);
                        }
                    }
                }
                // Every ticket is answered at most once...
                let mut answered: Vec<Ticket> = s.verdicts.iter().flat_map(|(t, _)| t.clone()).collect();
                let n = answered.len();
                answered.sort_unstable();
                answered.dedup();
                prop_assert_eq!(answered.len(), n, "a ticket was answered twice: {:?}", s.verdicts);
                // ...and once baton has exited, every ticket was answered.
                if s.exit.is_some() {
                    prop_assert_eq!(n as u64, next_ticket, "a reload request was never answered: {:?}", s.verdicts);
                }
                prop_assert!(!s.logged("internal error"), "{:?}", s.logs);
            }
        }
    }
}

/// `--dispatch`: a worker that did not answer in time is killed (its exit
/// then restarts it like any crash); a report about a pid the slot no
/// longer has (restarted meanwhile) is ignored.
#[test]
fn an_unresponsive_dispatch_worker_is_killed_and_a_stale_report_ignored() {
    let mut s = Sim::serving(2);
    let pid = s.pids[&(1, 1)];
    s.ev(Event::WorkerUnresponsive {
        generation: 1,
        slot: 1,
        pid: pid + 100,
        what: "did not take connection 7 within 5s (--dispatch-timeout)".into(),
    });
    assert!(s.kills.is_empty(), "a stale pid: {:?}", s.kills);
    s.ev(Event::WorkerUnresponsive {
        generation: 1,
        slot: 1,
        pid,
        what: "did not take connection 7 within 5s (--dispatch-timeout)".into(),
    });
    assert_eq!(s.kills, vec![(1, 1)]);
    assert!(s.logged(&format!(
        "worker 1 of generation 1 (pid {pid}) did not take connection 7 within 5s (--dispatch-timeout); killing it"
    )));
    s.exited(1, 1, ExitStatus::Signal(9));
    assert!(s.logged("worker 1 of generation 1 restarting in 100 ms"));
    assert_eq!(s.m.serving(), Some(1), "the generation keeps serving");
}
