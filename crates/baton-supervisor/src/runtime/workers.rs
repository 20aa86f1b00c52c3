//! Workers: preparing a generation, spawning, output, exits, release.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use baton_sys::spawn::Child;
use mio::Token;
use mio::unix::SourceFd;

use super::reconfig::GenSpec;
use super::spawner::{Done, Job};
use super::{Runtime, Source};
use crate::guard::Guard;
use crate::lifecycle::{Event, GenId, Slot};
use crate::notify::NotifySocket;
use crate::output::{Pipe, Stream, Tail};
use crate::worker::{SpawnFailure, Started, WorkerSpec};

#[derive(Debug)]
pub(super) struct RtWorker {
    pub(super) pid: u32,
    /// The pidfd and its token; `None` once reaped.
    pub(super) child: Option<(Token, Child)>,
    pub(super) pipes: Vec<(Token, Pipe)>,
    pub(super) ready: Option<(Token, OwnedFd)>,
    pub(super) tail: Tail,
}

#[derive(Debug, Default)]
pub(super) struct RtGeneration {
    pub(super) notify: Option<(Token, NotifySocket)>,
    pub(super) chdir: Option<PathBuf>,
    /// The program its workers run, pinned when it started.
    pub(super) program: Option<PathBuf>,
    /// Why its workers cannot be started (a `--chdir` or program that does
    /// not resolve).
    pub(super) error: Option<String>,
    pub(super) probe: Option<(Token, Child)>,
    /// What it runs: command, environment, listeners, fixed at its start.
    pub(super) spec: Option<std::sync::Arc<GenSpec>>,
}

impl RtWorker {
    /// A worker the previous image ran (after an upgrade); registered by
    /// the caller.
    pub(super) fn restored(
        pid: u32,
        child: Option<Child>,
        pipes: Vec<Pipe>,
        ready: Option<OwnedFd>,
        tail: Tail,
    ) -> Self {
        let none = Token(usize::MAX);
        Self {
            pid,
            child: child.map(|c| (none, c)),
            pipes: pipes.into_iter().map(|p| (none, p)).collect(),
            ready: ready.map(|fd| (none, fd)),
            tail,
        }
    }
}

impl RtGeneration {
    /// A generation the previous image ran; registered by the caller.
    pub(super) fn restored(
        notify: Option<NotifySocket>,
        chdir: Option<PathBuf>,
        program: Option<PathBuf>,
        error: Option<String>,
        probe: Option<Child>,
        spec: Option<std::sync::Arc<GenSpec>>,
    ) -> Self {
        let none = Token(usize::MAX);
        Self {
            notify: notify.map(|s| (none, s)),
            chdir,
            program,
            error,
            probe: probe.map(|c| (none, c)),
            spec,
        }
    }
}

impl Runtime {
    /// Reads whatever a worker printed; with `only`, just that stream.
    pub(super) fn pump_output(&mut self, g: GenId, slot: Slot, only: Option<Stream>) {
        let Some(w) = self.workers.get_mut(&(g, slot)) else {
            return;
        };
        let mut closed = Vec::new();
        for (i, (token, pipe)) in w.pipes.iter_mut().enumerate() {
            if only.is_some_and(|s| s != pipe.stream) {
                continue;
            }
            if !pipe.pump(&mut w.tail, &mut self.sinks) {
                closed.push((i, *token));
            }
        }
        for (i, token) in closed.into_iter().rev() {
            let (_, pipe) = w.pipes.remove(i);
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&pipe.fd.as_raw_fd()));
            self.tokens.remove(&token);
        }
    }

    pub(super) fn on_exit_readable(&mut self, g: GenId, slot: Slot) {
        // Take the last words first, so a failure report includes them.
        self.pump_output(g, slot, None);
        let Some(w) = self.workers.get_mut(&(g, slot)) else {
            return;
        };
        let Some((_, child)) = w.child.as_ref() else {
            return;
        };
        // Peek, do not reap: the zombie keeps the worker's pid, and so its
        // process group id, reserved until ReapGroup has killed what is
        // left of the group (see Child::signal_group).
        let status = match child.exit_status() {
            Ok(Some(status)) => status,
            Ok(None) => return,
            Err(e) => {
                tracing::error!("cannot read the exit of worker {slot} of generation {g}: {e}");
                return;
            }
        };
        let token = w.child.as_ref().map(|(t, _)| *t);
        let ready = w.ready.take();
        if let Some((_, child)) = w.child.as_ref() {
            // Level-triggered: a zombie's pidfd stays readable.
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&child.pidfd.as_raw_fd()));
        }
        if let Some(token) = token {
            self.tokens.remove(&token);
        }
        if let Some((token, fd)) = ready {
            self.deregister_fd(&fd, token);
        }
        self.queue.push_back(Event::WorkerExited {
            generation: g,
            slot,
            status,
        });
        // Its last words first (a `taken` makes the connection its own),
        // then what it had not taken goes to another worker.
        self.on_channel(g, slot);
        self.dispatch_worker_gone(g, slot);
    }

    pub(super) fn prepare(&mut self, g: GenId) {
        let mut rg = RtGeneration {
            spec: Some(std::sync::Arc::new(self.gen_spec())),
            ..RtGeneration::default()
        };
        if let Some(dir) = &self.settings.chdir {
            // Resolved once per generation, so every worker of it runs from
            // the same release even if a `current` symlink moves meanwhile.
            match std::fs::canonicalize(dir) {
                Ok(p) => rg.chdir = Some(p),
                Err(e) => {
                    rg.error = Some(format!("cannot resolve --chdir {}: {e}", dir.display()));
                }
            }
        }
        // So is the program, for the same reason: a restart within the
        // generation runs the same release; only a reload moves on.
        if rg.error.is_none() {
            let name = self.settings.args.first().and_then(|a| a.to_str());
            let path_env = std::env::var_os("PATH");
            match name
                .map(|n| crate::config::pin_program(n, rg.chdir.as_deref(), path_env.as_deref()))
            {
                Some(Ok(program)) => {
                    tracing::debug!("generation {g} runs {}", program.display());
                    rg.program = Some(program);
                }
                Some(Err(e)) => rg.error = Some(format!("cannot run the command: {e}")),
                None => rg.error = Some(crate::config::CommandError::Missing.to_string()),
            }
        }
        if rg.spec.as_ref().is_some_and(|s| s.ready.uses_notify()) {
            let run_as = rg.spec.as_ref().and_then(|s| s.run_as.clone());
            match self.notify_path(g, run_as.as_deref()) {
                Ok(path) => match NotifySocket::bind(&path) {
                    Ok(sock) => {
                        if let Err(e) = super::privileges::hand_over(&path, run_as.as_deref()) {
                            rg.error.get_or_insert(e);
                        }
                        match self.register_fd(&sock.sock, Source::Notify(g)) {
                            Ok(token) => rg.notify = Some((token, sock)),
                            Err(e) => tracing::error!("cannot watch {}: {e}", path.display()),
                        }
                    }
                    Err(e) => {
                        tracing::error!("cannot create notify socket {}: {e}", path.display());
                    }
                },
                Err(e) => {
                    rg.error.get_or_insert(e);
                }
            }
        }
        if self.settings.cgroups != crate::config::CgroupMode::Off {
            self.spawner.send(Job::MakeCgroup(g));
        }
        self.generations.insert(g, rg);
    }

    pub(super) fn spawn(&mut self, g: GenId, slot: Slot, quiet: bool) {
        if self.deferring() {
            // An upgrade's exec is being prepared: the new image does it.
            self.deferred.push(if quiet {
                super::state::Deferred::SpawnQuiet(g, slot)
            } else {
                super::state::Deferred::Spawn(g, slot)
            });
            return;
        }
        let rg = self.generations.get(&g);
        if let Some(err) = rg.and_then(|r| r.error.clone()) {
            self.queue.push_back(Event::SpawnFailed {
                generation: g,
                slot,
                error: err,
            });
            return;
        }
        let notify = rg
            .and_then(|r| r.notify.as_ref())
            .map(|(_, s)| s.path.clone());
        let chdir = rg.and_then(|r| r.chdir.clone());
        let program = rg
            .and_then(|r| r.program.clone())
            .unwrap_or_else(|| self.settings.program.clone());
        // Started by the spawner thread; the result comes back as
        // Done::Worker (see on_spawned).
        let Some(spec) = rg.and_then(|r| r.spec.clone()) else {
            self.queue.push_back(Event::SpawnFailed {
                generation: g,
                slot,
                error: "internal error: the generation was not prepared".into(),
            });
            return;
        };
        self.spawner.send(Job::Worker(Box::new(WorkerSpec {
            generation: g,
            slot,
            program,
            args: std::sync::Arc::clone(&spec.args),
            base_env: std::sync::Arc::clone(&spec.env),
            ready_fd: spec.ready_fd,
            notify,
            chdir,
            nofile_soft_limit: self.child_nofile,
            listeners: std::sync::Arc::clone(&spec.listeners),
            stdin: std::sync::Arc::clone(&self.stdin),
            run_as: spec.run_as.clone(),
            no_new_privs: spec.no_new_privs,
            dispatch: spec.dispatch.map(|d| d.mode),
            sched_idle: quiet && Self::quiet_start(),
        })));
    }

    /// What the spawner thread sent back.
    pub(super) fn on_spawner(&mut self) {
        for done in self.spawner.results() {
            match done {
                Done::Cgroups(root) => {
                    if let Some(guard) = &self.guard {
                        guard.say(&format!("c {}", root.display()));
                    }
                    self.cgroup_root = Some(root);
                }
                Done::Worker {
                    generation,
                    slot,
                    result,
                } => self.on_started(generation, slot, result),
                Done::Probe { generation, result } => self.on_probe_started(generation, result),
                // Every job before the barrier is done and its answer
                // handled: an upgrade's exec can go.
                Done::Barrier => self.on_barrier(),
                // Answered to `Spawner::exec`, which waits for it itself.
                Done::ExecFailed(e) => tracing::warn!("an exec in place failed: {e}"),
                Done::Stopped => {}
            }
        }
    }

    /// A worker the spawner started (or could not start).
    fn on_started(&mut self, g: GenId, slot: Slot, result: Result<Started, SpawnFailure>) {
        let started = match result {
            Ok(s) => s,
            Err(SpawnFailure::Cgroup(error) | SpawnFailure::Other(error)) => {
                self.queue.push_back(Event::SpawnFailed {
                    generation: g,
                    slot,
                    error,
                });
                return;
            }
        };
        if let Some(guard) = &self.guard {
            guard.say(&format!("g {}", started.child.pid));
        }
        let pid = started.child.pid;
        let mut w = RtWorker {
            pid,
            child: None,
            pipes: Vec::new(),
            ready: None,
            tail: Tail::default(),
        };
        let mut exit_token = None;
        let mut channel = None;
        let registered = (|| -> std::io::Result<()> {
            exit_token = Some(self.register_fd(&started.child.pidfd, Source::Exit(g, slot))?);
            for pipe in [started.stdout, started.stderr] {
                let t = self.register_fd(&pipe.fd, Source::Output(g, slot, pipe.stream))?;
                w.pipes.push((t, pipe));
            }
            if let Some(fd) = started.ready {
                let t = self.register_fd(&fd, Source::Ready(g, slot))?;
                w.ready = Some((t, fd));
            }
            if let Some(fd) = started.dispatch {
                let t = self.register_fd(&fd, Source::Channel(g, slot))?;
                channel = Some((t, fd));
            }
            Ok(())
        })();
        if let Err(e) = registered {
            // Without its pidfd watched the worker could not be supervised:
            // kill it and report a failed spawn instead.
            let _ = baton_sys::spawn::signal(&started.child, libc::SIGKILL);
            wait_briefly(&started.child);
            self.forget_inflight(pid);
            if let Some(t) = exit_token {
                self.deregister_fd(&started.child.pidfd, t);
            }
            if let Some((t, fd)) = channel {
                self.deregister_fd(&fd, t);
            }
            self.forget(w);
            self.queue.push_back(Event::SpawnFailed {
                generation: g,
                slot,
                error: format!("cannot watch the new worker: {e}"),
            });
            return;
        }
        w.child = exit_token.map(|t| (t, started.child));
        // A previous incarnation of this slot (restart) leaves its record.
        if let Some(old) = self.workers.remove(&(g, slot)) {
            self.forget(old);
        }
        self.workers.insert((g, slot), w);
        if let Some((token, fd)) = channel {
            self.dispatch_adopt(g, slot, pid, token, fd);
        }
        // Tracked as a worker from now on; what it said meanwhile counts
        // (after Spawned: the lifecycle hears of the worker first).
        self.forget_inflight(pid);
        self.queue.push_back(Event::Spawned {
            generation: g,
            slot,
            pid,
        });
        self.replay_early_notify(g, slot, pid);
    }

    pub(super) fn forget_inflight(&self, pid: u32) {
        self.spawner
            .inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&pid);
    }

    /// Drops a worker record's registrations.
    pub(super) fn forget(&mut self, w: RtWorker) {
        for (token, pipe) in w.pipes {
            self.deregister_fd(&pipe.fd, token);
        }
        if let Some((token, fd)) = w.ready {
            self.deregister_fd(&fd, token);
        }
        if let Some((token, child)) = w.child {
            self.deregister_fd(&child.pidfd, token);
            // Normally reaped by ReapGroup already; never leave a zombie or
            // a group behind.
            if !child.is_reaped() {
                let _ = baton_sys::spawn::signal(&child, libc::SIGKILL);
                let _ = child.signal_group(libc::SIGKILL);
                wait_briefly(&child);
                if let Some(guard) = &self.guard {
                    guard.say(&format!("u {}", child.pid));
                }
            }
        }
    }

    /// Kills what is left of an exited worker's process group, then reaps
    /// the worker (in that order: see [`Self::on_exit_readable`]).
    pub(super) fn reap_group(&mut self, g: GenId, slot: Slot) {
        let Some(w) = self.workers.get_mut(&(g, slot)) else {
            return;
        };
        let Some((_, child)) = w.child.take() else {
            return;
        };
        // ESRCH (nothing left in the group) is the common, good case.
        let _ = child.signal_group(libc::SIGKILL);
        if let Some(guard) = &self.guard {
            guard.say(&format!("u {}", child.pid));
        }
        match baton_sys::spawn::try_reap(&child) {
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::error!(
                    "worker {slot} of generation {g} (pid {}) exited but cannot be reaped yet",
                    child.pid
                );
                wait_briefly(&child);
            }
            Err(e) => tracing::error!("cannot reap worker {slot} of generation {g}: {e}"),
        }
    }

    pub(super) fn release(&mut self, g: GenId) {
        self.early_notify.retain(|(eg, _, _)| *eg != g);
        self.dispatch_release(g);
        if let Some(rg) = self.generations.remove(&g) {
            // Whatever the generation's workers left that escaped their
            // process groups goes now.
            if self.settings.cgroups != crate::config::CgroupMode::Off {
                self.spawner.send(Job::EndCgroup(g));
            }
            let _ = rg;
            if let Some((token, sock)) = rg.notify {
                self.deregister_fd(&sock.sock, token);
            }
            if let Some((token, child)) = rg.probe {
                let _ = baton_sys::spawn::signal(&child, libc::SIGKILL);
                let _ = child.signal_group(libc::SIGKILL);
                self.deregister_fd(&child.pidfd, token);
                // SIGKILLed: it is gone in a moment; reap it so no zombie stays.
                wait_briefly(&child);
            }
        }
        let slots: Vec<(GenId, Slot)> = self
            .workers
            .keys()
            .filter(|(wg, _)| *wg == g)
            .copied()
            .collect();
        for key in slots {
            if let Some(w) = self.workers.remove(&key) {
                self.forget(w);
            }
        }
    }

    /// Reaps exited children that are not workers or probes: orphans that
    /// were reparented to baton as a subreaper (or PID 1).
    pub(super) fn reap_orphans(&mut self) {
        // Workers being forked by the spawner are children too: the set of
        // their pids is locked across each fork, so while it is held here
        // no child exists that is neither in it nor already tracked. If the
        // spawner holds it (a fork in progress), try again in a moment.
        let inflight = std::sync::Arc::clone(&self.spawner.inflight);
        let Ok(inflight) = inflight.try_lock() else {
            self.orphans_to_reap = true;
            self.orphan_retry_at = Some(Instant::now() + ORPHAN_RETRY);
            return;
        };
        self.orphan_retry_at = None;
        loop {
            let pid = match baton_sys::spawn::peek_exited_child() {
                Ok(Some(pid)) => pid,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!("waitid: {e}");
                    return;
                }
            };
            let tracked = self
                .workers
                .values()
                .any(|w| w.child.as_ref().is_some_and(|(_, c)| c.pid == pid))
                || self
                    .generations
                    .values()
                    .any(|g| g.probe.as_ref().is_some_and(|(_, c)| c.pid == pid))
                || self.guard.as_ref().is_some_and(|g| g.child.pid == pid)
                || inflight.contains(&pid);
            if tracked {
                // Its pidfd reports it; look again once that is handled.
                self.orphans_to_reap = true;
                return;
            }
            match baton_sys::spawn::reap_pid(pid) {
                Ok(Some(status)) => tracing::debug!("reaped orphan pid {pid} ({status})"),
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!("cannot reap orphan pid {pid}: {e}");
                    return;
                }
            }
        }
    }
}

/// Reaps a child that was just sent `SIGKILL`, waiting at most a second.
pub(super) fn wait_briefly(child: &Child) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        let mut fds = [rustix::event::PollFd::new(
            &child.pidfd,
            rustix::event::PollFlags::IN,
        )];
        let _ = rustix::event::poll(
            &mut fds,
            Some(&rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 100_000_000,
            }),
        );
        if let Ok(Some(_)) = baton_sys::spawn::try_reap(child) {
            return;
        }
    }
}

impl Runtime {
    /// Starts the guard (see [`crate::guard`]) and tells it what is baton's.
    pub(super) fn start_guard(&mut self) {
        let Some((program, args)) = self.settings.guard.clone() else {
            return;
        };
        let guard = match Guard::start(
            &program,
            &args,
            &self.base_env,
            std::os::fd::AsFd::as_fd(&self.stdin),
        ) {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(
                    "{e}; if baton is killed with SIGKILL, what its workers started may be left running"
                );
                return;
            }
        };
        match self.register_fd(&guard.child.pidfd, Source::Guard) {
            Ok(token) => self.guard_token = Some(token),
            Err(e) => tracing::warn!("cannot watch the guard process: {e}"),
        }
        if let Some(root) = &self.cgroup_root {
            guard.say(&format!("c {}", root.display()));
        }
        for w in self.workers.values() {
            if w.child.as_ref().is_some_and(|(_, c)| !c.is_reaped()) {
                guard.say(&format!("g {}", w.pid));
            }
        }
        tracing::debug!("guard started, pid {}", guard.child.pid);
        self.guard = Some(guard);
    }

    /// The guard exited (someone killed it): reap it and start another.
    pub(super) fn on_guard_exit(&mut self) {
        let Some(guard) = self.guard.take() else {
            return;
        };
        if let Some(token) = self.guard_token.take() {
            self.deregister_fd(&guard.child.pidfd, token);
        }
        let status = baton_sys::spawn::try_reap(&guard.child);
        tracing::warn!(
            "the guard process (pid {}) exited ({}); starting another",
            guard.child.pid,
            match status {
                Ok(Some(s)) => s.to_string(),
                Ok(None) => "still running".to_owned(),
                Err(e) => e.to_string(),
            }
        );
        self.start_guard();
    }

    /// baton's last moments: its cgroups go, and the guard, told nothing is
    /// left, exits; wait (briefly) for it so that nothing baton started
    /// outlives it.
    pub(super) fn end_guard_and_cgroups(&mut self) {
        self.spawner.stop(Duration::from_secs(5));
        if let Some(guard) = self.guard.take() {
            let Guard { child, tx } = guard;
            drop(tx);
            wait_briefly(&child);
        }
    }
}

/// How soon orphan reaping is tried again when the spawner is forking.
const ORPHAN_RETRY: Duration = Duration::from_millis(20);
