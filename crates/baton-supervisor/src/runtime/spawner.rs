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
use std::thread::JoinHandle;
use std::time::Duration;

use crate::cgroup::{Cgroups, GenCgroup};
use crate::config::CgroupMode;
use crate::lifecycle::{GenId, Slot};
use crate::worker::{SpawnFailure, Started, WorkerSpec, spawn_worker};

/// How soon removing a cgroup whose processes were still exiting is tried
/// again.
const RETRY_REMOVE: Duration = Duration::from_millis(200);

/// What the loop asks of the thread.
#[derive(Debug)]
pub(super) enum Job {
    /// Make `baton.<pid>/` (once, first), if the mode allows.
    SetupCgroups(CgroupMode),
    /// Make generation `g`'s cgroup.
    MakeCgroup(GenId),
    /// Start a worker, in its generation's cgroup if there is one.
    Worker(Box<WorkerSpec>),
    /// Generation `g` is gone: kill what is left in its cgroup, remove it.
    EndCgroup(GenId),
    /// baton stops: remove every cgroup, then end the thread.
    Stop,
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
    Stopped,
}

/// The loop's handle on the thread.
#[derive(Debug)]
pub(super) struct Spawner {
    jobs: Sender<Job>,
    done: Receiver<Done>,
    /// Pids of workers forked but not yet handed to the loop: the orphan
    /// reaper must not take them for orphans. Locked across the fork itself,
    /// so a child exists only once its pid is in here.
    pub(super) inflight: Arc<Mutex<HashSet<u32>>>,
    thread: Option<JoinHandle<()>>,
}

impl Spawner {
    /// Starts the thread; `wake` is called after each result.
    pub(super) fn start(wake: Box<dyn Fn() + Send>, cgroups: CgroupMode) -> std::io::Result<Self> {
        let (jobs, rx) = std::sync::mpsc::channel();
        let (tx, done) = std::sync::mpsc::channel();
        let inflight = Arc::new(Mutex::new(HashSet::new()));
        let mut worker = Thread {
            rx,
            tx,
            wake,
            inflight: Arc::clone(&inflight),
            cgroups: None,
            gens: HashMap::new(),
            stale: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("baton-spawner".into())
            .spawn(move || worker.run())?;
        let spawner = Self {
            jobs,
            done,
            inflight,
            thread: Some(thread),
        };
        if cgroups != CgroupMode::Off {
            spawner.send(Job::SetupCgroups(cgroups));
        }
        Ok(spawner)
    }

    pub(super) fn send(&self, job: Job) {
        if self.jobs.send(job).is_err() {
            tracing::error!("the spawner thread is gone; workers cannot be started");
        }
    }

    /// The results that arrived, without waiting.
    pub(super) fn results(&self) -> Vec<Done> {
        self.done.try_iter().collect()
    }

    /// Asks the thread to remove the cgroups and end; waits at most
    /// `bound` for it (the guard removes whatever is left).
    pub(super) fn stop(&mut self, bound: Duration) {
        self.send(Job::Stop);
        let deadline = std::time::Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.done.recv_timeout(left) {
                Ok(Done::Stopped) => break,
                Ok(_) => {}
                Err(_) => {
                    tracing::debug!("the spawner thread did not finish in time");
                    return;
                }
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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
            Job::EndCgroup(g) => {
                if let Some(c) = self.gens.remove(&g)
                    && !crate::cgroup::kill_and_try_remove(c.dir())
                {
                    self.stale.push(c.dir().to_path_buf());
                }
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
        let guard = std::cell::RefCell::new(Some(
            self.inflight.lock().unwrap_or_else(PoisonError::into_inner),
        ));
        let forked = std::cell::Cell::new(None);
        let result = spawn_worker(spec, cgroup, |pid| {
            forked.set(Some(pid));
            if let Some(mut set) = guard.borrow_mut().take() {
                set.insert(pid);
            }
        });
        drop(guard);
        // A child that could not execute was reaped here: forget it.
        if result.is_err()
            && let Some(pid) = forked.get()
        {
            self.inflight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&pid);
        }
        result
    }
}
