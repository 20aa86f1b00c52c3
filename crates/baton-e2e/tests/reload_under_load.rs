//! baton's core promise: no failed request across reloads, under load.
//!
//! Each test drives 8 connections of back-to-back requests through 20
//! reloads; every reload waits for `generation N ready` and for the previous
//! generation's `exited` line, then for a response from generation N, so each
//! hand-over really happens under traffic. These are the heavy tests: the
//! nextest config runs them one at a time.

mod common;

use baton_e2e::{Baton, BatonCmd, Signal, WAIT};
use baton_load::Report;
use common::{Load, reloads_under_load};

const RELOADS: u32 = 20;

/// `RELOADS` SIGHUP reloads under load on 8 connections (the shared loop in
/// `common`: each reload waits for the new generation's answers and the old
/// workers' exit, and fails at the first failed request); then checks that
/// every generation answered.
fn reload_under_load(baton: &Baton, keep_alive: bool) -> Report {
    baton.wait_for("generation 1 ready", WAIT);
    let load = Load {
        reloads: RELOADS,
        keep_alive,
        ..Load::default()
    };
    let report = reloads_under_load(
        baton,
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
