//! baton's core promise: no failed request across reloads, under load.
//!
//! Each test drives 8 connections of back-to-back requests through 20
//! reloads; every reload waits for `generation N ready` and for the previous
//! generation's `exited` line, then for a response from generation N, so each
//! hand-over really happens under traffic. These are the heavy tests: the
//! nextest config runs them one at a time.

use std::net::{Ipv4Addr, SocketAddr};

use baton_e2e::{Baton, BatonCmd, Signal, WAIT};
use baton_load::{Config, Report, Target};

const RELOADS: u32 = 20;

/// Runs `RELOADS` reloads under load and returns the load report; fails on
/// the first reload after which a request had failed, naming it.
fn reload_under_load(baton: &Baton, keep_alive: bool) -> Report {
    baton.wait_for("generation 1 ready", WAIT);
    let port = baton.port();
    let mut cfg = Config::new(Target::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, port))));
    cfg.concurrency = 8;
    cfg.keep_alive = keep_alive;
    let run = baton_load::start(cfg);
    assert!(
        run.wait_for_generation("1", WAIT).is_some(),
        "no response from generation 1: {}",
        run.snapshot()
    );
    for g in 2..=RELOADS + 1 {
        baton.reload(g, WAIT);
        assert!(
            run.wait_for_generation(&g.to_string(), WAIT).is_some(),
            "no response from generation {g} after it was ready: {}",
            run.snapshot()
        );
        // The drained generation's workers are gone and reaped by baton.
        let old = baton.workers_of(g - 1).into_iter().filter_map(|w| w.proc);
        baton.assert_gone(old, WAIT, &format!("a worker of generation {}", g - 1));
        let snap = run.snapshot();
        assert_eq!(
            snap.failed,
            0,
            "requests failed by reload {} (generation {g}): {snap}",
            g - 1
        );
    }
    let report = run.stop();
    assert_eq!(report.failed, 0, "{report}");
    for g in 1..=RELOADS + 1 {
        assert!(
            report.generations.contains_key(&g.to_string()),
            "generation {g} answered nothing: {report}"
        );
    }
    eprintln!("[e2e] load report: {report}");
    report
}

fn stop_cleanly(mut baton: Baton) {
    let status = baton.stop(Signal::TERM, WAIT);
    assert_eq!(status.code(), Some(0), "graceful stop after the reloads");
    baton.wait_for("stopped", WAIT);
}

#[test]
fn no_failed_request_across_20_reloads_keep_alive() {
    let baton = BatonCmd::new()
        .args(["--workers", "2"])
        .probe(&["--drain-ms", "100"])
        .spawn();
    let report = reload_under_load(&baton, true);
    assert!(report.ok > u64::from(RELOADS), "{report}");
    stop_cleanly(baton);
}

#[test]
fn no_failed_request_across_20_reloads_connection_per_request() {
    let baton = BatonCmd::new()
        .args(["--workers", "2"])
        .probe(&["--drain-ms", "100"])
        .spawn();
    let report = reload_under_load(&baton, false);
    assert!(report.ok > u64::from(RELOADS), "{report}");
    stop_cleanly(baton);
}

/// The hyper drain: hyper's `graceful_shutdown` alone resets idle
/// keep-alive connections; the demo answers `Connection: close` first.
#[test]
fn no_failed_request_across_20_reloads_demo_server_keep_alive() {
    let demo = baton_e2e::bin("demo-server");
    let baton = BatonCmd::new()
        .args(["--workers", "2"])
        .command([demo.as_os_str(), "--drain-grace".as_ref(), "200ms".as_ref()])
        .spawn();
    let report = reload_under_load(&baton, true);
    assert!(report.ok > u64::from(RELOADS), "{report}");
    stop_cleanly(baton);
}
