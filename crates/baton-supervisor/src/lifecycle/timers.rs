//! Timers: readiness deadlines and hints, delays, probe retries, grace
//! periods and restarts.

use std::time::Instant;

use super::{
    Action, Level, Lifecycle, READY_HINT_AFTER, ReadyMode, Role, TimerKey, Worker, WorkerState,
    exit, plural,
};

impl Lifecycle {
    pub(super) fn on_timer(&mut self, key: TimerKey, now: Instant) {
        match key {
            TimerKey::ReadyDeadline(generation) => {
                let Some(gi) = self.gen_index(generation) else {
                    return;
                };
                if self.gens[gi].role != Role::Starting {
                    return;
                }
                let missing = self.describe_missing(gi);
                let reason = format!(
                    "was not ready within {} ({missing}{})",
                    humantime::format_duration(self.gens[gi].policy.ready_timeout),
                    self.ready_hint(gi)
                );
                let tail = self.not_ready(generation).first().copied();
                self.fail_generation(gi, &reason, tail, exit::FIRST_NOT_READY);
                self.after_exit(gi, now);
            }
            TimerKey::ReadyHint(generation) => {
                let Some(gi) = self.gen_index(generation) else {
                    return;
                };
                if self.gens[gi].role != Role::Starting {
                    return;
                }
                let missing = self.describe_missing(gi);
                let hint = self.ready_hint(gi);
                self.log(
                    Level::Warn,
                    format!(
                        "generation {generation} not ready after {} s: {missing}{hint}",
                        READY_HINT_AFTER.as_secs()
                    ),
                );
            }
            // Quiet boot must not starve a reload on a machine that is busy
            // with more than the serving generation (SCHED_IDLE yields to
            // every process): past this point it boots at the normal
            // priority.
            TimerKey::QuietOver(generation) => {
                let Some(gi) = self.gen_index(generation) else {
                    return;
                };
                if self.gens[gi].role == Role::Starting
                    && self.gens[gi].workers.iter().any(|w| w.quiet)
                {
                    let limit = super::quiet_limit(&self.gens[gi].policy);
                    self.log(
                        Level::Info,
                        format!(
                            "generation {generation}: quiet boot over after {}; its workers boot at the normal CPU priority",
                            humantime::format_duration(limit)
                        ),
                    );
                    self.end_quiet_boot(gi, None);
                }
            }
            TimerKey::ReadyDelay(generation) => {
                let Some(gi) = self.gen_index(generation) else {
                    return;
                };
                if self.gens[gi].role == Role::Starting {
                    self.gens[gi].gen_ready = true;
                    self.maybe_ready(gi, now);
                }
            }
            TimerKey::ProbeRetry(generation) => {
                let Some(gi) = self.gen_index(generation) else {
                    return;
                };
                if self.gens[gi].role == Role::Starting {
                    self.out.push(Action::RunProbe { generation });
                }
            }
            TimerKey::Grace(generation) => {
                let Some(gi) = self.gen_index(generation) else {
                    return;
                };
                if self.gens[gi].alive() {
                    let n = self.gens[gi].workers.iter().filter(|w| w.alive()).count();
                    self.log(
                        Level::Warn,
                        format!(
                            "generation {generation}: {n} worker{} still running at the end of the grace period; sending SIGKILL",
                            plural(n)
                        ),
                    );
                    self.kill_generation(gi);
                }
            }
            TimerKey::WorkerGrace(generation, slot) => {
                let Some(gi) = self.gen_index(generation) else {
                    return;
                };
                if let Some(Worker {
                    state: WorkerState::Removing { .. } | WorkerState::Replaced { .. },
                    ..
                }) = self.gens[gi].workers.get(slot)
                {
                    self.out.push(Action::KillGroup { generation, slot });
                }
            }
            TimerKey::Restart(generation, slot) => {
                let Some(gi) = self.gen_index(generation) else {
                    return;
                };
                let g = &mut self.gens[gi];
                if g.role != Role::Serving {
                    return;
                }
                let Some(w) = g.workers.get_mut(slot) else {
                    return;
                };
                if w.state == WorkerState::Restarting {
                    // While a rollback makes the generation whole, a restart
                    // waits for its turn like the others (the process
                    // budget, or the failed generation being gone).
                    if self.handover.as_ref().is_some_and(|h| h.old == generation) {
                        w.state = WorkerState::Pending;
                    } else {
                        self.spawn_slot(gi, slot, now);
                    }
                }
            }
        }
    }

    /// What to do when an app cannot speak the configured readiness protocol.
    pub(super) fn ready_hint(&self, gi: usize) -> &'static str {
        match self.gens[gi].policy.ready {
            ReadyMode::Notify => {
                "; if the app does not speak sd_notify, use --ready fd, --ready delay:DURATION or --ready exec:CMD"
            }
            ReadyMode::Fd => {
                "; if the app cannot write to BATON_READY_FD, use --ready delay:DURATION or --ready exec:CMD"
            }
            ReadyMode::Accepting | ReadyMode::AcceptingAndExec(_) => {
                "; --ready accepting sees a server wait for connections on baton's listeners (in epoll, accept(2), poll or select) or hold one it accepted there; one that waits in io_uring, or listens on a socket of its own, needs --ready notify, fd or exec:CMD"
            }
            ReadyMode::NotifyOrAccepting => {
                "; --ready accepting sees a server wait for connections on baton's listeners (in epoll, accept(2), poll or select) or hold one it accepted there; one that does not (io_uring, a socket of its own) and sends no READY=1 needs --ready fd or exec:CMD"
            }
            ReadyMode::Dispatch => {
                "; under --dispatch a worker asks for connections with `ready` on the channel in BATON_DISPATCH_FD (the protocol is in docs/dispatch.md; baton_app::dispatch speaks it for tokio servers); an app that does not speak it needs baton without --dispatch"
            }
            ReadyMode::Delay(_) | ReadyMode::Exec(_) => "",
        }
    }

    pub(super) fn describe_missing(&self, gi: usize) -> String {
        let g = &self.gens[gi];
        match &g.policy.ready {
            ReadyMode::Notify | ReadyMode::Fd | ReadyMode::Dispatch => {
                let missing: Vec<String> = self
                    .not_ready(g.id)
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                let channel = if g.policy.ready == ReadyMode::Notify {
                    "READY=1 on NOTIFY_SOCKET"
                } else if g.policy.ready == ReadyMode::Dispatch {
                    "`ready` on the dispatch channel (BATON_DISPATCH_FD)"
                } else {
                    "a newline on BATON_READY_FD"
                };
                format!(
                    "still waiting for {channel} from worker{} {}",
                    plural(missing.len()),
                    missing.join(", ")
                )
            }
            ReadyMode::Delay(d) => {
                format!("waiting out the {} delay", humantime::format_duration(*d))
            }
            ReadyMode::Exec(cmd) => format!("the readiness command {cmd:?} has not succeeded yet"),
            ReadyMode::Accepting | ReadyMode::NotifyOrAccepting => self.describe_not_accepting(gi),
            ReadyMode::AcceptingAndExec(cmd) => {
                let mut parts = Vec::new();
                if !self.not_ready(g.id).is_empty() {
                    parts.push(self.describe_not_accepting(gi));
                }
                if !g.gen_ready {
                    parts.push(format!(
                        "the readiness command {cmd:?} has not succeeded yet"
                    ));
                }
                parts.join("; and ")
            }
        }
    }
}
