//! Readiness: the fd, notify and exec modes.

use super::spawner::{Job, ProbeSpec};
use super::{Runtime, Source};
use crate::lifecycle::{Event, GenId, Slot};
use baton_sys::spawn::Child;
use baton_sys::spawn::ExitStatus;

impl Runtime {
    pub(super) fn on_ready_fd(&mut self, g: GenId, slot: Slot) {
        let Some(w) = self.workers.get_mut(&(g, slot)) else {
            return;
        };
        let Some((token, fd)) = w.ready.as_ref() else {
            return;
        };
        let mut buf = [0u8; 64];
        let (ready, closed) = match rustix::io::read(fd, &mut buf) {
            Ok(0) => (false, true),
            Ok(n) => (crate::worker::says_ready(&buf[..n]), false),
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => (false, false),
            Err(_) => (false, true),
        };
        let token = *token;
        if (ready || closed)
            && let Some((_, fd)) = w.ready.take()
        {
            self.deregister_fd(&fd, token);
        }
        if ready {
            self.queue.push_back(Event::WorkerReady {
                generation: g,
                slot,
            });
        }
    }

    pub(super) fn on_notify(&mut self, g: GenId) {
        loop {
            let Some((_, sock)) = self.generations.get(&g).and_then(|r| r.notify.as_ref()) else {
                return;
            };
            let msg = match sock.recv() {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!("reading the notify socket of generation {g} failed: {e}");
                    return;
                }
            };
            let Some(pid) = msg.pid else {
                tracing::warn!("ignoring a notify message without sender credentials");
                continue;
            };
            let slot = self.worker_for(g, pid);
            let Some(slot) = slot else {
                // A worker just started may report before the spawner's
                // answer reached the loop: keep its message until then.
                if let Some(worker) = self.starting_worker(pid) {
                    if self.early_notify.len() < MAX_EARLY_NOTIFY {
                        self.early_notify.push((g, worker, msg));
                    }
                    continue;
                }
                tracing::warn!(
                    "ignoring notify message {:?} from pid {pid}: not a worker of generation {g} or one of its children",
                    msg.text
                );
                continue;
            };
            self.apply_notify(g, slot, &msg);
        }
    }

    /// The pid of a worker the spawner forked but the loop does not know
    /// yet that `pid` is, or belongs to (its process group).
    fn starting_worker(&self, pid: u32) -> Option<u32> {
        let inflight = self
            .spawner
            .inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if inflight.contains(&pid) {
            return Some(pid);
        }
        crate::notify::process_group(pid).filter(|pg| inflight.contains(pg))
    }

    /// Replays the messages a worker sent before it was registered.
    pub(super) fn replay_early_notify(&mut self, g: GenId, slot: Slot, pid: u32) {
        let mut early = std::mem::take(&mut self.early_notify);
        early.retain(|(eg, worker, msg)| {
            if *eg == g && *worker == pid {
                self.apply_notify(g, slot, msg);
                false
            } else {
                true
            }
        });
        self.early_notify = early;
    }

    fn apply_notify(&mut self, g: GenId, slot: Slot, msg: &crate::notify::Message) {
        {
            if let Some(status) = msg.get("STATUS") {
                tracing::debug!("worker {slot} of generation {g}: STATUS={status}");
            }
            if msg.get("MAINPID").is_some() {
                tracing::warn!(
                    "worker {slot} of generation {g} sent MAINPID=; baton tracks its own workers and ignores it"
                );
            }
            if msg.is_ready() {
                self.queue.push_back(Event::WorkerReady {
                    generation: g,
                    slot,
                });
            }
        }
    }
}

/// Messages kept for workers the loop does not know yet; more are dropped
/// (a worker says READY=1 once).
const MAX_EARLY_NOTIFY: usize = 256;

impl Runtime {
    /// The worker of generation `g` that `pid` is, or belongs to (same
    /// process group: a wrapper's child reporting for it).
    pub(super) fn worker_for(&self, g: GenId, pid: u32) -> Option<Slot> {
        let mine = |p: u32| {
            self.workers
                .iter()
                .find(|((wg, _), w)| *wg == g && w.pid == p && w.child.is_some())
                .map(|((_, s), _)| *s)
        };
        mine(pid).or_else(|| crate::notify::process_group(pid).and_then(mine))
    }

    pub(super) fn on_probe_exit(&mut self, g: GenId) {
        let Some(rg) = self.generations.get_mut(&g) else {
            return;
        };
        let Some((_, child)) = rg.probe.as_ref() else {
            return;
        };
        let status = match baton_sys::spawn::try_reap(child) {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                tracing::error!("cannot reap the readiness command: {e}");
                return;
            }
        };
        if let Some((token, child)) = rg.probe.take() {
            self.deregister_fd(&child.pidfd, token);
        }
        tracing::debug!("readiness command for generation {g} exited with {status}");
        self.queue.push_back(Event::ProbeDone {
            generation: g,
            success: status == ExitStatus::Code(0),
        });
    }

    pub(super) fn run_probe(&mut self, g: GenId) {
        if self.deferring() {
            self.deferred.push(super::state::Deferred::Probe(g));
            return;
        }
        let Some(spec) = self.generations.get(&g).and_then(|r| r.spec.clone()) else {
            return;
        };
        let Some(cmd) = spec.ready.exec_command() else {
            return;
        };
        let pids: Vec<u32> = self
            .machine
            .worker_pids(g)
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        // Forked by the spawner, like the workers (see spawner.rs: a child
        // dies with the thread that forked it).
        self.spawner.send(Job::Probe(Box::new(ProbeSpec {
            generation: g,
            cmd: cmd.to_owned(),
            env: std::sync::Arc::clone(&spec.env),
            pids,
            chdir: self.generations.get(&g).and_then(|r| r.chdir.clone()),
            nofile_soft_limit: self.child_nofile,
            run_as: spec.run_as.clone(),
            no_new_privs: spec.no_new_privs,
        })));
    }

    /// The readiness command the spawner started (or could not start).
    pub(super) fn on_probe_started(&mut self, g: GenId, result: Result<Child, String>) {
        match result {
            Ok(child) => {
                self.forget_inflight(child.pid);
                if !self.generations.contains_key(&g) {
                    // The generation went meanwhile: so does its probe.
                    let _ = baton_sys::spawn::signal(&child, libc::SIGKILL);
                    let _ = child.signal_group(libc::SIGKILL);
                    super::workers::wait_briefly(&child);
                    return;
                }
                match self.register_fd(&child.pidfd, Source::Probe(g)) {
                    Ok(token) => {
                        if let Some(rg) = self.generations.get_mut(&g) {
                            rg.probe = Some((token, child));
                        }
                    }
                    Err(e) => tracing::error!("cannot watch the readiness command: {e}"),
                }
            }
            Err(e) => {
                tracing::warn!("{e}");
                self.queue.push_back(Event::ProbeDone {
                    generation: g,
                    success: false,
                });
            }
        }
    }
}
