//! baton as PID 1 (a container's init) and as a child subreaper: orphaned
//! grandchildren are reparented to baton and reaped when they exit, are
//! never taken for workers, and signals reach baton as documented.
//!
//! The worker is the probe behind a small script that leaks an orphan by a
//! double fork: the orphan prints its pid and then waits on a fifo, so the
//! test decides when it exits (no timing involved).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baton_e2e::procs::{self, Proc};
use baton_e2e::tools::{KillOnDrop, root_or_skip, run_ok, which_or_skip};
use baton_e2e::{Baton, BatonCmd, Signal, WAIT, bin, http};

const LEAKER: &str = r#"#!/bin/sh
# Leaks an orphan (double fork): it prints its pid, then blocks reading
# the fifo $1 until someone writes to it. Then runs the rest of the argv.
fifo=$1; shift
( sh -c 'echo "leaked an orphan: $$"; exec cat "$1" >/dev/null' sh "$fifo" & )
exec "$@"
"#;

/// Writes the leaking script and a fifo into `dir`; returns the worker
/// command: `sh LEAKER FIFO baton-probe --drain-ms 50`.
fn leaking_worker(dir: &Path) -> (Vec<PathBuf>, PathBuf) {
    let script = dir.join("leak-orphan.sh");
    std::fs::write(&script, LEAKER).expect("write the leaking script");
    let fifo = dir.join("orphan.fifo");
    run_ok("mkfifo", &[&fifo]);
    let argv = vec![
        PathBuf::from("sh"),
        script,
        fifo.clone(),
        bin("baton-probe"),
        PathBuf::from("--drain-ms"),
        PathBuf::from("50"),
    ];
    (argv, fifo)
}

/// Waits for the `n`th (0-based) `leaked an orphan: N` line and returns the
/// orphan as the test sees it.
fn orphan(baton: &Baton, n: usize) -> Proc {
    let mut mark = 0;
    let mut line = String::new();
    for _ in 0..=n {
        let (i, l) = baton.wait_for_after(mark, "leaked an orphan: ", WAIT);
        mark = i + 1;
        line = l;
    }
    let printed: u32 = line
        .split("leaked an orphan: ")
        .nth(1)
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"));
    let pid = baton
        .host_pid(printed)
        .unwrap_or_else(|| panic!("the orphan {printed} ({line:?}) is not running"));
    Proc::find(pid).expect("the orphan runs")
}

/// Waits (bounded) until `p`'s parent is `parent`: the orphan has been
/// reparented once the subshell that started it exited.
fn wait_parent(p: &Proc, parent: u32) {
    let deadline = Instant::now() + WAIT;
    loop {
        let st = p.stat().expect("the orphan still runs");
        if st.ppid == parent {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "orphan {} has parent {} after {WAIT:?}, expected baton {parent}",
            p.pid,
            st.ppid
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Lets the orphans blocked on `fifo` exit: open it for writing and close.
fn release(fifo: &Path) {
    drop(
        std::fs::OpenOptions::new()
            .write(true)
            .open(fifo)
            .expect("open the fifo"),
    );
}

/// No child of `pid` is a zombie.
fn assert_no_zombie_children(pid: u32, baton: &Baton) {
    for c in procs::children(pid) {
        if let Some(st) = procs::stat(c) {
            assert!(
                !st.is_zombie(),
                "child {c} of baton {pid} is a zombie: {st:?}; last lines:\n{}",
                baton.lines().join("\n")
            );
        }
    }
}

/// The orphan is baton's child, not a worker, and is reaped once it exits.
fn check_orphan(baton: &Baton, orphan: &Proc, fifo: &Path, reaper: u32) {
    wait_parent(orphan, reaper);
    assert!(
        baton.workers().iter().all(|w| w.pid != orphan.pid),
        "the orphan {} was taken for a worker: {:?}",
        orphan.pid,
        baton.workers()
    );
    release(fifo);
    baton.assert_gone([*orphan], WAIT, "an orphaned grandchild");
    assert_no_zombie_children(reaper, baton);
}

#[test]
fn as_pid_1_orphans_are_reaped_and_signals_work() {
    let name = "as_pid_1_orphans_are_reaped_and_signals_work";
    if which_or_skip(name, "unshare", "util-linux").is_none()
        || !root_or_skip(name, "unshare --pid --mount-proc makes a pid namespace")
    {
        return;
    }
    let cmd = BatonCmd::new();
    let (argv, fifo) = leaking_worker(cmd.dir());
    let mut baton = cmd.command(&argv).spawn_in_pid_namespace();
    let mut guard = KillOnDrop::default();
    baton.wait_for("generation 1 ready", WAIT);
    let host = baton.baton_pid();
    assert_eq!(
        procs::ns_pid(host),
        Some(1),
        "baton is PID 1 in its namespace"
    );
    assert_ne!(host, baton.pid(), "unshare --fork runs baton as its child");

    let first = orphan(&baton, 0);
    guard.push(first);
    let port = baton.port();
    assert_eq!(http::get_ok(port, "/").generation(), Some(1));
    check_orphan(&baton, &first, &fifo, host);
    // baton did not mistake the orphan's exit for a worker's.
    assert!(!baton.seen_after(0, "restarting"), "{:?}", baton.lines());

    // HUP from outside the namespace reaches PID 1 (baton has a handler).
    baton.reload(2, WAIT);
    assert_eq!(http::get_ok(port, "/").generation(), Some(2));
    let old = baton.workers_of(1).into_iter().filter_map(|w| w.proc);
    baton.assert_gone(old, WAIT, "a worker of generation 1");
    let second = orphan(&baton, 1);
    guard.push(second);
    check_orphan(&baton, &second, &fifo, host);

    // TERM: graceful stop; unshare passes baton's exit status on.
    let worker = baton.workers_of(2)[0].proc.expect("worker of generation 2");
    let mark = baton.mark();
    let target = Proc::find(host).expect("baton runs");
    target.signal(Signal::TERM);
    let status = baton.wait_exit(WAIT);
    // baton has exited, but its last lines may not have been read yet.
    baton.wait_for_after(mark, "stopping (graceful)", WAIT);
    assert_eq!(status.code(), Some(0), "{:?}", baton.lines());
    assert!(!worker.is_alive(), "the worker outlived baton as PID 1");
    assert!(!target.is_alive());
}

#[test]
fn as_subreaper_orphaned_grandchildren_are_reaped() {
    let cmd = BatonCmd::new();
    let (argv, fifo) = leaking_worker(cmd.dir());
    let mut baton = cmd.command(&argv).spawn();
    let mut guard = KillOnDrop::default();
    baton.wait_for("generation 1 ready", WAIT);
    let first = orphan(&baton, 0);
    guard.push(first);
    check_orphan(&baton, &first, &fifo, baton.pid());
    assert!(!baton.seen_after(0, "restarting"), "{:?}", baton.lines());

    baton.reload(2, WAIT);
    let second = orphan(&baton, 1);
    guard.push(second);
    check_orphan(&baton, &second, &fifo, baton.pid());
    let status = baton.stop(Signal::TERM, WAIT);
    assert_eq!(status.code(), Some(0), "{:?}", baton.lines());
}
