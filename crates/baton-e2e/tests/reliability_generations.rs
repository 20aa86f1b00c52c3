//! Reliability of generations: a new generation that dies at once, a
//! readiness check that sees through an app claiming to be ready, readiness
//! that cannot be spoofed, signal storms, and a crash loop that stays
//! within its backoff.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use baton_e2e::ctl::ctl;
use baton_e2e::tools::{output_text, run_bounded};
use baton_e2e::{Baton, BatonCmd, Proc, Signal, WAIT, bin, http, inspect};
use baton_load::{Config, Running, Target};

fn load_on(port: u16, keep_alive: bool) -> Running {
    let mut cfg = Config::new(Target::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, port))));
    cfg.concurrency = 4;
    cfg.keep_alive = keep_alive;
    cfg.request_timeout = Duration::from_secs(20);
    let run = baton_load::start(cfg);
    assert!(
        run.wait_for_generation("1", WAIT).is_some(),
        "no response from generation 1: {}",
        run.snapshot()
    );
    run
}

fn procs_of(baton: &Baton, g: u32) -> Vec<Proc> {
    baton.workers_of(g).iter().filter_map(|w| w.proc).collect()
}

fn pids(procs: &[Proc]) -> BTreeSet<u32> {
    procs.iter().map(|p| p.pid).collect()
}

/// A reload to a generation whose workers exit with `code` at once, asked
/// for with `baton ctl reload` under load: the verdict is "failed" (exit
/// 10), no request fails, generation 1's workers are the same processes,
/// and the next reload works.
fn new_generation_exiting_at_once_is_rolled_back(code: &str) {
    let baton = BatonCmd::new()
        .args(["--workers", "2"])
        .probe(&["--drain-ms", "1000"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    baton.wait_for("control socket", WAIT);
    let port = baton.port();
    let old = procs_of(&baton, 1);
    let run = load_on(port, true);

    baton.set_script(&format!("--exit-at-start {code}"));
    let out = ctl(&baton, &["reload"]);
    assert_eq!(
        out.status.code(),
        Some(10),
        "baton ctl reload of a generation exiting {code}: {}",
        output_text(&out)
    );
    let said = output_text(&out);
    assert!(said.contains("failed"), "{said}");
    // The verdict comes over the control socket; baton's own account of
    // the same events over its output, which may still be on its way.
    baton.wait_for("reload failed: generation 2", WAIT);
    baton.wait_for("generation 2 exited", WAIT);
    assert!(
        !baton.workers_of(2).is_empty(),
        "generation 2 never started a worker"
    );
    baton.assert_gone(
        procs_of(&baton, 2),
        WAIT,
        "a worker of the failed generation 2",
    );

    // The same processes still serve: nothing was restarted or replaced.
    assert_eq!(
        pids(&procs_of(&baton, 1)),
        pids(&old),
        "{:?}",
        baton.workers()
    );
    for p in &old {
        assert!(p.is_alive(), "generation 1's worker {} died", p.pid);
    }
    assert_eq!(baton.count("generation 1 draining"), 0);
    assert_eq!(baton.count("of generation 1 restarting"), 0);
    let snap = run.snapshot();
    assert_eq!(
        snap.failed, 0,
        "requests failed across the rollback: {snap}"
    );
    assert!(
        snap.generations.keys().all(|g| g == "1"),
        "only generation 1 answered: {snap}"
    );

    // Fixed: the next reload goes through, still under load.
    baton.clear_script();
    let out = ctl(&baton, &["reload"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    baton.wait_for("generation 3 ready", WAIT);
    assert!(
        run.wait_for_generation("3", WAIT).is_some(),
        "{}",
        run.snapshot()
    );
    baton.assert_gone(old, WAIT, "a worker of generation 1 after the good reload");
    let report = run.stop();
    assert_eq!(report.failed, 0, "{report}");
}

#[test]
fn new_generation_exiting_0_at_once_under_load_is_rolled_back_without_a_failed_request() {
    new_generation_exiting_at_once_is_rolled_back("0");
}

#[test]
fn new_generation_exiting_1_at_once_under_load_is_rolled_back_without_a_failed_request() {
    new_generation_exiting_at_once_is_rolled_back("1");
}

/// `--ready exec:` that asks each worker of the generation, on its own
/// health socket, whether it serves (`$BATON_WORKER_PIDS`). The shared
/// port cannot tell: the old generation answers there. The check also
/// refuses an empty worker list, which would pass vacuously (see
/// `exec_readiness_command_sees_every_worker_pid_from_its_first_run`).
fn health_check(health: &Path) -> String {
    format!(
        "exec:[ -n \"$BATON_WORKER_PIDS\" ] || exit 1; \
         for p in $BATON_WORKER_PIDS; do {} --get-unix {}/health-$p.sock /health || exit 1; done",
        bin("baton-probe").display(),
        health.display()
    )
}

/// Bug: the first run of a generation's `--ready exec:` command got an
/// empty `BATON_WORKER_PIDS` (it ran before the workers were recorded as
/// running), so a check that loops over the workers passed without asking
/// any, and the generation was taken as ready at once. Every run must see
/// every worker of its generation.
#[test]
fn exec_readiness_command_sees_every_worker_pid_from_its_first_run() {
    let cmd = BatonCmd::new();
    let record = cmd.dir().join("checks.log");
    // Fails twice, so there are several runs to look at, then passes.
    let check = format!(
        "exec:echo \"$BATON_GENERATION [$BATON_WORKER_PIDS]\" >> {log}; \
         [ $(wc -l < {log}) -ge 3 ]",
        log = record.display()
    );
    let baton = cmd
        .args(["--workers", "2"])
        .arg("--ready")
        .arg(check)
        .probe(&["--drain-ms", "50"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let pids: BTreeSet<String> = baton
        .workers_of(1)
        .iter()
        .map(|w| w.pid.to_string())
        .collect();
    let runs = std::fs::read_to_string(&record).expect("the checks ran");
    let runs: Vec<&str> = runs.lines().collect();
    assert!(runs.len() >= 3, "{runs:?}");
    for run in &runs {
        let listed: BTreeSet<String> = run
            .split_once('[')
            .and_then(|(_, r)| r.strip_suffix(']'))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        assert_eq!(
            listed, pids,
            "a readiness command run saw BATON_WORKER_PIDS={run:?}; runs: {runs:?}"
        );
    }
}

/// An app that reports READY=1 at once but cannot serve yet
/// (`--serve-after`): a readiness command that asks it catches that. One
/// that never serves within `--ready-timeout` is rolled back with 0 failed
/// requests; one that serves after 1 s is made ready only then.
#[test]
fn exec_readiness_catches_an_app_that_reports_ready_before_it_can_serve() {
    let cmd = BatonCmd::new();
    let health = cmd.dir().join("health");
    std::fs::create_dir(&health).expect("create the health dir");
    let health_arg = health.to_str().expect("a UTF-8 temp path").to_owned();
    let baton = cmd
        .args(["--workers", "2", "--ready-timeout", "3s"])
        .arg("--ready")
        .arg(health_check(&health))
        .probe(&["--drain-ms", "1000", "--health-dir", &health_arg])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let port = baton.port();
    let old = procs_of(&baton, 1);
    let run = load_on(port, false);

    // Says ready at once, serves never (within the timeout).
    baton.set_script("--serve-after 60s");
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    let (_, line) = baton.wait_for_after(mark, "reload failed", WAIT);
    assert!(line.contains("generation 1 keeps serving"), "{line}");
    assert!(
        !baton.seen_after(mark, "generation 2 ready"),
        "an app that cannot serve was taken as ready"
    );
    baton.assert_gone(procs_of(&baton, 2), WAIT, "a worker of generation 2");
    assert_eq!(pids(&procs_of(&baton, 1)), pids(&old));
    let snap = run.snapshot();
    assert_eq!(snap.failed, 0, "{snap}");

    // Says ready at once, serves after 1 s: ready only then.
    baton.set_script("--serve-after 1s");
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    let (g, took) = baton.wait_ready_after(mark, WAIT);
    assert_eq!(g, 3);
    let took = took.expect("the ready line reports a time");
    assert!(
        took >= Duration::from_secs(1),
        "generation 3 was taken as ready after {took:?}, before it served (1 s)"
    );
    baton.wait_for_after(mark, "generation 1 exited", WAIT);
    assert!(
        run.wait_for_generation("3", WAIT).is_some(),
        "{}",
        run.snapshot()
    );
    let report = run.stop();
    assert_eq!(report.failed, 0, "{report}");
}

/// The spoofing matrix's common part: generation 1 serves; generation 2's
/// worker never reports ready itself. `spoof` gets baton, generation 2's
/// worker pid and its NOTIFY_SOCKET once it runs, sends something that must
/// not make generation 2 ready, and returns what baton must log when the
/// message reached it (that it ignored it, from whom).
/// The reload must fail on its `--ready-timeout`, generation 1 serving.
fn spoofed_readiness_is_ignored(
    script: &str,
    spoof: impl FnOnce(&Baton, u32, &Path) -> Option<String>,
) {
    let cmd = BatonCmd::new();
    // Let other users through the test's own directory, so that only
    // baton's permissions decide who reaches its notify sockets.
    std::fs::set_permissions(cmd.dir(), std::fs::Permissions::from_mode(0o711))
        .expect("chmod the test dir");
    let baton = cmd
        .args(["--ready-timeout", "3s"])
        .probe(&["--drain-ms", "100"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    baton.set_script(script);
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    let (_, line) = baton.wait_for_after(mark, "worker 0 of generation 2 started, pid ", WAIT);
    let pid: u32 = line
        .rsplit("pid ")
        .next()
        .and_then(|p| p.trim().parse().ok())
        .expect("a pid");
    // The probe's own start line: it has exec'd, so /proc/PID/environ is its.
    baton.wait_for_after(mark, &format!("pid={pid} started"), WAIT);
    let socket = inspect::environ_values(pid, "NOTIFY_SOCKET")
        .pop()
        .map(PathBuf::from)
        .expect("generation 2's worker has NOTIFY_SOCKET");
    if let Some(needle) = spoof(&baton, pid, &socket) {
        baton.wait_for_after(mark, &needle, WAIT);
    }
    let (_, failed) = baton.wait_for_after(mark, "reload failed", WAIT);
    assert!(
        failed.contains("generation 1 keeps serving"),
        "the reload should fail on its ready timeout: {failed}"
    );
    assert!(
        !baton.seen_after(mark, "generation 2 ready"),
        "a spoofed READY=1 made generation 2 ready"
    );
    assert_eq!(http::get_ok(baton.port(), "/").generation(), Some(1));
}

/// READY=1 on generation 2's socket from a process that is not its worker
/// (this test process).
#[test]
fn ready_from_an_unrelated_process_is_ignored() {
    spoofed_readiness_is_ignored("--never-ready", |_, _, socket| {
        UnixDatagram::unbound()
            .and_then(|s| s.send_to(b"READY=1", socket))
            .expect("send READY=1 as an unrelated process");
        Some(ignored_from(std::process::id()))
    });
}

/// What baton logs when it drops READY=1 from `pid`.
fn ignored_from(pid: u32) -> String {
    format!("ignoring notify message \"READY=1\" from pid {pid}:")
}

/// READY=1 on generation 2's socket from generation 1's worker (through
/// the probe's `/notify`, a request generation 1 answers itself).
#[test]
fn ready_from_the_old_generations_worker_is_ignored() {
    spoofed_readiness_is_ignored("--never-ready", |baton, _, socket| {
        let old = baton.workers_of(1)[0].pid;
        let r = http::get_ok(
            baton.port(),
            &format!("/notify?to={}&msg=READY%3D1", socket.display()),
        );
        assert_eq!(r.pid(), Some(old), "{r:?}");
        assert!(r.body.starts_with("sent"), "{r:?}");
        Some(ignored_from(old))
    });
}

/// READY=1 on generation 2's socket from a process of another user
/// (nobody, 65534). baton's notify sockets are meant to live in a private
/// directory, so the datagram may not even arrive; either way it is not
/// counted.
#[test]
fn ready_from_another_uid_is_ignored() {
    spoofed_readiness_is_ignored("--never-ready", |baton, _, socket| {
        // A copy of the probe that other users can run, wherever the
        // workspace lives.
        let exe = baton.dir().join("probe-for-nobody");
        std::fs::copy(bin("baton-probe"), &exe).expect("copy the probe");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the probe copy");
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
        ])
        .arg(&exe)
        .arg("--send-notify")
        .arg(socket)
        .arg("READY=1");
        let out = run_bounded(cmd, Duration::from_secs(30));
        eprintln!("[e2e] other-uid sender: {}", output_text(&out));
        match out.status.code() {
            // Sent: baton received it and must have ignored it.
            Some(0) => Some("ignoring notify message \"READY=1\" from pid ".to_owned()),
            // Permission denied: it never reached baton.
            Some(3) => None,
            _ => panic!(
                "the other-uid sender did not run (setpriv from util-linux is needed): {}",
                output_text(&out)
            ),
        }
    });
}

/// `MAINPID=` cannot hand readiness to another process: generation 2's
/// worker says `MAINPID=<this test's pid>`, then this test sends READY=1.
#[test]
fn mainpid_does_not_hand_readiness_to_another_process() {
    let me = std::process::id();
    let cmd = BatonCmd::new();
    let baton = cmd
        .args(["--ready-timeout", "3s"])
        .probe(&["--drain-ms", "100"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    baton.set_script(&format!("--never-ready --notify-at-start MAINPID={me}"));
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    let (_, line) = baton.wait_for_after(mark, "worker 0 of generation 2 started, pid ", WAIT);
    let pid: u32 = line
        .rsplit("pid ")
        .next()
        .and_then(|p| p.trim().parse().ok())
        .expect("a pid");
    baton.wait_for_after(mark, &format!("pid={pid} sent \"MAINPID={me}\""), WAIT);
    baton.wait_for_after(
        mark,
        "sent MAINPID=; baton tracks its own workers and ignores it",
        WAIT,
    );
    let socket = inspect::environ_values(pid, "NOTIFY_SOCKET")
        .pop()
        .expect("NOTIFY_SOCKET");
    UnixDatagram::unbound()
        .and_then(|s| s.send_to(b"READY=1", &socket))
        .expect("send READY=1 as the claimed main pid");
    baton.wait_for_after(mark, &ignored_from(me), WAIT);
    let (_, failed) = baton.wait_for_after(mark, "reload failed", WAIT);
    assert!(failed.contains("generation 1 keeps serving"), "{failed}");
    assert!(!baton.seen_after(mark, "generation 2 ready"));
}

/// The generation numbers of the `generation N starting` lines from `mark`.
fn started_generations(lines: &[String], mark: usize) -> Vec<u32> {
    lines[mark..]
        .iter()
        .filter_map(|l| {
            let rest = l.split("generation ").nth(1)?;
            let (n, rest) = rest.split_once(' ')?;
            rest.starts_with("starting").then(|| n.parse().ok())?
        })
        .collect()
}

/// 20 HUPs within 10 ms: at most one reload runs and one more is queued
/// (coalescing the rest), never two generations starting at once, and the
/// last generation serves.
#[test]
fn hup_storm_runs_at_most_one_reload_and_queues_one() {
    let baton = BatonCmd::new()
        .args(["--workers", "2"])
        .probe(&["--drain-ms", "100"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    baton.wait_for("control socket", WAIT);
    // Reloads take a while, so the whole storm lands during the first.
    baton.set_script("--ready-after 500ms");
    let mark = baton.mark();
    let begun = Instant::now();
    for _ in 0..20 {
        baton.signal(Signal::HUP);
    }
    let storm = begun.elapsed();
    // Normally some 50 µs; a descheduled test thread on a busy machine may
    // stretch it, which changes nothing below (the reload takes 500 ms).
    eprintln!("[e2e] 20 HUPs sent in {storm:?}");
    assert!(storm < Duration::from_millis(400), "20 HUPs took {storm:?}");

    baton.wait_for_after(mark, "generation 2 ready", WAIT);
    let last = if baton.seen_after(mark, "reload queued") {
        baton.wait_for_after(mark, "generation 3 ready", WAIT);
        3
    } else {
        2
    };
    baton.wait_for_after(mark, &format!("generation {} exited", last - 1), WAIT);
    // A status round trip: anything still queued would have started by
    // the time baton answers.
    let out = ctl(&baton, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let status: String = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect();
    assert!(
        status.contains(&format!("\"serving\":{last},")),
        "generation {last} should serve: {status}"
    );
    assert!(
        status.matches("\"id\":").count() == 1 && status.contains(&format!("\"id\":{last},")),
        "generation {last} should be the only one left, nothing starting: {status}"
    );
    let lines = baton.lines();
    let started = started_generations(&lines, mark);
    assert_eq!(
        started,
        (2..=last).collect::<Vec<_>>(),
        "20 HUPs during one reload started generations {started:?}"
    );
    // Never two generations starting at once.
    let mut in_flight = 0i32;
    for l in &lines[mark..] {
        if l.contains(" starting (") && l.contains("generation ") {
            in_flight += 1;
            assert!(in_flight <= 1, "two reloads in flight at {l:?}");
        } else if (l.contains("generation ") && l.contains(" ready in "))
            || l.contains("reload failed")
        {
            in_flight -= 1;
        }
    }
    for _ in 0..5 {
        assert_eq!(http::get_ok(baton.port(), "/").generation(), Some(last));
    }
}

/// TERM 1 ms after HUP: baton stops cleanly (exit 0, `stopped`), with no
/// worker of either generation left and nothing left in its directories.
#[test]
fn term_1ms_after_hup_exits_cleanly_leaving_nothing() {
    let mut baton = BatonCmd::new()
        .args(["--workers", "2"])
        .probe(&["--drain-ms", "100"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    baton.wait_for("control socket", WAIT);
    let control = baton_e2e::ctl::control_path(&baton);
    baton.signal(Signal::HUP);
    std::thread::sleep(Duration::from_millis(1));
    let status = baton.stop(Signal::TERM, WAIT);
    assert!(
        baton.wait_output_closed(WAIT),
        "baton's output never closed"
    );
    assert_eq!(status.code(), Some(0), "TERM right after HUP");
    baton.wait_for("stopped", WAIT);
    let all: Vec<Proc> = baton.workers().iter().filter_map(|w| w.proc).collect();
    baton.assert_gone(all, WAIT, "a worker after the stop");
    assert!(!control.exists(), "the control socket was left behind");
    let left: Vec<PathBuf> = std::fs::read_dir(baton.dir())
        .expect("the test dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("baton."))
        })
        .collect();
    assert!(
        left.is_empty(),
        "baton's run directory was left behind: {left:?}"
    );
}

/// A worker that crashes at every start, in a serving generation: baton
/// restarts it with backoff (100 ms doubling to 30 s), so over an 8 s
/// window each worker starts at most 6 times; no more than the configured
/// 2 workers ever run at once; and baton uses under 5 % of a CPU.
#[test]
fn crash_loop_stays_within_its_backoff_and_costs_baton_little_cpu() {
    const WINDOW: Duration = Duration::from_secs(8);
    let baton = BatonCmd::new()
        .args(["--workers", "2"])
        .probe(&["--drain-ms", "100"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let me = baton.pid();
    baton.set_script("--exit-at-start 1");
    let mark = baton.mark();
    for p in procs_of(&baton, 1) {
        p.signal(Signal::KILL);
    }
    baton.wait_for_after(mark, "of generation 1 restarting in 100 ms", WAIT);
    let cpu_before = inspect::cpu_time(me).expect("baton's CPU time");
    let begun = Instant::now();
    let mut most = 0;
    while begun.elapsed() < WINDOW {
        let running = inspect::live_children(me).len();
        most = most.max(running);
        std::thread::sleep(Duration::from_millis(5));
    }
    let cpu = inspect::cpu_time(me)
        .expect("baton's CPU time")
        .saturating_sub(cpu_before);
    let window = begun.elapsed();
    let lines = baton.lines();
    let end = lines.len();

    for slot in 0..2 {
        let delays: Vec<u64> = lines[mark..end]
            .iter()
            .filter_map(|l| {
                l.split(&format!("worker {slot} of generation 1 restarting in "))
                    .nth(1)?
                    .split(" ms")
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        let starts = lines[mark..end]
            .iter()
            .filter(|l| l.contains(&format!("worker {slot} of generation 1 started, pid ")))
            .count();
        // 100 ms, doubling, at most 30 s.
        let expected: Vec<u64> = std::iter::successors(Some(100u64), |d| Some((d * 2).min(30_000)))
            .take(delays.len())
            .collect();
        assert_eq!(delays, expected, "worker {slot}'s restart delays");
        // Start k comes at least 100 * (2^k - 1) ms after the first crash.
        assert!(
            starts <= 6,
            "worker {slot} started {starts} times in {window:?}: faster than its backoff allows"
        );
        assert!(
            starts >= 3,
            "worker {slot} started only {starts} times in {window:?}"
        );
    }
    assert!(most <= 2, "{most} workers ran at once; 2 are configured");
    let share = cpu.as_secs_f64() / window.as_secs_f64();
    eprintln!(
        "[e2e] crash loop: baton used {cpu:?} of CPU in {window:?} ({:.2} %)",
        share * 100.0
    );
    assert!(
        share < 0.05,
        "baton used {:.1} % of a CPU during the crash loop ({cpu:?} in {window:?})",
        share * 100.0
    );
}
