//! The process tree: baton reaps every child, however many exit at once.

use std::time::Duration;

use baton_e2e::{BatonCmd, Proc, Signal, WAIT, inspect};

/// 200 workers (a small one: `sleep`) all killed within a millisecond or
/// so: once baton has reported each exit, not one is left a zombie, and
/// baton restarts all 200. Heavy (400 processes): run alone.
#[test]
fn two_hundred_workers_exiting_at_once_leave_no_zombie() {
    const N: usize = 200;
    let slow = Duration::from_secs(60);
    let mut baton = BatonCmd::new()
        .args([
            "--workers",
            "200",
            "--ready",
            "delay:500ms",
            "--grace",
            "5s",
        ])
        .command(["sleep", "1000"])
        .spawn();
    baton.wait_for("generation 1 ready", slow);
    let me = baton.pid();
    let workers: Vec<Proc> = baton.workers_of(1).iter().filter_map(|w| w.proc).collect();
    assert_eq!(
        workers.len(),
        N,
        "{} of {N} workers seen running",
        workers.len()
    );

    let mark = baton.mark();
    for p in &workers {
        p.signal(Signal::KILL);
    }
    for p in &workers {
        baton.wait_for_after(mark, &format!("(pid {}) exited", p.pid), slow);
    }
    // Every exit has been handled: each was reaped before it was reported.
    let zombies = inspect::zombie_children(me);
    assert!(
        zombies.is_empty(),
        "{} zombies of baton after {N} workers exited at once: {zombies:?}",
        zombies.len()
    );
    baton.assert_gone(workers.iter().copied(), WAIT, "a killed worker");

    // All of them come back (after the first backoff step).
    let deadline = std::time::Instant::now() + slow;
    loop {
        let restarted = baton.workers_of(1).len() - N;
        if restarted == N {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {restarted} of {N} workers were restarted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(inspect::zombie_children(me).is_empty());
    let running = inspect::live_children(me).len();
    assert_eq!(running, N, "{running} workers run; {N} are configured");

    let all: Vec<Proc> = baton.workers().iter().filter_map(|w| w.proc).collect();
    baton.stop(Signal::TERM, slow);
    baton.assert_gone(all, WAIT, "a worker after the stop");
}
