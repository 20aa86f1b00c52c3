//! `demo-server`: a small HTTP/1.1 and HTTP/2 (h2c) server that reloads
//! with zero failed requests under `baton run`.
//!
//! ```text
//! baton run -l 127.0.0.1:8080 -- demo-server
//! demo-server --bind 127.0.0.1:8080        # on its own, without baton
//! curl --http2-prior-knowledge http://127.0.0.1:8080/   # h2c, same port
//! ```
//! See [`demo_server::server`] for how it drains.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use demo_server::server::{Settings, run};

#[derive(Debug, Parser)]
#[command(
    name = "demo-server",
    version,
    about = "Small HTTP/1.1 and h2c server that drains without failing a request"
)]
struct Args {
    /// Bind this address when no socket was inherited (running without baton).
    #[arg(long, value_name = "ADDR")]
    bind: Option<SocketAddr>,
    /// Warm-up time before reporting ready.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s", value_name = "DURATION")]
    boot_delay: Duration,
    /// When draining, keep answering (with `Connection: close`) this long
    /// before closing idle connections.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s", value_name = "DURATION")]
    drain_grace: Duration,
    /// Bound on the rest of the drain (requests still in progress).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s", value_name = "DURATION")]
    shutdown_timeout: Duration,
    /// Under `baton run --dispatch`: how many connections this process
    /// serves at once (its credits).
    #[arg(long, default_value_t = baton_app::dispatch::DEFAULT_CREDITS, value_name = "N")]
    credits: u32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut settings = Settings::from_env();
    settings.bind = args.bind;
    settings.boot_delay = args.boot_delay;
    settings.drain_grace = args.drain_grace;
    settings.shutdown_timeout = args.shutdown_timeout;
    settings.credits = args.credits;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo-server: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}
