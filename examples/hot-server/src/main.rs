//! `hot-server`: HTTP routes that are WebAssembly modules, swapped while
//! the server runs.
//!
//! ```text
//! hot-server --modules examples/hot-server/modules --bind 127.0.0.1:8080
//! baton run -l 127.0.0.1:8080 -- hot-server --modules DIR    # and reload the process too
//! curl http://127.0.0.1:8080/hello/world
//! ```
//! Edit a module file and the next request gets the new version. See
//! docs/hot-modules.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use baton_app::serve::DrainConfig;
use baton_app::shutdown::Shutdown;
use baton_hot::{HostConfig, InstanceMode};
use clap::Parser;
use hot_server::routes::Routes;

#[derive(Debug, Parser)]
#[command(
    name = "hot-server",
    version,
    about = "HTTP server whose routes are WebAssembly modules, swapped in place"
)]
struct Args {
    /// Directory of route modules (NAME.wasm, NAME.wat) and libraries (lib/).
    #[arg(long, value_name = "DIR")]
    modules: PathBuf,
    /// Bind this address when no socket was inherited (running without baton).
    #[arg(long, value_name = "ADDR")]
    bind: Option<SocketAddr>,
    /// Keep compiled modules here (wasmtime's cache, keyed by content).
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Append every version change and rejection to this file.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// Largest memory of one instance, in MiB.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    memory_limit: usize,
    /// Bound on one call.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s", value_name = "DURATION")]
    call_timeout: Duration,
    /// How long calls on a replaced version may go on.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s", value_name = "DURATION")]
    drain_timeout: Duration,
    /// Keep up to N idle instances per version instead of one fresh
    /// instance per call (module state then lives as long as its version).
    #[arg(long, value_name = "N")]
    pool: Option<usize>,
    /// When draining the process, keep answering (with `Connection: close`)
    /// this long before closing idle connections.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s", value_name = "DURATION")]
    drain_grace: Duration,
}

fn main() -> ExitCode {
    // Colours only on a terminal: under baton stderr is a pipe into
    // baton's log, where escape codes are noise.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hot-server: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hot-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Signals first: a stop asked for during start-up must not be lost.
    let shutdown = Shutdown::new();
    shutdown
        .on_signals()
        .context("cannot watch SIGTERM and SIGINT")?;
    let config = HostConfig {
        cache_dir: args.cache,
        memory_limit: args.memory_limit << 20,
        call_timeout: args.call_timeout,
        drain_timeout: args.drain_timeout,
        log_file: args.log,
        instances: args
            .pool
            .map_or(InstanceMode::PerCall, |max_idle| InstanceMode::Pooled {
                max_idle,
            }),
        ..HostConfig::default()
    };
    let listener = hot_server::server::listener(args.bind)?;
    let routes = Routes::open(&args.modules, config)?;
    let _watcher = routes.watch()?;
    let notifier = baton_app::Notifier::from_env().context("cannot set up readiness")?;
    let drain = DrainConfig {
        grace: args.drain_grace,
        deadline: args.drain_grace + Duration::from_secs(20),
    };
    hot_server::server::serve(routes, listener, &notifier, &shutdown, drain).await
}
