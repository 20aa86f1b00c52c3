//! `baton ctl status`: the lines about `--dispatch` (apart from the rest
//! of the report so that it stays readable as both grow).

use baton_supervisor::control::{DispatchStatus, WorkerDispatch};

/// The dispatch block, after the listeners.
pub fn print_summary(d: &DispatchStatus) {
    let queue = if d.queue_limit > 0 {
        format!(", queue {}/{}", d.queued_now, d.queue_limit)
    } else {
        String::new()
    };
    // 1: a packet never takes a worker more than one connection above
    // the least loaded other; more after a run of short-lived connections.
    let spread = if d.slack > 1 {
        format!(
            "spread within {} connections (recent connections short-lived)",
            d.slack
        )
    } else {
        "spread exact".to_owned()
    };
    println!(
        "dispatch: {} ({}, overload {}{queue}); {spread}",
        d.mode, d.order, d.overload
    );
    println!(
        "  connections: {} dispatched, {} sent again after their worker died, {} dropped; {} workers killed for not answering",
        d.dispatched, d.redispatched, d.dropped, d.timeouts
    );
    println!(
        "  overload: waited {} times ({} ms in all), {} closed, {} answered 503, {} queued ({} timed out), {} accept errors",
        d.waits, d.waited_ms, d.closed, d.rejected_503, d.queued, d.queue_expired, d.accept_errors
    );
}

/// A worker's cell in the status table's DISPATCH column: connections
/// it holds of those it takes at once, and how many it was given.
pub fn worker_cell(w: Option<&WorkerDispatch>) -> String {
    match w {
        None => "-".to_owned(),
        Some(w) if !w.ready => "not ready".to_owned(),
        Some(w) => format!("{}/{}, {} in all", w.active, w.credits, w.dispatched),
    }
}
