//! `--dispatch`: a worker that does not answer.
//!
//! The routing of connections is the runtime's (`runtime::dispatch`); the
//! lifecycle decides only what becomes of a worker that does not answer in
//! time: it is killed, and its exit is then handled like any other (a
//! worker of the serving generation is restarted, with the backoff). The
//! runtime holds the connection it had sent until the worker is gone, then
//! gives it to another worker, so nothing is lost and nothing is served
//! twice.

use super::{Action, GenId, Level, Lifecycle, Slot, WorkerState};

impl Lifecycle {
    pub(super) fn on_unresponsive(&mut self, generation: GenId, slot: Slot, pid: u32, what: &str) {
        let Some(gi) = self.gen_index(generation) else {
            return;
        };
        // Only the worker the runtime meant: a slot restarted meanwhile
        // has another pid, and is left alone.
        let live = match self.gens[gi].workers.get(slot).map(|w| w.state) {
            Some(WorkerState::Running { pid: p, .. } | WorkerState::Removing { pid: p }) => {
                p == pid
            }
            _ => false,
        };
        if !live {
            return;
        }
        self.log(
            Level::Warn,
            format!(
                "worker {slot} of generation {generation} (pid {pid}) {what}; killing it (what it was sent goes to another worker)"
            ),
        );
        self.out.push(Action::KillGroup { generation, slot });
    }
}
