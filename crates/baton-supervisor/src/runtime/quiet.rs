//! Quiet boot, the runtime's side: whether a worker can be started at
//! `SCHED_IDLE`, and giving a ready worker's tree its normal priority back
//! (see [`crate::quiet`] for how, and why it is done that way).

use crate::lifecycle::{GenId, Slot};
use crate::quiet::{self, Mechanism};

use super::Runtime;

impl Runtime {
    /// Whether a worker the lifecycle wants quiet is started at
    /// `SCHED_IDLE`: only where baton can take it back (the first time it
    /// cannot, it says why, once).
    pub(super) fn quiet_start() -> bool {
        match quiet::mechanism() {
            Mechanism::SchedIdle => true,
            Mechanism::Unavailable => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    tracing::warn!(
                        "quiet boot is off: baton cannot take a worker out of SCHED_IDLE again (it needs CAP_SYS_NICE, or a soft RLIMIT_NICE of 20: `ulimit -e 20`, LimitNICE=20 in a systemd unit); workers start at their normal priority. Turn this warning off with --quiet-boot off"
                    );
                });
                false
            }
        }
    }

    /// Gives these workers of generation `g`, each with its whole process
    /// tree, their normal CPU priority back.
    pub(super) fn normal_priority(&mut self, g: GenId, slots: &[Slot]) {
        if quiet::mechanism() != Mechanism::SchedIdle {
            return;
        }
        for &slot in slots {
            let Some(w) = self.workers.get(&(g, slot)) else {
                continue;
            };
            // A reaped worker's pid may already be someone else's.
            if w.child.is_none() {
                continue;
            }
            let raised = quiet::raise_tree(w.pid);
            if raised.errors.is_empty() {
                tracing::debug!(
                    "worker {slot} of generation {g} (pid {}): normal CPU priority for {} thread{} in {} process{}",
                    w.pid,
                    raised.threads,
                    if raised.threads == 1 { "" } else { "s" },
                    raised.processes,
                    if raised.processes == 1 { "" } else { "es" },
                );
            } else {
                tracing::warn!(
                    "worker {slot} of generation {g} (pid {}) keeps the lowest CPU priority for some threads: {}",
                    w.pid,
                    raised.errors.join("; ")
                );
            }
        }
    }
}
