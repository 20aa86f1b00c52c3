//! Versions: a compiled module (one per content), and a linked version
//! (compiled module + the linked versions of its dependencies), which is
//! what calls run on.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use wasmtime::Store;
use wasmtime::component::{Component, InstancePre};

use crate::fingerprint::Fingerprint;
use crate::swaplog::SwapLog;
use crate::world::{Ctx, World};

/// A module's bytes compiled once: shared by every linked version of the
/// same content.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub fingerprint: Fingerprint,
    pub component: Component,
    pub compile_time: Duration,
}

/// The retirement state of a linked version, shared with every store that
/// runs it (the epoch callback reads it).
#[derive(Debug, Default)]
pub(crate) struct Guard {
    /// Set once when the version is replaced: calls still running then are
    /// interrupted.
    drain_deadline: OnceLock<(Instant, Duration)>,
    /// A third version was loaded: interrupt at the next tick.
    purged: AtomicBool,
    /// Calls in flight on this version.
    pub calls: AtomicUsize,
}

impl Guard {
    pub fn retire(&self, drain: Duration) {
        let _ = self.drain_deadline.set((Instant::now() + drain, drain));
    }

    pub fn purge(&self) {
        self.purged.store(true, Ordering::SeqCst);
    }

    /// When calls still running on this version will be interrupted.
    pub fn drain_deadline(&self) -> Option<Instant> {
        self.drain_deadline.get().map(|&(at, _)| at)
    }

    pub fn retired(&self) -> bool {
        self.drain_deadline.get().is_some()
    }

    /// Why a call on this version must stop now, if it must.
    pub fn interrupt(&self, now: Instant) -> Option<crate::Interrupt> {
        if self.purged.load(Ordering::Relaxed) {
            return Some(crate::Interrupt::Purged);
        }
        match self.drain_deadline.get() {
            Some(&(at, drain)) if now >= at => Some(crate::Interrupt::Drained(drain)),
            _ => None,
        }
    }
}

/// Signalled whenever a linked version is freed (a swap may wait for the
/// oldest version to go before it installs a third).
#[derive(Debug, Default)]
pub(crate) struct Freed {
    pub count: Mutex<u64>,
    pub cv: Condvar,
}

/// An instance kept for reuse ([`InstanceMode::Pooled`]).
///
/// [`InstanceMode::Pooled`]: crate::InstanceMode::Pooled
pub(crate) struct Pooled<W: World> {
    pub store: Store<Ctx>,
    pub exports: W::Exports,
}

/// What calls run on: one content version of a module linked against one
/// version of each of its dependencies. A new version of a dependency makes
/// a new `Linked` of every dependent.
pub(crate) struct Linked<W: World> {
    /// Unique within the host (keys dependency instances in a store).
    pub id: u64,
    /// Index of the module in the host.
    pub module: usize,
    pub path: PathBuf,
    /// The module's version number: 1, 2, ... one more at every switch.
    pub version: u64,
    pub compiled: Arc<Compiled>,
    pub pre: InstancePre<Ctx>,
    /// `None` for a library module.
    pub indices: Option<W::Indices>,
    /// Whether the module exports a `func init() -> result<_, string>`.
    pub init: bool,
    pub deps: Vec<Arc<Linked<W>>>,
    /// Interfaces this version exports (for dependents).
    pub exports: Vec<String>,
    pub guard: Arc<Guard>,
    pub pool: Mutex<Vec<Pooled<W>>>,
    pub log: Arc<SwapLog>,
    pub freed: Arc<Freed>,
}

impl<W: World> Drop for Linked<W> {
    fn drop(&mut self) {
        // Only versions that were current and then replaced are reported:
        // a version rejected during validation was never live.
        if self.guard.retired() {
            self.log
                .freed(&self.path, self.version, self.compiled.fingerprint);
        }
        *self
            .freed
            .count
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) += 1;
        self.freed.cv.notify_all();
    }
}

impl<W: World> std::fmt::Debug for Linked<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Linked")
            .field("id", &self.id)
            .field("path", &self.path)
            .field("version", &self.version)
            .field("fingerprint", &self.compiled.fingerprint)
            .field("deps", &self.deps.iter().map(|d| d.id).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}
