//! The upgrade-server's equivalent built on ecdysis, for the benchmark:
//! the same axum handler, the same tokio current-thread runtime, and the
//! drain of baton-app's `serve` (`--grace 0` makes that plain hyper
//! `graceful_shutdown`). Only the upgrade mechanism differs: ecdysis
//! passes the listener, waits for the child's readiness and writes the pid
//! file.
//!
//! `ecdysis-server --bind 127.0.0.1:PORT --pid-file PATH [--grace MS]`;
//! `SIGHUP` upgrades, `SIGTERM` stops.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::http::HeaderValue;
use axum::response::IntoResponse;
use axum::routing::get;
use baton_app::serve::{Accept, DrainConfig, serve};
use baton_app::shutdown::{Shutdown, StopReason};
use ecdysis::tokio_ecdysis::{SignalKind, StopOnShutdown, StoppableStream, TokioEcdysisBuilder};
use futures_core::Stream;
use hyper_util::service::TowerToHyperService;
use tokio_stream::wrappers::TcpListenerStream;

struct EcdysisAccept(StoppableStream<TcpListenerStream>);

impl Accept for EcdysisAccept {
    type Io = tokio::net::TcpStream;
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        match Pin::new(&mut self.0).poll_next(cx) {
            Poll::Ready(Some(Ok(s))) => {
                let _ = s.set_nodelay(true);
                Poll::Ready(Ok(s))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Err(e)),
            // Stopped by ecdysis after an upgrade: the shutdown flag (set
            // when ecdysis's future resolves) ends the accept loop.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let bind: SocketAddr = arg(&args, "--bind")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| io::Error::other("--bind HOST:PORT is required"))?;
    let pid_file = arg(&args, "--pid-file").ok_or_else(|| io::Error::other("--pid-file"))?;
    let grace = Duration::from_millis(
        arg(&args, "--grace")
            .and_then(|g| g.parse().ok())
            .unwrap_or(1000),
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(bind, pid_file, grace))
}

async fn run(bind: SocketAddr, pid_file: String, grace: Duration) -> io::Result<()> {
    let shutdown = Shutdown::new();
    let mut builder = TokioEcdysisBuilder::new(SignalKind::hangup())?;
    builder.stop_on_signal(SignalKind::terminate())?;
    builder.set_pid_file(&pid_file);
    let stream = builder.build_listen_tcp(StopOnShutdown::Yes, bind, |s, addr| {
        s.set_reuse_address(true)?;
        s.bind(&addr.into())?;
        s.listen(128)?;
        Ok(s.into())
    })?;
    let pid = std::process::id();
    let router = Router::new().route(
        "/",
        get(move || async move {
            (
                [
                    ("x-generation", HeaderValue::from(pid)),
                    ("x-pid", HeaderValue::from(pid)),
                ],
                format!("hello from pid {pid}\n"),
            )
                .into_response()
        }),
    );
    let (_ecdysis, upgraded) = builder.ready()?;
    eprintln!("listening on {bind} (pid {pid})");
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let outcome = upgraded.await;
            eprintln!("ecdysis: {outcome:?}");
            shutdown.stop(StopReason::Requested);
        });
    }
    let config = DrainConfig {
        grace,
        deadline: Duration::from_secs(20),
    };
    let report = serve(
        EcdysisAccept(stream),
        TowerToHyperService::new(router),
        &shutdown,
        config,
    )
    .await;
    eprintln!("stopped: {report:?}");
    Ok(())
}
