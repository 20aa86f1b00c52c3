//! `demo`: shows baton reloading a server under load without failing a
//! request. Run it with `./demo` from the repository root.
//!
//! It starts `baton run -l 127.0.0.1:0 --workers 2 -- demo-server`, puts
//! keep-alive load on it (8 connections), reloads it a few times with
//! SIGHUP, waiting each time for the new generation to be ready and the old
//! one to exit, then stops baton and checks that not one request failed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use demo_server::harness::{Baton, LineHook, Spec, WaitError, display_path, exe_dir};
use rustix::process::Signal;

#[derive(Debug, Parser)]
#[command(
    name = "demo",
    about = "Reload a server under baton, under load, and count failed requests"
)]
struct Args {
    /// How many reloads (SIGHUP) to do.
    #[arg(long, default_value_t = 5, value_name = "N")]
    reloads: u64,
    /// Worker processes per generation.
    #[arg(long, default_value_t = 2, value_name = "N")]
    workers: u32,
    /// Keep-alive connections of the load client.
    #[arg(long, default_value_t = 8, value_name = "N")]
    connections: usize,
    /// Pause between reloads (the load keeps running).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s", value_name = "DURATION")]
    interval: Duration,
    /// Address for baton to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    listen: SocketAddr,
    /// Leave baton running after the demo, until Ctrl-C.
    #[arg(long)]
    keep: bool,
    /// Show every line baton and the workers write.
    #[arg(short, long)]
    verbose: bool,
    /// The baton binary (default: next to this program).
    #[arg(long, value_name = "PATH")]
    baton: Option<PathBuf>,
    /// The demo-server binary (default: next to this program).
    #[arg(long, value_name = "PATH")]
    server: Option<PathBuf>,
}

/// How long baton gets for each step; generous, as a build may still be
/// warming the disk cache.
const STEP: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let args = Args::parse();
    match demo(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            if e.downcast_ref::<WaitError>()
                .is_some_and(|w| matches!(w, WaitError::Interrupted))
            {
                eprintln!("demo: interrupted; baton stopped");
                return ExitCode::from(130);
            }
            eprintln!("demo: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Ends the waits on baton, from the signal thread.
type Interrupter = Box<dyn Fn() + Send + Sync>;

/// Which of baton's lines the demo shows (all of them with --verbose).
fn shown(line: &str, verbose: bool) -> bool {
    if verbose {
        return true;
    }
    if line.starts_with("demo-server[") || line.contains(" started, pid ") {
        return false;
    }
    [
        "listening on",
        "starting (",
        "ready in",
        "draining",
        "exited",
        "reload",
        "stopping",
        "stopped",
        "ERROR",
        "WARN",
        "error",
        "failed",
    ]
    .iter()
    .any(|k| line.contains(k))
}

/// Prints one summary line per second until told to stop.
struct Ticker {
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Ticker {
    fn start(load: Arc<baton_load::Running>) -> anyhow::Result<Self> {
        let (stop, rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ticker".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    rx.recv_timeout(Duration::from_secs(1))
                {
                    let r = load.snapshot();
                    println!(
                        "  {:>5.1}s  requests {:>9}  failed {}  generations seen {}",
                        r.elapsed.as_secs_f64(),
                        r.requests,
                        r.failed,
                        generations(&r.generation_numbers())
                    );
                }
            })
            .context("cannot start the summary thread")?;
        Ok(Self { stop, thread })
    }

    fn finish(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

/// `1..6` for a contiguous run, else a list.
fn generations(g: &[u64]) -> String {
    match (g.first(), g.last()) {
        (None, _) | (_, None) => "none".to_owned(),
        (Some(a), Some(b)) if a == b => a.to_string(),
        (Some(a), Some(b)) if (b - a + 1) as usize == g.len() => format!("{a}..{b}"),
        _ => g.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
    }
}

fn demo(args: &Args) -> anyhow::Result<bool> {
    let dir = exe_dir()?;
    let baton_bin = args.baton.clone().unwrap_or_else(|| dir.join("baton"));
    let server_bin = args
        .server
        .clone()
        .unwrap_or_else(|| dir.join("demo-server"));
    for (what, p) in [("baton", &baton_bin), ("demo-server", &server_bin)] {
        if !p.is_file() {
            bail!(
                "{what} is not built ({} is missing): run ./demo, or cargo build --release -p baton -p demo-server",
                p.display()
            );
        }
    }
    let (baton_shown, server_shown) = (display_path(&baton_bin), display_path(&server_bin));

    // Ctrl-C / SIGTERM: end whatever wait is in progress; the guards below
    // then stop the load and baton.
    let interrupted = Arc::new(AtomicBool::new(false));
    let on_interrupt: Arc<Mutex<Option<Interrupter>>> = Arc::default();
    {
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
        ])
        .context("cannot watch SIGINT/SIGTERM")?;
        let (flag, hook) = (Arc::clone(&interrupted), Arc::clone(&on_interrupt));
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for _ in signals.forever() {
                    flag.store(true, Ordering::SeqCst);
                    if let Some(f) = hook.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
                        f();
                    }
                }
            })
            .context("cannot start the signal thread")?;
    }

    println!(
        "baton demo: {} reloads, {} workers per generation, {} keep-alive connections",
        args.reloads, args.workers, args.connections
    );
    println!(
        "  $ {baton_shown} run -l {} --workers {} -- {server_shown}",
        args.listen, args.workers
    );
    let verbose = args.verbose;
    let hook: LineHook = Box::new(move |line: &str| {
        if shown(line, verbose) {
            println!("    baton │ {line}");
        }
    });
    let spec = Spec {
        baton: baton_bin.clone(),
        run_args: vec![
            "-l".into(),
            args.listen.to_string(),
            "--workers".into(),
            args.workers.to_string(),
            // Its own control socket, so a baton the user already runs
            // (default name "baton") is never in the way.
            "--name".into(),
            format!("demo-{}", std::process::id()),
        ],
        command: vec![server_bin.to_string_lossy().into_owned()],
    };
    let baton = Baton::start(&spec, Some(hook), STEP)?;
    *on_interrupt.lock().unwrap_or_else(PoisonError::into_inner) =
        Some(Box::new(baton.interrupter()));
    if interrupted.load(Ordering::SeqCst) {
        baton.interrupt();
    }
    let outcome = drive(args, &baton);
    let load_report = match outcome {
        Ok(r) => r,
        Err(e) => {
            if !interrupted.load(Ordering::SeqCst) {
                eprintln!("demo: last lines from baton:");
                for l in baton.tail(15) {
                    eprintln!("    {l}");
                }
            }
            // Dropping `baton` stops it.
            return Err(e);
        }
    };

    let l = &load_report.latency;
    println!(
        "latency: p50 {}  p99 {}  max {}   throughput: {:.0} requests/s",
        baton_load::human(l.p50),
        baton_load::human(l.p99),
        baton_load::human(l.max),
        load_report.throughput()
    );
    if !load_report.errors.is_empty() {
        println!("errors:");
        for (k, n) in &load_report.errors {
            println!("  {n} × {k}");
        }
    }
    let url = format!("http://{}", baton.addr);
    let mut pass = load_report.failed == 0;
    let baton_status = if args.keep {
        println!();
        println!(
            "baton keeps running (pid {}) on {url} — try, in another terminal:",
            baton.pid()
        );
        println!("  curl -i {url}/");
        println!(
            "  kill -HUP {}        # reload; X-Generation goes up",
            baton.pid()
        );
        println!(
            "  {baton_shown} ctl --name demo-{} reload   # the same, waiting for the verdict",
            std::process::id()
        );
        println!("Ctrl-C here stops it.");
        // Ctrl-C ends the wait; baton is then stopped below.
        baton.wait_exit(Duration::MAX).ok()
    } else {
        None
    };
    let status = match baton_status {
        Some(st) => st,
        None => {
            println!("stopping baton (SIGTERM)");
            baton.stop(STEP)?
        }
    };
    if !status.success() {
        println!("baton exited with {status} (expected 0: every worker exited on its own)");
        pass = false;
    }
    println!();
    println!(
        "requests: {}  failed: {}  generations seen: {}  -> {}",
        load_report.requests,
        load_report.failed,
        generations(&load_report.generation_numbers()),
        if pass { "PASS" } else { "FAIL" }
    );
    println!();
    println!("Run it by hand:");
    println!("  {baton_shown} run -l 127.0.0.1:8080 -- {server_shown}");
    println!("  curl -i 127.0.0.1:8080            # in another terminal");
    println!("  kill -HUP <baton pid>             # reload; watch X-Generation");
    println!("  {baton_shown} ctl reload               # or: reload and wait for the verdict");
    println!("  {baton_shown} ctl status               # generations, workers, last reload");
    println!(
        "  {} --url http://127.0.0.1:8080/ -d 30s   # load while you reload",
        display_path(&dir.join("baton-load"))
    );
    Ok(pass)
}

/// Load, reloads, and the final load report.
fn drive(args: &Args, baton: &Baton) -> anyhow::Result<baton_load::Report> {
    baton.wait_for_line("generation 1 ready", STEP)?;
    let mut cfg = baton_load::Config::new(baton_load::Target::Tcp(baton.addr));
    cfg.concurrency = args.connections;
    cfg.keep_alive = true;
    println!(
        "load: {} keep-alive connections to http://{}/ (baton-load: no retries, every failure counted)",
        cfg.concurrency, baton.addr
    );
    let load = Arc::new(baton_load::try_start(cfg).context("cannot start the load threads")?);
    let stop_load = |load: Arc<baton_load::Running>| match Arc::try_unwrap(load) {
        Ok(running) => running.stop(),
        // Unreachable in practice (the ticker has finished); the snapshot is
        // still right, and dropping the last handle stops the threads.
        Err(shared) => shared.snapshot(),
    };
    if load
        .wait_for_generation("1", Duration::from_secs(10))
        .is_none()
    {
        let report = stop_load(load);
        bail!("no response from generation 1 within 10 s:\n{report}");
    }
    let ticker = Ticker::start(Arc::clone(&load))?;
    let result = reloads(args, baton, &load);
    ticker.finish();
    let report = stop_load(load);
    result.map(|()| report)
}

fn reloads(args: &Args, baton: &Baton, load: &baton_load::Running) -> anyhow::Result<()> {
    for i in 1..=args.reloads {
        pause(baton, args.interval)?;
        let new = i + 1;
        println!("reload {i}/{}: kill -HUP {}", args.reloads, baton.pid());
        let sent = Instant::now();
        baton.signal(Signal::HUP)?;
        baton.wait_for_line(&format!("generation {new} ready"), STEP)?;
        baton.wait_for_line(&format!("generation {i} exited"), STEP)?;
        let first = load
            .wait_for_generation(&new.to_string(), Duration::from_secs(10))
            .with_context(|| format!("no response from generation {new} within 10 s"))?;
        println!(
            "  generation {new} serving; first response from it {} ms after SIGHUP",
            first.saturating_duration_since(sent).as_millis()
        );
    }
    // Let the last generation serve a while too.
    pause(baton, args.interval)
}

/// Waits `d`, ending early (with an error) on Ctrl-C or if baton exits.
/// Pacing for a person watching, not synchronisation.
fn pause(baton: &Baton, d: Duration) -> anyhow::Result<()> {
    match baton.wait_exit(d) {
        Err(WaitError::Timeout(_)) => Ok(()),
        Err(e) => Err(e.into()),
        Ok(st) => bail!("baton exited unexpectedly ({st})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_ranges() {
        assert_eq!(generations(&[]), "none");
        assert_eq!(generations(&[1]), "1");
        assert_eq!(generations(&[1, 2, 3, 4, 5, 6]), "1..6");
        assert_eq!(generations(&[1, 3]), "1,3");
    }

    #[test]
    fn quiet_mode_hides_worker_chatter() {
        assert!(shown("INFO generation 2 ready in 4 ms", false));
        assert!(!shown("worker 0 of generation 2 started, pid 7", false));
        assert!(!shown("demo-server[gen 1 pid 7]: ready", false));
        assert!(shown("demo-server[gen 1 pid 7]: ready", true));
    }
}
