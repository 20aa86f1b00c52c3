//! Upgrades on a signal (`SIGHUP`, `SIGUSR2`), for servers on tokio.
//!
//! ```no_run
//! use baton_app::shutdown::Shutdown;
//! use baton_app::trigger::upgrade_on_signals;
//! use baton_app::upgrade::Upgrader;
//! use tokio::signal::unix::SignalKind;
//!
//! # async fn f(upgrader: Upgrader) -> std::io::Result<()> {
//! let shutdown = Shutdown::new();
//! shutdown.on_signals()?;
//! // Before reporting ready: SIGHUP's default action ends the process.
//! upgrade_on_signals(&upgrader, &shutdown, &[SignalKind::hangup()], || None)?;
//! upgrader.ready().expect("ready");
//! let reason = shutdown.stopped().await; // HandedOver(pid) after an upgrade
//! # Ok(())
//! # }
//! ```
//!
//! Each signal starts an upgrade on tokio's blocking pool, so the server
//! keeps serving while the successor starts. Outcomes are logged (the
//! lines below are stable; tests wait for them):
//!
//! * `upgrade: handed over to pid N (ready after D)`: the flag is then set
//!   to [`StopReason::HandedOver`], and the caller's serve loop drains;
//! * `upgrade failed, still serving: WHY`: the successor was killed and
//!   reaped, nothing changed;
//! * `upgrade refused: an upgrade is already in progress`: a signal that
//!   arrives while an upgrade runs is refused, not queued. The upgrade in
//!   progress already runs the newest binary on disk, so a queued second one
//!   would only restart what is about to be started;
//! * `upgrade refused: this process already handed over to pid N ...`.

use tokio::signal::unix::{SignalKind, signal};

use crate::shutdown::{Shutdown, StopReason};
use crate::upgrade::{Handover, UpgradeError, Upgrader};

/// Installs handlers for `signals` (before returning) and upgrades on each
/// one, passing the bytes that `state` returns at that moment, if any, to
/// the successor. On success `shutdown` is set to
/// [`StopReason::HandedOver`]. Must be called inside a tokio runtime.
pub fn upgrade_on_signals<F>(
    upgrader: &Upgrader,
    shutdown: &Shutdown,
    signals: &[SignalKind],
    state: F,
) -> std::io::Result<()>
where
    F: Fn() -> Option<Vec<u8>> + Send + Sync + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for &kind in signals {
        let mut stream = signal(kind)?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(kind).is_err() {
                    return;
                }
            }
        });
    }
    let state = std::sync::Arc::new(state);
    let upgrader = upgrader.clone();
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        while let Some(kind) = rx.recv().await {
            tracing::info!("signal {}: upgrading", kind.as_raw_value());
            // Each upgrade runs on its own so that a signal during an
            // upgrade gets its answer (refused) at once.
            let upgrader = upgrader.clone();
            let shutdown = shutdown.clone();
            let state = std::sync::Arc::clone(&state);
            tokio::spawn(async move {
                let outcome = tokio::task::spawn_blocking(move || match state() {
                    Some(bytes) => upgrader.upgrade_with_state(&bytes),
                    None => upgrader.upgrade(),
                })
                .await;
                match outcome {
                    Ok(result) => report(&result, &shutdown),
                    Err(e) => tracing::error!("upgrade task failed: {e}"),
                }
            });
        }
    });
    Ok(())
}

/// Logs an upgrade's outcome and sets the stop flag after a hand-over.
pub fn report(result: &Result<Handover, UpgradeError>, shutdown: &Shutdown) {
    match result {
        Ok(h) => {
            tracing::info!(
                "upgrade: handed over to pid {} (ready after {:?})",
                h.child_pid,
                h.ready_after
            );
            shutdown.stop(StopReason::HandedOver(h.child_pid));
        }
        Err(e @ (UpgradeError::InProgress | UpgradeError::HandedOver(_))) => {
            tracing::warn!("upgrade refused: {e}");
        }
        Err(e) => tracing::error!("upgrade failed, still serving: {e}"),
    }
}
