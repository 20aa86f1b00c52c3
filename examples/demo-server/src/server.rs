//! The demo HTTP server: a hyper 1 server that speaks HTTP/1.1 and HTTP/2
//! over cleartext (h2c with prior knowledge) on the same socket, and drains
//! without failing a single request.
//!
//! # Theory of operation
//!
//! Start-up: take baton's dispatch channel when `baton run --dispatch`
//! gave one (`BATON_DISPATCH_FD`), else the first inherited listener
//! (`LISTEN_FDS`, as passed by `baton run`), or bind `--bind` when run on
//! its own; warm up for `--boot-delay`; start accepting; report ready
//! (`READY=1`; under `--dispatch`, the channel's `ready`, said at the first
//! accept). The same binary, unchanged, in every case.
//!
//! Draining, on `SIGTERM` or `SIGINT`: `baton_app::serve` does it, the
//! same way any Rust server linking baton-app would. It stops accepting
//! (queued connections stay in the shared accept queue for the next
//! generation), then for `--drain-grace` (default 1 s) keeps serving while
//! answering every request with `Connection: close`, so clients learn in
//! band to reconnect, and only then lets hyper close what is idle and finish
//! what is in progress, bounded by `--shutdown-timeout` (default 20 s, below
//! baton's default 30 s grace). HTTP/2 connections are told with a
//! `GOAWAY` as soon as the drain begins, and their streams in progress are
//! finished. See `baton_app::serve` for why the in-band step is what takes
//! failed requests at a hand-over to zero. A second `SIGTERM`/`SIGINT`
//! exits at once, with status 1. `SIGUSR1` (which baton forwards for log
//! reopening) is logged and changes nothing.
//!
//! Runtime: tokio's current-thread runtime. baton scales a server with
//! processes (`--workers N`), like nginx workers; one thread per process
//! keeps each worker small and its drain easy to reason about, and leaves
//! the CPUs to the other workers. (Benchmarks compare like with like: the
//! same binary run directly and under baton.)

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use baton_app::serve::{DrainConfig, serve_with};
use baton_app::shutdown::{Shutdown, StopReason};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};

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
    /// Under `baton run --dispatch`: connections served at once.
    pub credits: u32,
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
            credits: baton_app::dispatch::DEFAULT_CREDITS,
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
    served: AtomicU64,
}

/// Where connections come from: a socket (TCP or Unix), or baton's
/// dispatch channel (`baton run --dispatch`).
#[derive(Debug)]
pub enum Accepting {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
    Dispatch(baton_app::dispatch::Incoming),
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
            Accepting::Dispatch(d) => format!("connections from baton's dispatch ({})", d.mode()),
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

/// baton's dispatch channel under `baton run --dispatch`; otherwise the
/// first inherited listener, or `--bind`.
fn listener(settings: &Settings) -> anyhow::Result<Accepting> {
    if let Some(incoming) = baton_app::dispatch::Incoming::from_env(settings.credits)
        .context("cannot take baton's dispatch channel")?
    {
        return Ok(Accepting::Dispatch(incoming));
    }
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

/// The process's server: signals, the inherited (or bound) listener and
/// the readiness channel from the environment, then [`serve`]. Must be
/// called inside a tokio runtime with I/O and time enabled.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    // Signals first: a stop asked for during warm-up must not be lost.
    let shutdown = Shutdown::new();
    shutdown
        .on_signals()
        .context("cannot watch SIGTERM and SIGINT")?;
    on_usr1(&settings)?;
    let listener = listener(&settings)?;
    let notifier = baton_app::Notifier::from_env().context("cannot set up readiness")?;
    serve(settings, listener, &notifier, &shutdown).await
}

/// `SIGUSR1`, which baton forwards to every worker of the serving
/// generation for log reopening (and whose default action kills): the demo
/// writes to stderr and has nothing to reopen, so it says so and serves on.
fn on_usr1(settings: &Settings) -> anyhow::Result<()> {
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .context("cannot watch SIGUSR1")?;
    let generation = settings.generation.clone();
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            eprintln!(
                "demo-server[gen {generation} pid {}]: SIGUSR1: no log file to reopen (output goes to stderr); still serving",
                std::process::id()
            );
        }
    });
    Ok(())
}

/// Serves on `listener` until `shutdown` is set, then drains (see the
/// module docs). Readiness and `STOPPING=1` go to `notifier`.
pub async fn serve(
    settings: Settings,
    listener: Accepting,
    notifier: &baton_app::Notifier,
    shutdown: &Shutdown,
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
        served: AtomicU64::new(0),
    });

    if !settings.boot_delay.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(settings.boot_delay) => {}
            reason = shutdown.stopped() => {
                say!(settings, "{reason} while booting: exiting");
                return Ok(());
            }
        }
    }

    // Accepting starts with serve's first poll, right after READY=1 is
    // sent; connections that arrive in between wait in the queue.
    notifier
        .ready()
        .context("cannot report readiness to the supervisor")?;
    say!(settings, "ready, serving {}", listener.describe());

    let s = Arc::clone(&state);
    let service = service_fn(move |req| {
        let state = Arc::clone(&s);
        async move { Ok::<_, Infallible>(respond(&req, &state).await) }
    });
    let config = DrainConfig {
        grace: settings.drain_grace,
        deadline: settings.drain_grace + settings.shutdown_timeout,
    };
    let on_drain = |open: usize| {
        let _ = notifier.stopping();
        say!(
            settings,
            "{}: draining {open} connection(s), {} request(s) served",
            shutdown.reason().unwrap_or(StopReason::Requested),
            state.served.load(Ordering::Relaxed)
        );
    };
    let report = match listener {
        Accepting::Tcp(l) => serve_with(l, service, shutdown, config, on_drain).await,
        Accepting::Unix(l) => serve_with(l, service, shutdown, config, on_drain).await,
        Accepting::Dispatch(d) => serve_with(d, service, shutdown, config, on_drain).await,
    };
    if report.reason == StopReason::Immediate {
        bail!(
            "second signal: exited at once, dropping {} connection(s)",
            report.abandoned
        );
    }
    say!(
        settings,
        "drained in {} ms ({} connection(s) dropped), {} request(s) served; exiting",
        report.took.as_millis(),
        report.abandoned,
        state.served.load(Ordering::Relaxed)
    );
    Ok(())
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
