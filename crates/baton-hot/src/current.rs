//! The one place that knows how the table of current versions is swapped.
//!
//! arc-swap makes a call's read of the table one atomic load (about 13 ns)
//! with no lock shared between calls. It has open soundness reports
//! (arc-swap issues #164, #198, #200, #210), so it stays behind this small
//! type: replacing it with an `RwLock<Arc<T>>` changes this file only.

use std::sync::Arc;

use arc_swap::ArcSwap;

/// A shared `Arc<T>` that readers load and one writer replaces whole.
pub(crate) struct Current<T>(ArcSwap<T>);

impl<T> Current<T> {
    pub fn new(value: T) -> Self {
        Self(ArcSwap::from_pointee(value))
    }

    /// The value now.
    pub fn load(&self) -> Arc<T> {
        self.0.load_full()
    }

    /// Replaces the value: later loads see the new one, loads already made
    /// keep the old one alive until they drop it.
    pub fn store(&self, value: Arc<T>) {
        self.0.store(value);
    }

    /// Replaces the value with `f` of the current one. Writers are
    /// serialised by the host, so `f` runs once.
    pub fn update(&self, f: impl Fn(&T) -> T) {
        self.0.rcu(|t| f(t));
    }
}
