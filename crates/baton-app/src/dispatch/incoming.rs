//! The dispatch channel on tokio: a stream of connections for an async
//! server, which plugs into [`crate::serve::serve`] like a listener.
//!
//! [`Incoming`] says `ready CREDITS` at its first poll, answers each
//! connection (`taken`, or in accept mode `got`/`none`) as it hands it
//! out, and each [`Connection`] says `done` when it is dropped. In a drain
//! ([`Incoming::drain_next`], which `serve` calls), it says `stopping` and
//! hands out what baton had already sent until baton's `end`, so no
//! connection sent just before the stop is left behind.
//!
//! # Fewer packets
//!
//! Every packet costs a `send` here, a `recv` (and often a wake-up) in
//! baton, on the same few cores the server runs on. So:
//!
//! * the connections waiting on the channel are received together (up to
//!   [`BURST`]) and answered with one `taken A B C`, sent before any of
//!   them is handed to the server (baton must know a connection is taken
//!   before the server reads from it: it would otherwise give it to another
//!   worker should this one die);
//! * `done` is not urgent (it only frees a credit): it waits in the outbox
//!   for a flusher task, which runs after the tasks already woken (so the
//!   connections closed meanwhile share its packet), or for the next
//!   `taken`, which carries it.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::sync::Notify;

use super::channel::{self, Channel, DispatchError, Received, Stream};
use super::proto::{FromWorker, Mode};
use crate::Listener;

/// Connections an async server takes at once unless told otherwise.
pub const DEFAULT_CREDITS: u32 = 1024;

/// The most connections received from the channel in one go (and answered
/// in one `taken` packet).
pub const BURST: usize = 32;

/// The channel and the answers waiting to go out on it, shared with every
/// connection (which says `done` from its `Drop`).
#[derive(Debug)]
struct Shared {
    /// The channel, registered with tokio's reactor for reading only
    /// (`baton_sys::tokio_fd`: tokio has no `SOCK_SEQPACKET` type, and its
    /// socket types would also register for writing, which wakes this
    /// worker for nothing each time baton reads one of its packets). Sends
    /// never wait: what the channel cannot take stays in the outbox.
    fd: AsyncFd<OwnedFd>,
    /// Messages not sent yet: `done`s waiting for the flusher (or the next
    /// message), or anything the channel was too full for (baton is not
    /// reading). They go out with the next message.
    outbox: Mutex<Vec<FromWorker>>,
    /// Wakes the flusher task: a `done` waits in the outbox.
    flush: Arc<Notify>,
}

impl Shared {
    /// Queues `msg` and sends everything queued, without waiting.
    fn post(&self, msg: FromWorker) {
        self.post_all(std::iter::once(msg));
    }

    /// Queues `msgs` and sends everything queued (in as few packets as
    /// fit), without waiting.
    fn post_all(&self, msgs: impl IntoIterator<Item = FromWorker>) {
        let mut outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
        outbox.extend(msgs);
        Self::send_outbox(&self.fd, &mut outbox);
    }

    /// Queues `msg` for the flusher: it goes out at the end of this tick
    /// of the runtime, or sooner with another message.
    fn post_later(&self, msg: FromWorker) {
        self.outbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(msg);
        // A permit is kept if the flusher is busy: none is lost.
        self.flush.notify_one();
    }

    /// Sends what the outbox holds, if anything.
    fn flush(&self) {
        let mut outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
        if !outbox.is_empty() {
            Self::send_outbox(&self.fd, &mut outbox);
        }
    }

    fn send_outbox(fd: &AsyncFd<OwnedFd>, outbox: &mut Vec<FromWorker>) {
        match channel::send_on(fd.as_fd(), outbox) {
            Ok(()) => outbox.clear(),
            // Kept for the next message; baton's dispatch timeout bounds
            // what a stuck channel costs.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // baton is gone (EPIPE): nobody is left to tell.
            Err(e) => {
                tracing::debug!("dispatch channel: {e}");
                outbox.clear();
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The last connection (or the Incoming) is gone: what waits goes
        // now, and the flusher, finding nothing to flush for, ends.
        self.flush();
        self.flush.notify_one();
    }
}

/// Sends the `done`s the outbox holds once the tasks woken before it have
/// run (see the module docs). Ends with the channel.
///
/// Woken by the first `done`, it runs after the tasks already queued: the
/// connections that became readable in the same poll of the reactor, which
/// often close too. (`yield_now` would wait for the end of the tick, but
/// costs one more `epoll_wait` each time.)
async fn flusher(shared: Weak<Shared>, flush: Arc<Notify>) {
    loop {
        flush.notified().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.flush();
    }
}

/// How many connections per packet the baton running this worker may send
/// (`BATON_DISPATCH_BATCH`, capped at [`super::proto::MAX_BATCH`]); `None` when it
/// sends one per packet.
fn batch_from_env() -> Option<u32> {
    std::env::var(super::proto::BATCH_VAR)
        .ok()?
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|&n| n > 1)
        .map(|n| n.min(super::proto::MAX_BATCH))
}

/// Connections from baton's dispatch channel (see the module docs).
#[derive(Debug)]
pub struct Incoming {
    shared: Arc<Shared>,
    mode: Mode,
    credits: u32,
    /// What `batch N` to say with `ready` (pass mode, when baton set
    /// `BATON_DISPATCH_BATCH`): connections baton may put in one packet.
    batch: Option<u32>,
    said_ready: bool,
    said_stopping: bool,
    /// baton said `end`, or closed the channel: nothing more comes.
    ended: bool,
    /// Accept mode: the inherited listeners by index, non-blocking.
    listeners: Vec<Option<Listener>>,
    /// Connections received (and answered) and not handed out yet.
    handed: std::collections::VecDeque<io::Result<Connection>>,
}

impl Incoming {
    /// The channel baton set up (`BATON_DISPATCH_FD`); in accept mode, with
    /// every inherited listener (`LISTEN_FDS`), taken here. `None` when
    /// baton runs this worker without `--dispatch`. In pass mode it asks
    /// for several connections per packet (`batch`, at most its credits)
    /// when the baton offers it (`BATON_DISPATCH_BATCH`). Call it inside a
    /// tokio runtime, once.
    pub fn from_env(credits: u32) -> Result<Option<Self>, DispatchError> {
        let Some(chan) = Channel::from_env()? else {
            return Ok(None);
        };
        let mut listeners = Vec::new();
        if chan.mode() == Mode::Accept {
            let mut inherited = crate::Inherited::from_env().map_err(|e| DispatchError::Claim {
                fd: crate::listeners::LISTEN_FDS_START,
                source: io::Error::other(e),
            })?;
            for i in 0..inherited.len() {
                let l = inherited.take_at(i).map_err(|e| DispatchError::Claim {
                    fd: crate::listeners::LISTEN_FDS_START + i as i32,
                    source: io::Error::other(e),
                })?;
                listeners.push(l);
            }
        }
        let mut incoming = Self::new(chan, listeners, credits)
            .map_err(|source| DispatchError::Claim { fd: -1, source })?;
        // The baton that set the channel up says whether it sends several
        // connections per packet to a worker that asks (pass mode only).
        if incoming.mode == Mode::Pass {
            incoming.batch = batch_from_env()
                .map(|b| b.min(incoming.credits))
                .filter(|&b| b > 1);
        }
        Ok(Some(incoming))
    }

    /// From a channel and, for accept mode, the listeners at fds 3.. in
    /// order. `credits` is how many connections this worker serves at once
    /// (1 to 65,536). Call it inside a tokio runtime.
    pub fn new(chan: Channel, listeners: Vec<Option<Listener>>, credits: u32) -> io::Result<Self> {
        chan.set_nonblocking(true)?;
        for l in listeners.iter().flatten() {
            match l {
                Listener::Tcp(t) => t.set_nonblocking(true)?,
                Listener::Unix(u) => u.set_nonblocking(true)?,
            }
        }
        let mode = chan.mode();
        let credits = credits.clamp(1, super::proto::MAX_CREDITS);
        let (fd, pending) = chan.into_parts();
        let sock = baton_sys::tokio_fd::register(fd, Interest::READABLE)?;
        let flush = Arc::new(Notify::new());
        let shared = Arc::new(Shared {
            fd: sock,
            outbox: Mutex::new(Vec::new()),
            flush: Arc::clone(&flush),
        });
        tokio::spawn(flusher(Arc::downgrade(&shared), flush));
        let mut incoming = Self {
            shared,
            mode,
            credits,
            batch: None,
            said_ready: false,
            said_stopping: false,
            ended: false,
            listeners,
            handed: std::collections::VecDeque::new(),
        };
        // What the channel's `recv` had read already: answered now and
        // handed out first.
        let mut conns = Vec::new();
        for m in pending {
            incoming.absorb(m, &mut conns);
        }
        incoming.answer(conns);
        Ok(incoming)
    }

    /// Pass or accept.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The next connection. Says `ready` first, the first time.
    pub async fn accept(&mut self) -> io::Result<Connection> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// In a drain: says `stopping` (once), then returns the connections
    /// baton sent before it heard, until its `end` (`None`). Serve them
    /// like the others: their clients are waiting.
    pub async fn drain_next(&mut self) -> Option<io::Result<Connection>> {
        std::future::poll_fn(|cx| self.poll_drain(cx)).await
    }

    /// [`Incoming::accept`], as a poll.
    pub fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Connection>> {
        match self.poll_next(cx, false) {
            Poll::Ready(Some(r)) => Poll::Ready(r),
            // Nothing more will come: the stop signal is on its way.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    /// [`Incoming::drain_next`], as a poll.
    pub fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Connection>>> {
        self.poll_next(cx, true)
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        draining: bool,
    ) -> Poll<Option<io::Result<Connection>>> {
        if draining {
            if self.ended {
                return Poll::Ready(None);
            }
            if !self.said_stopping {
                self.said_stopping = true;
                self.shared.post(FromWorker::Stopping);
            }
        } else if !self.said_ready {
            self.said_ready = true;
            // One packet: `ready 1024 batch 16`.
            let ready = FromWorker::Ready {
                credits: self.credits,
            };
            match self.batch {
                Some(max) => self.shared.post_all([ready, FromWorker::Batch { max }]),
                None => self.shared.post(ready),
            }
        }
        loop {
            if let Some(conn) = self.handed.pop_front() {
                return Poll::Ready(Some(conn));
            }
            if self.ended {
                return if draining {
                    Poll::Ready(None)
                } else {
                    Poll::Pending
                };
            }
            // Dropped at once: `receive_burst` clears the readiness when
            // it has read everything.
            let _ = ready!(self.shared.fd.poll_read_ready(cx))?;
            self.receive_burst();
        }
    }

    /// Receives what waits on the channel (at most [`BURST`] messages),
    /// answers every connection in one `taken` packet, and queues them in
    /// `handed`, followed by an error the server must hear, if one ended
    /// the burst. Otherwise it ends when the channel has nothing more (its
    /// readiness is then cleared), or after `BURST` messages.
    fn receive_burst(&mut self) {
        let mut conns: Vec<(u64, String, Stream)> = Vec::new();
        let mut failed = None;
        // One packet's messages (several after `batch`).
        let mut packet = std::collections::VecDeque::new();
        let mut messages = 0;
        while messages < BURST && !self.ended {
            let sock = &self.shared.fd;
            // `try_io` clears the readiness on WouldBlock (read
            // everything there was: poll again) and passes the rest on.
            match sock.try_io(Interest::READABLE, |fd| {
                channel::recv_into(fd.as_fd(), &mut packet)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        "baton closed the dispatch channel: no more connections will come"
                    );
                    self.ended = true;
                    break;
                }
                // A message this worker cannot read is skipped, said once.
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    tracing::warn!("dispatch channel: {e}");
                    messages += 1;
                    continue;
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
            for m in packet.drain(..) {
                messages += 1;
                self.absorb(m, &mut conns);
            }
        }
        self.answer(conns);
        if let Some(e) = failed {
            self.handed.push_back(Err(e));
        }
    }

    /// One message from baton: a connection joins `conns` (answered by
    /// [`Incoming::answer`]); an order to accept is carried out.
    fn absorb(&mut self, m: Received, conns: &mut Vec<(u64, String, Stream)>) {
        match m {
            Received::Conn {
                id,
                listener,
                stream,
            } => conns.push((id, listener, stream)),
            Received::Accept {
                id,
                index,
                listener,
            } => {
                if let Some(conn) = self.accept_one(id, index, &listener) {
                    self.handed.push_back(conn);
                }
            }
            Received::End => self.ended = true,
        }
    }

    /// Says `taken` for `conns` in one packet, then queues them to be
    /// handed out.
    fn answer(&mut self, conns: Vec<(u64, String, Stream)>) {
        if conns.is_empty() {
            return;
        }
        // Said before any of them reaches the server (module docs).
        self.shared
            .post_all(conns.iter().map(|(id, _, _)| FromWorker::Taken(*id)));
        for (id, listener, stream) in conns {
            let conn = self.connection(id, &listener, stream);
            self.handed.push_back(conn);
        }
    }

    /// Accept mode: accepts one connection from listener `index` as told;
    /// answers `got` or `none`.
    fn accept_one(&mut self, id: u64, index: usize, name: &str) -> Option<io::Result<Connection>> {
        // Non-blocking from the start, as baton's own accepts are: the
        // connection goes to tokio as it is.
        let flags = rustix::net::SocketFlags::NONBLOCK | rustix::net::SocketFlags::CLOEXEC;
        let accepted = match self.listeners.get(index).and_then(Option::as_ref) {
            Some(Listener::Tcp(l)) => rustix::net::accept_with(l, flags)
                .map_err(io::Error::from)
                .and_then(Stream::from_dispatched),
            Some(Listener::Unix(l)) => rustix::net::accept_with(l, flags)
                .map_err(io::Error::from)
                .map(|fd| Stream::Unix(fd.into())),
            None => {
                tracing::warn!(
                    "baton asked to accept on listener {index} ({name}), which this worker does not have"
                );
                Err(io::Error::from(io::ErrorKind::NotFound))
            }
        };
        match accepted {
            Ok(stream) => {
                self.shared.post(FromWorker::Got(id));
                Some(self.connection(id, name, stream))
            }
            Err(e) => {
                self.shared.post(FromWorker::Nothing(id));
                match e.kind() {
                    // Nothing there (the client gave up first).
                    io::ErrorKind::WouldBlock
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::Interrupted
                    | io::ErrorKind::NotFound => None,
                    // Out of descriptors and the like: the server hears.
                    _ => Some(Err(e)),
                }
            }
        }
    }

    fn connection(&self, id: u64, listener: &str, stream: Stream) -> io::Result<Connection> {
        // Said `taken` (or `got`) already: whatever happens now, `done`
        // follows when the guard drops.
        let done = DoneGuard {
            id,
            shared: Arc::clone(&self.shared),
        };
        // Non-blocking already (baton accepts so, and so does
        // `accept_one`), and a TCP one has TCP_NODELAY
        // (`Stream::from_dispatched`): two system calls per connection
        // fewer.
        let stream = match stream {
            Stream::Tcp(s) => TokioStream::Tcp(tokio::net::TcpStream::from_std(s)?),
            Stream::Unix(s) => TokioStream::Unix(tokio::net::UnixStream::from_std(s)?),
        };
        Ok(Connection {
            stream,
            listener: listener.into(),
            done,
        })
    }
}

/// Says `done ID` when dropped (after the stream: fields drop in order).
#[derive(Debug)]
struct DoneGuard {
    id: u64,
    shared: Arc<Shared>,
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.shared.post_later(FromWorker::Done(self.id));
    }
}

/// A connection's socket.
#[derive(Debug)]
pub enum TokioStream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// A connection from baton. Dropping it closes the socket, then tells
/// baton the credit is free.
#[derive(Debug)]
pub struct Connection {
    stream: TokioStream,
    listener: Box<str>,
    done: DoneGuard,
}

impl Connection {
    /// The id baton gave it (in its logs as `connection ID`).
    pub fn id(&self) -> u64 {
        self.done.id
    }

    /// The name of the listener it came in on (`LISTEN_FDNAMES`).
    pub fn listener(&self) -> &str {
        &self.listener
    }

    /// The socket.
    pub fn stream(&self) -> &TokioStream {
        &self.stream
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            TokioStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            TokioStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            TokioStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            TokioStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            TokioStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            TokioStream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            TokioStream::Tcp(s) => s.is_write_vectored(),
            TokioStream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            TokioStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            TokioStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            TokioStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            TokioStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::mem::MaybeUninit;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What each test starts from: a runtime, the two ends of a channel
    /// (baton's and the worker's) and a listener clients connect to.
    struct Setup {
        rt: tokio::runtime::Runtime,
        baton: OwnedFd,
        worker: OwnedFd,
        listener: std::net::TcpListener,
        addr: std::net::SocketAddr,
    }

    fn setup() -> Setup {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (baton, worker) = channel::seqpacket_pair();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        Setup {
            rt,
            baton,
            worker,
            listener,
            addr,
        }
    }

    /// A pass-mode `Incoming` of 8 credits on the worker's end (inside the
    /// runtime: it spawns its flusher).
    /// `n` clients of `listener` and their connections, accepted as baton
    /// accepts them.
    fn connected(
        listener: &std::net::TcpListener,
        addr: std::net::SocketAddr,
        n: usize,
    ) -> (Vec<std::net::TcpStream>, Vec<std::net::TcpStream>) {
        (0..n)
            .map(|_| {
                let client = std::net::TcpStream::connect(addr).expect("connect");
                (client, accept_like_baton(listener).0)
            })
            .unzip()
    }

    /// A connection accepted as baton accepts it: non-blocking.
    fn accept_like_baton(
        listener: &std::net::TcpListener,
    ) -> (std::net::TcpStream, std::net::SocketAddr) {
        let (s, addr) = listener.accept().expect("accept");
        s.set_nonblocking(true).expect("non-blocking");
        (s, addr)
    }

    fn pass_incoming(worker: OwnedFd) -> Incoming {
        let chan = Channel::new(worker, Mode::Pass).expect("channel");
        Incoming::new(chan, Vec::new(), 8).expect("incoming")
    }

    fn baton_says(to: &OwnedFd, text: &str, fd: Option<std::os::fd::BorrowedFd<'_>>) {
        let fds: Vec<_> = fd.into_iter().collect();
        baton_sends(to, text, &fds);
    }

    fn baton_sends(to: &OwnedFd, text: &str, fds: &[std::os::fd::BorrowedFd<'_>]) {
        let mut space = [MaybeUninit::<u8>::uninit();
            rustix::cmsg_space!(ScmRights(super::super::proto::MAX_BATCH as usize))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        }
        rustix::net::sendmsg(
            to,
            &[io::IoSlice::new(text.as_bytes())],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .expect("sendmsg");
    }

    fn worker_said(from: &OwnedFd) -> String {
        let mut buf = [0u8; 1024];
        let (n, _) = rustix::net::recv(from, &mut buf, RecvFlags::empty()).expect("recv");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// The whole life of a connection, and a drain that collects the one
    /// baton sent before it heard `stopping`.
    /// What the worker says next, from inside its runtime: a `done` goes
    /// out only once the flusher task has run, so this yields to it
    /// instead of blocking the runtime (bounded: a lost `done` fails).
    async fn worker_says(from: &OwnedFd) -> String {
        let mut buf = [0u8; 1024];
        let wait = async {
            loop {
                match rustix::net::recv(from, &mut buf, RecvFlags::DONTWAIT) {
                    Ok((n, _)) => return String::from_utf8_lossy(&buf[..n]).into_owned(),
                    Err(rustix::io::Errno::AGAIN) => tokio::task::yield_now().await,
                    Err(e) => panic!("recv: {e}"),
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), wait)
            .await
            .expect("the worker said nothing within 10 s")
    }

    /// Connections waiting together are answered with one `taken`, and
    /// the `done`s of connections closed in one tick share a packet: a
    /// packet per message costs baton a `recv` (and often a wake-up) each.
    #[test]
    fn a_burst_of_connections_is_answered_in_one_packet_and_their_dones_in_another() {
        let Setup {
            rt,
            baton,
            worker,
            listener,
            addr,
        } = setup();
        rt.block_on(async {
            let mut incoming = pass_incoming(worker);
            let mut clients = Vec::new();
            for id in 1..=3 {
                clients.push(std::net::TcpStream::connect(addr).expect("connect"));
                let (accepted, _) = accept_like_baton(&listener);
                baton_says(&baton, &format!("conn {id} web"), Some(accepted.as_fd()));
            }
            let mut conns = Vec::new();
            for _ in 0..3 {
                conns.push(incoming.accept().await.expect("a connection"));
            }
            let ids: Vec<u64> = conns.iter().map(Connection::id).collect();
            assert_eq!(ids, [1, 2, 3], "in the order baton sent them");
            assert_eq!(worker_says(&baton).await, "ready 8");
            assert_eq!(worker_says(&baton).await, "taken 1 2 3");
            drop(conns);
            assert_eq!(worker_says(&baton).await, "done 1 2 3");
        });
    }

    /// After `batch N` (said with `ready`), baton may put several
    /// connections in one packet, a line each with its descriptor in the
    /// same order: all arrive, in order, answered with one `taken`. A packet
    /// whose lines and descriptors do not match is skipped whole (its
    /// descriptors closed), and what follows still arrives.
    #[test]
    fn batched_connections_arrive_in_order_and_are_answered_together() {
        let Setup {
            rt,
            baton,
            worker,
            listener,
            addr,
        } = setup();
        rt.block_on(async {
            let mut incoming = pass_incoming(worker);
            incoming.batch = Some(4);
            let (_clients, accepted) = connected(&listener, addr, 5);
            let fds: Vec<_> = accepted.iter().map(AsFd::as_fd).collect();
            baton_sends(&baton, "conn 1 web\nconn 2 admin\nconn 3 web", &fds[..3]);
            baton_sends(&baton, "conn 4 web\nconn 5 web", &fds[3..4]);
            baton_sends(&baton, "conn 6 web", &fds[4..5]);
            let mut conns = Vec::new();
            for _ in 0..4 {
                conns.push(incoming.accept().await.expect("a connection"));
            }
            let got: Vec<(u64, &str)> = conns.iter().map(|c| (c.id(), c.listener())).collect();
            assert_eq!(got, [(1, "web"), (2, "admin"), (3, "web"), (6, "web")]);
            assert_eq!(worker_says(&baton).await, "ready 8 batch 4");
            assert_eq!(worker_says(&baton).await, "taken 1 2 3 6");
        });
    }

    /// A channel whose blocking `recv` read a packet of two connections
    /// and handed out one: the other is not lost when the channel becomes
    /// an `Incoming` (it is answered and handed out first).
    #[test]
    fn what_a_channel_had_read_is_handed_out_by_the_incoming_made_from_it() {
        let Setup {
            rt,
            baton,
            worker,
            listener,
            addr,
        } = setup();
        let (_clients, accepted) = connected(&listener, addr, 2);
        let fds: Vec<_> = accepted.iter().map(AsFd::as_fd).collect();
        baton_sends(&baton, "conn 1 web\nconn 2 web", &fds);
        let chan = Channel::new(worker, Mode::Pass).expect("channel");
        let first = chan.recv().expect("recv").expect("a message");
        assert!(matches!(first, Received::Conn { id: 1, .. }), "{first:?}");
        rt.block_on(async {
            let mut incoming = Incoming::new(chan, Vec::new(), 8).expect("incoming");
            let conn = tokio::time::timeout(std::time::Duration::from_secs(10), incoming.accept())
                .await
                .expect("the second connection within 10 s (not dropped)")
                .expect("a connection");
            assert_eq!(conn.id(), 2);
            assert_eq!(worker_says(&baton).await, "taken 2");
        });
    }

    #[test]
    fn ready_taken_done_and_a_drain_that_leaves_nothing_behind() {
        let Setup {
            rt,
            baton,
            worker,
            listener,
            addr,
        } = setup();
        rt.block_on(async {
            let mut incoming = pass_incoming(worker);
            let mut client = std::net::TcpStream::connect(addr).expect("connect");
            let (accepted, _) = accept_like_baton(&listener);
            baton_says(&baton, "conn 1 web", Some(accepted.as_fd()));
            drop(accepted);
            let mut conn = incoming.accept().await.expect("a connection");
            assert_eq!((conn.id(), conn.listener()), (1, "web"));
            assert_eq!(worker_said(&baton), "ready 8");
            assert_eq!(worker_said(&baton), "taken 1");
            std::io::Write::write_all(&mut client, b"hi").expect("write");
            let mut buf = [0u8; 2];
            conn.read_exact(&mut buf).await.expect("read");
            conn.write_all(b"ok").await.expect("write");
            drop(conn);
            assert_eq!(worker_says(&baton).await, "done 1");

            // Sent before baton heard the worker stop: still served.
            let _late = std::net::TcpStream::connect(addr).expect("connect");
            let (accepted, _) = accept_like_baton(&listener);
            baton_says(&baton, "conn 2 web", Some(accepted.as_fd()));
            drop(accepted);
            let owed = incoming.drain_next().await.expect("owed").expect("ok");
            assert_eq!(owed.id(), 2);
            assert_eq!(worker_said(&baton), "stopping");
            assert_eq!(worker_said(&baton), "taken 2");
            baton_says(&baton, "end", None);
            assert!(incoming.drain_next().await.is_none(), "end ends the drain");
            drop(owed);
            assert_eq!(worker_says(&baton).await, "done 2");
        });
    }

    #[test]
    fn accept_mode_accepts_when_told_and_says_none_when_there_is_nothing() {
        let Setup {
            rt,
            baton,
            worker,
            listener,
            addr,
        } = setup();
        // baton's side, on a thread of its own: it waits for each answer.
        let baton_side = std::thread::spawn(move || {
            baton_says(&baton, "accept 5 0 web", None);
            assert_eq!(worker_said(&baton), "ready 1");
            assert_eq!(worker_said(&baton), "none 5", "nothing to accept yet");
            let client = std::net::TcpStream::connect(addr).expect("connect");
            baton_says(&baton, "accept 6 0 web", None);
            assert_eq!(worker_said(&baton), "got 6");
            (baton, client)
        });
        rt.block_on(async {
            let chan = Channel::new(worker, Mode::Accept).expect("channel");
            let mut incoming =
                Incoming::new(chan, vec![Some(Listener::Tcp(listener))], 1).expect("incoming");
            let conn = incoming.accept().await.expect("a connection");
            assert_eq!(conn.id(), 6);
        });
        let _ = baton_side.join().expect("baton's side");
    }
}
