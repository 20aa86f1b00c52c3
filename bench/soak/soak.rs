//! `soak`: baton through thousands of reloads under light load. Run it
//! with `bench/soak/run`, which builds everything in release mode first.
//!
//! baton runs the probe (2 workers); 2 keep-alive connections of
//! back-to-back requests run throughout (`baton-load`, every failure
//! counted, no retries). Each reload is a SIGHUP, then a wait for the new
//! generation's `ready`, the old one's `exited`, a response from the new
//! one, and the old workers gone; then baton's footprint is sampled
//! (RSS, descriptors, threads, zombie children) at that quiet moment.
//!
//! As root it runs in a network namespace of its own (`NetNs`), so its
//! ports are private and the kernel's `ListenOverflows`/`ListenDrops`
//! count only this run.
//!
//! Prints a line every 500 reloads and the figures at the end, and writes
//! them as Markdown (`--out`). Targets: 0 failed requests; RSS growth
//! after the warm-up < 1 MiB; descriptors, threads constant; no zombie;
//! no connection dropped by the kernel.
//!
//! ```text
//! soak [--reloads N] [--warm-up N] [--workers N] [--concurrency N]
//!      [--out PATH] [--commit TEXT] [--date TEXT] [--rerun TEXT]
//! ```

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use baton_e2e::inspect::{self, Footprint};
use baton_e2e::{BatonCmd, NetNs, Signal, WAIT};
use baton_load::{Config, Target};

#[derive(Debug)]
struct Args {
    reloads: u32,
    warm_up: u32,
    workers: u32,
    concurrency: usize,
    out: Option<PathBuf>,
    commit: String,
    date: String,
    rerun: String,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        reloads: 5000,
        warm_up: 100,
        workers: 2,
        concurrency: 2,
        out: None,
        commit: "unknown".into(),
        date: "unknown".into(),
        rerun: "bench/soak/run".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| {
            v.parse::<u32>()
                .map_err(|_| format!("{v:?} is not a number"))
        };
        match flag.as_str() {
            "--reloads" => a.reloads = num(value()?)?,
            "--warm-up" => a.warm_up = num(value()?)?,
            "--workers" => a.workers = num(value()?)?,
            "--concurrency" => a.concurrency = num(value()?)? as usize,
            "--out" => a.out = Some(value()?.into()),
            "--commit" => a.commit = value()?,
            "--date" => a.date = value()?,
            "--rerun" => a.rerun = value()?,
            other => {
                return Err(format!(
                    "unknown flag {other:?} (see the source's doc comment)"
                ));
            }
        }
    }
    if a.warm_up >= a.reloads {
        return Err("--warm-up must be less than --reloads".into());
    }
    Ok(a)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// CPUs, model, memory and kernel, for the results file.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let model = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split(':')
                .nth(1)
                .map(str::trim)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    format!(
        "{cpus} CPUs ({model}), {} GiB RAM, Linux {}",
        mem_kib / 1024 / 1024,
        read("/proc/sys/kernel/osrelease").trim()
    )
}

fn loadavg() -> String {
    read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("soak: {e}");
        std::process::exit(2);
    });
    let load_before = loadavg();
    // As root, in a network namespace of its own: private ports, and
    // kernel counters that only this run moves.
    let ns = rustix::process::geteuid().is_root().then(NetNs::enter);
    let counters_before = ns.as_ref().map(NetNs::listen_counters);
    let mut baton = BatonCmd::new()
        .args(["--workers", &args.workers.to_string()])
        .probe(&["--drain-ms", "2000"])
        .env("BATON_LOG", "info")
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let me = baton.pid();
    let port = baton.port();
    let mut cfg = Config::new(Target::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, port))));
    cfg.concurrency = args.concurrency;
    cfg.keep_alive = true;
    cfg.request_timeout = Duration::from_secs(20);
    let run = baton_load::start(cfg);
    assert!(
        run.wait_for_generation("1", WAIT).is_some(),
        "no response from generation 1: {}",
        run.snapshot()
    );

    let started = Instant::now();
    let mut samples: Vec<Footprint> = vec![inspect::footprint(me).expect("baton runs")];
    let mut failing_reloads = 0u32;
    let mut failed_so_far = 0;
    println!(
        "soak: {} reloads, {} workers, {} keep-alive connections; baton {me} at start: {:?}",
        args.reloads, args.workers, args.concurrency, samples[0]
    );
    for g in 2..=args.reloads + 1 {
        baton.reload(g, WAIT);
        assert!(
            run.wait_for_generation(&g.to_string(), WAIT).is_some(),
            "no response from generation {g}: {}",
            run.snapshot()
        );
        let old = baton.workers_of(g - 1).into_iter().filter_map(|w| w.proc);
        baton.assert_gone(old, WAIT, &format!("a worker of generation {}", g - 1));
        samples.push(inspect::footprint(me).expect("baton runs"));
        let failed = run.snapshot().failed;
        if failed > failed_so_far {
            failing_reloads += 1;
            failed_so_far = failed;
        }
        let done = g - 1;
        if done % 500 == 0 || done == args.reloads {
            let s = samples[done as usize];
            println!(
                "soak: {done:>5} reloads in {:>6.1}s: rss {} KiB, fds {}, threads {}, zombies {}, failed {failed}",
                started.elapsed().as_secs_f64(),
                s.rss_kib,
                s.fds,
                s.threads,
                s.zombies
            );
        }
    }
    let elapsed = started.elapsed();
    let report = run.stop();
    let status = baton.stop(Signal::TERM, WAIT);
    let load_after = loadavg();
    let counters_after = ns.as_ref().map(NetNs::listen_counters);

    let warm = samples[args.warm_up as usize];
    let after: &[Footprint] = &samples[args.warm_up as usize..];
    let last = *samples.last().expect("samples");
    let max_rss = after.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let growth = i64::try_from(last.rss_kib).unwrap_or(i64::MAX)
        - i64::try_from(warm.rss_kib).unwrap_or(i64::MAX);
    let range = |f: fn(&Footprint) -> usize| {
        let min = after.iter().map(f).min().unwrap_or(0);
        let max = after.iter().map(f).max().unwrap_or(0);
        (min, max)
    };
    let fds = range(|s| s.fds);
    let threads = range(|s| s.threads);
    let zombies = samples.iter().map(|s| s.zombies).max().unwrap_or(0);
    let met = |ok: bool| if ok { "met" } else { "**missed**" };

    let mut md = String::new();
    let _ = writeln!(md, "# Soak benchmark results\n");
    let _ = writeln!(md, "- date: {}", args.date);
    let _ = writeln!(md, "- machine: {}", machine());
    let _ = writeln!(md, "- commit: {}", args.commit);
    let _ = writeln!(
        md,
        "- load average (1/5/15 min) before: {load_before}; after: {load_after}"
    );
    let _ = writeln!(md, "- rerun: `{}`", args.rerun);
    let _ = writeln!(
        md,
        "- setup: release build; `baton run --workers {}` running `baton-probe --drain-ms 2000`; \
         {} keep-alive connections of back-to-back requests (baton-load: every failure counted, \
         no retries); each reload is a SIGHUP, then the new generation ready, the old one exited \
         and its workers gone, then baton's footprint is sampled\n",
        args.workers, args.concurrency
    );
    let _ = writeln!(md, "## Against the targets\n");
    let _ = writeln!(md, "| target | measured | |\n| --- | --- | --- |");
    let _ = writeln!(
        md,
        "| 0 failed requests over {} reloads | {} failed of {} ({} reloads with a failure) | {} |",
        args.reloads,
        report.failed,
        report.requests,
        failing_reloads,
        met(report.failed == 0)
    );
    let _ = writeln!(
        md,
        "| baton's RSS growth after the warm-up ({} reloads) < 1 MiB | {growth:+} KiB ({} KiB after the warm-up, {} KiB at the end, {} KiB at most) | {} |",
        args.warm_up,
        warm.rss_kib,
        last.rss_kib,
        max_rss,
        met(growth < 1024)
    );
    let _ = writeln!(
        md,
        "| descriptors constant | {}..{} after the warm-up ({} at start) | {} |",
        fds.0,
        fds.1,
        samples[0].fds,
        met(fds.0 == fds.1)
    );
    let _ = writeln!(
        md,
        "| threads constant | {}..{} after the warm-up ({} at start) | {} |",
        threads.0,
        threads.1,
        samples[0].threads,
        met(threads.0 == threads.1)
    );
    let _ = writeln!(
        md,
        "| no zombie | at most {zombies} at any sample | {} |",
        met(zombies == 0)
    );
    match (counters_before, counters_after) {
        (Some(b), Some(a)) => {
            let _ = writeln!(
                md,
                "| the kernel drops no connection (`TcpExt` ListenOverflows, ListenDrops in the run's own network namespace) | {b:?} before, {a:?} after | {} |",
                met(a == b)
            );
        }
        _ => {
            let _ = writeln!(
                md,
                "| the kernel drops no connection | not measured (needs root for a private network namespace) | |"
            );
        }
    }
    let _ = writeln!(md, "\n## The run\n");
    let _ = writeln!(
        md,
        "{} reloads in {:.1} s ({:.1} reloads/s); {} requests ({:.0}/s), {} failed; baton exited with {status}.\n",
        args.reloads,
        elapsed.as_secs_f64(),
        f64::from(args.reloads) / elapsed.as_secs_f64(),
        report.requests,
        report.throughput(),
        report.failed
    );
    let _ = writeln!(
        md,
        "| after reload | RSS (KiB) | descriptors | threads | zombies |\n| --- | --- | --- | --- | --- |"
    );
    let step = (args.reloads / 10).max(1) as usize;
    for (i, s) in samples.iter().enumerate() {
        if i % step == 0 || i == args.warm_up as usize || i + 1 == samples.len() {
            let _ = writeln!(
                md,
                "| {i} | {} | {} | {} | {} |",
                s.rss_kib, s.fds, s.threads, s.zombies
            );
        }
    }
    let l = &report.latency;
    let _ = writeln!(
        md,
        "\nLatency of the successful requests: p50 {}, p99 {}, max {}; errors: {}.",
        baton_load::human(l.p50),
        baton_load::human(l.p99),
        baton_load::human(l.max),
        if report.errors.is_empty() {
            "none".to_owned()
        } else {
            format!("{:?}", report.errors)
        }
    );
    println!("\n{md}");
    if let Some(out) = &args.out {
        std::fs::write(out, &md).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
        println!("soak: wrote {}", out.display());
    }
}
