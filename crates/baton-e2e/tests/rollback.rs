//! A failed reload leaves the old generation serving (automatic rollback).

use std::collections::BTreeSet;
use std::time::Duration;

use baton_e2e::{Baton, BatonCmd, Signal, WAIT, http};

/// The pids of generation `g`'s workers.
fn pids_of(baton: &Baton, g: u32) -> BTreeSet<u32> {
    baton.workers_of(g).iter().map(|w| w.pid).collect()
}

/// Several requests all answered by generation `g`, by one of `pids`.
fn assert_served_by(port: u16, g: u32, pids: &BTreeSet<u32>) {
    for _ in 0..6 {
        let r = http::get_ok(port, "/");
        assert_eq!(r.generation(), Some(g), "{r:?}");
        let pid = r.pid().expect("the probe sends X-Pid");
        assert!(pids.contains(&pid), "pid {pid} is not one of {pids:?}");
    }
}

/// After a rollback, the failed generation's workers are gone, the old ones
/// still run and still answer; then a good reload goes through.
fn assert_rolled_back_then_recovers(baton: &Baton, mark: usize) {
    let (_, line) = baton.wait_for_after(mark, "reload failed", WAIT);
    assert!(
        line.contains("generation 1 keeps serving"),
        "the failure line should say who keeps serving: {line:?}"
    );
    let port = baton.port();
    let old = pids_of(baton, 1);
    assert_eq!(old.len(), 2, "{:?}", baton.workers());
    for w in baton.workers_of(1) {
        let p = w.proc.expect("generation 1's workers were seen running");
        assert!(p.is_alive(), "worker {} of generation 1 died", w.pid);
    }
    let failed: Vec<_> = baton
        .workers()
        .into_iter()
        .filter(|w| w.generation > 1)
        .filter_map(|w| w.proc)
        .collect();
    baton.assert_gone(failed, WAIT, "a worker of the failed generation");
    assert_served_by(port, 1, &old);
    assert_eq!(baton.count("generation 1 draining"), 0);

    // Fixed: the next reload goes through.
    baton.clear_script();
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    let (g, _) = baton.wait_ready_after(mark, WAIT);
    assert!(
        g > 2,
        "the failed generation had number 2, so this one is {g}"
    );
    baton.wait_for_after(mark, "generation 1 exited", WAIT);
    let new = pids_of(baton, g);
    assert_served_by(port, g, &new);
}

#[test]
fn rollback_when_the_new_generation_exits_at_start() {
    let baton = BatonCmd::new()
        .args(["--workers", "2"])
        .probe(&["--drain-ms", "50"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    baton.set_script("--exit-at-start 3");
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    assert_rolled_back_then_recovers(&baton, mark);
}

#[test]
fn rollback_when_the_new_generation_misses_the_ready_timeout() {
    let baton = BatonCmd::new()
        .args(["--workers", "2", "--ready-timeout", "2s"])
        .probe(&["--drain-ms", "50"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    baton.set_script("--never-ready");
    let mark = baton.mark();
    let asked = std::time::Instant::now();
    baton.signal(Signal::HUP);
    baton.wait_for_after(mark, "reload failed", WAIT);
    assert!(
        asked.elapsed() >= Duration::from_millis(1900),
        "gave up after {:?}, before the 2s ready timeout",
        asked.elapsed()
    );
    assert_rolled_back_then_recovers(&baton, mark);
}
