//! An axum server that upgrades itself on `SIGHUP` with baton-app.
//!
//! ```text
//! upgrade-server --bind 127.0.0.1:0 --pid-file /tmp/us.pid &
//! kill -HUP $(cat /tmp/us.pid)   # new binary, same socket, no failed request
//! ```
//!
//! Start-up, in this order (each step before the next for a reason):
//! 1. signal handlers (`SIGTERM`/`SIGINT` stop, `SIGHUP`/`SIGUSR2` upgrade):
//!    a signal during start-up is neither lost nor fatal;
//! 2. the listener named `web`: inherited from the previous process, or
//!    bound to `--bind` on the first start;
//! 3. the state handed over by the previous process (a request counter),
//!    read before reporting ready;
//! 4. ready: the pid file now names this process, and the previous one
//!    drains.
//!
//! Responses carry `X-Generation` (1 for the first process, +1 per upgrade)
//! and `X-Pid`. `GET /count` answers the number of requests served by this
//! process and all its predecessors (carried over in the state hand-off);
//! `GET /fds` lists this process's descriptors, as inherited at start and
//! as open now.
//!
//! For tests, `--misbehave-file PATH` makes an *upgraded* process (not the
//! first one) misbehave when PATH exists, as its content says: `exit` (exit
//! with status 3 before ready), `crash` (abort before ready), `hang` (never
//! report ready), or `gate:FILE` (wait until FILE exists, then carry on).
//! The arguments cannot be used for this: an upgrade reuses them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, Uri};
use axum::response::IntoResponse;
use axum::routing::get;
use baton_app::serve::{DrainConfig, serve};
use baton_app::shutdown::{Shutdown, StopReason};
use baton_app::trigger::upgrade_on_signals;
use baton_app::upgrade::Upgrader;
use clap::Parser;
use hyper_util::service::TowerToHyperService;
use tokio::signal::unix::SignalKind;

/// The version of the state format this program writes and reads.
const STATE_VERSION: u32 = 1;

#[derive(Debug, Parser)]
#[command(about = "An axum server that upgrades itself on SIGHUP (baton-app example)")]
struct Args {
    /// Address to bind when no listener is inherited (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Keep a pid file naming the serving process.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// How long an upgraded process may take to report ready.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    ready_timeout: Duration,
    /// How long to answer with `Connection: close` when draining.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Bound on a drain.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Do not hand the request counter over on upgrades.
    #[arg(long)]
    no_state: bool,
    /// Misbehave in upgraded processes when this file exists (for tests).
    #[arg(long)]
    misbehave_file: Option<PathBuf>,
}

#[derive(Debug)]
struct App {
    generation: HeaderValue,
    pid: HeaderValue,
    hello: String,
    /// Requests served by this process and its predecessors.
    count: AtomicU64,
    /// Descriptors open when `main` started: what was inherited.
    fds_at_start: BTreeMap<i32, String>,
}

fn main() -> anyhow::Result<()> {
    // Before anything opens a descriptor of its own.
    let fds_at_start = open_fds();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .init();
    let args = Args::parse();
    let generation: u64 = std::env::var("BATON_GENERATION")
        .ok()
        .and_then(|g| g.parse().ok())
        .unwrap_or(1);
    if generation > 1
        && let Some(path) = &args.misbehave_file
    {
        misbehave(path)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(run(args, fds_at_start))
}

async fn run(args: Args, fds_at_start: BTreeMap<i32, String>) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    shutdown
        .on_signals()
        .context("cannot watch SIGTERM/SIGINT")?;

    let mut builder = Upgrader::builder()
        .ready_timeout(args.ready_timeout)
        .state_version(STATE_VERSION);
    if let Some(p) = &args.pid_file {
        builder = builder.pid_file(p);
    }
    let upgrader = builder.build().context("cannot set up upgrades")?;
    let generation = upgrader.generation();
    let pid = std::process::id();

    let count = match upgrader.take_state() {
        Ok(Some(bytes)) => decode_count(&bytes).unwrap_or_else(|| {
            tracing::warn!(
                "handed-over state of {} bytes is not a counter",
                bytes.len()
            );
            0
        }),
        Ok(None) => 0,
        Err(e) => {
            // A new version that cannot read the old state starts afresh
            // rather than refusing to serve.
            tracing::warn!("ignoring the handed-over state: {e}");
            0
        }
    };
    let app = Arc::new(App {
        generation: HeaderValue::from(generation),
        pid: HeaderValue::from(pid),
        hello: format!("hello from generation {generation} (pid {pid})\n"),
        count: AtomicU64::new(count),
        fds_at_start,
    });

    let state_app = Arc::clone(&app);
    let no_state = args.no_state;
    upgrade_on_signals(
        &upgrader,
        &shutdown,
        &[SignalKind::hangup(), SignalKind::user_defined2()],
        move || (!no_state).then(|| encode_count(state_app.count.load(Ordering::SeqCst))),
    )
    .context("cannot watch SIGHUP/SIGUSR2")?;

    let listener = upgrader
        .tcp_listener("web", args.bind)
        .context("cannot get the listening socket")?;
    listener
        .set_nonblocking(true)
        .context("cannot make the listener non-blocking")?;
    let listener =
        tokio::net::TcpListener::from_std(listener).context("cannot register the listener")?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;

    let router = Router::new()
        .route("/", get(hello))
        .route("/count", get(count_handler))
        .route("/fds", get(fds))
        .route("/sleep", get(sleep))
        .with_state(Arc::clone(&app));
    let service = TowerToHyperService::new(router);

    upgrader.ready().context("cannot report ready")?;
    eprintln!("listening on {addr} (generation {generation}, pid {pid}, count {count})");

    let config = DrainConfig {
        grace: args.grace,
        deadline: args.drain_timeout,
    };
    let report = serve(listener, service, &shutdown, config).await;
    eprintln!(
        "stopped ({}): drained {} connection(s) in {} ms, {} abandoned, count {}",
        report.reason,
        report.open_at_stop,
        report.took.as_millis(),
        report.abandoned,
        app.count.load(Ordering::SeqCst)
    );
    if report.reason == StopReason::Immediate || report.abandoned > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn respond(app: &App, body: String) -> impl IntoResponse + use<> {
    app.count.fetch_add(1, Ordering::SeqCst);
    (
        [
            ("x-generation", app.generation.clone()),
            ("x-pid", app.pid.clone()),
        ],
        body,
    )
}

async fn hello(State(app): State<Arc<App>>) -> impl IntoResponse {
    let body = app.hello.clone();
    respond(&app, body)
}

async fn count_handler(State(app): State<Arc<App>>) -> impl IntoResponse {
    // Counts itself, so the answer is the count including this request.
    let n = app.count.load(Ordering::SeqCst) + 1;
    respond(&app, format!("{n}\n"))
}

async fn fds(State(app): State<Arc<App>>) -> impl IntoResponse {
    let mut body = String::from("at start:\n");
    for (fd, target) in &app.fds_at_start {
        let _ = writeln!(body, "{fd} {target}");
    }
    body.push_str("now:\n");
    for (fd, target) in open_fds() {
        let _ = writeln!(body, "{fd} {target}");
    }
    respond(&app, body)
}

async fn sleep(State(app): State<Arc<App>>, uri: Uri) -> impl IntoResponse {
    let ms: u64 = uri
        .query()
        .and_then(|q| q.strip_prefix("ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
        .min(60_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    respond(&app, format!("slept {ms} ms\n"))
}

fn encode_count(n: u64) -> Vec<u8> {
    n.to_le_bytes().to_vec()
}

fn decode_count(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// This process's open descriptors and what they are (`readlink`).
fn open_fds() -> BTreeMap<i32, String> {
    let mut fds = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return fds;
    };
    for entry in dir.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let target = std::fs::read_link(entry.path())
            .map_or_else(|_| "?".to_owned(), |t| t.display().to_string());
        fds.insert(fd, target);
    }
    // The directory listing's own descriptor is closed by now.
    fds.retain(|fd, t| !(t.starts_with("/proc/") && t.ends_with("/fd") && *fd > 2));
    fds
}

/// The test hook: misbehave as the file at `path` says, if it exists.
fn misbehave(path: &Path) -> anyhow::Result<()> {
    let Ok(mode) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let mode = mode.trim();
    eprintln!("misbehaving: {mode}");
    match mode {
        "exit" => std::process::exit(3),
        "crash" => std::process::abort(),
        "hang" => loop {
            std::thread::park();
        },
        _ => {
            if let Some(gate) = mode.strip_prefix("gate:") {
                // Polls a file: this is the misbehaving app, not a test.
                while !Path::new(gate).exists() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(())
            } else {
                anyhow::bail!("unknown misbehaviour {mode:?} in {}", path.display())
            }
        }
    }
}
