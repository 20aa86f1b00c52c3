//! `--dispatch`: baton alone watches the listening sockets and hands each
//! connection to an idle worker of the serving generation.
//!
//! # Theory of operation
//!
//! Every worker of a generation started with `--dispatch` has a channel, a
//! `SOCK_SEQPACKET` socket pair (`worker.rs` makes it; the worker's end is
//! `BATON_DISPATCH_FD`). The protocol is in `docs/contract.md` ("The
//! dispatch protocol") and `baton_app::dispatch::proto`.
//!
//! * **Who gets connections**: the workers of the generation the lifecycle
//!   says serves ([`Lifecycle::serving`](crate::lifecycle::Lifecycle::serving)),
//!   if it was started with `--dispatch`, and only those that said
//!   `ready`, did not say `stopping`, and have a free credit. The moment
//!   another generation serves, the old one's workers are sent `end` and
//!   get nothing more: a reload switches traffic exactly when the new
//!   generation is ready. Until one serves, and once baton stops, nothing
//!   is accepted.
//! * **Which one**: `fifo` gives the next connection to the eligible worker
//!   that has waited longest since it was last given one; `least-loaded`
//!   to the one with the most free credits (then the one waiting longest).
//! * **Status first**: the loop reads every readable channel of a wake-up
//!   before it dispatches (a listener's event only marks it readable; the
//!   dispatching happens when the events are handled, in `settle`), so it
//!   knows of every worker that became idle.
//! * **pass**: baton accepts (`accept4`, non-blocking, close-on-exec) and
//!   sends the descriptor with `conn ID LISTENER`. It keeps its own copy
//!   until the worker says `taken`: if the worker dies or does not answer
//!   within `--dispatch-timeout` (it is then killed, by the lifecycle), the
//!   copy goes to another worker once the first is gone. A connection is
//!   never held by two live workers, and never lost to a dead one.
//! * **accept**: baton sends `accept ID INDEX LISTENER` to one idle worker
//!   and waits for `got` or `none` before it tells anyone else to accept
//!   on that listener (seed 004's synchronous hand-off: two workers are
//!   never sent for one connection).
//! * **Overload** (no eligible worker, or its channel full): `wait` leaves
//!   connections in the kernel's backlog; `close` accepts and closes them;
//!   `503` accepts, answers `503` with `Retry-After`, and closes gently
//!   (shut down, then what the client still sends is read and dropped for
//!   up to two seconds, so the answer is not lost to a reset). In pass
//!   mode, `--queue N` accepts up to N connections into baton's own queue
//!   first, each waiting at most `--queue-timeout`. Every such event is
//!   counted (`baton ctl status`).
//! * **Out of descriptors**: an `accept` failing with `EMFILE` (or
//!   `ENFILE`, `ENOBUFS`, `ENOMEM`) pauses accepting for 100 ms instead of
//!   retrying at once: the listener stays readable, and the loop would spin.
//! * **Upgrades**: the channels, every connection sent but not taken, the
//!   queue and the counters are carried across an in-place upgrade
//!   (`dispatch/carry.rs`); connections being rejected with a 503 are
//!   closed at the exec.

use std::collections::{HashMap, VecDeque};
use std::io::{IoSlice, Write as _};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_app::dispatch::proto::{self, FromWorker, ToWorker};
use mio::Token;
use rustix::net::{RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags};

use super::{Runtime, Source};
use crate::dispatch::{DispatchMode, DispatchOrder, DispatchSettings, Overload, RESPONSE_503};
use crate::lifecycle::{Event, GenId, ReadyMode, Slot};
use crate::listen::Bound;

mod carry;
mod lifetimes;

pub(super) use carry::{DispatchState, restore};

/// How long accepting pauses when baton is out of descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// How often running out of descriptors is said.
const EMFILE_REPORT_EVERY: Duration = Duration::from_secs(10);
/// How long a connection answered with a 503 is read from before it is
/// closed (so the client reads the answer instead of a reset).
const LINGER: Duration = Duration::from_secs(2);
/// The most connections being closed gently at once; more are closed at
/// once.
const MAX_LINGER: usize = 256;
/// A connection whose workers died this many times before taking it is
/// closed: it may be what kills them.
const MAX_TRIES: u32 = 3;

/// What baton counts about dispatching, over its whole life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct Counts {
    /// Connections sent to a worker (pass), or accepts a worker was told
    /// to do that took one (accept).
    pub(super) dispatched: u64,
    /// Connections sent again because the worker died or did not answer
    /// before it took them.
    pub(super) redispatched: u64,
    /// Workers killed for not answering in time.
    pub(super) timeouts: u64,
    /// Times connections had to wait because no worker was free
    /// (`--overload wait`, or a full queue).
    pub(super) waits: u64,
    /// Microseconds spent so, in all.
    pub(super) waited_us: u64,
    /// Connections accepted and closed at once (`--overload close`).
    pub(super) closed: u64,
    /// Connections answered with a 503 (`--overload 503`).
    pub(super) rejected_503: u64,
    /// Connections that waited in baton's queue (`--queue`).
    pub(super) queued: u64,
    /// Of those, the ones whose `--queue-timeout` passed.
    pub(super) queue_expired: u64,
    /// Accept failures that paused accepting (out of descriptors).
    pub(super) accept_errors: u64,
    /// Connections baton had accepted that no worker could take: baton
    /// stopped, dispatch was switched off by a reload, or they were closed
    /// after [`MAX_TRIES`] workers died holding them.
    pub(super) dropped: u64,
}

/// Where connections go now.
#[derive(Debug, Clone, Copy)]
struct Target {
    generation: GenId,
    settings: DispatchSettings,
}

/// A connection or an order sent to a worker and not answered yet.
#[derive(Debug)]
pub(super) struct Sent {
    pub(super) id: u64,
    /// Pass mode: baton's copy of the connection, until `taken`.
    pub(super) conn: Option<OwnedFd>,
    pub(super) listener: Arc<str>,
    pub(super) at: Instant,
    /// How many workers died holding it before.
    pub(super) tries: u32,
}

/// One worker's channel, and what baton knows of its load.
#[derive(Debug)]
pub(super) struct Chan {
    pub(super) fd: OwnedFd,
    pub(super) token: Token,
    pub(super) pid: u32,
    pub(super) spawned: Instant,
    /// It said `ready`.
    pub(super) ready: bool,
    pub(super) credits: u32,
    /// Pass mode: how many connections may share one packet (`batch N`).
    pub(super) batch: u32,
    /// Connections (or orders) sent and not `done` (or `none`) yet.
    pub(super) in_use: u32,
    pub(super) unacked: VecDeque<Sent>,
    /// baton sent `end`.
    pub(super) ended: bool,
    /// It said `stopping`.
    pub(super) stopping: bool,
    /// Reported for not answering, closed its end, or its channel broke:
    /// nothing more is sent to it.
    pub(super) dead: bool,
    /// Its channel was full: nothing is sent until it says something.
    pub(super) full: bool,
    pub(super) dispatched: u64,
    /// When it was last given something (a tick of [`Dispatcher::stamp`]).
    pub(super) stamp: u64,
    pub(super) protocol_errors: u64,
}

impl Chan {
    fn free(&self) -> u32 {
        self.credits.saturating_sub(self.in_use)
    }

    fn eligible(&self) -> bool {
        self.ready && !self.stopping && !self.ended && !self.dead && !self.full && self.free() > 0
    }
}

/// A connection baton accepted and holds until a worker takes it.
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) fd: OwnedFd,
    pub(super) listener: Arc<str>,
    pub(super) since: Instant,
    pub(super) tries: u32,
}

/// A listener baton watches for the serving generation.
#[derive(Debug)]
struct Watched {
    bound: Arc<Bound>,
    name: Arc<str>,
    token: Token,
    /// Its position in the generation's listeners (fd `3 + index` in an
    /// accept-mode worker).
    index: usize,
    /// Possibly has a connection waiting (edge-triggered: cleared on
    /// `EAGAIN`, or when a poll says so).
    readable: bool,
    /// Accept mode: the worker told to accept on it, and the order's id.
    commanded: Option<((GenId, Slot), u64)>,
}

/// A connection answered with a 503, read from until the client closes.
#[derive(Debug)]
struct Linger {
    fd: OwnedFd,
    until: Instant,
}

/// The loop's dispatch state (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Dispatcher {
    target: Option<Target>,
    pub(super) chans: HashMap<(GenId, Slot), Chan>,
    pub(super) queue: VecDeque<Queued>,
    watched: Vec<Watched>,
    lingering: HashMap<Token, Linger>,
    pub(super) next_id: u64,
    stamp: u64,
    pub(super) counts: Counts,
    paused_until: Option<Instant>,
    emfile_reported: Option<Instant>,
    /// Since when connections wait for a worker.
    starved_since: Option<Instant>,
    /// Next listener to accept from (round robin).
    next_listener: usize,
    /// The settings of the last generation connections went to: their
    /// timeout still holds for what was sent under them.
    last: Option<DispatchSettings>,
    /// Accept-mode orders outstanding when this image took over from the
    /// previous one (listener name, worker, id): restored into the watched
    /// listeners once they are watched again.
    pub(super) carried_orders: Vec<(String, (GenId, Slot), u64)>,
    /// The packet being sent (see `send_conns`).
    packet: Vec<u8>,
    /// What the channel being read said (see `on_channel`).
    inbox: Vec<Result<FromWorker, String>>,
    /// One packet's messages, as parsed.
    parsed: Vec<FromWorker>,
    /// How long the recent connections lived (see `per_packet`).
    lifetimes: lifetimes::Lifetimes,
}

impl Runtime {
    /// Worker `slot` of generation `g`'s dispatch figures, for `baton ctl
    /// status` (if the process `pid` has a channel).
    pub(super) fn dispatch_of_worker(
        &self,
        g: GenId,
        slot: Slot,
        pid: Option<u32>,
    ) -> Option<crate::control::WorkerDispatch> {
        let c = self.dispatch.chans.get(&(g, slot))?;
        (Some(c.pid) == pid).then_some(crate::control::WorkerDispatch {
            ready: c.ready,
            credits: c.credits,
            batch: c.batch,
            active: c.in_use,
            dispatched: c.dispatched,
        })
    }

    /// Dispatching as a whole, for `baton ctl status`; `None` when baton
    /// never dispatched and does not now.
    pub(super) fn dispatch_status(&self) -> Option<crate::control::DispatchStatus> {
        let d = &self.dispatch;
        let settings = d.target.map(|t| t.settings).or(d.last)?;
        let c = d.counts();
        Some(crate::control::DispatchStatus {
            mode: d
                .target
                .map_or("none", |t| t.settings.mode.as_str())
                .to_owned(),
            order: settings.order.as_str().to_owned(),
            overload: settings.overload.as_str().to_owned(),
            queue_limit: settings.queue,
            queued_now: d.queue.len(),
            dispatched: c.dispatched,
            redispatched: c.redispatched,
            timeouts: c.timeouts,
            waits: c.waits,
            waited_ms: c.waited_us / 1000,
            closed: c.closed,
            rejected_503: c.rejected_503,
            queued: c.queued,
            queue_expired: c.queue_expired,
            accept_errors: c.accept_errors,
            dropped: c.dropped,
            slack: d.slack_now(),
            short_lived: d.lifetimes.short_lived(),
        })
    }
}

impl Dispatcher {
    /// The counters, with the wait in progress counted so far.
    pub(super) fn counts(&self) -> Counts {
        let mut c = self.counts;
        if let Some(since) = self.starved_since {
            c.waited_us += micros(since.elapsed());
        }
        c
    }

    /// The eligible worker that gets the next connection.
    fn pick(&self, target: &Target) -> Option<(GenId, Slot)> {
        let candidates = self
            .chans
            .iter()
            .filter(|((g, _), c)| *g == target.generation && c.eligible());
        match target.settings.order {
            DispatchOrder::Fifo => candidates.min_by_key(|(_, c)| c.stamp).map(|(k, _)| *k),
            DispatchOrder::LeastLoaded => candidates
                .max_by(|(_, a), (_, b)| {
                    a.free().cmp(&b.free()).then_with(|| b.stamp.cmp(&a.stamp))
                })
                .map(|(k, _)| *k),
        }
    }

    /// How many connections one packet to worker `key` may carry: what it
    /// said with `batch`, within its free credits, and never more than
    /// keeps it within one connection of the least loaded other worker of
    /// its generation that could take one (at least 1). A burst of
    /// long-lived connections (the keep-alive clients of a new deploy) must
    /// spread as evenly as one per packet would spread it. When the recent
    /// connections were all short-lived and the workers outnumber the
    /// CPUs, "one" becomes the `slack` of `lifetimes.rs` (at most 4).
    fn per_packet(&self, key: (GenId, Slot)) -> usize {
        let Some(chan) = self.chans.get(&key) else {
            return 1;
        };
        let mut workers = 1;
        let mut least = None::<u32>;
        for (_, c) in self
            .chans
            .iter()
            .filter(|(k, c)| k.0 == key.0 && **k != key && c.eligible())
        {
            workers += 1;
            least = Some(least.map_or(c.in_use, |l| l.min(c.in_use)));
        }
        let slack = self.lifetimes.slack(workers, lifetimes::cpus());
        let fair = least.map_or(u32::MAX, |least| {
            (least + slack).saturating_sub(chan.in_use)
        });
        chan.batch.min(chan.free()).min(fair).max(1) as usize
    }

    /// How far above the least loaded other worker a packet may take a
    /// worker of the serving generation now (1: exactly even).
    fn slack_now(&self) -> u32 {
        let Some(target) = self.target else {
            return 1;
        };
        let workers = self
            .chans
            .iter()
            .filter(|(k, c)| k.0 == target.generation && c.eligible())
            .count();
        self.lifetimes.slack(workers, lifetimes::cpus())
    }

    /// How long a worker may take to answer.
    fn timeout(&self) -> Duration {
        self.target
            .map(|t| t.settings)
            .or(self.last)
            .map_or(crate::dispatch::defaults::TIMEOUT, |s| s.timeout)
    }

    fn tick(&mut self) -> u64 {
        self.stamp += 1;
        self.stamp
    }
}

pub(super) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Sends `msg` (with `conn`'s descriptor, if any) on a channel.
fn send(fd: &OwnedFd, msg: &ToWorker, conn: Option<&OwnedFd>) -> rustix::io::Result<()> {
    send_text(fd, msg.encode().as_bytes(), conn)
}

/// Sends one encoded packet (with `conn`'s descriptor, if any).
fn send_text(fd: &OwnedFd, text: &[u8], conn: Option<&OwnedFd>) -> rustix::io::Result<()> {
    match conn {
        None => rustix::net::send(fd, text, SendFlags::NOSIGNAL | SendFlags::DONTWAIT).map(|_| ()),
        Some(c) => send_fds(fd, text, &[c.as_fd()]),
    }
}

/// Sends one packet with descriptors (at most [`proto::MAX_BATCH`]).
fn send_fds(fd: &OwnedFd, text: &[u8], fds: &[BorrowedFd<'_>]) -> rustix::io::Result<()> {
    let iov = [IoSlice::new(text)];
    let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
    let mut space =
        [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(proto::MAX_BATCH as usize))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(rustix::io::Errno::INVAL);
    }
    rustix::net::sendmsg(fd, &iov, &mut control, flags).map(|_| ())
}

/// Whether `fd` has a connection waiting (a zero-timeout poll).
fn has_waiting(fd: &OwnedFd) -> bool {
    let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
    matches!(
        rustix::event::poll(&mut fds, Some(&rustix::time::Timespec::default())),
        Ok(n) if n > 0
    )
}

impl Runtime {
    /// A new worker's channel (see `workers::on_started`).
    pub(super) fn dispatch_adopt(
        &mut self,
        g: GenId,
        slot: Slot,
        pid: u32,
        token: Token,
        fd: OwnedFd,
    ) {
        if let Some(old) = self.dispatch.chans.remove(&(g, slot)) {
            // A previous incarnation of the slot: gone already, normally.
            self.chan_gone((g, slot), old);
        }
        let stamp = self.dispatch.tick();
        self.dispatch.chans.insert(
            (g, slot),
            Chan {
                fd,
                token,
                pid,
                spawned: Instant::now(),
                ready: false,
                credits: 1,
                batch: 1,
                in_use: 0,
                unacked: VecDeque::new(),
                ended: false,
                stopping: false,
                dead: false,
                full: false,
                dispatched: 0,
                stamp,
                protocol_errors: 0,
            },
        );
    }

    /// A worker's channel is readable: every packet it holds is read and
    /// acted on.
    pub(super) fn on_channel(&mut self, g: GenId, slot: Slot) {
        let key = (g, slot);
        let mut buf = [0u8; proto::MAX_MESSAGE + 1];
        let mut eof = false;
        // Every message of every packet, in order (an unreadable packet as
        // its error), in a buffer kept between calls: this runs for about
        // every connection.
        let mut inbox = std::mem::take(&mut self.dispatch.inbox);
        let mut parsed = std::mem::take(&mut self.dispatch.parsed);
        {
            let Some(chan) = self.dispatch.chans.get_mut(&key) else {
                self.dispatch.inbox = inbox;
                self.dispatch.parsed = parsed;
                return;
            };
            loop {
                // Plain recv: a descriptor a worker might send is closed
                // by the kernel, never received.
                match rustix::net::recv(&chan.fd, &mut buf, RecvFlags::DONTWAIT) {
                    Ok((0, _)) => {
                        eof = true;
                        break;
                    }
                    Ok((n, len)) if len > n || n > proto::MAX_MESSAGE => inbox.push(Err(format!(
                        "a message longer than {} bytes",
                        proto::MAX_MESSAGE
                    ))),
                    Ok((n, _)) => match proto::parse_worker_into(&buf[..n], &mut parsed) {
                        Ok(()) => inbox.extend(parsed.drain(..).map(Ok)),
                        Err(e) => inbox.push(Err(e.to_string())),
                    },
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(rustix::io::Errno::INTR) => {}
                    Err(_) => {
                        eof = true;
                        break;
                    }
                }
            }
            if !inbox.is_empty() {
                chan.full = false;
            }
        }
        for m in inbox.drain(..) {
            match m {
                Ok(m) => self.on_worker_message(key, m),
                Err(e) => self.protocol_error(key, &e),
            }
        }
        self.dispatch.inbox = inbox;
        self.dispatch.parsed = parsed;
        if eof && let Some(chan) = self.dispatch.chans.get_mut(&key) {
            // Its end is closed: it exited (its pidfd says so next), or it
            // closed the descriptor. Either way nothing can be sent to it.
            chan.dead = true;
            let (fd, token) = (chan.fd.as_raw_fd(), chan.token);
            let _ = self
                .poll
                .registry()
                .deregister(&mut mio::unix::SourceFd(&fd));
            self.tokens.remove(&token);
            tracing::trace!("the dispatch channel of worker {slot} of generation {g} closed");
        }
    }

    fn protocol_error(&mut self, (g, slot): (GenId, Slot), what: &str) {
        let Some(chan) = self.dispatch.chans.get_mut(&(g, slot)) else {
            return;
        };
        chan.protocol_errors += 1;
        // Said once per worker; the count is in `ctl status`.
        if chan.protocol_errors == 1 {
            tracing::warn!(
                "worker {slot} of generation {g} (pid {}): {what}; ignored (the dispatch protocol is in docs/contract.md)",
                chan.pid
            );
        }
    }

    fn on_worker_message(&mut self, key: (GenId, Slot), msg: FromWorker) {
        let (g, slot) = key;
        let Some(chan) = self.dispatch.chans.get_mut(&key) else {
            return;
        };
        match msg {
            FromWorker::Ready { credits } => {
                let first = !chan.ready;
                chan.ready = true;
                chan.credits = credits;
                if first {
                    tracing::debug!(
                        "worker {slot} of generation {g} (pid {}) is ready for connections ({credits} at once)",
                        chan.pid
                    );
                    let by_dispatch = self
                        .generations
                        .get(&g)
                        .and_then(|r| r.spec.as_ref())
                        .is_some_and(|s| s.ready == ReadyMode::Dispatch);
                    if by_dispatch {
                        self.queue.push_back(Event::WorkerReady {
                            generation: g,
                            slot,
                        });
                    }
                }
            }
            FromWorker::Taken(id) => {
                if let Some(i) = chan.unacked.iter().position(|s| s.id == id) {
                    // baton's copy of the connection closes here.
                    chan.unacked.remove(i);
                } else {
                    tracing::trace!("worker {slot} of generation {g}: taken {id} (not waiting)");
                }
            }
            FromWorker::Done(id) => {
                if let Some(i) = chan.unacked.iter().position(|s| s.id == id) {
                    chan.unacked.remove(i);
                }
                chan.in_use = chan.in_use.saturating_sub(1);
                self.dispatch.lifetimes.done(id, Instant::now());
            }
            FromWorker::Got(id) | FromWorker::Nothing(id) => {
                let answered = chan.unacked.iter().position(|s| s.id == id);
                if let Some(i) = answered {
                    chan.unacked.remove(i);
                }
                if matches!(msg, FromWorker::Nothing(_)) && answered.is_some() {
                    chan.in_use = chan.in_use.saturating_sub(1);
                } else if matches!(msg, FromWorker::Got(_)) && answered.is_some() {
                    chan.dispatched += 1;
                    self.dispatch.counts.dispatched += 1;
                }
                // The listener may be told to someone else now; whether a
                // connection is still waiting on it, a poll says.
                for w in &mut self.dispatch.watched {
                    if w.commanded.is_some_and(|(k, i)| k == key && i == id) {
                        w.commanded = None;
                        w.readable = has_waiting(&w.bound.fd);
                    }
                }
            }
            FromWorker::Batch { max } => chan.batch = max.clamp(1, proto::MAX_BATCH),
            FromWorker::Stopping => {
                chan.stopping = true;
                tracing::debug!(
                    "worker {slot} of generation {g} (pid {}) is stopping: it gets no more connections",
                    chan.pid
                );
                self.end_chan(key);
            }
        }
    }

    /// Sends `end` (once): nothing more goes to this worker.
    fn end_chan(&mut self, key: (GenId, Slot)) {
        if let Some(chan) = self.dispatch.chans.get_mut(&key)
            && !chan.ended
        {
            chan.ended = true;
            if let Err(e) = send(&chan.fd, &ToWorker::End, None) {
                tracing::debug!(
                    "cannot say end to worker {} of generation {}: {e}",
                    key.1,
                    key.0
                );
            }
        }
    }

    /// A worker exited: what it held but had not taken goes to another.
    pub(super) fn dispatch_worker_gone(&mut self, g: GenId, slot: Slot) {
        if let Some(chan) = self.dispatch.chans.remove(&(g, slot)) {
            self.chan_gone((g, slot), chan);
        }
    }

    /// Generation `g` is gone: so are its channels.
    pub(super) fn dispatch_release(&mut self, g: GenId) {
        let keys: Vec<(GenId, Slot)> = self
            .dispatch
            .chans
            .keys()
            .filter(|(cg, _)| *cg == g)
            .copied()
            .collect();
        for key in keys {
            self.dispatch_worker_gone(key.0, key.1);
        }
    }

    fn chan_gone(&mut self, key: (GenId, Slot), mut chan: Chan) {
        if !chan.dead || self.tokens.contains_key(&chan.token) {
            let fd = chan.fd.as_raw_fd();
            let _ = self
                .poll
                .registry()
                .deregister(&mut mio::unix::SourceFd(&fd));
            self.tokens.remove(&chan.token);
        }
        // Newest first, so that pushed to the front they keep their order.
        while let Some(sent) = chan.unacked.pop_back() {
            match sent.conn {
                Some(fd) => {
                    let tries = sent.tries + 1;
                    if tries >= MAX_TRIES {
                        self.dispatch.counts.dropped += 1;
                        tracing::warn!(
                            "connection {} is closed: {tries} workers died holding it (it may be what kills them)",
                            sent.id
                        );
                        continue;
                    }
                    self.dispatch.counts.redispatched += 1;
                    tracing::debug!(
                        "connection {} goes to another worker: worker {} of generation {} did not take it",
                        sent.id,
                        key.1,
                        key.0
                    );
                    self.dispatch.queue.push_front(Queued {
                        fd,
                        listener: sent.listener,
                        since: sent.at,
                        tries,
                    });
                }
                None => {
                    // An order to accept: the connection, if the worker did
                    // not take it, still waits on the listener.
                    for w in &mut self.dispatch.watched {
                        if w.commanded.is_some_and(|(k, id)| k == key && id == sent.id) {
                            w.commanded = None;
                            w.readable = true;
                        }
                    }
                }
            }
        }
    }

    /// Follows the lifecycle: connections go to the serving generation if
    /// it dispatches, to nobody otherwise. Called after every event.
    pub(super) fn dispatch_follow_serving(&mut self) {
        let serving = if self.machine.is_stopping() {
            None
        } else {
            self.machine.serving()
        };
        let want = serving.and_then(|g| {
            let spec = self.generations.get(&g)?.spec.as_ref()?;
            spec.dispatch.map(|settings| Target {
                generation: g,
                settings,
            })
        });
        let now_gen = self.dispatch.target.map(|t| t.generation);
        if want.map(|t| t.generation) == now_gen {
            return;
        }
        if let Some(t) = want {
            tracing::debug!(
                "new connections go to generation {} ({} mode)",
                t.generation,
                t.settings.mode.as_str()
            );
        }
        self.dispatch.target = want;
        if let Some(t) = want {
            self.dispatch.last = Some(t.settings);
        }
        // Everyone else gets nothing more.
        let others: Vec<(GenId, Slot)> = self
            .dispatch
            .chans
            .keys()
            .filter(|(g, _)| Some(*g) != want.map(|t| t.generation))
            .copied()
            .collect();
        for key in others {
            self.end_chan(key);
        }
        self.watch_listeners();
        if want.is_none() {
            self.end_starvation();
            let n = self.dispatch.queue.len();
            if n > 0 {
                // Nobody will take them: baton stops, or the new
                // generation accepts for itself.
                self.dispatch.counts.dropped += n as u64;
                self.dispatch.queue.clear();
                tracing::info!(
                    "closed {n} connection{} baton held: no generation takes connections from it any more",
                    if n == 1 { "" } else { "s" }
                );
            }
        }
    }

    /// Watches the listeners of the generation connections go to.
    fn watch_listeners(&mut self) {
        for w in std::mem::take(&mut self.dispatch.watched) {
            self.deregister_fd(&w.bound.fd, w.token);
        }
        let Some(target) = self.dispatch.target else {
            return;
        };
        let Some(spec) = self
            .generations
            .get(&target.generation)
            .and_then(|r| r.spec.clone())
        else {
            return;
        };
        for (index, bound) in spec.listeners.iter().enumerate() {
            // Shared with every process that holds it (the file's flags):
            // accepting must never block the loop, and an accept-mode
            // worker accepts non-blocking too.
            if let Err(e) = rustix::io::ioctl_fionbio(&bound.fd, true) {
                tracing::warn!("cannot make {} non-blocking: {e}", bound.display);
            }
            // An order carried over an upgrade still waits for its answer.
            let carried = self
                .dispatch
                .carried_orders
                .iter()
                .position(|(name, _, _)| *name == bound.name)
                .map(|i| self.dispatch.carried_orders.swap_remove(i))
                .map(|(_, key, id)| (key, id));
            match self.register_fd(&bound.fd, Source::Listener(self.dispatch.watched.len())) {
                Ok(token) => self.dispatch.watched.push(Watched {
                    bound: Arc::clone(bound),
                    name: bound.name.as_str().into(),
                    token,
                    index,
                    // Connections may be waiting already: look.
                    readable: true,
                    commanded: carried,
                }),
                Err(e) => tracing::error!(
                    "cannot watch {} for connections: {e}; it gets none",
                    bound.display
                ),
            }
        }
    }

    /// A watched listener is readable.
    pub(super) fn on_listener(&mut self, i: usize) {
        if let Some(w) = self.dispatch.watched.get_mut(i) {
            w.readable = true;
        }
    }

    /// Hands out what can be handed out now: queued connections first,
    /// then new ones, until no worker is free or nothing waits. Runs after
    /// the events of each wake-up (so every channel was read first).
    pub(super) fn pump_dispatch(&mut self) {
        let Some(target) = self.dispatch.target else {
            return;
        };
        match target.settings.mode {
            DispatchMode::Pass => self.pump_pass(&target),
            DispatchMode::Accept => self.pump_accept(&target),
        }
        let waiting = !self.dispatch.queue.is_empty()
            || self
                .dispatch
                .watched
                .iter()
                .any(|w| w.readable && w.commanded.is_none());
        let starved = waiting && self.dispatch.pick(&target).is_none();
        if starved {
            if self.dispatch.starved_since.is_none() {
                self.dispatch.starved_since = Some(Instant::now());
                self.dispatch.counts.waits += 1;
                tracing::trace!("connections wait: no worker is free");
            }
        } else {
            self.end_starvation();
        }
    }

    fn end_starvation(&mut self) {
        if let Some(since) = self.dispatch.starved_since.take() {
            self.dispatch.counts.waited_us += micros(since.elapsed());
        }
    }

    fn accept_paused(&mut self) -> bool {
        match self.dispatch.paused_until {
            Some(at) if Instant::now() < at => true,
            Some(_) => {
                self.dispatch.paused_until = None;
                false
            }
            None => false,
        }
    }

    fn pump_pass(&mut self, target: &Target) {
        loop {
            // Queued connections first, in order: each free worker gets as
            // many as one of its packets takes. A worker that cannot take
            // them is left out by `pick` from then on (full or dead).
            while !self.dispatch.queue.is_empty() {
                let Some(key) = self.dispatch.pick(target) else {
                    break;
                };
                self.send_conns(key);
            }
            if self.accept_paused() {
                return;
            }
            let Some(li) = self.next_readable() else {
                return;
            };
            let free = if self.dispatch.queue.is_empty() {
                self.dispatch.pick(target)
            } else {
                None
            };
            if let Some(key) = free {
                // As many as the free worker takes in one packet (those
                // waiting now, up to that): sent at the top of the loop.
                let want = self.dispatch.per_packet(key);
                self.accept_into_queue(li, want);
                continue;
            }
            let room = self.dispatch.queue.len() < target.settings.queue;
            if !room && target.settings.overload == Overload::Wait {
                // The kernel's backlog holds them until a worker is free.
                return;
            }
            let Some(fd) = self.accept_on(li) else {
                continue;
            };
            let name = Arc::clone(&self.dispatch.watched[li].name);
            if room {
                self.dispatch.counts.queued += 1;
                self.dispatch.queue.push_back(Queued {
                    fd,
                    listener: name,
                    since: Instant::now(),
                    tries: 0,
                });
            } else {
                self.reject(fd, target.settings.overload);
            }
        }
    }

    /// Accepts up to `want` connections, from listener `li` first, then
    /// from the other readable ones, into the queue (for a free worker:
    /// they are not counted as queued).
    fn accept_into_queue(&mut self, mut li: usize, want: usize) {
        let mut got = 0;
        loop {
            if let Some(fd) = self.accept_on(li) {
                let name = Arc::clone(&self.dispatch.watched[li].name);
                self.dispatch.queue.push_back(Queued {
                    fd,
                    listener: name,
                    since: Instant::now(),
                    tries: 0,
                });
                got += 1;
                if got >= want {
                    return;
                }
                continue;
            }
            if self.accept_paused() {
                return;
            }
            match self.next_readable() {
                Some(next) => li = next,
                None => return,
            }
        }
    }

    fn pump_accept(&mut self, target: &Target) {
        for li in 0..self.dispatch.watched.len() {
            loop {
                let w = &self.dispatch.watched[li];
                if !w.readable || w.commanded.is_some() {
                    break;
                }
                if let Some(key) = self.dispatch.pick(target) {
                    self.send_accept(key, li);
                    break;
                }
                // No worker is free: the policy decides.
                if target.settings.overload == Overload::Wait || self.accept_paused() {
                    break;
                }
                if let Some(fd) = self.accept_on(li) {
                    self.reject(fd, target.settings.overload);
                }
            }
        }
    }

    /// The next watched listener that may have a connection, round robin.
    fn next_readable(&mut self) -> Option<usize> {
        let n = self.dispatch.watched.len();
        (0..n)
            .map(|k| (self.dispatch.next_listener + k) % n)
            .find(|&i| self.dispatch.watched[i].readable)
            .inspect(|&i| self.dispatch.next_listener = (i + 1) % n.max(1))
    }

    /// One connection from listener `li`, or `None` (nothing waits: the
    /// listener is marked so; or accepting is paused).
    fn accept_on(&mut self, li: usize) -> Option<OwnedFd> {
        let w = &mut self.dispatch.watched[li];
        loop {
            match rustix::net::accept_with(
                &w.bound.fd,
                SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            ) {
                Ok(fd) => return Some(fd),
                Err(rustix::io::Errno::AGAIN) => {
                    w.readable = false;
                    return None;
                }
                // The client gave up before its connection was accepted.
                Err(
                    rustix::io::Errno::INTR
                    | rustix::io::Errno::CONNABORTED
                    | rustix::io::Errno::PROTO,
                ) => {}
                Err(
                    e @ (rustix::io::Errno::MFILE
                    | rustix::io::Errno::NFILE
                    | rustix::io::Errno::NOBUFS
                    | rustix::io::Errno::NOMEM),
                ) => {
                    self.dispatch.counts.accept_errors += 1;
                    self.dispatch.paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                    let now = Instant::now();
                    if self
                        .dispatch
                        .emfile_reported
                        .is_none_or(|at| now.saturating_duration_since(at) >= EMFILE_REPORT_EVERY)
                    {
                        self.dispatch.emfile_reported = Some(now);
                        tracing::warn!(
                            "cannot accept a connection on {} ({e}): baton is out of file descriptors; pausing accepts for {} ms (raise the limit with LimitNOFILE= or ulimit -n, or lower --queue)",
                            w.bound.display,
                            ACCEPT_PAUSE.as_millis()
                        );
                    }
                    return None;
                }
                Err(e) => {
                    // Not a reason to spin either.
                    self.dispatch.counts.accept_errors += 1;
                    self.dispatch.paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                    tracing::warn!("accept on {} failed: {e}", w.bound.display);
                    return None;
                }
            }
        }
    }

    /// Sends worker `key` the connections at the front of the queue, as
    /// many as one packet to it takes (see [`Dispatcher::per_packet`]);
    /// they stay
    /// queued if the channel cannot take them (the worker is then left out
    /// until it speaks, or for good if the channel broke).
    fn send_conns(&mut self, key: (GenId, Slot)) {
        let stamp = self.dispatch.tick();
        let d = &mut self.dispatch;
        let per_packet = d.per_packet(key);
        let Some(chan) = d.chans.get_mut(&key) else {
            return;
        };
        let Some(first) = d.queue.front() else {
            return;
        };
        // The packet: `conn ID LISTENER` lines, written into a buffer kept
        // for it, with the descriptors in the same order. This runs for
        // about every connection, and allocates nothing.
        let mut fds = [first.fd.as_fd(); proto::MAX_BATCH as usize];
        let mut n = 0;
        d.packet.clear();
        for q in d.queue.iter().take(per_packet) {
            // The longest line: "conn", an id of 20 digits, the name.
            let line = 27 + q.listener.len();
            if n > 0 && d.packet.len() + line > proto::MAX_MESSAGE {
                break;
            }
            if n > 0 {
                d.packet.push(b'\n');
            }
            let _ = write!(d.packet, "conn {} {}", d.next_id + n as u64, q.listener);
            fds[n] = q.fd.as_fd();
            n += 1;
        }
        match send_fds(&chan.fd, &d.packet, &fds[..n]) {
            Ok(()) => {
                chan.in_use += n as u32;
                chan.dispatched += n as u64;
                chan.stamp = stamp;
                let now = Instant::now();
                for q in d.queue.drain(..n) {
                    let id = d.next_id;
                    d.next_id += 1;
                    d.lifetimes.sent(id, now);
                    if q.tries == 0 {
                        d.counts.dispatched += 1;
                    }
                    tracing::trace!(
                        "connection {id} to worker {} of generation {}",
                        key.1,
                        key.0
                    );
                    chan.unacked.push_back(Sent {
                        id,
                        conn: Some(q.fd),
                        listener: q.listener,
                        at: now,
                        tries: q.tries,
                    });
                }
            }
            Err(rustix::io::Errno::AGAIN) => {
                chan.full = true;
                tracing::debug!(
                    "the dispatch channel of worker {} of generation {} is full: it is not reading",
                    key.1,
                    key.0
                );
            }
            Err(e) => {
                chan.dead = true;
                tracing::debug!(
                    "cannot send a connection to worker {} of generation {}: {e}",
                    key.1,
                    key.0
                );
            }
        }
    }

    /// Tells worker `key` to accept one connection on listener `li`.
    fn send_accept(&mut self, key: (GenId, Slot), li: usize) {
        let id = self.dispatch.next_id;
        let stamp = self.dispatch.tick();
        let (index, name) = {
            let w = &self.dispatch.watched[li];
            (w.index, Arc::clone(&w.name))
        };
        let Some(chan) = self.dispatch.chans.get_mut(&key) else {
            return;
        };
        let msg = ToWorker::Accept {
            id,
            index,
            listener: name.to_string(),
        };
        match send(&chan.fd, &msg, None) {
            Ok(()) => {
                self.dispatch.next_id += 1;
                chan.in_use += 1;
                chan.stamp = stamp;
                let now = Instant::now();
                self.dispatch.lifetimes.sent(id, now);
                chan.unacked.push_back(Sent {
                    id,
                    conn: None,
                    listener: name,
                    at: now,
                    tries: 0,
                });
                self.dispatch.watched[li].commanded = Some((key, id));
            }
            Err(rustix::io::Errno::AGAIN) => chan.full = true,
            Err(_) => chan.dead = true,
        }
    }

    /// Refuses a connection by the overload policy.
    fn reject(&mut self, fd: OwnedFd, how: Overload) {
        match how {
            Overload::Http503 if self.dispatch.lingering.len() < MAX_LINGER => {
                self.dispatch.counts.rejected_503 += 1;
                // A fresh socket's buffer takes the whole answer at once;
                // whatever does not fit is not worth waiting for.
                let _ = rustix::io::write(&fd, RESPONSE_503);
                let _ = rustix::net::shutdown(&fd, rustix::net::Shutdown::Write);
                // The token names the connection (Source::Linger carries it).
                let token = Token(self.next_token);
                self.next_token += 1;
                match self.poll.registry().register(
                    &mut mio::unix::SourceFd(&fd.as_raw_fd()),
                    token,
                    mio::Interest::READABLE,
                ) {
                    Ok(()) => {
                        self.tokens.insert(token, Source::Linger(token.0));
                        self.dispatch.lingering.insert(
                            token,
                            Linger {
                                fd,
                                until: Instant::now() + LINGER,
                            },
                        );
                    }
                    Err(e) => tracing::debug!("cannot watch a refused connection: {e}"),
                }
            }
            Overload::Http503 => {
                self.dispatch.counts.rejected_503 += 1;
                let _ = rustix::io::write(&fd, RESPONSE_503);
            }
            Overload::Close | Overload::Wait => self.dispatch.counts.closed += 1,
        }
    }

    /// A connection answered with a 503 has something to read (the
    /// client's request, or its close).
    pub(super) fn on_linger(&mut self, token: usize) {
        let token = Token(token);
        let Some(l) = self.dispatch.lingering.get(&token) else {
            return;
        };
        let mut buf = [0u8; 4096];
        let done = loop {
            match rustix::io::read(&l.fd, &mut buf) {
                Ok(0) => break true,
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => break false,
                Err(_) => break true,
            }
        };
        if done && let Some(l) = self.dispatch.lingering.remove(&token) {
            self.deregister_fd(&l.fd, token);
        }
    }

    /// When the next dispatch deadline is due.
    pub(super) fn dispatch_deadline(&self) -> Option<Instant> {
        let d = &self.dispatch;
        let target = d.target;
        let timeout = d.timeout();
        let unacked = d
            .chans
            .values()
            .filter(|c| !c.dead)
            .filter_map(|c| c.unacked.front().map(|s| s.at + timeout));
        let queue = target
            .filter(|t| t.settings.queue > 0)
            .and_then(|t| d.queue.front().map(|q| q.since + t.settings.queue_timeout));
        let pending = target.and_then(|t| {
            d.chans
                .iter()
                .filter(|((g, _), c)| *g == t.generation && !c.ready && !c.dead)
                .map(|(_, c)| c.spawned + self.settings.policy.ready_timeout)
                .min()
        });
        unacked
            .chain(queue)
            .chain(pending)
            .chain(d.lingering.values().map(|l| l.until))
            .chain(d.paused_until)
            .min()
    }

    /// Acts on the deadlines that passed: a worker that did not answer is
    /// reported (and killed by the lifecycle), a queued connection whose
    /// time is up is refused, a lingering one closed.
    pub(super) fn expire_dispatch(&mut self, now: Instant) {
        if self.dispatch.chans.is_empty()
            && self.dispatch.queue.is_empty()
            && self.dispatch.lingering.is_empty()
        {
            return;
        }
        let timeout = self.dispatch.timeout();
        let ready_timeout = self.settings.policy.ready_timeout;
        let target_gen = self.dispatch.target.map(|t| t.generation);
        let mut late = Vec::new();
        for ((g, slot), c) in &mut self.dispatch.chans {
            if c.dead {
                continue;
            }
            let what = if let Some(s) = c.unacked.front().filter(|s| now >= s.at + timeout) {
                Some(match s.conn {
                    Some(_) => format!(
                        "did not take connection {} within {} (--dispatch-timeout)",
                        s.id,
                        humantime::format_duration(timeout)
                    ),
                    None => format!(
                        "did not answer the order to accept {} within {} (--dispatch-timeout)",
                        s.id,
                        humantime::format_duration(timeout)
                    ),
                })
            } else if Some(*g) == target_gen && !c.ready && now >= c.spawned + ready_timeout {
                Some(format!(
                    "did not say ready on its dispatch channel within {} (--ready-timeout)",
                    humantime::format_duration(ready_timeout)
                ))
            } else {
                None
            };
            if let Some(what) = what {
                c.dead = true;
                late.push((*g, *slot, c.pid, what));
            }
        }
        for (generation, slot, pid, what) in late {
            self.dispatch.counts.timeouts += 1;
            self.queue.push_back(Event::WorkerUnresponsive {
                generation,
                slot,
                pid,
                what,
            });
        }
        if let Some(t) = self.dispatch.target.filter(|t| t.settings.queue > 0) {
            while self
                .dispatch
                .queue
                .front()
                .is_some_and(|q| now >= q.since + t.settings.queue_timeout)
            {
                if let Some(q) = self.dispatch.queue.pop_front() {
                    self.dispatch.counts.queue_expired += 1;
                    let how = match t.settings.overload {
                        Overload::Http503 => Overload::Http503,
                        Overload::Close | Overload::Wait => Overload::Close,
                    };
                    self.reject(q.fd, how);
                }
            }
        }
        let expired: Vec<Token> = self
            .dispatch
            .lingering
            .iter()
            .filter(|(_, l)| now >= l.until)
            .map(|(t, _)| *t)
            .collect();
        for token in expired {
            if let Some(l) = self.dispatch.lingering.remove(&token) {
                self.deregister_fd(&l.fd, token);
            }
        }
    }
}
