//! `reexec`: how long baton takes to upgrade itself in place. Run it with
//! `bench/reexec/run`, which builds everything in release mode first.
//!
//! baton runs the probe (2 workers) under light keep-alive load (4
//! connections, `baton-load`, every failure counted; each request spends
//! 2 ms in the worker, so the load does not take every CPU). Each round sends
//! `SIGUSR2` and then asks `ctl status` (over the control socket, with no
//! process started) until an answer says the upgrade count went up: the
//! time from the signal to that answer is the figure — the new image
//! running, having taken everything over, and serving its control socket.
//! Between rounds baton is left alone for a moment.
//!
//! Prints the figures and writes them as Markdown (`--out`), and replaces
//! the section between `<!-- reexec -->` markers in `--summary` (the
//! benchmarks' results page). Goal: p50 ≤ 10 ms, 0 failed requests, the
//! same pid and workers throughout.
//!
//! ```text
//! reexec [--rounds N] [--out PATH] [--summary PATH] [--commit TEXT] [--date TEXT]
//! ```

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baton_e2e::{BatonCmd, Signal, WAIT, inspect};
use baton_load::{Config, Target};

struct Args {
    rounds: u32,
    out: Option<PathBuf>,
    summary: Option<PathBuf>,
    commit: String,
    date: String,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        rounds: 100,
        out: None,
        summary: None,
        commit: "unknown".into(),
        date: "unknown".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--rounds" => a.rounds = value()?.parse().map_err(|e| format!("--rounds: {e}"))?,
            "--out" => a.out = Some(value()?.into()),
            "--summary" => a.summary = Some(value()?.into()),
            "--commit" => a.commit = value()?,
            "--date" => a.date = value()?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

/// The `upgrades` count of one `status` answer.
fn upgrades(sock: &Path) -> Option<u64> {
    let mut s = UnixStream::connect(sock).ok()?;
    s.write_all(b"{\"v\":1,\"cmd\":\"status\"}\n").ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    let v: serde_json::Value = serde_json::from_str(reply.trim()).ok()?;
    v.get("upgrades")?.as_u64()
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("reexec: {e}");
        std::process::exit(2);
    });
    let baton = BatonCmd::new()
        .args(["--workers", "2"])
        .env("BATON_LOG", "info")
        .probe(&["--drain-ms", "100"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let pid = baton.pid();
    let sock = baton.dir().join("baton/baton.sock");
    let workers = inspect::live_children(pid);
    let fds_before = inspect::fd_count(pid);
    let rss_before = inspect::rss_kib(pid);
    let port = baton.port();
    let mut done = 0u64;
    // Light load first: each request waits 2 ms in the worker, so the load
    // keeps connections busy without taking every CPU (the figure is the
    // upgrade's). Then the same with requests back to back, which take
    // both CPUs of a small machine: everything, the upgrade included,
    // waits for a CPU then.
    let mut runs = Vec::new();
    for (name, path) in [("light", "/slow?ms=2"), ("saturating", "/")] {
        let mut cfg = Config::new(Target::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, port))));
        cfg.concurrency = 4;
        path.clone_into(&mut cfg.path);
        let load = baton_load::start(cfg);
        assert!(load.wait_for_generation("1", WAIT).is_some(), "no response");
        let mut took: Vec<Duration> = Vec::new();
        for _ in 0..args.rounds {
            done += 1;
            let t = Instant::now();
            baton.signal(Signal::USR2);
            while upgrades(&sock) != Some(done) {
                assert!(t.elapsed() < WAIT, "upgrade {done}: none after {WAIT:?}");
            }
            took.push(t.elapsed());
            // A moment's rest, so that rounds do not overlap.
            std::thread::sleep(Duration::from_millis(20));
        }
        took.sort();
        runs.push((name, took, load.stop()));
    }
    let same_workers = inspect::live_children(pid) == workers;
    let fds_after = inspect::fd_count(pid);
    let rss_after = inspect::rss_kib(pid);
    let load_avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_avg = load_avg
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let mut md = String::new();
    let _ = writeln!(md, "# baton upgrading itself in place\n");
    let _ = writeln!(
        md,
        "Measured by `bench/reexec/run` ({}, commit {}, load average {load_avg}): {} upgrades \
         (`SIGUSR2`) of a release build under each load, 4 keep-alive connections to 2 probe \
         workers: light (each request waits 2 ms in the worker) and saturating (requests back \
         to back, which take both CPUs). Each figure is the time from the signal to the first \
         `ctl status` answer of the new image.\n",
        args.date, args.commit, args.rounds
    );
    let _ = writeln!(
        md,
        "| load | p50 signal → new image answering | p99 | max | requests ok / failed |"
    );
    let _ = writeln!(md, "| --- | --- | --- | --- | --- |");
    for (name, took, report) in &runs {
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} / {} |",
            ms(quantile(took, 0.5)),
            ms(quantile(took, 0.99)),
            ms(*took.last().expect("rounds")),
            report.ok,
            report.failed
        );
    }
    let _ = writeln!(md, "\nGoal: p50 ≤ 10 ms with 0 failed requests.\n");
    let _ = writeln!(md, "| figure | value | goal |\n| --- | --- | --- |");
    let _ = writeln!(
        md,
        "| same pid, same workers | {} | yes |",
        if same_workers { "yes" } else { "NO" }
    );
    let _ = writeln!(
        md,
        "| baton's descriptors before → after | {} → {} | flat |",
        fds_before.map_or("?".into(), |n| n.to_string()),
        fds_after.map_or("?".into(), |n| n.to_string())
    );
    let _ = writeln!(
        md,
        "| baton's RSS before → after | {} → {} KiB | flat |",
        rss_before.map_or("?".into(), |n| n.to_string()),
        rss_after.map_or("?".into(), |n| n.to_string())
    );
    print!("{md}");
    if let Some(out) = &args.out {
        std::fs::write(out, &md).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
    }
    if let Some(summary) = &args.summary {
        let text = std::fs::read_to_string(summary).unwrap_or_default();
        let (_, light, light_report) = &runs[0];
        let (_, full, full_report) = &runs[1];
        let section = format!(
            "<!-- reexec -->\n## baton upgrading itself in place\n\n`bench/reexec/run` ({}): {} upgrades under light load, \
             signal → new image answering `ctl status` p50 {}, p99 {} (goal p50 ≤ 10 ms); under saturating load \
             p50 {}, p99 {}; {} failed requests of {}; same pid and workers: {}. \
             Details: [bench/reexec/RESULTS.md](reexec/RESULTS.md).\n<!-- /reexec -->",
            args.date,
            args.rounds,
            ms(quantile(light, 0.5)),
            ms(quantile(light, 0.99)),
            ms(quantile(full, 0.5)),
            ms(quantile(full, 0.99)),
            light_report.failed + full_report.failed,
            light_report.ok + light_report.failed + full_report.ok + full_report.failed,
            if same_workers { "yes" } else { "NO" }
        );
        let new = match (text.find("<!-- reexec -->"), text.find("<!-- /reexec -->")) {
            (Some(a), Some(b)) => format!(
                "{}{section}{}",
                &text[..a],
                &text[b + "<!-- /reexec -->".len()..]
            ),
            _ => format!("{}\n\n{section}\n", text.trim_end()),
        };
        std::fs::write(summary, new)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", summary.display()));
    }
    if runs.iter().any(|(_, _, r)| r.failed > 0) || !same_workers {
        std::process::exit(1);
    }
}
