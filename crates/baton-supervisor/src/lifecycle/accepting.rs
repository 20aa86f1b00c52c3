//! `--ready accepting` (and its combinations): when to look at a
//! generation's workers, and what the readiness messages say about them.
//!
//! The runtime does the looking ([`Action::CheckAccepting`], on a thread of
//! its own; see [`crate::accepting`]) and answers with
//! [`Event::WorkerReady`](super::Event::WorkerReady) for each worker it saw
//! accepting, then [`Event::AcceptLooked`](super::Event::AcceptLooked) with
//! what it saw of the others; only then is the next look asked for, so at
//! most one is in flight per generation. The pause before each look starts
//! at [`ACCEPT_CHECK_FIRST`] and grows with the time spent looking
//! ([`ACCEPT_CHECK_DIVISOR`]), from [`ACCEPT_CHECK_MIN`] up to
//! [`ACCEPT_CHECK_MAX`]; the readiness deadline bounds it all. Looks stop
//! once every worker of the generation is ready, or it is no longer
//! starting or serving.

use std::time::{Duration, Instant};

use super::{
    ACCEPT_CHECK_DIVISOR, ACCEPT_CHECK_FIRST, ACCEPT_CHECK_MAX, ACCEPT_CHECK_MIN, Action, GenId,
    Lifecycle, Role, Slot, WorkerState, plural,
};

/// The pause before the next look, after looking for `looking`.
pub(super) fn next_check(looking: Duration) -> Duration {
    (looking / ACCEPT_CHECK_DIVISOR).clamp(ACCEPT_CHECK_MIN, ACCEPT_CHECK_MAX)
}

impl Lifecycle {
    /// A worker of generation `gi` started: look at it soon, unless the
    /// generation's workers are being looked at already (the next look
    /// includes it).
    pub(super) fn start_accept_checks(&mut self, gi: usize, now: Instant) {
        let g = &mut self.gens[gi];
        if !g.policy.ready.accepting() || g.accept_since.is_some() {
            return;
        }
        g.accept_since = Some(now);
        let generation = g.id;
        self.out.push(Action::CheckAccepting {
            generation,
            after: ACCEPT_CHECK_FIRST,
        });
    }

    /// After baton re-executed itself: a look that was in flight was lost
    /// with the old image's thread, so each generation still being looked
    /// at is looked at again (soon), or it would wait out its deadline.
    pub fn resume_accept_checks(&mut self) -> Vec<Action> {
        for g in &self.gens {
            if g.accept_since.is_some() && g.policy.ready.accepting() {
                self.out.push(Action::CheckAccepting {
                    generation: g.id,
                    after: ACCEPT_CHECK_FIRST,
                });
            }
        }
        std::mem::take(&mut self.out)
    }

    /// A look is done: keep what it saw, and ask for the next one while a
    /// worker is still not ready.
    pub(super) fn on_accept_looked(
        &mut self,
        generation: GenId,
        seen: &[(Slot, String)],
        now: Instant,
    ) {
        let Some(gi) = self.gen_index(generation) else {
            return;
        };
        let g = &mut self.gens[gi];
        for (slot, text) in seen {
            if let Some(w) = g.workers.get_mut(*slot)
                && matches!(w.state, WorkerState::Running { ready: false, .. })
            {
                w.accept_seen = Some(text.clone());
            }
        }
        let waiting = g
            .workers
            .iter()
            .any(|w| matches!(w.state, WorkerState::Running { ready: false, .. }));
        let looking = matches!(g.role, Role::Starting | Role::Serving) && waiting;
        let Some(since) = g.accept_since.filter(|_| looking) else {
            g.accept_since = None;
            return;
        };
        self.out.push(Action::CheckAccepting {
            generation,
            after: next_check(now.saturating_duration_since(since)),
        });
    }

    /// "still waiting for workers 0, 1 to accept connections: worker 0 (pid
    /// N) has no epoll set watching ...; worker 1 ...".
    pub(super) fn describe_not_accepting(&self, gi: usize) -> String {
        let g = &self.gens[gi];
        let missing = self.not_ready(g.id);
        let names: Vec<String> = missing.iter().map(ToString::to_string).collect();
        let what = if g.policy.ready.uses_notify() {
            "to send READY=1 on NOTIFY_SOCKET or accept connections"
        } else {
            "to accept connections"
        };
        let details: Vec<String> = missing
            .iter()
            .map(|&slot| {
                let w = &g.workers[slot];
                match (&w.state, &w.accept_seen) {
                    (WorkerState::Running { .. }, Some(seen)) => seen.clone(),
                    (WorkerState::Running { pid, .. }, None) => {
                        format!("worker {slot} (pid {pid}) has not been looked at yet")
                    }
                    _ => format!("worker {slot} is not running"),
                }
            })
            .collect();
        format!(
            "still waiting for worker{} {} {what}: {}",
            plural(missing.len()),
            names.join(", "),
            details.join("; ")
        )
    }
}
