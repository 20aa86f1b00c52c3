//! `accepting`: how soon `--ready accepting` sees a new worker wait for
//! connections, against `--ready notify`, and what the looking costs. Run
//! it with `bench/accepting/run`, which builds everything in release mode.
//!
//! baton runs the demo server (1 worker, no load). Each reload is a SIGHUP,
//! then a wait for the new generation's `ready` and the old one's `exited`.
//! Two passes, each alternating the modes round by round (so drift in the
//! machine's load hits both alike):
//!
//! 1. **latency** (`BATON_LOG=trace`): per reload, the time from the
//!    worker's start (the lifecycle's `Spawned`) to baton's seeing it ready
//!    (`worker 0 of generation N is ready, X ms after it started`: READY=1
//!    received, or the look that saw it accepting), the generation's
//!    `ready in M ms`, and for accepting the looks it took and what each
//!    scan cost (`looked at worker ... in N µs`);
//! 2. **CPU** (`BATON_LOG=info`, so logging costs nothing): baton's CPU
//!    time per reload (all its threads, from `/proc/PID/task/*/schedstat`,
//!    in nanoseconds), and the `baton-accepting` thread's own; then the
//!    same thread over an idle second once the generation serves (it looks
//!    only while a worker is not ready).
//!
//! ```text
//! accepting [--reloads N] [--rounds N] [--out PATH] [--commit TEXT]
//!           [--date TEXT] [--rerun TEXT]
//! ```
//! `--reloads` is per mode (default 50), split over `--rounds` (default 2).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use baton_e2e::{Baton, BatonCmd, Signal, WAIT};

#[derive(Debug)]
struct Args {
    reloads: u32,
    rounds: u32,
    out: Option<PathBuf>,
    commit: String,
    date: String,
    rerun: String,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        reloads: 50,
        rounds: 2,
        out: None,
        commit: "unknown".into(),
        date: "unknown".into(),
        rerun: "bench/accepting/run".into(),
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
            "--rounds" => a.rounds = num(value()?)?.max(1),
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
    Ok(a)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

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
    format!(
        "{cpus} CPUs ({model}), Linux {}",
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

/// CPU time of each thread of `pid`, by name, in nanoseconds.
fn thread_cpu(pid: u32) -> Vec<(String, u64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| {
            let dir = t.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?;
            let ns = std::fs::read_to_string(dir.join("schedstat"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((name.trim().to_owned(), ns))
        })
        .collect()
}

fn total_cpu(pid: u32) -> u64 {
    thread_cpu(pid).iter().map(|(_, ns)| ns).sum()
}

fn accepting_cpu(pid: u32) -> u64 {
    thread_cpu(pid)
        .iter()
        .filter(|(n, _)| n == "baton-accepting")
        .map(|(_, ns)| ns)
        .sum()
}

fn number_after(line: &str, before: &str, after: &str) -> Option<f64> {
    let rest = &line[line.find(before)? + before.len()..];
    rest[..rest.find(after)?].trim().parse().ok()
}

fn start(mode: &str, log: &str) -> Baton {
    let demo = baton_e2e::bin("demo-server");
    let baton = BatonCmd::new()
        .args(["--ready", mode])
        .env("BATON_LOG", log)
        .command([demo.as_os_str()])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    baton
}

/// The slow starter: `waiter.py epoll --sleep 1` (tests/apps of the e2e
/// crate), which waits on the socket 1 s after it starts.
fn start_slow() -> Baton {
    let waiter = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/waiter.py");
    let baton = BatonCmd::new()
        .args(["--ready", "accepting"])
        .env("BATON_LOG", "trace")
        .command([
            "python3".as_ref(),
            waiter.as_os_str(),
            "epoll".as_ref(),
            "--sleep".as_ref(),
            "1".as_ref(),
        ])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    baton
}

#[derive(Debug, Default)]
struct Slow {
    looks: Vec<f64>,
    worker_ms: Vec<f64>,
    /// The accepting thread's CPU per reload, µs.
    thread: Vec<f64>,
}

fn slow_round(n: u32, into: &mut Slow) {
    let mut baton = start_slow();
    reload(&baton, 1, 1);
    let pid = baton.baton_pid();
    let before = accepting_cpu(pid);
    reload(&baton, 2, n);
    into.thread
        .push((accepting_cpu(pid) - before) as f64 / 1000.0 / f64::from(n));
    let lines = baton.lines();
    for g in 3..=n + 2 {
        let looked = format!("looked at worker 0 of generation {g} (pid ");
        into.looks
            .push(lines.iter().filter(|l| l.contains(&looked)).count() as f64);
        let ready = format!("worker 0 of generation {g} is ready, ");
        if let Some(ms) = lines
            .iter()
            .find_map(|l| l.contains(&ready).then(|| number_after(l, &ready, " ms"))?)
        {
            into.worker_ms.push(ms);
        }
    }
    let status = baton.stop(Signal::TERM, WAIT);
    assert_eq!(status.code(), Some(0), "slow starter: baton's exit");
}

/// Reloads `baton` from generation `from` `n` times, waiting for each
/// generation to be ready and the previous one to be gone.
fn reload(baton: &Baton, from: u32, n: u32) {
    for g in from + 1..=from + n {
        let mark = baton.mark();
        baton.signal(Signal::HUP);
        baton.wait_for_after(mark, &format!("generation {g} ready"), WAIT);
        baton.wait_for_after(mark, &format!("generation {} exited", g - 1), WAIT);
    }
}

#[derive(Debug, Default)]
struct Latency {
    /// Worker start -> seen ready, ms.
    worker_ms: Vec<f64>,
    /// The generation's `ready in M ms`.
    generation_ms: Vec<f64>,
    /// Looks per reload (accepting).
    looks: Vec<f64>,
    /// Scan cost, µs.
    scan_us: Vec<f64>,
}

fn latency_round(mode: &str, n: u32, into: &mut Latency) {
    let mut baton = start(mode, "trace");
    reload(&baton, 1, n);
    let lines = baton.lines();
    for g in 2..=n + 1 {
        let ready = format!("worker 0 of generation {g} is ready, ");
        if let Some(ms) = lines
            .iter()
            .find_map(|l| l.contains(&ready).then(|| number_after(l, &ready, " ms"))?)
        {
            into.worker_ms.push(ms);
        }
        let gen_ready = format!("generation {g} ready in ");
        if let Some(ms) = lines.iter().find_map(|l| {
            l.contains(&gen_ready)
                .then(|| number_after(l, &gen_ready, " ms"))?
        }) {
            into.generation_ms.push(ms);
        }
        let looked = format!("looked at worker 0 of generation {g} (pid ");
        let scans: Vec<f64> = lines
            .iter()
            .filter(|l| l.contains(&looked))
            .filter_map(|l| number_after(l, ") in ", " µs"))
            .collect();
        if mode == "accepting" {
            into.looks.push(scans.len() as f64);
            into.scan_us.extend(scans);
        }
    }
    let status = baton.stop(Signal::TERM, WAIT);
    assert_eq!(status.code(), Some(0), "{mode}: baton's exit");
}

#[derive(Debug, Default)]
struct Cpu {
    /// baton's CPU per reload, µs.
    baton: Vec<f64>,
    /// The accepting thread's CPU per reload, µs.
    thread: Vec<f64>,
    /// The accepting thread's CPU over an idle second once serving, µs.
    idle: Vec<f64>,
}

fn cpu_round(mode: &str, n: u32, into: &mut Cpu) {
    let mut baton = start(mode, "info");
    // One reload first, so the thread exists and nothing is first-time.
    reload(&baton, 1, 1);
    let pid = baton.baton_pid();
    let (before, thread_before) = (total_cpu(pid), accepting_cpu(pid));
    reload(&baton, 2, n);
    let (after, thread_after) = (total_cpu(pid), accepting_cpu(pid));
    into.baton
        .push((after - before) as f64 / 1000.0 / f64::from(n));
    into.thread
        .push((thread_after - thread_before) as f64 / 1000.0 / f64::from(n));
    // Not a synchronisation: the interval over which idle CPU is measured.
    std::thread::sleep(Duration::from_secs(1));
    into.idle
        .push((accepting_cpu(pid) - thread_after) as f64 / 1000.0);
    let status = baton.stop(Signal::TERM, WAIT);
    assert_eq!(status.code(), Some(0), "{mode}: baton's exit");
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[i.min(s.len() - 1)]
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("accepting: {e}");
        std::process::exit(2);
    });
    let load_before = loadavg();
    let modes = ["notify", "accepting"];
    let per_round = (args.reloads / args.rounds).max(1);
    let mut lat = [Latency::default(), Latency::default()];
    let mut cpu = [Cpu::default(), Cpu::default()];
    for round in 0..args.rounds {
        for (i, mode) in modes.iter().enumerate() {
            eprintln!("accepting: latency, round {}, --ready {mode}", round + 1);
            latency_round(mode, per_round, &mut lat[i]);
        }
    }
    for round in 0..args.rounds {
        for (i, mode) in modes.iter().enumerate() {
            eprintln!("accepting: CPU, round {}, --ready {mode}", round + 1);
            cpu_round(mode, per_round, &mut cpu[i]);
        }
    }
    let mut slow = Slow::default();
    let slow_reloads = 10;
    eprintln!("accepting: a slow starter, {slow_reloads} reloads");
    slow_round(slow_reloads, &mut slow);
    let load_after = loadavg();

    let mut md = String::new();
    let _ = writeln!(md, "# `--ready accepting` benchmark results\n");
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
        "- setup: release build; `baton run --ready MODE -- demo-server` (1 worker, no load); {} reloads per mode in {} rounds, the modes alternating; each reload a SIGHUP, then the new generation ready and the old one exited\n",
        per_round * args.rounds,
        args.rounds
    );
    let _ = writeln!(
        md,
        "## Readiness latency\n\nFrom the worker's start (baton's `Spawned`) to baton's seeing it ready: `READY=1` received (notify), or the look that found it accepting. The generation's figure adds the fork and exec (baton's `generation N ready in M ms`, whole milliseconds).\n"
    );
    let _ = writeln!(
        md,
        "| mode | reloads | worker p50 (ms) | worker p99 (ms) | worker mean (ms) | worker max (ms) | generation p50 (ms) | generation p99 (ms) |"
    );
    let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (i, mode) in modes.iter().enumerate() {
        let l = &lat[i];
        let _ = writeln!(
            md,
            "| {mode} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} | {:.0} |",
            l.worker_ms.len(),
            percentile(&l.worker_ms, 50.0),
            percentile(&l.worker_ms, 99.0),
            mean(&l.worker_ms),
            percentile(&l.worker_ms, 100.0),
            percentile(&l.generation_ms, 50.0),
            percentile(&l.generation_ms, 99.0),
        );
    }
    let d50 = percentile(&lat[1].worker_ms, 50.0) - percentile(&lat[0].worker_ms, 50.0);
    let d99 = percentile(&lat[1].worker_ms, 99.0) - percentile(&lat[0].worker_ms, 99.0);
    let met = |d: f64| if d <= 2.0 { "met" } else { "NOT met" };
    let _ = writeln!(
        md,
        "\naccepting − notify: p50 {d50:+.3} ms ({}), p99 {d99:+.3} ms ({}); goal: within 2 ms.\n",
        met(d50),
        met(d99)
    );
    let a = &lat[1];
    let _ = writeln!(
        md,
        "Looks per reload (accepting): p50 {:.0}, max {:.0}; one scan of the worker's /proc: p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs ({} scans).\n",
        percentile(&a.looks, 50.0),
        percentile(&a.looks, 100.0),
        percentile(&a.scan_us, 50.0),
        percentile(&a.scan_us, 99.0),
        percentile(&a.scan_us, 100.0),
        a.scan_us.len()
    );
    let _ = writeln!(
        md,
        "## CPU\n\nbaton's CPU time (all its threads, `/proc/PID/task/*/schedstat`) per reload, at log level info; the `baton-accepting` thread's share; and that thread over an idle second once the generation serves. Mean over the rounds.\n"
    );
    let _ = writeln!(
        md,
        "| mode | baton CPU per reload (µs) | accepting thread per reload (µs) | accepting thread, idle second (µs) |"
    );
    let _ = writeln!(md, "| --- | --- | --- | --- |");
    for (i, mode) in modes.iter().enumerate() {
        let c = &cpu[i];
        let _ = writeln!(
            md,
            "| {mode} | {:.0} | {:.0} | {:.0} |",
            mean(&c.baton),
            mean(&c.thread),
            mean(&c.idle)
        );
    }
    let extra = mean(&cpu[1].baton) - mean(&cpu[0].baton);
    let _ = writeln!(
        md,
        "\naccepting − notify: {extra:+.0} µs of baton CPU per reload.",
    );
    let _ = writeln!(
        md,
        "\n## A slow starter\n\n`baton run --ready accepting -- python3 waiter.py epoll --sleep 1` (crates/baton-e2e/tests/apps): the worker waits on the socket 1 s after it starts, so baton looks for a whole second. {} reloads.\n",
        slow.looks.len()
    );
    let _ = writeln!(
        md,
        "| looks per reload (p50, max) | worker start → seen (p50 ms) | accepting thread per reload (µs) |"
    );
    let _ = writeln!(md, "| --- | --- | --- |");
    let _ = writeln!(
        md,
        "| {:.0}, {:.0} | {:.1} | {:.0} |",
        percentile(&slow.looks, 50.0),
        percentile(&slow.looks, 100.0),
        percentile(&slow.worker_ms, 50.0),
        mean(&slow.thread)
    );
    print!("{md}");
    if let Some(out) = &args.out {
        std::fs::write(out, &md).unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
        eprintln!("accepting: wrote {}", out.display());
    }
}
