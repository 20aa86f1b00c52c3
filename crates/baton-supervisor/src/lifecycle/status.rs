//! What `baton ctl status` shows of the lifecycle.

use std::time::Instant;

use super::{GenerationInfo, Lifecycle, ReloadOutcome, Role, WorkerInfo, WorkerState};

impl Lifecycle {
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
                    Role::Killed => "killed",
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
                            WorkerState::Running { pid, .. }
                            | WorkerState::Removing { pid }
                            | WorkerState::Replaced { pid } => Some(pid),
                            WorkerState::Spawning
                            | WorkerState::Restarting
                            | WorkerState::Pending
                            | WorkerState::Exited => None,
                        },
                        state: match w.state {
                            WorkerState::Spawning => "spawning",
                            WorkerState::Running { ready: true, .. } => "ready",
                            WorkerState::Running { ready: false, .. } => "running",
                            WorkerState::Restarting => "restarting",
                            WorkerState::Removing { .. } => "removing",
                            WorkerState::Replaced { .. } => "replaced",
                            WorkerState::Pending => "pending",
                            WorkerState::Exited => "exited",
                        },
                        restarts: w.restarts,
                        lifetime_restarts: self.slot_restarts.get(slot).copied().unwrap_or(0),
                        started: match w.state {
                            WorkerState::Running { .. }
                            | WorkerState::Removing { .. }
                            | WorkerState::Replaced { .. } => w.started,
                            WorkerState::Spawning
                            | WorkerState::Restarting
                            | WorkerState::Pending
                            | WorkerState::Exited => None,
                        },
                    })
                    .collect(),
            })
            .collect()
    }

    /// The verdict of the last reload, if any ran.
    pub fn last_reload(&self) -> Option<&ReloadOutcome> {
        self.last_reload.as_ref()
    }

    /// When the last reload got its verdict (`None` for one from before
    /// an upgrade from a baton that did not record it).
    pub fn last_reload_at(&self) -> Option<Instant> {
        self.last_reload_at
    }
}
