//! `--dispatch` across an in-place upgrade: the channels, the connections
//! sent but not taken, the queue, the accept orders outstanding and the
//! counters go into the state (`runtime/state.rs`), as descriptor numbers
//! and ages, and the new image takes them back.
//!
//! Carrying the queue (rather than emptying it before the exec) is what
//! keeps the upgrade invisible: a queued connection's client is waiting,
//! and the new image hands it to a worker as the old one would have.
//! Connections being closed after a 503 are not carried: they are closed at
//! the exec, their answer already sent.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_app::dispatch::proto;
use mio::Token;
use serde::{Deserialize, Serialize};

use super::{Chan, Counts, Dispatcher, Queued, Sent, micros};
use crate::lifecycle::{GenId, Slot};
use crate::runtime::Runtime;

fn one() -> u32 {
    1
}

#[derive(Debug, Serialize, Deserialize)]
pub(in crate::runtime) struct SentState {
    id: u64,
    /// Pass mode: baton's copy of the connection.
    fd: Option<RawFd>,
    listener: String,
    age_us: u64,
    #[serde(default)]
    tries: u32,
}

#[derive(Debug, Serialize, Deserialize)]
pub(in crate::runtime) struct ChanState {
    generation: GenId,
    slot: Slot,
    pid: u32,
    fd: RawFd,
    age_us: u64,
    ready: bool,
    credits: u32,
    /// Connections it takes per packet (`batch N`); 1 before it was carried.
    #[serde(default = "one")]
    batch: u32,
    in_use: u32,
    ended: bool,
    stopping: bool,
    dead: bool,
    dispatched: u64,
    #[serde(default)]
    protocol_errors: u64,
    unacked: Vec<SentState>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(in crate::runtime) struct QueuedState {
    fd: RawFd,
    listener: String,
    age_us: u64,
    #[serde(default)]
    tries: u32,
}

/// What an upgrade carries of dispatching.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(in crate::runtime) struct DispatchState {
    next_id: u64,
    counts: Counts,
    chans: Vec<ChanState>,
    queue: Vec<QueuedState>,
    /// Accept mode: orders not answered yet (listener name, worker, id).
    #[serde(default)]
    orders: Vec<(String, GenId, Slot, u64)>,
}

impl DispatchState {
    /// Every descriptor it names.
    pub(in crate::runtime) fn fds(&self) -> Vec<RawFd> {
        let mut v = Vec::new();
        for c in &self.chans {
            v.push(c.fd);
            v.extend(c.unacked.iter().filter_map(|s| s.fd));
        }
        v.extend(self.queue.iter().map(|q| q.fd));
        v
    }
}

impl Runtime {
    /// The dispatch state to hand over; `keep` records each descriptor.
    pub(in crate::runtime) fn capture_dispatch(
        &self,
        keep: &mut dyn FnMut(RawFd) -> RawFd,
    ) -> Option<DispatchState> {
        let d = &self.dispatch;
        if d.chans.is_empty() && d.queue.is_empty() && d.counts == Counts::default() {
            return None;
        }
        let now = Instant::now();
        let age = |t: Instant| micros(now.saturating_duration_since(t));
        let chans = d
            .chans
            .iter()
            .map(|((g, slot), c)| ChanState {
                generation: *g,
                slot: *slot,
                pid: c.pid,
                fd: keep(c.fd.as_raw_fd()),
                age_us: age(c.spawned),
                ready: c.ready,
                credits: c.credits,
                batch: c.batch,
                in_use: c.in_use,
                ended: c.ended,
                stopping: c.stopping,
                dead: c.dead,
                dispatched: c.dispatched,
                protocol_errors: c.protocol_errors,
                unacked: c
                    .unacked
                    .iter()
                    .map(|s| SentState {
                        id: s.id,
                        fd: s.conn.as_ref().map(|f| keep(f.as_raw_fd())),
                        listener: s.listener.to_string(),
                        age_us: age(s.at),
                        tries: s.tries,
                    })
                    .collect(),
            })
            .collect();
        let queue = d
            .queue
            .iter()
            .map(|q| QueuedState {
                fd: keep(q.fd.as_raw_fd()),
                listener: q.listener.to_string(),
                age_us: age(q.since),
                tries: q.tries,
            })
            .collect();
        let orders = d
            .watched
            .iter()
            .filter_map(|w| {
                w.commanded
                    .map(|((g, slot), id)| (w.name.to_string(), g, slot, id))
            })
            .collect();
        Some(DispatchState {
            next_id: d.next_id,
            counts: d.counts(),
            chans,
            queue,
            orders,
        })
    }
}

/// The dispatcher a state describes, its descriptors claimed with `claim`
/// (channels not registered yet: see `resume.rs`).
pub(in crate::runtime) fn restore(
    s: DispatchState,
    claim: &dyn Fn(RawFd, &str) -> Result<std::os::fd::OwnedFd, String>,
) -> Result<Dispatcher, String> {
    let now = Instant::now();
    let back = |us: u64| now.checked_sub(Duration::from_micros(us)).unwrap_or(now);
    let mut d = Dispatcher {
        next_id: s.next_id,
        counts: s.counts,
        ..Dispatcher::default()
    };
    for c in s.chans {
        let mut unacked = VecDeque::new();
        for sent in c.unacked {
            unacked.push_back(Sent {
                id: sent.id,
                conn: match sent.fd {
                    Some(fd) => Some(claim(fd, "a connection sent to a worker")?),
                    None => None,
                },
                listener: Arc::from(sent.listener.as_str()),
                at: back(sent.age_us),
                tries: sent.tries,
            });
        }
        let stamp = d.tick();
        d.chans.insert(
            (c.generation, c.slot),
            Chan {
                fd: claim(c.fd, "a worker's dispatch channel")?,
                token: Token(usize::MAX),
                pid: c.pid,
                spawned: back(c.age_us),
                ready: c.ready,
                credits: c.credits,
                batch: c.batch.clamp(1, proto::MAX_BATCH),
                in_use: c.in_use,
                unacked,
                ended: c.ended,
                stopping: c.stopping,
                dead: c.dead,
                full: false,
                dispatched: c.dispatched,
                stamp,
                protocol_errors: c.protocol_errors,
            },
        );
    }
    for q in s.queue {
        d.queue.push_back(Queued {
            fd: claim(q.fd, "a queued connection")?,
            listener: Arc::from(q.listener.as_str()),
            since: back(q.age_us),
            tries: q.tries,
        });
    }
    d.carried_orders = s
        .orders
        .into_iter()
        .map(|(name, g, slot, id)| (name, (g, slot), id))
        .collect();
    Ok(d)
}
