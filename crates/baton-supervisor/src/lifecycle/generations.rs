//! Generations: starting one, its readiness, retiring, failing and
//! removing it, and the queued reload.

use std::time::{Duration, Instant};

use crate::events::Notice;

use super::{
    Action, GenId, Generation, Level, Lifecycle, Phase, READY_HINT_AFTER, ROLLBACK_GRACE,
    ReadyMode, ReloadOutcome, Role, Sd, Slot, StopKind, Strategy, TimerKey, Worker, WorkerState,
    exit, ms, plural,
};

impl Lifecycle {
    pub(super) fn queue_reload(&mut self, why: &str) {
        if self.reload_pending {
            self.log(
                Level::Info,
                format!("reload queued ({why}); it coalesces with the one already queued"),
            );
        } else {
            self.reload_pending = true;
            self.log(Level::Info, format!("reload queued ({why})"));
        }
        self.notice(Notice::ReloadQueued { reason: why.into() });
    }

    pub(super) fn start_generation(&mut self, now: Instant) {
        let id = self.next_id;
        self.next_id += 1;
        let n = self.policy.workers;
        let old = self.gens.iter().position(|g| g.role == Role::Serving);
        let strategy = match old {
            Some(_) => self.effective_strategy(),
            None => Strategy::Overlap,
        };
        // Rolling and restart start their workers as the handover allows
        // (see `advance`); overlap starts them all now.
        let handover = strategy != Strategy::Overlap;
        self.gens.push(Generation {
            id,
            policy: self.policy.clone(),
            role: Role::Starting,
            workers: (0..n)
                .map(|_| {
                    if handover {
                        Worker::pending()
                    } else {
                        Worker::new()
                    }
                })
                .collect(),
            started: now,
            ready_after: None,
            gen_ready: false,
            accept_since: None,
            retired_at: None,
            killed: false,
            replacement: None,
            rolled_out: 0,
            first_ready: None,
            quiet_over: false,
        });
        let ni = self.gens.len() - 1;
        self.phase = if let Some(oi) = old {
            self.notice(Notice::ReloadStarted {
                generation: id,
                serving: self.gens[oi].id,
            });
            self.counters.reloads_started += 1;
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
        self.notice(Notice::GenerationStarting {
            generation: id,
            workers: n,
        });
        self.out.push(Action::PrepareGeneration { generation: id });
        if let (true, Some(oi)) = (handover, old) {
            self.begin_handover(oi, ni, strategy);
            return;
        }
        for slot in 0..n {
            self.spawn_slot(ni, slot, now);
        }
        self.set_timer(TimerKey::ReadyDeadline(id), self.policy.ready_timeout);
        self.set_timer(TimerKey::ReadyHint(id), READY_HINT_AFTER);
        if self.policy.quiet_boot && old.is_some() {
            self.set_timer(TimerKey::QuietOver(id), super::quiet_limit(&self.policy));
        }
        match &self.policy.ready {
            ReadyMode::Delay(d) => self.set_timer(TimerKey::ReadyDelay(id), *d),
            // The first exec: probe runs once every worker has started (see
            // on_spawned): it is told their pids.
            // So is the first look of accepting (see on_spawned).
            ReadyMode::Exec(_)
            | ReadyMode::Notify
            | ReadyMode::Fd
            | ReadyMode::Accepting
            | ReadyMode::AcceptingAndExec(_)
            | ReadyMode::NotifyOrAccepting
            | ReadyMode::Dispatch => {}
        }
    }

    pub(super) fn set_timer(&mut self, key: TimerKey, after: Duration) {
        self.out.push(Action::SetTimer { key, after });
    }

    pub(super) fn cancel_ready_timers(&mut self, generation: GenId) {
        for key in [
            TimerKey::ReadyDeadline(generation),
            TimerKey::ReadyHint(generation),
            TimerKey::QuietOver(generation),
            TimerKey::ReadyDelay(generation),
            TimerKey::ProbeRetry(generation),
        ] {
            self.out.push(Action::CancelTimer { key });
        }
        // No more looks: the answer to one in flight finds it so.
        if let Some(gi) = self.gen_index(generation) {
            self.gens[gi].accept_since = None;
        }
    }

    /// A starting generation became ready if all its workers (and the
    /// generation-wide check, if any) say so.
    pub(super) fn maybe_ready(&mut self, gi: usize, now: Instant) {
        if !self.gens[gi].ready() {
            return;
        }
        let generation = self.gens[gi].id;
        let took = now.saturating_duration_since(self.gens[gi].started);
        self.cancel_ready_timers(generation);
        self.log(
            Level::Info,
            format!("generation {generation} ready in {} ms", ms(took)),
        );
        self.end_quiet_boot(gi, None);
        // Invariant 3: only now is the previous generation told to drain.
        let old = self
            .gens
            .iter()
            .position(|g| g.role == Role::Serving && g.id != generation);
        let handover = self.handover.take();
        if let Some(h) = &handover
            && h.strategy == Strategy::Restart
        {
            let window = self.gens[gi].first_ready.unwrap_or(took);
            self.log(
                Level::Info,
                format!(
                    "restart: no worker served for {} ms (from generation {}'s stop signal to generation {generation}'s first ready worker); connections waited in the listen queue",
                    ms(window),
                    h.old
                ),
            );
        }
        self.gens[gi].role = Role::Serving;
        self.gens[gi].ready_after = Some(took);
        self.notice(Notice::GenerationReady { generation, took });
        self.out.push(Action::Serving { generation });
        self.out.push(Action::Notify(Sd::Ready {
            serving: generation,
            note: None,
        }));
        self.apply_scale(gi, now);
        match old {
            Some(oi) => {
                self.counters.reloads_succeeded += 1;
                self.notice(Notice::ReloadSucceeded {
                    generation,
                    previous: self.gens[oi].id,
                    took,
                });
                self.last_reload_at = Some(now);
                self.gens[oi].replacement = None;
                self.gens[oi].rolled_out = 0;
                let grace = self.gens[oi].policy.grace;
                self.retire(oi, Role::Draining, grace);
                let outcome = ReloadOutcome::Ready { generation, took };
                self.last_reload = Some(outcome.clone());
                self.out.push(Action::ReloadDone {
                    tickets: std::mem::take(&mut self.inflight_tickets),
                    outcome,
                });
                self.phase = Phase::Retiring;
                self.enforce_max_draining();
                // (Killing past --max-draining removes nothing: `oi` holds.)
                // A restart's old generation has nothing left to drain: it
                // goes now, and the phase moves on with it.
                if self.gens[oi].alive() {
                    self.update_phase();
                    self.run_pending_reload(now);
                } else {
                    self.after_exit(oi, now);
                }
            }
            None => {
                self.phase = Phase::Serving;
                self.update_phase();
                self.run_pending_reload(now);
            }
        }
    }

    /// Quiet boot is over for generation `gi`: for `slot` (a worker that is
    /// ready), or with `None` for every quiet worker and the generation as
    /// such (it is ready, or in a rolling reload its first worker is).
    pub(super) fn end_quiet_boot(&mut self, gi: usize, slot: Option<Slot>) {
        let g = &mut self.gens[gi];
        let mut slots = Vec::new();
        for (s, w) in g.workers.iter_mut().enumerate() {
            if w.quiet && slot.is_none_or(|only| only == s) {
                w.quiet = false;
                slots.push(s);
            }
        }
        let whole = slot.is_none() && g.policy.quiet_boot && !g.quiet_over;
        if whole {
            g.quiet_over = true;
        }
        if whole || !slots.is_empty() {
            self.out.push(Action::NormalPriority {
                generation: g.id,
                slots,
                whole,
            });
        }
    }

    /// Sends the stop signal to every live worker of a generation and arms
    /// its grace timer.
    pub(super) fn retire(&mut self, gi: usize, role: Role, grace: Duration) {
        let generation = self.gens[gi].id;
        self.gens[gi].role = role;
        if self.gens[gi].retired_at.is_none() {
            self.gens[gi].retired_at = Some(self.clock());
        }
        // A worker told to stop gets its CPU share to do so (and to finish
        // its requests) at once: quiet boot is over for it.
        self.end_quiet_boot(gi, None);
        if role == Role::Draining {
            self.log(Level::Info, format!("generation {generation} draining"));
            self.notice(Notice::GenerationDraining { generation });
        }
        let signal = self.gens[gi].policy.stop_signal;
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
                // stop it then (see on_spawned); a removed or replaced
                // worker was already told to stop.
                WorkerState::Spawning
                | WorkerState::Removing { .. }
                | WorkerState::Replaced { .. } => any = true,
                WorkerState::Pending => w.state = WorkerState::Exited,
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
    pub(super) fn fail_generation(
        &mut self,
        gi: usize,
        reason: &str,
        tail: Option<Slot>,
        boot_code: u8,
    ) {
        let generation = self.gens[gi].id;
        let serving = self.serving();
        // A rolling or restart reload: the old generation is made whole
        // again, and the verdict says so.
        let reason = match self.roll_back_handover(gi) {
            Some(note) => format!("{reason}{note}"),
            None => reason.to_owned(),
        };
        let reason = reason.as_str();
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
        self.notice(Notice::GenerationFailed {
            generation,
            reason: reason.to_owned(),
        });
        let grace = ROLLBACK_GRACE.min(self.gens[gi].policy.grace);
        self.retire(gi, Role::Failed, grace);
        match serving {
            Some(s) => {
                self.counters.reloads_failed += 1;
                let now = self.clock();
                self.notice(Notice::ReloadFailed {
                    generation,
                    serving: s,
                    reason: reason.to_owned(),
                    took: now.saturating_duration_since(self.gens[gi].started),
                });
                self.last_reload_at = Some(now);
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

    /// Called after a worker of generation `gi` ended: removes the
    /// generation when nothing of it is left and moves the phase on.
    pub(super) fn after_exit(&mut self, gi: usize, now: Instant) {
        let g = &self.gens[gi];
        let gone = !g.alive()
            && matches!(
                g.role,
                Role::Draining | Role::Failed | Role::Stopping | Role::Killed
            );
        if !gone {
            return;
        }
        let generation = g.id;
        let drained = (g.role == Role::Draining)
            .then_some(g.retired_at)
            .flatten()
            .map(|at| now.saturating_duration_since(at));
        let killed = g.killed;
        self.gens.remove(gi);
        self.notice(Notice::GenerationExited {
            generation,
            drained,
            killed,
        });
        self.out.push(Action::CancelTimer {
            key: TimerKey::Grace(generation),
        });
        self.out.push(Action::ReleaseGeneration { generation });
        self.log(Level::Info, format!("generation {generation} exited"));
        match self.phase {
            Phase::Serving | Phase::Reloading | Phase::Retiring => {
                self.update_phase();
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
            Phase::Booting | Phase::Done => {}
        }
    }

    pub(super) fn run_pending_reload(&mut self, now: Instant) {
        if self.reload_pending && self.can_start_reload() {
            self.reload_pending = false;
            self.log(Level::Info, "running the queued reload".into());
            self.start_generation(now);
        }
    }

    /// `SIGKILL` for every live worker of a generation.
    pub(super) fn kill_generation(&mut self, gi: usize) {
        let generation = self.gens[gi].id;
        self.cancel_ready_timers(generation);
        for slot in 0..self.gens[gi].workers.len() {
            match self.gens[gi].workers[slot].state {
                WorkerState::Running { .. }
                | WorkerState::Removing { .. }
                | WorkerState::Replaced { .. } => {
                    // Only a kill that is part of a stop makes its exit code 7.
                    if matches!(self.phase, Phase::Stopping(_)) {
                        self.killed_any = true;
                    }
                    self.gens[gi].killed = true;
                    self.out.push(Action::KillGroup { generation, slot });
                }
                WorkerState::Restarting => {
                    self.gens[gi].workers[slot].state = WorkerState::Exited;
                    self.out.push(Action::CancelTimer {
                        key: TimerKey::Restart(generation, slot),
                    });
                }
                WorkerState::Pending => self.gens[gi].workers[slot].state = WorkerState::Exited,
                WorkerState::Spawning | WorkerState::Exited => {}
            }
        }
    }

    /// Passes `signal` on to every running worker of the serving generation
    /// (of the first generation while it boots: it is the one that will
    /// serve). Starting and draining generations are left alone: a new one
    /// opens its files as it starts, an old one is about to close them.
    pub(super) fn forward(&mut self, signal: i32) {
        let target = self
            .gens
            .iter()
            .position(|g| g.role == Role::Serving)
            .or_else(|| {
                (self.phase == Phase::Booting)
                    .then_some(0)
                    .filter(|_| !self.gens.is_empty())
            });
        let name = baton_sys::spawn::signal_name(signal);
        let Some(gi) = target else {
            self.log(
                Level::Info,
                format!("{name} not forwarded: no generation runs"),
            );
            return;
        };
        let generation = self.gens[gi].id;
        let mut n = 0;
        for slot in 0..self.gens[gi].workers.len() {
            if let WorkerState::Running { .. } = self.gens[gi].workers[slot].state {
                n += 1;
                self.out.push(Action::Signal {
                    generation,
                    slot,
                    signal,
                });
            }
        }
        self.log(
            Level::Info,
            format!(
                "{name} forwarded to {n} worker{} of generation {generation}",
                plural(n)
            ),
        );
    }
}
