//! Reload strategies: how a reload replaces the serving generation, and
//! how many replaced generations may drain at once.
//!
//! * `overlap` (the default): the whole new generation starts beside the
//!   old one, which drains once every new worker is ready.
//! * `rolling`: a few workers at a time. A new worker starts while the old
//!   and the new generation together have fewer live processes than the new
//!   generation's workers plus `max_surge`; each new worker that reports
//!   ready lets one old worker drain, never more (invariants 3 and 8). The
//!   reload is done when every new worker is ready: the old generation's
//!   last workers drain then.
//! * `restart`: for apps that cannot run twice (a lock file, a singleton
//!   job). The old generation is told to stop (each worker with its grace)
//!   and the new one starts once no process of any other generation is left.
//!   baton keeps the listeners open meanwhile, so connections wait in the
//!   accept queue instead of being refused; the log says how long no worker
//!   served.
//!
//! A failure rolls back as in `overlap` (the new generation is stopped,
//! invariant 4); in `rolling` and `restart` the old generation's workers
//! that were already stopped are also started again, from its own pinned
//! release, within the same rules (the process budget; no process of the
//! failed generation left), and the verdict says how many.
//!
//! Progress is made by [`Lifecycle::advance`], after every event: it looks
//! at what the handover allows now (a worker to start, one to drain) and
//! does it, so no handler needs to know what a strategy waits for.
//!
//! `--max-draining N`: a reload never waits for a generation that drains
//! (invariant 2); once more than N drain, the oldest is killed.

use std::time::Instant;

use super::{
    Action, GenId, Level, Lifecycle, Phase, READY_HINT_AFTER, ReadyMode, Role, TimerKey,
    WorkerState, plural,
};

/// How a reload replaces the serving generation (`--strategy`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Strategy {
    /// The whole new generation beside the old one.
    #[default]
    Overlap,
    /// A few workers at a time, within `workers + max_surge` processes.
    Rolling,
    /// Stop the old generation, then start the new one.
    Restart,
}

impl Strategy {
    /// The name `--strategy` takes.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Overlap => "overlap",
            Strategy::Rolling => "rolling",
            Strategy::Restart => "restart",
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A rolling or restart reload in progress, or its rollback.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct Handover {
    pub(super) strategy: Strategy,
    /// The generation being replaced (the serving one).
    pub(super) old: GenId,
    /// The generation replacing it.
    pub(super) new: GenId,
    /// `rolling`: the most live processes `old` and `new` may have together.
    pub(super) budget: usize,
    /// `new` failed: `old` is being made whole again.
    pub(super) rolled_back: bool,
}

impl Lifecycle {
    /// The strategy of a reload to a generation with these settings.
    /// `rolling` needs to know when each worker is ready; the settings
    /// refuse it with a generation-wide readiness check (`delay:`,
    /// `exec:`), and should it come anyway, the reload overlaps.
    pub(super) fn effective_strategy(&self) -> Strategy {
        match self.policy.strategy {
            Strategy::Rolling
                if !self.policy.ready.per_worker() || self.policy.ready.gen_wide() =>
            {
                Strategy::Overlap
            }
            s => s,
        }
    }

    /// A rolling or restart reload begins: generation `ni` was just pushed
    /// with every slot pending, `oi` serves.
    pub(super) fn begin_handover(&mut self, oi: usize, ni: usize, strategy: Strategy) {
        let (old, new) = (self.gens[oi].id, self.gens[ni].id);
        // workers + surge; when the reload also scales down (the old
        // generation has more live workers than the new one will), those
        // count instead, so the reload can start at all.
        let budget =
            self.gens[ni].policy.workers.max(self.gens[oi].live()) + self.gens[ni].policy.max_surge;
        self.handover = Some(Handover {
            strategy,
            old,
            new,
            budget,
            rolled_back: false,
        });
        self.gens[oi].replacement = Some(new);
        self.gens[oi].rolled_out = 0;
        match strategy {
            Strategy::Rolling => {
                let surge = self.gens[ni].policy.max_surge;
                self.log(
                    Level::Info,
                    format!(
                        "rolling reload: generation {new} replaces generation {old} {surge} worker{} at a time (at most {budget} processes)",
                        plural(surge)
                    ),
                );
            }
            Strategy::Restart => {
                self.log(
                    Level::Info,
                    format!(
                        "restart: generation {old} stops, then generation {new} starts; connections wait in the listen queue meanwhile"
                    ),
                );
                self.stop_for_restart(oi);
            }
            Strategy::Overlap => {}
        }
    }

    /// `restart`: every worker of the serving generation is told to stop,
    /// each with the generation's grace.
    fn stop_for_restart(&mut self, oi: usize) {
        let generation = self.gens[oi].id;
        let (signal, grace) = (self.gens[oi].policy.stop_signal, self.gens[oi].policy.grace);
        for slot in 0..self.gens[oi].workers.len() {
            let w = &mut self.gens[oi].workers[slot];
            match w.state {
                WorkerState::Running { pid, .. } => {
                    w.state = WorkerState::Replaced { pid };
                    self.out.push(Action::Signal {
                        generation,
                        slot,
                        signal,
                    });
                    self.set_timer(TimerKey::WorkerGrace(generation, slot), grace);
                }
                WorkerState::Restarting => {
                    w.state = WorkerState::Exited;
                    self.out.push(Action::CancelTimer {
                        key: TimerKey::Restart(generation, slot),
                    });
                }
                WorkerState::Pending => w.state = WorkerState::Exited,
                // A restart of a crashed worker in flight: its spawn answer
                // finds the generation replaced and stops it (on_spawned).
                WorkerState::Spawning
                | WorkerState::Removing { .. }
                | WorkerState::Replaced { .. }
                | WorkerState::Exited => {}
            }
        }
    }

    /// Whether a worker that starts in generation `gi` now starts quietly:
    /// quiet boot is on for it, it belongs to a starting generation, and
    /// another generation serves with live processes (that is whom quiet
    /// boot protects: the first generation, or a restart's new one once the
    /// old one is gone, has nobody to yield to and boots at full speed).
    pub(super) fn quiet_for(&self, gi: usize) -> bool {
        let g = &self.gens[gi];
        g.policy.quiet_boot
            && g.role == Role::Starting
            && self
                .gens
                .iter()
                .any(|o| o.id != g.id && o.role == Role::Serving && o.alive())
    }

    /// Asks for worker `slot` of generation `gi` (pending, or gone) to be
    /// started now.
    pub(super) fn spawn_slot(&mut self, gi: usize, slot: usize, now: Instant) {
        let quiet = self.quiet_for(gi);
        let generation = self.gens[gi].id;
        let w = &mut self.gens[gi].workers[slot];
        w.state = WorkerState::Spawning;
        w.started = Some(now);
        w.quiet = quiet;
        self.out.push(Action::Spawn {
            generation,
            slot,
            quiet,
        });
    }

    /// Makes whatever progress the handover in progress allows now: starts
    /// pending workers, drains old ones, and ends the handover once there
    /// is nothing left for it to do.
    pub(super) fn advance(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Stopping(_) | Phase::Done) {
            self.handover = None;
            return;
        }
        let Some(h) = self.handover.clone() else {
            return;
        };
        let oi = self.gen_index(h.old);
        let ni = self.gen_index(h.new);
        if h.rolled_back {
            self.advance_rollback(&h, oi, ni, now);
            return;
        }
        let (Some(oi), Some(ni)) = (oi, ni) else {
            self.handover = None;
            return;
        };
        match h.strategy {
            Strategy::Rolling => {
                self.rolling_drain(oi, ni);
                let live = self.gens[oi].live() + self.gens[ni].live();
                let started = self.start_pending(ni, h.budget.saturating_sub(live), now);
                if started > 0 {
                    self.set_timer(TimerKey::ReadyHint(h.new), READY_HINT_AFTER);
                    if self.gens[ni].policy.quiet_boot {
                        let limit = super::quiet_limit(&self.gens[ni].policy);
                        self.set_timer(TimerKey::QuietOver(h.new), limit);
                    }
                }
                self.rearm_ready_deadline(ni, now);
            }
            Strategy::Restart => {
                if self.others_alive(ni) {
                    return;
                }
                if self.start_pending(ni, usize::MAX, now) > 0 {
                    // The deadline counts from the new workers' start, not
                    // from the old generation's stop signal.
                    let timeout = self.gens[ni].policy.ready_timeout;
                    self.set_timer(TimerKey::ReadyDeadline(h.new), timeout);
                    self.set_timer(TimerKey::ReadyHint(h.new), READY_HINT_AFTER);
                    if self.gens[ni].policy.quiet_boot {
                        let limit = super::quiet_limit(&self.gens[ni].policy);
                        self.set_timer(TimerKey::QuietOver(h.new), limit);
                    }
                    if let ReadyMode::Delay(d) = self.gens[ni].policy.ready {
                        self.set_timer(TimerKey::ReadyDelay(h.new), d);
                    }
                }
            }
            Strategy::Overlap => self.handover = None,
        }
    }

    /// A rollback: the old generation's stopped workers start again, as
    /// the strategy allows (`rolling`: within the budget, counting the
    /// failed generation's processes; `restart`: once they are gone).
    fn advance_rollback(
        &mut self,
        h: &Handover,
        oi: Option<usize>,
        ni: Option<usize>,
        now: Instant,
    ) {
        let Some(oi) = oi else {
            self.handover = None;
            return;
        };
        let failed_live = ni.map_or(0, |ni| self.gens[ni].live());
        let room = match h.strategy {
            Strategy::Rolling => h.budget.saturating_sub(self.gens[oi].live() + failed_live),
            Strategy::Restart | Strategy::Overlap => {
                if self.others_alive(oi) {
                    0
                } else {
                    usize::MAX
                }
            }
        };
        self.start_pending(oi, room, now);
        let whole = !self.gens[oi]
            .workers
            .iter()
            .any(|w| matches!(w.state, WorkerState::Pending | WorkerState::Replaced { .. }));
        if whole {
            self.handover = None;
            self.run_pending_reload(now);
        }
    }

    /// Starts up to `room` pending workers of generation `gi`; returns how
    /// many.
    fn start_pending(&mut self, gi: usize, room: usize, now: Instant) -> usize {
        let mut started = 0;
        while started < room {
            let Some(slot) = self.gens[gi]
                .workers
                .iter()
                .position(|w| w.state == WorkerState::Pending)
            else {
                break;
            };
            self.spawn_slot(gi, slot, now);
            started += 1;
        }
        started
    }

    /// Whether a generation other than `gi` still has a live process.
    fn others_alive(&self, gi: usize) -> bool {
        let id = self.gens[gi].id;
        self.gens.iter().any(|g| g.id != id && g.alive())
    }

    /// `rolling`: one old worker drains for each new worker that is ready.
    fn rolling_drain(&mut self, oi: usize, ni: usize) {
        let ready = self.gens[ni]
            .workers
            .iter()
            .filter(|w| matches!(w.state, WorkerState::Running { ready: true, .. }))
            .count();
        let generation = self.gens[oi].id;
        let (signal, grace) = (self.gens[oi].policy.stop_signal, self.gens[oi].policy.grace);
        while self.gens[oi].rolled_out < ready {
            // The highest slot first: a running worker, or one waiting to be
            // restarted (nothing to stop, and no reason to start it now).
            let pick = (0..self.gens[oi].workers.len()).rev().find(|&s| {
                matches!(
                    self.gens[oi].workers[s].state,
                    WorkerState::Running { .. } | WorkerState::Restarting
                )
            });
            let Some(slot) = pick else {
                return;
            };
            let w = &mut self.gens[oi].workers[slot];
            match w.state {
                WorkerState::Running { pid, .. } => {
                    w.state = WorkerState::Replaced { pid };
                    self.out.push(Action::Signal {
                        generation,
                        slot,
                        signal,
                    });
                    self.set_timer(TimerKey::WorkerGrace(generation, slot), grace);
                    self.log(
                        Level::Info,
                        format!("worker {slot} of generation {generation} (pid {pid}) draining: replaced"),
                    );
                }
                _ => {
                    w.state = WorkerState::Exited;
                    self.out.push(Action::CancelTimer {
                        key: TimerKey::Restart(generation, slot),
                    });
                }
            }
            self.gens[oi].rolled_out += 1;
        }
    }

    /// `rolling`: the readiness deadline counts from the start of the
    /// oldest new worker that is not ready yet (each worker gets the whole
    /// `--ready-timeout`, however long the reload takes).
    fn rearm_ready_deadline(&mut self, ni: usize, now: Instant) {
        let g = &self.gens[ni];
        let oldest = g
            .workers
            .iter()
            .filter(|w| {
                matches!(
                    w.state,
                    WorkerState::Spawning | WorkerState::Running { ready: false, .. }
                )
            })
            .filter_map(|w| w.started)
            .min();
        let key = TimerKey::ReadyDeadline(g.id);
        match oldest {
            Some(t) => {
                let after = g
                    .policy
                    .ready_timeout
                    .saturating_sub(now.saturating_duration_since(t));
                self.set_timer(key, after);
            }
            None => self.out.push(Action::CancelTimer { key }),
        }
    }

    /// A rolling or restart reload failed: the old generation is to be made
    /// whole again (its stopped workers start again from its release); the
    /// note for the verdict, if anything is restarted.
    pub(super) fn roll_back_handover(&mut self, ni: usize) -> Option<String> {
        let h = self.handover.as_mut()?;
        if h.new != self.gens[ni].id || h.rolled_back {
            return None;
        }
        h.rolled_back = true;
        let strategy = h.strategy;
        let old = h.old;
        let oi = self.gen_index(old)?;
        let g = &mut self.gens[oi];
        g.replacement = None;
        g.rolled_out = 0;
        let want = g.policy.workers;
        let mut again = 0;
        for (slot, w) in g.workers.iter_mut().enumerate() {
            match w.state {
                WorkerState::Exited if slot < want => {
                    w.state = WorkerState::Pending;
                    again += 1;
                }
                // Starts again once it has exited (on_worker_exited).
                WorkerState::Replaced { .. } => again += 1,
                _ => {}
            }
        }
        if again == 0 {
            return None;
        }
        let how = match strategy {
            Strategy::Restart => "stopped",
            Strategy::Rolling | Strategy::Overlap => "replaced",
        };
        Some(format!(
            "; the {again} worker{} of generation {old} it had {how} start{} again from generation {old}'s own release",
            plural(again),
            if again == 1 { "s" } else { "" }
        ))
    }

    /// Past `--max-draining` draining generations, the oldest are killed.
    pub(super) fn enforce_max_draining(&mut self) {
        let max = self.policy.max_draining.max(1);
        loop {
            let mut draining: Vec<usize> = (0..self.gens.len())
                .filter(|&gi| self.gens[gi].role == Role::Draining)
                .collect();
            if draining.len() <= max {
                return;
            }
            draining.sort_by_key(|&gi| self.gens[gi].id);
            let gi = draining[0];
            let generation = self.gens[gi].id;
            let left = self.gens[gi].live();
            self.gens[gi].role = Role::Killed;
            self.log(
                Level::Warn,
                format!(
                    "generation {generation} killed while draining ({left} worker{} left): {} generations were draining and --max-draining is {max}",
                    plural(left),
                    draining.len()
                ),
            );
            self.kill_generation(gi);
        }
    }

    /// Whether a reload may start now (rather than be queued).
    pub(super) fn can_start_reload(&self) -> bool {
        matches!(self.phase, Phase::Serving | Phase::Retiring)
            && self.serving().is_some()
            && self.handover.is_none()
            && !self
                .gens
                .iter()
                .any(|g| matches!(g.role, Role::Starting | Role::Failed))
    }

    /// Why a reload asked for while retiring waits.
    pub(super) fn why_reload_waits(&self) -> &'static str {
        if self.handover.is_some() {
            "the previous generation is being started again after a failed reload"
        } else {
            "the failed generation is still exiting"
        }
    }

    /// The phase that the generations make, once nothing is booting or
    /// stopping.
    pub(super) fn update_phase(&mut self) {
        if !matches!(
            self.phase,
            Phase::Serving | Phase::Reloading | Phase::Retiring
        ) {
            return;
        }
        let any = |r: Role| self.gens.iter().any(|g| g.role == r);
        self.phase = if any(Role::Starting) {
            Phase::Reloading
        } else if any(Role::Draining) || any(Role::Failed) || any(Role::Killed) {
            Phase::Retiring
        } else {
            Phase::Serving
        };
    }
}
