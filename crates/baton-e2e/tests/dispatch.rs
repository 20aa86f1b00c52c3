//! `baton run --dispatch`: baton alone watches the listener and hands each
//! connection to an idle worker (docs/dispatch.md). The demo server speaks
//! the protocol through `baton_app::dispatch`, unchanged from its
//! shared-accept self; the Python worker in examples/python-dispatch speaks
//! it with the standard library alone.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use baton_e2e::{Baton, BatonCmd, Signal, WAIT, ctl, http};
use common::{Load, reloads_under_load};

const RELOADS: u32 = 50;

fn demo(mode: &str, workers: &str) -> Baton {
    let demo = baton_e2e::bin("demo-server");
    let baton = BatonCmd::new()
        .arg(format!("--dispatch={mode}"))
        .args(["--workers", workers])
        .command([demo.as_os_str(), "--drain-grace".as_ref(), "200ms".as_ref()])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    baton
}

fn stop_cleanly(mut baton: Baton) {
    let status = baton.stop(Signal::TERM, WAIT);
    assert_eq!(status.code(), Some(0), "graceful stop");
    baton.wait_for("stopped", WAIT);
}

/// `baton ctl status --json`, parsed.
fn status(baton: &Baton) -> serde_json::Value {
    let out = ctl::ctl(baton, &["status", "--json"]);
    assert!(out.status.success(), "ctl status: {out:?}");
    serde_json::from_slice(&out.stdout).expect("status is JSON")
}

/// Connections each live worker of generation `g` was handed, by slot.
fn per_worker(status: &serde_json::Value, g: u64) -> BTreeMap<u64, u64> {
    let gens = status["generations"].as_array().expect("generations");
    let gen_ = gens
        .iter()
        .find(|x| x["id"].as_u64() == Some(g))
        .unwrap_or_else(|| panic!("generation {g} in {status}"));
    gen_["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| {
            let n = w["dispatch"]["dispatched"]
                .as_u64()
                .unwrap_or_else(|| panic!("a dispatch count in {w}"));
            (w["slot"].as_u64().expect("slot"), n)
        })
        .collect()
}

fn reloads(mode: &str, keep_alive: bool) {
    let baton = demo(mode, "2");
    let load = Load {
        reloads: RELOADS,
        keep_alive,
        ..Load::default()
    };
    let report = reloads_under_load(
        &baton,
        baton.port(),
        &load,
        || baton.signal(Signal::HUP),
        |_| {},
    );
    for g in 1..=RELOADS + 1 {
        assert!(
            report.generations.contains_key(&g.to_string()),
            "generation {g} answered nothing: {report}"
        );
    }
    eprintln!("[e2e] load report: {report}");
    let s = status(&baton);
    assert_eq!(s["dispatch"]["mode"], mode, "{s}");
    assert_eq!(s["dispatch"]["dropped"], 0, "{s}");
    assert_eq!(s["dispatch"]["timeouts"], 0, "{s}");
    stop_cleanly(baton);
}

#[test]
fn no_failed_request_across_50_reloads_pass_keep_alive() {
    reloads("pass", true);
}

#[test]
fn no_failed_request_across_50_reloads_pass_connection_close() {
    reloads("pass", false);
}

#[test]
fn no_failed_request_across_50_reloads_accept_keep_alive() {
    reloads("accept", true);
}

#[test]
fn no_failed_request_across_50_reloads_accept_connection_close() {
    reloads("accept", false);
}

/// One connection at a time per worker (`--credits 1`, seed 004's sync
/// children) in fifo order: 400 sequential connections over 4 workers
/// give each exactly 100, where a shared accept queue gives most to one.
#[test]
fn sequential_connections_spread_evenly_over_single_connection_workers() {
    for mode in ["pass", "accept"] {
        let demo = baton_e2e::bin("demo-server");
        let baton = BatonCmd::new()
            .arg(format!("--dispatch={mode}"))
            .args(["--workers", "4"])
            .command([demo.as_os_str(), "--credits".as_ref(), "1".as_ref()])
            .spawn();
        baton.wait_for("generation 1 ready", WAIT);
        for _ in 0..400 {
            http::get_ok(baton.port(), "/");
        }
        // The last `done` may still be on its way: wait until all 400 are
        // counted (bounded).
        let deadline = Instant::now() + WAIT;
        let counts = loop {
            let c = per_worker(&status(&baton), 1);
            if c.values().sum::<u64>() >= 400 || Instant::now() > deadline {
                break c;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let max = counts.values().max().copied().unwrap_or(0);
        let min = counts.values().min().copied().unwrap_or(0);
        assert_eq!(counts.len(), 4, "{mode}: {counts:?}");
        assert!(
            min > 0 && max * 10 <= min * 12,
            "{mode}: spread max/min above 1.2: {counts:?}"
        );
        stop_cleanly(baton);
    }
}

/// The channels, the counters and the per-worker counts survive `baton
/// ctl upgrade`: the same workers go on receiving connections from the
/// new image, and what was counted before is still counted.
#[test]
fn dispatch_channels_and_counts_survive_an_in_place_upgrade() {
    for mode in ["pass", "accept"] {
        let baton = demo(mode, "2");
        for _ in 0..20 {
            http::get_ok(baton.port(), "/");
        }
        let before = status(&baton);
        let dispatched = before["dispatch"]["dispatched"].as_u64().expect("count");
        assert!(dispatched >= 20, "{mode}: {before}");
        let out = ctl::ctl(&baton, &["upgrade"]);
        assert!(out.status.success(), "{mode}: ctl upgrade: {out:?}");
        let pids: Vec<u32> = baton.workers_of(1).iter().map(|w| w.pid).collect();
        for _ in 0..20 {
            let r = http::get_ok(baton.port(), "/");
            assert!(
                r.pid().is_some_and(|p| pids.contains(&p)),
                "{mode}: answered by a worker baton had before the upgrade"
            );
        }
        let after = status(&baton);
        assert_eq!(after["upgrades"], 1, "{mode}: {after}");
        let now = after["dispatch"]["dispatched"].as_u64().expect("count");
        assert!(now >= dispatched + 20, "{mode}: {dispatched} then {after}");
        let sum: u64 = per_worker(&after, 1).values().sum();
        assert!(sum >= 40, "{mode}: per worker after the upgrade: {after}");
        stop_cleanly(baton);
    }
}

/// A mistake in the flags says what to write.
#[test]
fn dispatch_flags_without_dispatch_say_so() {
    let (status, lines) = BatonCmd::new()
        .args(["--queue", "8"])
        .probe(&[])
        .run_to_exit(WAIT);
    assert_eq!(status.code(), Some(2), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("--queue applies to dispatch mode only")),
        "{lines:?}"
    );
    let (status, lines) = BatonCmd::new()
        .args(["--dispatch=accept", "--queue", "8"])
        .probe(&[])
        .run_to_exit(WAIT);
    assert_eq!(status.code(), Some(2), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("only --dispatch=pass")),
        "{lines:?}"
    );
}

fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// `baton run --dispatch=MODE -- python3 examples/python-dispatch/... app:app`
/// (the WSGI app of the gunicorn tests).
fn python_worker(python: &std::path::Path, mode: &str) -> BatonCmd {
    BatonCmd::new()
        .arg(format!("--dispatch={mode}"))
        .args(["--workers", "2"])
        .command([
            python.as_os_str(),
            repo("examples/python-dispatch/baton_dispatch.py").as_os_str(),
            "--chdir".as_ref(),
            repo("examples/apps").as_os_str(),
            "app:app".as_ref(),
        ])
}

fn python_twenty_reloads(test: &str, mode: &str) {
    let Some(python) = baton_e2e::tools::which_or_skip(test, "python3", "python3") else {
        return;
    };
    let baton = python_worker(&python, mode).spawn();
    baton.wait_for("generation 1 ready", WAIT);
    // One request per connection: the worker is synchronous (HTTP/1.0).
    let load = Load {
        reloads: 20,
        keep_alive: false,
        concurrency: 4,
        ..Load::default()
    };
    let report = reloads_under_load(
        &baton,
        baton.port(),
        &load,
        || baton.signal(Signal::HUP),
        |_| {},
    );
    eprintln!("[e2e] load report: {report}");
    stop_cleanly(baton);
}

#[test]
fn python_worker_twenty_reloads_under_load_pass() {
    python_twenty_reloads("python_worker_twenty_reloads_under_load_pass", "pass");
}

#[test]
fn python_worker_twenty_reloads_under_load_accept() {
    python_twenty_reloads("python_worker_twenty_reloads_under_load_accept", "accept");
}

/// Worker 0 says `ready`, then holds what it is sent and never answers
/// (tests/apps/dispatch_ignorer.py): after --dispatch-timeout baton kills
/// it and the connection is served by another worker; no request fails.
#[test]
fn a_worker_that_ignores_a_dispatch_is_killed_and_its_connection_served_by_another() {
    let test = "a_worker_that_ignores_a_dispatch_is_killed_and_its_connection_served_by_another";
    let Some(python) = baton_e2e::tools::which_or_skip(test, "python3", "python3") else {
        return;
    };
    let cmd = BatonCmd::new();
    let marker = cmd.dir().join("ignored-once");
    let baton = cmd
        .args(["--dispatch", "--workers", "2", "--dispatch-timeout", "1s"])
        .command([
            python.as_os_str(),
            repo("crates/baton-e2e/tests/apps/dispatch_ignorer.py").as_os_str(),
            marker.as_os_str(),
            repo("examples/python-dispatch/baton_dispatch.py").as_os_str(),
            repo("examples/apps").as_os_str(),
        ])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    // fifo alternates between the two workers: of four connections in a
    // row, one goes to worker 0.
    for i in 0..4 {
        let r = http::get(baton.port(), "/").unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.generation(), Some(1), "request {i}");
    }
    baton.wait_for("did not take connection", WAIT);
    let s = status(&baton);
    assert_eq!(s["dispatch"]["timeouts"], 1, "{s}");
    assert!(s["dispatch"]["redispatched"].as_u64() >= Some(1), "{s}");
    assert_eq!(s["dispatch"]["dropped"], 0, "{s}");
    stop_cleanly(baton);
}
