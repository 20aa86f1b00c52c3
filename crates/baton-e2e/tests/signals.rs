//! Signals to baton: reloads queued during a reload, fast and immediate
//! stops, and the configurable stop signal.

use std::time::{Duration, Instant};

use baton_e2e::{BatonCmd, Proc, Signal, WAIT, http};

#[test]
fn reload_during_a_reload_is_queued_and_coalesced() {
    let baton = BatonCmd::new().probe(&["--drain-ms", "50"]).spawn();
    baton.wait_for("generation 1 ready", WAIT);
    // Make generation 2 (and later ones) take a while to warm up.
    baton.set_script("--ready-after 800ms");
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    baton.wait_for_after(mark, "generation 2 starting", WAIT);
    baton.signal(Signal::HUP);
    baton.wait_for_after(mark, "reload queued", WAIT);
    baton.signal(Signal::HUP);
    baton.signal(Signal::HUP);
    baton.wait_for_after(mark, "generation 2 ready", WAIT);
    // The three HUPs sent while 2 was starting make exactly one reload.
    baton.wait_for_after(mark, "generation 3 ready", WAIT);
    baton.wait_for_after(mark, "generation 2 exited", WAIT);
    assert_eq!(http::get_ok(baton.port(), "/").generation(), Some(3));
    baton.wait_for_after(mark, "generation 1 exited", WAIT);
    assert_eq!(
        baton.count("generation 4"),
        0,
        "the queued reloads were not coalesced into one"
    );
}

#[test]
fn quit_is_a_fast_stop_that_kills_the_workers() {
    let mut baton = BatonCmd::new()
        .args(["--workers", "2"])
        .probe(&["--drain-ms", "5000"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let workers: Vec<Proc> = baton.workers_of(1).iter().filter_map(|w| w.proc).collect();
    let asked = Instant::now();
    let status = baton.stop(Signal::QUIT, WAIT);
    assert_eq!(status.code(), Some(7), "workers were killed: exit code 7");
    assert!(
        asked.elapsed() < Duration::from_secs(4),
        "a fast stop took {:?}",
        asked.elapsed()
    );
    baton.assert_gone(workers, WAIT, "a worker after a fast stop");
}

#[test]
fn second_term_escalates_to_an_immediate_stop() {
    let mut baton = BatonCmd::new()
        .args(["--grace", "60s"])
        .probe(&["--ignore-term"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let worker = baton.workers_of(1)[0].proc.expect("the worker runs");
    let mark = baton.mark();
    baton.signal(Signal::TERM);
    baton.wait_for_after(mark, "stopping (graceful)", WAIT);
    baton.signal(Signal::TERM);
    baton.wait_for_after(mark, "stopping (immediate)", WAIT);
    let status = baton.wait_exit(WAIT);
    assert_eq!(status.code(), Some(7));
    baton.assert_gone([worker], WAIT, "the worker after an immediate stop");
}

#[test]
fn stop_signal_int_drains_the_workers() {
    let mut baton = BatonCmd::new()
        .args(["--stop-signal", "INT"])
        .probe(&["--drain-ms", "50"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let worker = baton.workers_of(1)[0].pid;
    let status = baton.stop(Signal::TERM, WAIT);
    assert_eq!(status.code(), Some(0), "the worker drained on SIGINT");
    baton.wait_for(&format!("pid={worker} draining"), WAIT);
}
