//! Serving HTTP/1.1 and HTTP/2 with hyper until a stop, then draining
//! without failing a request.
//!
//! ```no_run
//! use std::convert::Infallible;
//! use baton_app::serve::{serve, DrainConfig};
//! use baton_app::shutdown::Shutdown;
//! use http_body_util::Full;
//! use hyper::{body::Bytes, Request, Response};
//!
//! # async fn f(listener: tokio::net::TcpListener) -> std::io::Result<()> {
//! let shutdown = Shutdown::new();
//! shutdown.on_signals()?;
//! let service = hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello\n"))))
//! });
//! let report = serve(listener, service, &shutdown, DrainConfig::default()).await;
//! eprintln!("{report:?}");
//! # Ok(())
//! # }
//! ```
//!
//! An axum `Router` is served the same way, wrapped in hyper-util's
//! `TowerToHyperService` (see `examples/upgrade-server`).
//!
//! Each connection speaks HTTP/1.1 or HTTP/2, whichever the client opens
//! it with (hyper-util's `auto` builder tells them apart by the HTTP/2
//! connection preface): on a plain TCP listener that is HTTP/1.1 and h2c
//! with prior knowledge on the same port; with an [`Accept`] whose
//! connections are TLS streams, HTTP/2 negotiated by ALPN works the same
//! way.
//!
//! # Theory of operation
//!
//! [`serve`] accepts connections and serves each on its own task (counted
//! by a `TaskTracker`) until the [`Shutdown`] flag is set. Then it drains in
//! three steps:
//!
//! 1. **Stop accepting.** The listener is dropped. The socket itself stays
//!    open in the successor (or the supervisor), so connections waiting in
//!    the accept queue are not lost: the next process accepts them.
//!    **HTTP/2 connections get a `GOAWAY` at once** (hyper's
//!    `graceful_shutdown`), HTTP/2's own in-band "open a new connection":
//!    streams in progress are finished, and the client opens its next
//!    streams elsewhere. hyper sends it in two steps, as RFC 9113 §6.8
//!    advises (first with the highest stream id, then, after a PING round
//!    trip, with the last stream it took), so a stream the client sent
//!    before it read the first `GOAWAY` is still served. (A client that
//!    writes its PING acknowledgement ahead of streams it had already
//!    queued, as the `h2` crate's client does, can still have such a
//!    stream refused: the final `GOAWAY` declares it unprocessed, and the
//!    protocol lets the client send it again on a new connection.)
//! 2. **Grace ([`DrainConfig::grace`], default 1 s): keep serving, and
//!    answer every HTTP/1 request with `Connection: close`.** hyper closes
//!    each connection right after such a response, and the client learns
//!    *in band* that it must open a new connection for its next request,
//!    which the successor accepts. The step ends early when no connection
//!    is left.
//! 3. **hyper's `graceful_shutdown` for what remains**: a request in
//!    progress is finished, an idle HTTP/1 connection is closed, and an
//!    HTTP/2 connection that had not carried a request by step 1 gets its
//!    `GOAWAY`. The whole drain gives up at [`DrainConfig::deadline`];
//!    connections still open then are dropped.
//!
//! Why step 2: HTTP/1 has no `GOAWAY`. `graceful_shutdown` on its own
//! closes every idle keep-alive connection at once, without an answer. A
//! client that sends its next request on such a connection at that moment
//! (it cannot know) gets a reset or an end of file instead of a response.
//! The project measured it (`docs/architecture.md`, "Draining": under
//! keep-alive load, one failed request per open connection at every
//! hand-over); answering `Connection: close` for a short grace first took
//! that to zero. The demo server (`examples/demo-server`) uses the same
//! technique.
//!
//! Why 1 s: a connection that carries at least one request a second is
//! told in band; clients and proxies that keep connections alive reuse
//! them far more often. A connection idle for longer is about as likely to
//! be closed by the client's own idle timer as to be reused.
//!
//! Cost: `bench/upgrade` profiled this loop under keep-alive load; its own
//! code (the in-band wrapper, the tracker) is well under 1 % of the
//! server's time, which goes to the kernel's TCP and to hyper.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use hyper::body::{Body, Incoming};
use hyper::header::{CONNECTION, HeaderValue};
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::shutdown::{Shutdown, StopReason};

/// A listening socket [`serve`] can accept from.
pub trait Accept {
    /// An accepted connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Polls for the next connection.
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>>;

    /// Polls, once the drain began, for a connection that is already this
    /// server's although it was not accepted yet; `None` when there is no
    /// more. A listening socket has none (what waits in its queue is the
    /// successor's): the default. baton's dispatch channel has those baton
    /// sent before it heard this worker stop
    /// ([`crate::dispatch::Incoming::drain_next`]).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Self::Io>>> {
        let _ = cx;
        Poll::Ready(None)
    }
}

impl Accept for crate::dispatch::Incoming {
    type Io = crate::dispatch::Connection;
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        crate::dispatch::Incoming::poll_accept(self, cx)
    }
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Self::Io>>> {
        crate::dispatch::Incoming::poll_drain(self, cx)
    }
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        let (stream, _) = ready!(tokio::net::TcpListener::poll_accept(self, cx))?;
        // Responses are small and written at once: do not let Nagle hold
        // them back. Failing to set it is not a reason to drop the client.
        let _ = stream.set_nodelay(true);
        Poll::Ready(Ok(stream))
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        let (stream, _) = ready!(tokio::net::UnixListener::poll_accept(self, cx))?;
        Poll::Ready(Ok(stream))
    }
}

/// How a drain is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainConfig {
    /// How long to answer every HTTP/1 request with `Connection: close`
    /// before closing idle connections (default 1 s). HTTP/2 connections
    /// do not wait for it: they get a `GOAWAY` when the drain begins.
    pub grace: Duration,
    /// Bound on the whole drain, from the stop (default 20 s). Connections
    /// still open then are dropped.
    pub deadline: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(1),
            deadline: Duration::from_secs(20),
        }
    }
}

/// How a drain went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// Why serving stopped (the gravest reason seen by the end).
    pub reason: StopReason,
    /// Connections open when accepting stopped.
    pub open_at_stop: usize,
    /// Connections dropped at the deadline or on an immediate stop (0 for
    /// a clean drain).
    pub abandoned: usize,
    /// From the stop to the end of the drain.
    pub took: Duration,
}

/// Serves `service` on connections from `listener` until `shutdown` is set,
/// then drains (see the module docs) and returns how it went.
///
/// Accept errors (a peer that gave up, descriptors exhausted) are logged
/// and retried after 10 ms; they never end the server. Connection errors
/// are the client's doing and are not logged.
pub async fn serve<L, S, B>(
    listener: L,
    service: S,
    shutdown: &Shutdown,
    config: DrainConfig,
) -> DrainReport
where
    L: Accept,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_with(listener, service, shutdown, config, |_| {}).await
}

/// [`serve`], calling `on_drain` with the number of open connections at the
/// moment the drain begins: accepting has stopped and every response from
/// then on says `Connection: close`. (A server reports `STOPPING=1` there,
/// for example.)
pub async fn serve_with<L, S, B>(
    mut listener: L,
    service: S,
    shutdown: &Shutdown,
    config: DrainConfig,
    on_drain: impl FnOnce(usize),
) -> DrainReport
where
    L: Accept,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tracker = TaskTracker::new();
    let draining = Arc::new(AtomicBool::new(false));
    let drain_began = CancellationToken::new();
    let close_idle = CancellationToken::new();
    let abandon = CancellationToken::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true);
    let builder = Arc::new(builder);
    // Each connection, accepted or owed during the drain, is served alike:
    // answered in band, and told of the drain's stages.
    let serve_one = |io: L::Io| {
        let http2 = Arc::new(AtomicBool::new(false));
        let service = InBand {
            inner: service.clone(),
            draining: Arc::clone(&draining),
            http2: Arc::clone(&http2),
        };
        tracker.spawn(connection(
            Arc::clone(&builder),
            Lingering::new(io, Arc::clone(&draining)),
            service,
            http2,
            Stages {
                drain_began: drain_began.clone(),
                close_idle: close_idle.clone(),
                abandon: abandon.clone(),
            },
        ));
    };

    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.stopped() => break,
            accepted = std::future::poll_fn(|cx| listener.poll_accept(cx)) => accepted,
        };
        match accepted {
            Ok(io) => serve_one(io),
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    // Step 1: stop accepting (queued connections wait for the successor);
    // HTTP/2 connections get their GOAWAY. Connections that are already
    // ours (sent by baton's dispatch before it heard of the stop) are
    // served too, answered in band like the rest.
    draining.store(true, Ordering::SeqCst);
    let began = Instant::now();
    let deadline = tokio::time::Instant::from_std(began + config.deadline);
    loop {
        let owed = tokio::select! {
            biased;
            () = shutdown.immediate() => None,
            () = tokio::time::sleep_until(deadline) => None,
            owed = std::future::poll_fn(|cx| listener.poll_drain(cx)) => owed,
        };
        match owed {
            Some(Ok(io)) => serve_one(io),
            Some(Err(e)) => {
                tracing::warn!("while draining: {e}");
                break;
            }
            None => break,
        }
    }
    drop(listener);
    drain_began.cancel();
    tracker.close();
    on_drain(tracker.len());
    let open_at_stop = tracker.len();
    tracing::info!(
        "draining {open_at_stop} connection(s): {}",
        shutdown.reason().unwrap_or(StopReason::Requested)
    );

    // Step 2: answer in band with `Connection: close`.
    let grace_end = tokio::time::Instant::from_std(began + config.grace.min(config.deadline));
    let mut abandoned = 0;
    let drained = tokio::select! {
        () = tracker.wait() => true,
        () = tokio::time::sleep_until(grace_end) => false,
        () = shutdown.immediate() => {
            abandoned = tracker.len();
            abandon.cancel();
            true
        }
    };
    // Step 3: close idle connections, finish requests in progress.
    if !drained {
        close_idle.cancel();
        tokio::select! {
            () = tracker.wait() => {}
            () = tokio::time::sleep_until(deadline) => {
                abandoned = tracker.len();
                tracing::warn!("drain deadline passed: dropping {abandoned} connection(s)");
                abandon.cancel();
            }
            () = shutdown.immediate() => {
                abandoned = tracker.len();
                abandon.cancel();
            }
        }
    }
    if abandoned > 0 {
        // Give the tasks a moment to drop their sockets (closing them is
        // what the clients need to see), without waiting for anything else.
        let _ = tokio::time::timeout(Duration::from_millis(100), tracker.wait()).await;
    }
    DrainReport {
        reason: shutdown.reason().unwrap_or(StopReason::Requested),
        open_at_stop,
        abandoned,
        took: began.elapsed(),
    }
}

/// The drain's steps, as a connection task sees them.
struct Stages {
    /// Step 1: HTTP/2 connections send `GOAWAY`.
    drain_began: CancellationToken,
    /// Step 3: every connection left shuts down gracefully.
    close_idle: CancellationToken,
    /// The deadline passed, or an immediate stop: drop the connection.
    abandon: CancellationToken,
}

/// Serves one connection until it closes, is closed gracefully, or is
/// abandoned. `http2` is set by the service once a request came over
/// HTTP/2.
async fn connection<I, S, B>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    io: I,
    service: InBand<S>,
    http2: Arc<AtomicBool>,
    stages: Stages,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        () = stages.drain_began.cancelled() => {}
        () = stages.abandon.cancelled() => return,
    }
    // An HTTP/2 connection is told now; an HTTP/1 one (or one that has not
    // carried a request yet) is answered in band until the grace ends.
    // (Relaxed: the service sets the flag from within this task's own
    // poll of `conn`.)
    if !http2.load(Ordering::Relaxed) {
        // Biased: the connection first. A worker that wakes after a stall
        // with the grace over and a request already in its socket reads
        // that request before it closes what is idle; hyper then finishes
        // it (answered `Connection: close`) rather than closing the
        // connection under it.
        tokio::select! {
            biased;
            _ = conn.as_mut() => return,
            () = stages.close_idle.cancelled() => {}
            () = stages.abandon.cancelled() => return,
        }
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stages.abandon.cancelled() => {}
    }
}

/// How long a connection closed during the drain is read from after its
/// end of file was sent, at most.
const LINGER: Duration = Duration::from_millis(500);

/// A connection that, once the drain began, closes gently: when hyper shuts
/// it down (after a `Connection: close` answer, or an HTTP/2 `GOAWAY` and
/// the last stream), it sends its end of file and then reads and discards
/// what the client still sends until the client closes too (at most
/// [`LINGER`]).
///
/// Closing a socket with unread data in it makes the kernel answer with a
/// reset, and a reset can destroy what the client had not read yet: the
/// `GOAWAY` that told it to go elsewhere (an HTTP/2 client that was sending
/// new streams at that moment saw a broken pipe instead, in a run of
/// `tests/http2.rs`), or the last response. hyper closes the socket as soon
/// as it is done with it, so the waiting is done here, inside its shutdown.
struct Lingering<I> {
    io: I,
    draining: Arc<AtomicBool>,
    /// Set once the end of file is sent and the drain had begun.
    until: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<I> Lingering<I> {
    fn new(io: I, draining: Arc<AtomicBool>) -> Self {
        Self {
            io,
            draining,
            until: None,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Lingering<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.until.is_none() {
            ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
            if !this.draining.load(Ordering::Relaxed) {
                return Poll::Ready(Ok(()));
            }
            this.until = Some(Box::pin(tokio::time::sleep(LINGER)));
        }
        let mut scratch = [0u8; 1024];
        loop {
            let mut buf = tokio::io::ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.io).poll_read(cx, &mut buf) {
                // Data the client sent after all: discard it, read on.
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {}
                // Its end of file, or an error: nothing more to wait for.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    let until = this.until.as_mut().expect("set above");
                    return match until.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Ok(())),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}

/// Wraps a service so that, once draining, every HTTP/1 response says
/// `Connection: close`, and notes whether its connection speaks HTTP/2.
#[derive(Debug, Clone)]
struct InBand<S> {
    inner: S,
    draining: Arc<AtomicBool>,
    /// Set at the connection's first HTTP/2 request.
    http2: Arc<AtomicBool>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for InBand<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = InBandFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        // HTTP/2 forbids connection-specific headers (RFC 9113 §8.2.2):
        // its drain is the GOAWAY, not `Connection: close`.
        let http1 = req.version() < Version::HTTP_2;
        if !http1 {
            self.http2.store(true, Ordering::Relaxed);
        }
        InBandFuture {
            inner: self.inner.call(req),
            draining: http1.then(|| Arc::clone(&self.draining)),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`InBand`].
    struct InBandFuture<F> {
        #[pin]
        inner: F,
        // `None` for an HTTP/2 request.
        draining: Option<Arc<AtomicBool>>,
    }
}

impl<F, B, E> Future for InBandFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = ready!(this.inner.poll(cx));
        // Checked when the response is ready, so a request that was in
        // progress when the drain began is answered with it too.
        if let Ok(resp) = &mut result
            && let Some(draining) = this.draining
            && draining.load(Ordering::SeqCst)
        {
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Full;
    use std::convert::Infallible;
    use std::io::{Read, Write};

    async fn hi(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        Ok(Response::new(Full::new(Bytes::from_static(b"hi"))))
    }

    fn get(stream: &mut std::net::TcpStream) -> String {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let mut buf = vec![0u8; 1024];
        let mut got = 0;
        // Read until the 2-byte body has arrived.
        while !String::from_utf8_lossy(&buf[..got]).ends_with("hi") {
            let n = stream.read(&mut buf[got..]).expect("read");
            assert!(n > 0, "closed before a response");
            got += n;
        }
        String::from_utf8_lossy(&buf[..got]).to_lowercase()
    }

    /// Once the drain began, a shutdown waits for the client's end of file
    /// (discarding what it still sends) before it lets the socket be
    /// closed, so the kernel does not answer late bytes with a reset; at
    /// most `LINGER`. Before the drain it returns at once.
    #[test]
    fn a_connection_closed_while_draining_waits_for_the_client_to_close() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            // Not draining: nothing to wait for.
            let (ours, _theirs) = tokio::io::duplex(1024);
            let mut conn = Lingering::new(ours, Arc::new(AtomicBool::new(false)));
            tokio::time::timeout(Duration::from_millis(100), conn.shutdown())
                .await
                .expect("returns at once")
                .expect("shut down");

            // Draining: the client's late bytes are read, and the shutdown
            // ends when the client closes.
            let (ours, mut theirs) = tokio::io::duplex(1024);
            let mut conn = Lingering::new(ours, Arc::new(AtomicBool::new(true)));
            let shut = tokio::spawn(async move { conn.shutdown().await });
            let mut eof = Vec::new();
            theirs.read_to_end(&mut eof).await.expect("our end of file");
            assert!(eof.is_empty());
            theirs.write_all(b"late request").await.expect("still open");
            tokio::task::yield_now().await;
            assert!(!shut.is_finished(), "waited for the client");
            drop(theirs);
            tokio::time::timeout(Duration::from_millis(400), shut)
                .await
                .expect("done once the client closed")
                .expect("join")
                .expect("shut down");

            // A client that never closes is given up on after LINGER.
            let (ours, _theirs) = tokio::io::duplex(1024);
            let mut conn = Lingering::new(ours, Arc::new(AtomicBool::new(true)));
            let began = Instant::now();
            conn.shutdown().await.expect("shut down");
            assert!(began.elapsed() >= LINGER, "{:?}", began.elapsed());
        });
    }

    #[test]
    fn draining_answers_in_band_then_closes() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = std_listener.local_addr().expect("addr");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let shutdown = Shutdown::new();
        let server = {
            let shutdown = shutdown.clone();
            rt.spawn(async move {
                let l = tokio::net::TcpListener::from_std(std_listener).expect("tokio");
                let config = DrainConfig {
                    grace: Duration::from_secs(10),
                    deadline: Duration::from_secs(20),
                };
                serve(l, hyper::service::service_fn(hi), &shutdown, config).await
            })
        };
        let mut a = std::net::TcpStream::connect(addr).expect("connect");
        let first = get(&mut a);
        assert!(!first.contains("connection: close"), "{first}");
        shutdown.stop(StopReason::Requested);
        // The server task notices the stop asynchronously; from then on,
        // the next response on the kept-alive connection says close, and
        // the server closes it: the drain ends well before the grace.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let next = get(&mut a);
            if next.contains("connection: close") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never said close");
        }
        let mut rest = Vec::new();
        a.read_to_end(&mut rest).expect("eof");
        let report = rt.block_on(server).expect("join");
        assert_eq!(report.reason, StopReason::Requested);
        assert_eq!(report.open_at_stop, 1);
        assert_eq!(report.abandoned, 0);
        assert!(report.took < Duration::from_secs(10), "{report:?}");
    }

    #[test]
    fn idle_connections_are_closed_after_the_grace() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = std_listener.local_addr().expect("addr");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let shutdown = Shutdown::new();
        let server = {
            let shutdown = shutdown.clone();
            rt.spawn(async move {
                let l = tokio::net::TcpListener::from_std(std_listener).expect("tokio");
                let config = DrainConfig {
                    grace: Duration::from_millis(50),
                    deadline: Duration::from_secs(20),
                };
                serve(l, hyper::service::service_fn(hi), &shutdown, config).await
            })
        };
        let mut a = std::net::TcpStream::connect(addr).expect("connect");
        get(&mut a);
        shutdown.stop(StopReason::Requested);
        let report = rt.block_on(server).expect("join");
        assert_eq!(report.open_at_stop, 1);
        assert_eq!(report.abandoned, 0);
        let mut rest = Vec::new();
        a.read_to_end(&mut rest).expect("closed by the server");
        assert!(rest.is_empty());
    }

    /// Reads an HTTP/2 response to its end; returns the status and the
    /// `connection` header, if any.
    async fn h2_get(
        client: &h2::client::SendRequest<Bytes>,
        path: &str,
    ) -> Result<(u16, Option<String>), h2::Error> {
        let mut client = client.clone().ready().await?;
        let req = http::Request::get(format!("http://x{path}"))
            .body(())
            .expect("a valid request");
        let (resp, _) = client.send_request(req, true)?;
        let resp = resp.await?;
        let status = resp.status().as_u16();
        let connection = resp
            .headers()
            .get(CONNECTION)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let mut body = resp.into_body();
        while let Some(chunk) = body.data().await {
            let n = chunk?.len();
            let _ = body.flow_control().release_capacity(n);
        }
        Ok((status, connection))
    }

    /// One socket, both protocols, each drained its own way: the HTTP/2
    /// connection gets a GOAWAY when the drain begins (its request in
    /// progress is still answered, and it closes long before the grace
    /// ends), while the HTTP/1 connection is answered `Connection: close`.
    #[test]
    fn http2_connections_end_with_goaway_when_the_drain_begins() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = std_listener.local_addr().expect("addr");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let shutdown = Shutdown::new();
        // `/held` waits for a permit: a request in progress at the stop.
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel();
        let (began_tx, began) = tokio::sync::oneshot::channel();
        let grace = Duration::from_secs(10);
        let server = {
            let shutdown = shutdown.clone();
            let gate = Arc::clone(&gate);
            rt.spawn(async move {
                let l = tokio::net::TcpListener::from_std(std_listener).expect("tokio");
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let gate = Arc::clone(&gate);
                    let entered = entered_tx.clone();
                    async move {
                        if req.uri().path() == "/held" {
                            let _ = entered.send(());
                            gate.acquire().await.expect("open").forget();
                        }
                        hi(req).await
                    }
                });
                let config = DrainConfig {
                    grace,
                    deadline: Duration::from_secs(20),
                };
                serve_with(l, service, &shutdown, config, |open| {
                    let _ = began_tx.send(open);
                })
                .await
            })
        };
        let mut h1 = std::net::TcpStream::connect(addr).expect("connect");
        assert!(!get(&mut h1).contains("connection: close"));
        rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
            let conn = tokio::spawn(conn);
            assert_eq!(h2_get(&client, "/").await.expect("h2 request"), (200, None));
            let held = tokio::spawn({
                let client = client.clone();
                async move { h2_get(&client, "/held").await }
            });
            // The held request reaches the service before the stop.
            entered.recv().await.expect("the held request arrives");
            shutdown.stop(StopReason::Requested);
            assert_eq!(began.await.expect("the drain began"), 2);
            gate.add_permits(1);
            assert_eq!(
                held.await
                    .expect("join")
                    .expect("the request in progress is answered"),
                (200, None)
            );
            let ended = tokio::time::timeout(Duration::from_secs(5), conn)
                .await
                .expect("the HTTP/2 connection closes long before the grace ends")
                .expect("join");
            assert!(ended.is_ok(), "closed cleanly: {ended:?}");
            let refused = client
                .clone()
                .ready()
                .await
                .expect_err("no new stream on a connection that went away");
            assert!(
                refused.is_go_away() && refused.is_remote(),
                "ended by the server's GOAWAY, not a reset or EOF: {refused:?}"
            );
            assert_eq!(refused.reason(), Some(h2::Reason::NO_ERROR));
        });
        // Meanwhile the HTTP/1 connection is told in band.
        assert!(get(&mut h1).contains("connection: close"));
        let report = rt.block_on(server).expect("join");
        assert_eq!(report.open_at_stop, 2);
        assert_eq!(report.abandoned, 0);
        assert!(report.took < grace, "{report:?}");
    }
}
