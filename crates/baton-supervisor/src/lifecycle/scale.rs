//! Scaling: workers per generation (`ctl scale`, `TTIN`/`TTOU`).

use std::time::Instant;

use super::{Action, Level, Lifecycle, Role, TimerKey, Worker, WorkerState, plural};

impl Lifecycle {
    /// Sets the worker count for new generations and adjusts the serving
    /// one; a generation still starting keeps its count and is adjusted
    /// once it serves.
    pub(super) fn scale(&mut self, n: usize, now: Instant) {
        let before = self.policy.workers;
        self.policy.workers = n;
        self.notice(crate::events::Notice::Scaled {
            from: before,
            to: n,
        });
        self.log(
            Level::Info,
            format!(
                "scaling from {before} to {n} worker{} per generation",
                plural(n)
            ),
        );
        if let Some(gi) = self.gens.iter().position(|g| g.role == Role::Serving) {
            // A rolling or restart reload (or its rollback) is replacing
            // the serving generation: the new count applies once it is done.
            if self.handover.is_some() {
                self.log(
                    Level::Info,
                    "the serving generation keeps its workers until the reload in progress is done"
                        .into(),
                );
                return;
            }
            self.apply_scale(gi, now);
        }
    }

    /// Grows or shrinks serving generation `gi` to `policy.workers`.
    pub(super) fn apply_scale(&mut self, gi: usize, now: Instant) {
        let want = self.policy.workers;
        self.gens[gi].policy.workers = want;
        let (stop_signal, grace) = (self.gens[gi].policy.stop_signal, self.gens[gi].policy.grace);
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
                    self.spawn_slot(gi, slot, now);
                    missing -= 1;
                }
            }
            for _ in 0..missing {
                let slot = self.gens[gi].workers.len();
                self.gens[gi].workers.push(Worker::new());
                self.spawn_slot(gi, slot, now);
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
                            signal: stop_signal,
                        });
                        self.set_timer(TimerKey::WorkerGrace(generation, slot), grace);
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
                    WorkerState::Spawning
                    | WorkerState::Removing { .. }
                    | WorkerState::Replaced { .. }
                    | WorkerState::Exited => {}
                    WorkerState::Pending => {
                        w.state = WorkerState::Exited;
                        extra -= 1;
                    }
                }
            }
        }
    }
}
