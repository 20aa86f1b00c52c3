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

/// A pid baton has reaped is never signalled again: not the worker, and not
/// the process group it led (whose number may have been handed to someone
/// else since). baton runs under `strace`, recording every `kill` and
/// `waitid`; 20 workers are crashed (and restarted) and 4 reloads made;
/// then, for each pid reaped by a `waitid` that did not say `WNOWAIT`, no
/// `kill` naming it (or its group) comes after.
#[test]
fn a_reaped_pid_is_never_signalled() {
    assert!(
        baton_e2e::tools::which("strace").is_some(),
        "this test needs strace (Debian package strace)"
    );
    let cmd = BatonCmd::new();
    let trace = cmd.dir().join("trace.txt");
    let trace_arg = trace.clone();
    let mut baton = cmd
        .args(["--workers", "2"])
        .probe(&["--drain-ms", "20", "--spawn-grandchild"])
        .spawn_under(move |argv, _| {
            let mut c = std::process::Command::new("strace");
            c.args(["-f", "-qq", "-o"])
                .arg(&trace_arg)
                .args(["-e", "trace=kill,waitid,wait4", "--"])
                .args(argv);
            c
        });
    let slow = Duration::from_secs(60);
    baton.wait_for("generation 1 ready", slow);
    for round in 0..20u32 {
        // A reload every 4 crashes keeps the restart backoff short.
        let g = 1 + round / 4;
        if round > 0 && round % 4 == 0 {
            baton.reload(g, slow);
        }
        let mark = baton.mark();
        let slot = round % 2;
        let w = baton
            .workers_of(g)
            .into_iter()
            .rev()
            .filter(|w| w.index == slot)
            .find_map(|w| w.proc.filter(Proc::is_alive))
            .expect("a running worker");
        w.signal(Signal::KILL);
        baton.wait_for_after(mark, &format!("(pid {}) exited", w.pid), slow);
        baton.wait_for_after(mark, "ready again", slow);
    }
    let status = baton.stop(Signal::TERM, slow);
    assert!(status.success(), "{status}");
    baton.wait_output_closed(WAIT);

    let text = std::fs::read_to_string(&trace).expect("the strace output");
    let mut reaped: Vec<(usize, u32)> = Vec::new();
    let mut violations = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(pid) = reaped_pid(line) {
            reaped.push((i, pid));
        }
        if let Some(target) = killed(line)
            && let Some((at, _)) = reaped.iter().find(|(_, p)| *p == target)
        {
            violations.push(format!("line {i}: {line} (reaped at line {at})"));
        }
    }
    assert!(
        reaped.len() >= 20,
        "the trace shows {} reaps; is strace recording waitid? ({} lines)",
        reaped.len(),
        text.lines().count()
    );
    assert!(
        violations.is_empty(),
        "reaped pids were signalled:\n{}",
        violations.join("\n")
    );
}

/// The pid a `waitid`/`wait4` line of strace reaped, if it reaped one
/// (`WNOWAIT` only peeks).
fn reaped_pid(line: &str) -> Option<u32> {
    if line.contains("WNOWAIT") {
        return None;
    }
    if line.contains("waitid(") && line.contains("si_pid=") && line.trim_end().ends_with("= 0") {
        let rest = line.split("si_pid=").nth(1)?;
        return rest
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .ok();
    }
    if line.contains("wait4(") {
        let ret = line.rsplit("= ").next()?.trim();
        return ret
            .split_whitespace()
            .next()?
            .parse()
            .ok()
            .filter(|p: &u32| *p > 0);
    }
    None
}

/// The pid (or group, for a negative argument) a `kill` line of strace
/// names.
fn killed(line: &str) -> Option<u32> {
    let args = line.split("kill(").nth(1)?;
    let first = args.split(',').next()?.trim();
    let n: i64 = first.parse().ok()?;
    u32::try_from(n.unsigned_abs()).ok().filter(|p| *p > 1)
}
