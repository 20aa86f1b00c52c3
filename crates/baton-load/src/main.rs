//! `baton-load`: drive HTTP/1.1 load at a server and count every failure.
//!
//! ```text
//! baton-load --url http://127.0.0.1:8080/ -c 8 -d 10s
//! baton-load --unix /run/app.sock -n 100000 --no-keep-alive --json
//! baton-load --url http://127.0.0.1:8080/ -c 1 --no-keep-alive --rate 100 -d 30s --timeline probe.csv
//! ```
//! Exits 0 when every request succeeded, 1 when any failed, 2 on bad usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use baton_load::{Config, Target};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "baton-load",
    version,
    about = "HTTP/1.1 load client that counts every failed request (no retries)",
    group(clap::ArgGroup::new("target").required(true).args(["url", "unix"])),
)]
struct Args {
    /// Server URL, e.g. http://127.0.0.1:8080/path (plain http only).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Unix stream socket to connect to instead of TCP.
    #[arg(long, value_name = "PATH")]
    unix: Option<PathBuf>,
    /// Request path; overrides the URL's path (default /).
    #[arg(long, value_name = "PATH")]
    path: Option<String>,
    /// Connections, each with its own thread.
    #[arg(short = 'c', long, default_value_t = 8, value_name = "N")]
    concurrency: usize,
    /// Run for this long (e.g. 10s, 1m); the default when -n is not given.
    #[arg(short = 'd', long, value_parser = humantime::parse_duration, conflicts_with = "requests", value_name = "DURATION")]
    duration: Option<Duration>,
    /// Stop after this many requests in total.
    #[arg(short = 'n', long, value_name = "N")]
    requests: Option<u64>,
    /// Open a new connection for every request (and send Connection: close).
    #[arg(long)]
    no_keep_alive: bool,
    /// Limit on one request, connect to last body byte.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s", value_name = "DURATION")]
    timeout: Duration,
    /// Print one line of counts per second to stderr while running.
    #[arg(long)]
    progress: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Pace requests: this many per second over all connections (open
    /// loop: a connection that falls behind skips the slots it missed).
    #[arg(long, value_name = "PER_SECOND")]
    rate: Option<f64>,
    /// Write every request to FILE as CSV (start, latency, outcome,
    /// generation), for plotting latency over time.
    #[arg(long, value_name = "FILE")]
    timeline: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (target, host, url_path) = match (&args.url, &args.unix) {
        (Some(url), _) => match baton_load::parse_http_url(url) {
            Ok((t, h, p)) => (t, Some(h), p),
            Err(e) => {
                eprintln!("baton-load: bad --url {e}");
                return ExitCode::from(2);
            }
        },
        (None, Some(path)) => (Target::Unix(path.clone()), None, "/".to_owned()),
        (None, None) => unreachable!("clap requires --url or --unix"),
    };
    if args.concurrency == 0 {
        eprintln!("baton-load: --concurrency must be at least 1");
        return ExitCode::from(2);
    }
    let mut cfg = Config::new(target);
    cfg.path = args.path.clone().unwrap_or(url_path);
    if !cfg.path.starts_with('/') {
        eprintln!(
            "baton-load: --path must start with '/' (got {:?})",
            cfg.path
        );
        return ExitCode::from(2);
    }
    cfg.host = host;
    cfg.concurrency = args.concurrency;
    cfg.keep_alive = !args.no_keep_alive;
    cfg.request_timeout = args.timeout;
    cfg.max_requests = args.requests;
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            eprintln!(
                "baton-load: --rate must be a positive number of requests per second (got {rate})"
            );
            return ExitCode::from(2);
        }
        cfg.rate = Some(rate);
    }
    cfg.timeline = args.timeline.is_some();
    let duration = args.duration.unwrap_or(Duration::from_secs(10));

    let Ok(run) = baton_load::try_start(cfg.clone()).inspect_err(|e| {
        eprintln!("baton-load: cannot start {} threads: {e}", cfg.concurrency);
    }) else {
        return ExitCode::from(1);
    };
    let started_wall = run.started_wall();
    let (report, samples) = if args.requests.is_some() && !args.progress {
        run.wait_with_timeline()
    } else {
        // Sleep in one-second steps so progress lines come on time; this is
        // pacing for a person, not synchronisation.
        let end = run.started_at() + duration;
        let limited = args.requests;
        loop {
            let now = Instant::now();
            if limited.is_none() && now >= end {
                break run.stop_with_timeline();
            }
            let snap = run.snapshot();
            if limited.is_some_and(|n| snap.requests >= n) {
                break run.wait_with_timeline();
            }
            if args.progress && snap.elapsed >= Duration::from_secs(1) {
                eprintln!(
                    "{:>6.1}s  requests {}  failed {}  generations {}",
                    snap.elapsed.as_secs_f64(),
                    snap.requests,
                    snap.failed,
                    snap.generations
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(",")
                );
            }
            let step = if limited.is_some() {
                Duration::from_secs(1)
            } else {
                (end - now).min(Duration::from_secs(1))
            };
            std::thread::sleep(step);
        }
    };
    if let Some(path) = &args.timeline {
        let written = std::fs::File::create(path).and_then(|f| {
            let mut out = std::io::BufWriter::new(f);
            baton_load::write_csv(&mut out, started_wall, &samples)?;
            std::io::Write::flush(&mut out)
        });
        if let Err(e) = written {
            eprintln!(
                "baton-load: cannot write the timeline to {}: {e}",
                path.display()
            );
            return ExitCode::from(2);
        }
    }
    if args.json {
        println!("{}", report.to_json());
    } else {
        println!(
            "baton-load: {} to {}{}, {} connections, keep-alive {}",
            if args.requests.is_some() {
                format!("{} requests", args.requests.unwrap_or_default())
            } else {
                humantime::format_duration(duration).to_string()
            },
            cfg.target,
            cfg.path,
            cfg.concurrency,
            if cfg.keep_alive { "on" } else { "off" }
        );
        println!("{report}");
    }
    if report.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
