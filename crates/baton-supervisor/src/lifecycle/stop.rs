//! Stopping: graceful, immediate, and the escalation between them.

use std::time::Instant;

use super::{Action, Level, Lifecycle, Phase, ReloadOutcome, Role, Sd, StopKind, exit};

impl Lifecycle {
    pub(super) fn stop(&mut self, kind: StopKind, now: Instant) {
        if !matches!(self.phase, Phase::Stopping(_)) {
            self.out.push(Action::Notify(Sd::Stopping));
        }
        self.phase = Phase::Stopping(kind);
        self.reload_pending = false;
        self.notice(crate::events::Notice::Stopping {
            kind: match kind {
                StopKind::Graceful => "graceful",
                StopKind::Immediate => "immediate",
            }
            .into(),
        });
        // A rolling or restart reload (or its rollback) ends here: nothing
        // pending starts any more.
        self.handover = None;
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
                        Role::Draining | Role::Failed | Role::Stopping | Role::Killed => {
                            self.gens[gi].role = Role::Stopping;
                        }
                        Role::Starting | Role::Serving => {
                            let grace = self.gens[gi].policy.grace;
                            self.retire(gi, Role::Stopping, grace);
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
}
