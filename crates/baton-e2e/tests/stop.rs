//! Stopping: graceful, escalated, and baton killed outright. Nothing may be
//! left running or unreaped.

use std::time::{Duration, Instant};

use baton_e2e::{BatonCmd, Proc, Signal, WAIT};

/// How long a process may take to disappear after it was told to.
const GONE: Duration = Duration::from_secs(10);

#[test]
fn sigkill_at_grace_deadline_for_a_worker_that_ignores_sigterm() {
    let mut baton = BatonCmd::new()
        .args(["--grace", "1s"])
        .probe(&["--ignore-term"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let worker = baton.workers_of(1)[0]
        .proc
        .expect("the worker was seen running");
    let asked = Instant::now();
    let status = baton.stop(Signal::TERM, WAIT);
    assert_eq!(
        status.code(),
        Some(7),
        "a worker had to be killed: exit code 7 ({status})"
    );
    assert!(
        asked.elapsed() >= Duration::from_millis(900),
        "killed after {:?}, before the 1s grace",
        asked.elapsed()
    );
    baton.assert_gone([worker], GONE, "the worker that ignored SIGTERM");
}

#[test]
fn nothing_left_running_and_no_zombie_after_stop() {
    let mut baton = BatonCmd::new()
        .args(["--workers", "3"])
        .probe(&["--drain-ms", "50"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    baton.reload(2, WAIT);
    // The drained generation was reaped by baton while it keeps running.
    let gen1: Vec<Proc> = baton.workers_of(1).iter().filter_map(|w| w.proc).collect();
    assert_eq!(gen1.len(), 3);
    baton.assert_gone(gen1, GONE, "a worker of the drained generation 1");
    let gen2: Vec<Proc> = baton.workers_of(2).iter().filter_map(|w| w.proc).collect();
    assert_eq!(gen2.len(), 3);

    let status = baton.stop(Signal::TERM, WAIT);
    assert_eq!(status.code(), Some(0), "every worker exited on its own");
    baton.wait_for("stopped", WAIT);
    baton.assert_gone(gen2, GONE, "a worker of generation 2 after stop");
}

#[test]
fn workers_die_when_baton_is_sigkilled() {
    let mut baton = BatonCmd::new().args(["--workers", "2"]).probe(&[]).spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let workers: Vec<Proc> = baton.workers_of(1).iter().filter_map(|w| w.proc).collect();
    assert_eq!(workers.len(), 2);
    baton.stop(Signal::KILL, WAIT);
    baton.assert_gone(workers, GONE, "a worker of a SIGKILLed baton");
}

#[test]
fn leaked_grandchild_is_gone_after_stop() {
    let mut baton = BatonCmd::new()
        .probe(&["--spawn-grandchild", "--drain-ms", "50"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    baton.wait_for("probe: grandchild pid", WAIT);
    let grandchild = baton.grandchildren()[0];
    assert!(grandchild.is_alive());
    let status = baton.stop(Signal::TERM, WAIT);
    eprintln!("[e2e] baton exited with {status}");
    baton.assert_gone([grandchild], GONE, "the grandchild the worker leaked");
}
