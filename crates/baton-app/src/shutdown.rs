//! The stop signal: one value that every part of a server can wait on, set
//! by `SIGTERM`/`SIGINT`, by a successful hand-over to a successor, or by
//! the program itself.
//!
//! ```no_run
//! use baton_app::shutdown::{Shutdown, StopReason};
//!
//! # async fn f() -> std::io::Result<()> {
//! let shutdown = Shutdown::new();
//! // Install the handlers before reporting ready: a stop asked for during
//! // start-up must not be lost (and SIGTERM must not kill us mid-drain).
//! shutdown.on_signals()?;
//! let reason = shutdown.stopped().await;
//! if let StopReason::HandedOver(pid) = reason {
//!     println!("pid {pid} serves now; draining");
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Reasons are ordered by gravity, and a graver one always replaces a
//! milder one (never the reverse): [`StopReason::HandedOver`] <
//! [`StopReason::Requested`] < [`StopReason::Signal`] <
//! [`StopReason::Immediate`]. A drain that is under way watches for
//! [`StopReason::Immediate`] and gives up at once when it comes (a second
//! `SIGTERM`/`SIGINT`, or [`Shutdown::stop`] with it).

use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Why the server stops accepting, from mildest to gravest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StopReason {
    /// A successor (this pid) reported ready and accepts now: drain and exit.
    HandedOver(u32),
    /// The program asked ([`Shutdown::stop`]).
    Requested,
    /// A stop signal (`"SIGTERM"` or `"SIGINT"`).
    Signal(&'static str),
    /// Stop now: abandon open connections (a second stop signal).
    Immediate,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::HandedOver(pid) => write!(f, "handed over to pid {pid}"),
            StopReason::Requested => f.write_str("stop requested"),
            StopReason::Signal(name) => f.write_str(name),
            StopReason::Immediate => f.write_str("immediate stop"),
        }
    }
}

/// A stop flag that can be awaited. Cheap to clone; all clones share one
/// value.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<Option<StopReason>>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A flag that is not set.
    pub fn new() -> Self {
        let (tx, _rx) = watch::channel(None);
        Self { tx: Arc::new(tx) }
    }

    /// Sets the flag, unless it already holds a graver reason. Returns
    /// whether `reason` took effect.
    pub fn stop(&self, reason: StopReason) -> bool {
        self.tx.send_if_modified(|current| match current {
            Some(c) if *c >= reason => false,
            _ => {
                *current = Some(reason);
                true
            }
        })
    }

    /// The reason, once set.
    pub fn reason(&self) -> Option<StopReason> {
        *self.tx.borrow()
    }

    /// Whether the flag is set.
    pub fn is_stopped(&self) -> bool {
        self.reason().is_some()
    }

    /// Resolves when the flag is set (at once if it already is), with the
    /// reason at that moment.
    pub async fn stopped(&self) -> StopReason {
        self.wait_for(|_| true).await
    }

    /// Resolves when an immediate stop is asked for.
    pub async fn immediate(&self) {
        self.wait_for(|r| r == StopReason::Immediate).await;
    }

    async fn wait_for(&self, pred: impl Fn(StopReason) -> bool) -> StopReason {
        let mut rx = self.tx.subscribe();
        loop {
            if let Some(r) = *rx.borrow_and_update()
                && pred(r)
            {
                return r;
            }
            // The sender lives as long as `self`, so this cannot fail while
            // we wait; if it somehow did, waiting forever is the honest answer.
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Sets the flag on `SIGTERM` and `SIGINT`: the first one asks for a
    /// graceful stop ([`StopReason::Signal`]); one more after that asks for
    /// an immediate stop. Must be called inside a tokio runtime; the
    /// handlers are installed before this returns.
    pub fn on_signals(&self) -> std::io::Result<()> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                this.on_stop_signal(name);
            }
        });
        Ok(())
    }

    /// What a stop signal does: graceful first, immediate when repeated.
    /// (A hand-over in progress is not a stop signal: `SIGTERM` during a
    /// drain after a hand-over still asks for a graceful stop first.)
    fn on_stop_signal(&self, name: &'static str) {
        match self.reason() {
            Some(StopReason::Signal(_) | StopReason::Immediate) => {
                tracing::warn!("{name} again: stopping immediately");
                self.stop(StopReason::Immediate);
            }
            None | Some(StopReason::HandedOver(_) | StopReason::Requested) => {
                tracing::info!("{name}: stopping gracefully");
                self.stop(StopReason::Signal(name));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graver_reasons_win_and_milder_ones_do_not() {
        let s = Shutdown::new();
        assert!(!s.is_stopped());
        assert!(s.stop(StopReason::HandedOver(7)));
        assert!(s.stop(StopReason::Signal("SIGTERM")));
        assert!(!s.stop(StopReason::HandedOver(8)));
        assert!(!s.stop(StopReason::Requested));
        assert_eq!(s.reason(), Some(StopReason::Signal("SIGTERM")));
        assert!(s.stop(StopReason::Immediate));
        assert!(!s.stop(StopReason::Signal("SIGINT")));
    }

    #[test]
    fn a_repeated_stop_signal_is_immediate() {
        let s = Shutdown::new();
        s.on_stop_signal("SIGTERM");
        assert_eq!(s.reason(), Some(StopReason::Signal("SIGTERM")));
        s.on_stop_signal("SIGINT");
        assert_eq!(s.reason(), Some(StopReason::Immediate));

        let s = Shutdown::new();
        s.stop(StopReason::HandedOver(3));
        s.on_stop_signal("SIGTERM");
        assert_eq!(s.reason(), Some(StopReason::Signal("SIGTERM")));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn waiters_wake_with_the_reason() {
        let s = Shutdown::new();
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.stopped().await }
        });
        let imm = tokio::spawn({
            let s = s.clone();
            async move { s.immediate().await }
        });
        tokio::task::yield_now().await;
        s.stop(StopReason::Requested);
        assert_eq!(waiter.await.expect("join"), StopReason::Requested);
        assert!(!imm.is_finished());
        s.stop(StopReason::Immediate);
        imm.await.expect("join");
        // Already set: resolves at once.
        assert_eq!(s.stopped().await, StopReason::Immediate);
    }
}
