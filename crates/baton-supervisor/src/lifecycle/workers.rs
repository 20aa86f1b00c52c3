//! Workers: spawned, ready, exited, restarted with backoff.

use std::time::{Duration, Instant};

use crate::events::Notice;

use super::{
    Action, BACKOFF_MAX, BACKOFF_START, CRASH_LOOP_AFTER, Event, ExitStatus, GenId, Impossible,
    Level, Lifecycle, PROBE_INTERVAL, Role, STABLE_AFTER, Slot, TimerKey, Worker, WorkerState,
    exit, ms,
};

impl Lifecycle {
    pub(super) fn on_spawned(
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
        w.accept_seen = None;
        let role = g.role;
        self.log(
            Level::Info,
            format!("worker {slot} of generation {generation} started, pid {pid}"),
        );
        self.notice(Notice::WorkerStarted {
            generation,
            worker: slot,
            pid,
        });
        match role {
            // Spawned while being stopped (the stop came between the spawn
            // request and its answer): stop it too.
            Role::Stopping | Role::Draining | Role::Failed | Role::Killed => {
                self.out.push(Action::Signal {
                    generation,
                    slot,
                    signal: self.gens[gi].policy.stop_signal,
                });
            }
            Role::Starting => {
                // exec: readiness: the first probe runs when the whole
                // generation has started, so BATON_WORKER_PIDS names every
                // worker (a check over an empty list would pass at once).
                let all_started = self.gens[gi]
                    .workers
                    .iter()
                    .all(|w| matches!(w.state, WorkerState::Running { .. }));
                if self.gens[gi].policy.ready.exec_command().is_some() && all_started {
                    self.out.push(Action::RunProbe { generation });
                }
                self.start_accept_checks(gi, now);
                // --ready delay: the delay may have passed while workers
                // were still being spawned (a slow machine, many workers);
                // the last one to start completes the generation then.
                if all_started {
                    self.maybe_ready(gi, now);
                }
            }
            // A restarted worker whose generation is being stopped for a
            // restart-strategy reload (the restart was in flight): it stops
            // with the others.
            Role::Serving
                if self.gens[gi].replacement.is_some()
                    && self
                        .handover
                        .as_ref()
                        .is_some_and(|h| h.strategy == super::Strategy::Restart) =>
            {
                let g = &mut self.gens[gi];
                g.workers[slot].state = WorkerState::Replaced { pid };
                let (signal, grace) = (g.policy.stop_signal, g.policy.grace);
                self.out.push(Action::Signal {
                    generation,
                    slot,
                    signal,
                });
                self.set_timer(TimerKey::WorkerGrace(generation, slot), grace);
            }
            // A restarted worker: "ready again" once it accepts.
            Role::Serving => self.start_accept_checks(gi, now),
        }
        Ok(())
    }

    pub(super) fn on_spawn_failed(
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
                self.restart_unless_replaced(gi, slot, now);
            }
            Role::Draining | Role::Failed | Role::Stopping | Role::Killed => {}
        }
        self.after_exit(gi, now);
        Ok(())
    }

    pub(super) fn on_worker_ready(&mut self, generation: GenId, slot: Slot, now: Instant) {
        let Some(gi) = self.gen_index(generation) else {
            return;
        };
        let g = &mut self.gens[gi];
        let role = g.role;
        let pid = if let Some(Worker {
            state: WorkerState::Running { ready, pid },
            ..
        }) = g.workers.get_mut(slot)
        {
            if *ready {
                return;
            }
            *ready = true;
            *pid
        } else {
            return;
        };
        let after = g.workers[slot]
            .started
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        g.workers[slot].accept_seen = None;
        let again = std::mem::replace(&mut g.workers[slot].was_ready, true);
        if g.first_ready.is_none() {
            g.first_ready = Some(now.saturating_duration_since(g.started));
        }
        if matches!(role, Role::Starting | Role::Serving) {
            self.notice(Notice::WorkerReady {
                generation,
                worker: slot,
                pid,
                after,
            });
        }
        match role {
            Role::Starting => {
                // With microseconds: bench/accepting compares readiness
                // modes by this line.
                self.log(
                    Level::Debug,
                    format!(
                        "worker {slot} of generation {generation} is ready, {:.3} ms after it started",
                        after.as_secs_f64() * 1000.0
                    ),
                );
                // In a rolling reload the generation serves from its first
                // ready worker on: quiet boot is over for it as such.
                let rolling = self
                    .handover
                    .as_ref()
                    .is_some_and(|h| h.new == generation && h.strategy == super::Strategy::Rolling);
                self.end_quiet_boot(gi, Some(slot));
                if rolling && !self.gens[gi].quiet_over && self.gens[gi].policy.quiet_boot {
                    self.gens[gi].quiet_over = true;
                    self.out.push(Action::NormalPriority {
                        generation,
                        slots: Vec::new(),
                        whole: true,
                    });
                }
                self.maybe_ready(gi, now);
            }
            Role::Serving => {
                let what = if again {
                    "is ready again".to_owned()
                } else {
                    format!(
                        "is ready, {:.3} ms after it started",
                        after.as_secs_f64() * 1000.0
                    )
                };
                self.log(
                    Level::Info,
                    format!("worker {slot} of generation {generation} {what}"),
                );
                self.end_quiet_boot(gi, Some(slot));
            }
            // Started while its generation was told to stop.
            Role::Draining | Role::Failed | Role::Stopping | Role::Killed => {
                self.end_quiet_boot(gi, Some(slot));
            }
        }
    }

    pub(super) fn on_probe_done(&mut self, generation: GenId, success: bool, now: Instant) {
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

    pub(super) fn on_worker_exited(
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
            WorkerState::Replaced { pid } => {
                w.state = WorkerState::Exited;
                self.on_replaced_exited(gi, slot, pid, status, now);
                return Ok(());
            }
            WorkerState::Spawning
            | WorkerState::Restarting
            | WorkerState::Exited
            | WorkerState::Pending => {
                return Err(self.impossible(event));
            }
        };
        w.state = WorkerState::Exited;
        let uptime = w
            .started
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        // Invariant 7: whatever is left of its process group goes with it.
        self.out.push(Action::ReapGroup { generation, slot });
        let expected = removed || !matches!(self.gens[gi].role, Role::Starting | Role::Serving);
        self.notice(Notice::worker_exited(
            generation, slot, pid, status, uptime, expected,
        ));
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
                // A plain server run under --dispatch: with pass mode it
                // gets no listening socket (LISTEN_FDS=0) and typically
                // exits saying so, which reads as if -l had been ignored.
                if !ready && self.gens[gi].policy.ready == super::ReadyMode::Dispatch {
                    reason.push_str(
                        " (under --dispatch a worker takes its connections from the channel in BATON_DISPATCH_FD, and with --dispatch=pass it gets no listening socket, LISTEN_FDS=0; an app that does not speak the dispatch protocol, docs/dispatch.md, needs baton without --dispatch)",
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
                self.restart_unless_replaced(gi, slot, now);
            }
            Role::Draining | Role::Failed | Role::Stopping | Role::Killed => {
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

    /// A worker told to stop by a rolling or restart reload exited: gone
    /// for good while the reload goes on (or its generation drains), to be
    /// started again when the reload was rolled back (invariant 4).
    fn on_replaced_exited(
        &mut self,
        gi: usize,
        slot: Slot,
        pid: u32,
        status: ExitStatus,
        now: Instant,
    ) {
        let generation = self.gens[gi].id;
        self.out.push(Action::ReapGroup { generation, slot });
        self.out.push(Action::CancelTimer {
            key: TimerKey::WorkerGrace(generation, slot),
        });
        let g = &mut self.gens[gi];
        let again = g.role == Role::Serving && g.replacement.is_none();
        if again {
            g.workers[slot].state = WorkerState::Pending;
        }
        self.log(
            Level::Info,
            format!(
                "worker {slot} of generation {generation} (pid {pid}) exited ({status}){}",
                if again {
                    "; it starts again (rollback)"
                } else {
                    ", replaced"
                }
            ),
        );
        self.after_exit(gi, now);
    }

    /// A worker of the serving generation ended: restart it, unless a
    /// rolling or restart reload is replacing the generation (the new
    /// generation takes its place; a restart would break the process
    /// budget, or run the app twice).
    fn restart_unless_replaced(&mut self, gi: usize, slot: Slot, now: Instant) {
        let generation = self.gens[gi].id;
        if let Some(h) = &self.handover
            && h.old == generation
            && !h.rolled_back
        {
            let new = h.new;
            self.log(
                Level::Info,
                format!(
                    "worker {slot} of generation {generation} is not restarted: generation {new} is replacing it"
                ),
            );
            return;
        }
        self.schedule_restart(gi, slot, now);
    }

    pub(super) fn schedule_restart(&mut self, gi: usize, slot: Slot, now: Instant) {
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
        self.counters.restarts += 1;
        if self.slot_restarts.len() <= slot {
            self.slot_restarts.resize(slot + 1, 0);
        }
        self.slot_restarts[slot] += 1;
        w.state = WorkerState::Restarting;
        let quick = w.quick_restarts;
        let restarts = w.restarts;
        self.notice(Notice::WorkerRestarting {
            generation,
            worker: slot,
            delay,
            restarts,
        });
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
}
