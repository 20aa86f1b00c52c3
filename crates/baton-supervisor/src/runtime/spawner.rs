//! The spawner: one thread that does the work the event loop must never
//! wait for — starting workers and every cgroup operation.
//!
//! Both can block for seconds on a busy machine, through no fault of
//! baton's: `fork` waits for the child to reach `execve` (bounded by
//! `baton_sys::spawn::EXEC_TIMEOUT`), and anything that touches cgroupfs
//! (`mkdir`, `cgroup.kill`, `rmdir`, a `clone3` into a cgroup) takes the
//! kernel's one global `cgroup_mutex`, which another process moving a task
//! between cgroups holds across an RCU grace period — seen here to last more
//! than 10 s under load, with baton's loop stuck in `cgroup_kn_lock_live`.
//! So the loop sends jobs and goes on serving signals, clients, readiness
//! and exits; the thread does them in order (a generation's cgroup is made
//! before its workers are started in it) and wakes the loop with each
//! result.
//!
//! The thread owns the cgroups ([`crate::cgroup`]) entirely: the loop never
//! touches cgroupfs.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::cgroup::{Cgroups, GenCgroup};
use crate::config::CgroupMode;
use crate::lifecycle::{GenId, Slot};
use crate::worker::{SpawnFailure, Started, WorkerSpec, spawn_worker};

/// How soon removing a cgroup whose processes were still exiting is tried
/// again.
const RETRY_REMOVE: Duration = Duration::from_millis(200);

/// A generation's `exec:` readiness command, to start.
#[derive(Debug)]
pub(super) struct ProbeSpec {
    pub(super) generation: GenId,
    pub(super) cmd: String,
    pub(super) env: Arc<Vec<std::ffi::OsString>>,
    pub(super) pids: Vec<u32>,
    pub(super) chdir: Option<PathBuf>,
    pub(super) nofile_soft_limit: Option<u64>,
    /// The generation's user (`--user`), as its workers run.
    pub(super) run_as: Option<Arc<crate::privileges::RunAs>>,
    pub(super) no_new_privs: bool,
}

/// What the loop asks of the thread.
#[derive(Debug)]
pub(super) enum Job {
    /// Make `baton.<pid>/` (once, first), if the mode allows.
    SetupCgroups(CgroupMode),
    /// Make generation `g`'s cgroup.
    MakeCgroup(GenId),
    /// Start a worker, in its generation's cgroup if there is one.
    Worker(Box<WorkerSpec>),
    /// Start a generation's `exec:` readiness command.
    Probe(Box<ProbeSpec>),
    /// Generation `g` is gone: kill what is left in its cgroup, remove it.
    EndCgroup(GenId),
    /// baton stops: remove every cgroup, then end the thread.
    Stop,
    /// Answer [`Done::Barrier`] (once every job before it is done).
    Barrier,
    /// Take over the cgroups a previous image made (after an upgrade).
    AdoptCgroups {
        root: PathBuf,
        generations: Vec<GenId>,
    },
    /// Execute this binary in place (an upgrade): from the main thread,
    /// which forked every worker. Answers [`Done::ExecFailed`] if it fails.
    Exec {
        binary: std::os::fd::OwnedFd,
        args: Vec<std::ffi::OsString>,
        env: Vec<std::ffi::OsString>,
    },
}

/// What the thread answers.
#[derive(Debug)]
pub(super) enum Done {
    /// Generations get cgroups under this directory (for the guard).
    Cgroups(PathBuf),
    Worker {
        generation: GenId,
        slot: Slot,
        result: Result<Started, SpawnFailure>,
    },
    Probe {
        generation: GenId,
        result: Result<baton_sys::spawn::Child, String>,
    },
    Barrier,
    ExecFailed(std::io::Error),
    Stopped,
}

/// The loop's handle on the spawner.
#[derive(Debug)]
pub(super) struct Spawner {
    jobs: Sender<Job>,
    done: Receiver<Done>,
    /// Pids of workers forked but not yet handed to the loop: the orphan
    /// reaper must not take them for orphans. Locked across the fork itself,
    /// so a child exists only once its pid is in here.
    pub(super) inflight: Arc<Mutex<HashSet<u32>>>,
}

/// The spawner's side, run by [`SpawnServer::serve`] on the process's main
/// thread.
///
/// Why the main thread: the kernel sends a child its parent-death signal
/// when the *thread* that forked it ends, not the process
/// (`PR_SET_PDEATHSIG`, prctl(2)), and an exec ends every thread but the
/// one that calls it. Workers are killed when baton dies, so they must be
/// forked by a thread that outlives everything but baton itself, and that
/// is also the one that executes a new baton in place (see
/// `runtime::upgrade`): the main thread, always. The event loop runs on a
/// thread of its own.
pub(super) struct SpawnServer {
    worker: Thread,
}

impl std::fmt::Debug for SpawnServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpawnServer").finish_non_exhaustive()
    }
}

impl Spawner {
    /// The two ends; `wake` is called after each result.
    pub(super) fn new(wake: Box<dyn Fn() + Send>, cgroups: CgroupMode) -> (Self, SpawnServer) {
        let (jobs, rx) = std::sync::mpsc::channel();
        let (tx, done) = std::sync::mpsc::channel();
        let inflight = Arc::new(Mutex::new(HashSet::new()));
        let worker = Thread {
            rx,
            tx,
            wake,
            inflight: Arc::clone(&inflight),
            cgroups: None,
            gens: HashMap::new(),
            stale: Vec::new(),
        };
        let spawner = Self {
            jobs,
            done,
            inflight,
        };
        if cgroups != CgroupMode::Off {
            spawner.send(Job::SetupCgroups(cgroups));
        }
        (spawner, SpawnServer { worker })
    }

    pub(super) fn send(&self, job: Job) {
        if self.jobs.send(job).is_err() {
            tracing::error!("the spawner is gone; workers cannot be started");
        }
    }

    /// The results that arrived, without waiting.
    pub(super) fn results(&self) -> Vec<Done> {
        self.done.try_iter().collect()
    }

    /// Asks the main thread to execute `binary` in place, and waits: the
    /// call returns only if the exec failed, with the reason. The caller
    /// has made sure nothing else is in flight (a barrier).
    pub(super) fn exec(
        &self,
        binary: std::os::fd::OwnedFd,
        args: Vec<std::ffi::OsString>,
        env: Vec<std::ffi::OsString>,
    ) -> std::io::Error {
        self.send(Job::Exec { binary, args, env });
        loop {
            match self.done.recv() {
                Ok(Done::ExecFailed(e)) => return e,
                Ok(other) => tracing::debug!("while executing in place: {other:?}"),
                Err(_) => return std::io::Error::other("the spawner is gone"),
            }
        }
    }

    /// Asks the spawner to remove the cgroups and end; waits at most
    /// `bound` for it (the guard removes whatever is left).
    pub(super) fn stop(&mut self, bound: Duration) {
        self.send(Job::Stop);
        let deadline = std::time::Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.done.recv_timeout(left) {
                Ok(Done::Stopped) => return,
                Ok(_) => {}
                Err(_) => {
                    tracing::debug!("the spawner did not finish in time");
                    return;
                }
            }
        }
    }
}

impl SpawnServer {
    /// Serves jobs until the loop asks it to stop (or is gone).
    pub(super) fn serve(mut self) {
        self.worker.run();
    }
}

struct Thread {
    rx: Receiver<Job>,
    tx: Sender<Done>,
    wake: Box<dyn Fn() + Send>,
    inflight: Arc<Mutex<HashSet<u32>>>,
    cgroups: Option<Cgroups>,
    gens: HashMap<GenId, GenCgroup>,
    /// Generation cgroups not yet removed (their processes were exiting).
    stale: Vec<PathBuf>,
}

impl Thread {
    fn run(&mut self) {
        loop {
            let job = if self.stale.is_empty() {
                self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                self.rx.recv_timeout(RETRY_REMOVE)
            };
            match job {
                Ok(Job::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    if let Some(cg) = self.cgroups.take() {
                        cg.remove();
                    }
                    self.answer(Done::Stopped);
                    return;
                }
                Ok(job) => self.handle(job),
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.stale.retain(|dir| !crate::cgroup::try_remove(dir));
        }
    }

    fn answer(&self, done: Done) {
        if self.tx.send(done).is_ok() {
            (self.wake)();
        }
    }

    fn handle(&mut self, job: Job) {
        match job {
            Job::SetupCgroups(mode) => match Cgroups::setup(mode) {
                Ok(cg) => {
                    tracing::debug!("generations get cgroups under {}", cg.root().display());
                    self.answer(Done::Cgroups(cg.root().to_path_buf()));
                    self.cgroups = Some(cg);
                }
                Err(e) => tracing::debug!(
                    "no cgroups for generations ({e}); descendants that leave their worker's process group are not tracked"
                ),
            },
            Job::MakeCgroup(g) => {
                if let Some(cg) = &self.cgroups {
                    match cg.generation(g) {
                        Ok(c) => {
                            self.gens.insert(g, c);
                        }
                        Err(e) => tracing::debug!("no cgroup for generation {g}: {e}"),
                    }
                }
            }
            Job::Worker(spec) => {
                let result = self.spawn(&spec);
                self.answer(Done::Worker {
                    generation: spec.generation,
                    slot: spec.slot,
                    result,
                });
            }
            Job::Probe(p) => {
                let result = self.recorded(|on_forked| {
                    crate::worker::spawn_probe(
                        &p.cmd,
                        &p.env,
                        p.generation,
                        &p.pids,
                        p.chdir.as_deref(),
                        p.nofile_soft_limit,
                        p.run_as.as_deref(),
                        p.no_new_privs,
                        on_forked,
                    )
                });
                self.answer(Done::Probe {
                    generation: p.generation,
                    result,
                });
            }
            Job::EndCgroup(g) => {
                if let Some(c) = self.gens.remove(&g)
                    && !crate::cgroup::kill_and_try_remove(c.dir())
                {
                    self.stale.push(c.dir().to_path_buf());
                }
            }
            Job::Barrier => self.answer(Done::Barrier),
            Job::AdoptCgroups { root, generations } => {
                let cg = Cgroups::adopt(root);
                for g in generations {
                    if let Ok(c) = cg.generation(g) {
                        self.gens.insert(g, c);
                    }
                }
                self.cgroups = Some(cg);
            }
            Job::Exec { binary, args, env } => {
                let err =
                    baton_sys::reexec::exec_fd(std::os::fd::AsFd::as_fd(&binary), &args, &env);
                self.answer(Done::ExecFailed(err));
            }
            Job::Stop => {}
        }
    }

    fn spawn(&mut self, spec: &WorkerSpec) -> Result<Started, SpawnFailure> {
        let in_cgroup = self.gens.contains_key(&spec.generation);
        let result = self.spawn_recorded(spec, in_cgroup);
        match result {
            Err(SpawnFailure::Cgroup(e)) => {
                // Writable but not usable (a kernel older than 5.7, a
                // delegation that stops short): go on with process groups
                // alone.
                tracing::warn!(
                    "a worker cannot be started in its generation's cgroup ({e}); baton stops using cgroups and relies on process groups"
                );
                self.gens.clear();
                if let Some(cg) = self.cgroups.take() {
                    cg.remove();
                }
                self.spawn_recorded(spec, false)
            }
            other => other,
        }
    }

    /// Spawns with the in-flight set locked across the fork, so that the
    /// orphan reaper never sees the new child before its pid is recorded.
    fn spawn_recorded(&self, spec: &WorkerSpec, in_cgroup: bool) -> Result<Started, SpawnFailure> {
        let dir = if in_cgroup {
            match self.gens.get(&spec.generation).map(GenCgroup::open) {
                Some(Ok(f)) => Some(f),
                Some(Err(e)) => {
                    return Err(SpawnFailure::Cgroup(format!("cannot open its cgroup: {e}")));
                }
                None => None,
            }
        } else {
            None
        };
        let cgroup = dir.as_ref().map(std::os::fd::AsFd::as_fd);
        self.recorded(|on_forked| spawn_worker(spec, cgroup, on_forked))
    }

    /// Runs `spawn` with the in-flight set locked across the fork (the
    /// `on_forked` it gets records the pid and lets go of the lock), so the
    /// orphan reaper never sees a new child before its pid is recorded. A
    /// child that could not execute (an error) is forgotten again.
    fn recorded<T, E>(
        &self,
        spawn: impl FnOnce(&mut dyn FnMut(u32)) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut guard = Some(self.inflight.lock().unwrap_or_else(PoisonError::into_inner));
        let mut forked = None;
        let result = spawn(&mut |pid| {
            forked = Some(pid);
            if let Some(mut set) = guard.take() {
                set.insert(pid);
            }
        });
        drop(guard);
        if result.is_err()
            && let Some(pid) = forked
        {
            self.inflight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&pid);
        }
        result
    }
}
