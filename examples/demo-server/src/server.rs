//! The demo HTTP server: a hyper 1 HTTP/1.1 server that drains without
//! failing a single request.
//!
//! # Theory of operation
//!
//! Start-up: take the first inherited listener (`LISTEN_FDS`, as passed by
//! `baton run`), or bind `--bind` when run on its own; warm up for
//! `--boot-delay`; start accepting; report ready (`READY=1`).
//!
//! Draining, on `SIGTERM` or `SIGINT`, in three steps:
//!
//! 1. **Stop accepting.** The listener is dropped. It is shared with the
//!    supervisor and the next generation, so connections still waiting in
//!    the accept queue stay there and are taken by the new generation.
//! 2. **Grace (`--drain-grace`, default 1 s): keep serving, but answer every
//!    request with `Connection: close`.** hyper then closes each connection
//!    right after that response, and the client knows, in band, to open a
//!    new connection for its next request (which the new generation
//!    accepts). The step ends early once no connection is left.
//! 3. **Graceful shutdown of what remains.** hyper's `graceful_shutdown`
//!    finishes a request in progress and closes a connection that is idle.
//!
//! Why step 2 exists: hyper's `graceful_shutdown` alone closes every idle
//! keep-alive connection at once, without an answer. A client that sends
//! its next request on such a connection at that moment gets a reset or an
//! EOF instead of a response: under keep-alive load that is one failed
//! request per open connection at every reload. With step 2, a connection
//! in use receives its next response with `Connection: close` and is closed
//! by the server only after the client was told.
//!
//! Why 1 s of grace: a connection that carries at least one request per
//! second is told in band; load generators and proxies reuse connections
//! far more often than that. The step costs nothing when traffic is busy
//! (it ends as soon as the last connection closes), and a connection left
//! idle for a whole second is about as likely to be reused as it is to be
//! closed by the client's own idle timer. A longer grace keeps two
//! generations alive longer on every reload.
//!
//! Step 3 is bounded by `--shutdown-timeout` (default 20 s, below baton's
//! default 30 s grace, so the server normally exits on its own). A second
//! `SIGTERM`/`SIGINT` exits at once, with status 1.
//!
//! Runtime: tokio's current-thread runtime. baton scales a server with
//! processes (`--workers N`), like nginx workers; one thread per process
//! keeps each worker small and its drain easy to reason about, and leaves
//! the CPUs to the other workers. (Benchmarks compare like with like: the
//! same binary run directly and under baton.)

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Settings of one server process.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to bind when no listener was inherited.
    pub bind: Option<SocketAddr>,
    /// Simulated warm-up before reporting ready.
    pub boot_delay: Duration,
    /// How long to keep answering with `Connection: close` when draining.
    pub drain_grace: Duration,
    /// Bound on the rest of the drain.
    pub shutdown_timeout: Duration,
    /// `X-Generation` value.
    pub generation: String,
    /// `BATON_WORKER`, if set.
    pub worker: Option<String>,
}

impl Settings {
    /// Defaults, with generation and worker read from the environment
    /// (`BATON_GENERATION`, `BATON_WORKER`).
    pub fn from_env() -> Self {
        Self {
            bind: None,
            boot_delay: Duration::ZERO,
            drain_grace: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(20),
            generation: std::env::var("BATON_GENERATION").unwrap_or_else(|_| "0".to_owned()),
            worker: std::env::var("BATON_WORKER").ok(),
        }
    }
}

/// What every connection task shares.
#[derive(Debug)]
struct State {
    generation: HeaderValue,
    pid: HeaderValue,
    worker: Option<HeaderValue>,
    hello: Bytes,
    /// Set when draining: every response then says `Connection: close`.
    draining: AtomicBool,
    served: AtomicU64,
}

/// An accepting socket, TCP or Unix.
#[derive(Debug)]
pub enum Accepting {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Accepting {
    /// Wraps a std TCP listener (switched to non-blocking). Must be called
    /// inside a tokio runtime.
    pub fn tcp(l: std::net::TcpListener) -> std::io::Result<Self> {
        l.set_nonblocking(true)?;
        Ok(Accepting::Tcp(tokio::net::TcpListener::from_std(l)?))
    }

    fn describe(&self) -> String {
        match self {
            Accepting::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "tcp".to_owned(), |a| format!("tcp://{a}")),
            Accepting::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
                .unwrap_or_else(|| "unix".to_owned()),
        }
    }
}

/// Logs one line to stderr with who is speaking.
macro_rules! say {
    ($settings:expr, $($arg:tt)*) => {
        eprintln!(
            "demo-server[gen {} pid {}]: {}",
            $settings.generation,
            std::process::id(),
            format_args!($($arg)*)
        )
    };
}

/// Takes the first inherited listener, or binds `--bind`.
fn listener(settings: &Settings) -> anyhow::Result<Accepting> {
    let mut inherited =
        baton_app::Inherited::from_env().context("cannot take the inherited sockets")?;
    for i in 0..inherited.len() {
        let taken = inherited
            .take_at(i)
            .with_context(|| format!("inherited socket {i} (fd {})", 3 + i))?;
        match taken {
            Some(baton_app::Listener::Tcp(l)) => {
                l.set_nonblocking(true)
                    .context("cannot make the inherited socket non-blocking")?;
                if settings.bind.is_some() {
                    say!(settings, "using the inherited socket; --bind is ignored");
                }
                return Ok(Accepting::Tcp(
                    tokio::net::TcpListener::from_std(l)
                        .context("cannot register the inherited socket")?,
                ));
            }
            Some(baton_app::Listener::Unix(l)) => {
                l.set_nonblocking(true)
                    .context("cannot make the inherited socket non-blocking")?;
                return Ok(Accepting::Unix(
                    tokio::net::UnixListener::from_std(l)
                        .context("cannot register the inherited socket")?,
                ));
            }
            None => {}
        }
    }
    let Some(addr) = settings.bind else {
        bail!(
            "no listening socket: run me under `baton run -l 127.0.0.1:8080 -- demo-server`, \
             or pass --bind 127.0.0.1:8080 ({})",
            inherited.absent_reason().unwrap_or("no inherited socket")
        );
    };
    let l = std::net::TcpListener::bind(addr).with_context(|| format!("cannot bind {addr}"))?;
    l.set_nonblocking(true)
        .context("cannot make the socket non-blocking")?;
    Ok(Accepting::Tcp(
        tokio::net::TcpListener::from_std(l).context("cannot register the socket")?,
    ))
}

/// Stop requests, each named for the log (`"SIGTERM"`). The first starts
/// the drain; a second one ends the process at once.
pub type Stops = tokio::sync::mpsc::UnboundedReceiver<&'static str>;

/// Forwards SIGTERM and SIGINT into a [`Stops`] channel.
fn forward_signals() -> anyhow::Result<Stops> {
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            if tx.send(name).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// The process's server: signals, the inherited (or bound) listener and
/// the readiness channel from the environment, then [`serve`]. Must be
/// called inside a tokio runtime with I/O and time enabled.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    // Signals first: a stop asked for during warm-up must not be lost.
    let stops = forward_signals()?;
    let listener = listener(&settings)?;
    let notifier = baton_app::Notifier::from_env().context("cannot set up readiness")?;
    serve(settings, listener, &notifier, stops).await
}

/// Serves on `listener` until a stop request, then drains (see the module
/// docs). Readiness and `STOPPING=1` go to `notifier`.
pub async fn serve(
    settings: Settings,
    listener: Accepting,
    notifier: &baton_app::Notifier,
    mut stops: Stops,
) -> anyhow::Result<()> {
    let pid = std::process::id();
    let state = Arc::new(State {
        generation: HeaderValue::from_str(&settings.generation)
            .unwrap_or(HeaderValue::from_static("invalid")),
        pid: HeaderValue::from(pid),
        worker: settings
            .worker
            .as_deref()
            .and_then(|w| HeaderValue::from_str(w).ok()),
        hello: Bytes::from(format!(
            "hello from generation {} (pid {pid})\n",
            settings.generation
        )),
        draining: AtomicBool::new(false),
        served: AtomicU64::new(0),
    });

    if !settings.boot_delay.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(settings.boot_delay) => {}
            Some(name) = stops.recv() => {
                say!(settings, "{name} while booting: exiting");
                return Ok(());
            }
        }
    }

    let tracker = TaskTracker::new();
    let shut_down = CancellationToken::new();
    // Accepting starts with the first poll of the loop below, right after
    // READY=1 is sent; connections that arrive in between wait in the queue.
    notifier
        .ready()
        .context("cannot report readiness to the supervisor")?;
    say!(settings, "ready, serving {}", listener.describe());

    let signal_name = loop {
        tokio::select! {
            biased;
            Some(name) = stops.recv() => break name,
            accepted = accept(&listener, &state, &tracker, &shut_down) => {
                if let Err(e) = accepted {
                    // Out of descriptors, or the peer gave up before accept:
                    // keep serving, but do not spin on a persistent error.
                    say!(settings, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    };

    // Step 1: stop accepting; queued connections go to the next generation.
    drop(listener);
    state.draining.store(true, Ordering::SeqCst);
    tracker.close();
    let _ = notifier.stopping();
    let began = Instant::now();
    let open = tracker.len();
    say!(
        settings,
        "{signal_name}: draining {open} connection(s), {} request(s) served",
        state.served.load(Ordering::Relaxed)
    );

    // Step 2: answer with `Connection: close` for the grace period, or
    // until every connection has closed.
    let drained = tokio::select! {
        () = tracker.wait() => true,
        () = tokio::time::sleep(settings.drain_grace) => false,
        Some(_) = stops.recv() => return Err(immediate(&tracker)),
    };

    // Step 3: close idle connections, let in-flight requests finish.
    if !drained {
        say!(
            settings,
            "grace over: closing {} idle or finishing connection(s)",
            tracker.len()
        );
        shut_down.cancel();
        tokio::select! {
            () = tracker.wait() => {}
            () = tokio::time::sleep(settings.shutdown_timeout) => {
                say!(settings, "shutdown timeout: abandoning {} connection(s)", tracker.len());
            }
            Some(_) = stops.recv() => return Err(immediate(&tracker)),
        }
    }
    say!(
        settings,
        "drained in {} ms, {} request(s) served; exiting",
        began.elapsed().as_millis(),
        state.served.load(Ordering::Relaxed)
    );
    Ok(())
}

/// The error for a second stop signal: exit now, dropping open connections.
fn immediate(tracker: &TaskTracker) -> anyhow::Error {
    anyhow::anyhow!(
        "second signal: exiting now with {} connection(s) open",
        tracker.len()
    )
}

/// Accepts one connection and spawns its task.
async fn accept(
    listener: &Accepting,
    state: &Arc<State>,
    tracker: &TaskTracker,
    shut_down: &CancellationToken,
) -> std::io::Result<()> {
    match listener {
        Accepting::Tcp(l) => {
            let (stream, _) = l.accept().await?;
            // Responses are small and written at once; do not let Nagle hold them.
            stream.set_nodelay(true)?;
            tracker.spawn(serve_connection(
                stream,
                Arc::clone(state),
                shut_down.clone(),
            ));
        }
        Accepting::Unix(l) => {
            let (stream, _) = l.accept().await?;
            tracker.spawn(serve_connection(
                stream,
                Arc::clone(state),
                shut_down.clone(),
            ));
        }
    }
    Ok(())
}

/// Serves one connection until it closes, or until shutdown closes it.
async fn serve_connection<I>(io: I, state: Arc<State>, shut_down: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(respond(&req, &state).await) }
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service);
    let mut conn = pin!(conn);
    // Errors here are the client's doing (it reset or sent garbage); the
    // client sees them, so they are not logged.
    tokio::select! {
        _ = conn.as_mut() => {}
        () = shut_down.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn respond(req: &Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    let (status, body) = match req.uri().path() {
        "/" => (StatusCode::OK, state.hello.clone()),
        "/health" => (StatusCode::OK, Bytes::from_static(b"ok\n")),
        // Holds the request open, to show that draining finishes it.
        "/sleep" => {
            let ms = query_u64(req.uri().query(), "ms")
                .unwrap_or(1000)
                .min(60_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            (StatusCode::OK, Bytes::from(format!("slept {ms} ms\n")))
        }
        _ => (StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n")),
    };
    state.served.fetch_add(1, Ordering::Relaxed);
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert("x-generation", state.generation.clone());
    h.insert("x-pid", state.pid.clone());
    if let Some(w) = &state.worker {
        h.insert("x-worker", w.clone());
    }
    // Checked when the response is built, so a request that was in progress
    // when draining began is answered with it too.
    if state.draining.load(Ordering::SeqCst) {
        h.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

fn query_u64(query: Option<&str>, key: &str) -> Option<u64> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::query_u64;

    #[test]
    fn query_values() {
        assert_eq!(query_u64(Some("ms=25"), "ms"), Some(25));
        assert_eq!(query_u64(Some("a=1&ms=7"), "ms"), Some(7));
        assert_eq!(query_u64(Some("ms=x"), "ms"), None);
        assert_eq!(query_u64(None, "ms"), None);
    }
}
