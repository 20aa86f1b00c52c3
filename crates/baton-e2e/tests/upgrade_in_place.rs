//! baton upgrades itself in place (`SIGUSR2`, `baton ctl upgrade`): the same
//! pid, the same workers, every socket; a binary that cannot take over is
//! refused with its reason; a new image that fails while it loads the state
//! rolls back to the old binary; signals and worker exits inside the window
//! are acted on after it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use baton_e2e::ctl::ctl_text as ctl;
use baton_e2e::tools::run_bounded;
use baton_e2e::{Baton, BatonCmd, Proc, Signal, WAIT, bin, http, inspect};
use baton_load::{Config, Target};

fn start(workers: &str) -> Baton {
    let baton = BatonCmd::new()
        .args(["--workers", workers])
        .probe(&["--drain-ms", "100"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    baton
}

fn worker_pids(baton: &Baton) -> Vec<u32> {
    let mut pids: Vec<u32> = inspect::live_children(baton.pid());
    pids.sort_unstable();
    pids
}

/// 100 upgrades under keep-alive load: the same pid answers (`ctl`
/// says so), the same workers serve, no request fails, and baton's
/// descriptors and memory stay flat.
#[test]
fn a_hundred_upgrades_under_load_keep_the_pid_the_workers_and_every_request() {
    let baton = start("2");
    let pid = baton.pid();
    let workers = worker_pids(&baton);
    assert_eq!(workers.len(), 2, "{workers:?}");
    let mut cfg = Config::new(Target::Tcp(SocketAddr::from((
        Ipv4Addr::LOCALHOST,
        baton.port(),
    ))));
    cfg.concurrency = 4;
    let load = baton_load::start(cfg);
    assert!(load.wait_for_generation("1", WAIT).is_some());
    let mut warm = None;
    for i in 1..=100 {
        let (code, out) = ctl(&baton, &["upgrade"]);
        assert_eq!(code, Some(0), "upgrade {i}: {out}");
        assert!(out.contains(&format!("pid {pid},")), "upgrade {i}: {out}");
        if i == 10 {
            warm = inspect::footprint(pid);
        }
    }
    let report = load.stop();
    assert_eq!(report.failed, 0, "{report}");
    assert_eq!(worker_pids(&baton), workers, "the same workers");
    let warm = warm.expect("a footprint after 10 upgrades");
    let last = inspect::footprint(pid).expect("baton runs");
    assert_eq!(last.fds, warm.fds, "descriptors: {warm:?} -> {last:?}");
    assert!(
        last.rss_kib.saturating_sub(warm.rss_kib) < 1024,
        "RSS grew: {warm:?} -> {last:?}"
    );
    let (_, status) = ctl(&baton, &["status", "--json"]);
    assert!(status.contains("\"upgrades\": 100"), "{status}");
    assert!(status.contains(&format!("\"pid\": {pid}")), "{status}");
}

/// The lines baton writes just before it executes the new image (its own
/// `upgrade: executing ...`, and whatever it has read from its workers) are
/// out before the exec: they used to be lost now and then, still queued
/// for the writing thread (about one upgrade in 40).
#[test]
fn no_line_queued_at_the_exec_is_lost() {
    const UPGRADES: usize = 60;
    let baton = start("1");
    let mark = baton.mark();
    for i in 1..=UPGRADES {
        let (code, out) = ctl(&baton, &["upgrade"]);
        assert_eq!(code, Some(0), "upgrade {i}: {out}");
    }
    let mut from = mark;
    for _ in 0..UPGRADES {
        // A lost line never comes: this wait then fails.
        let (at, _) = baton.wait_for_after(from, "upgrade: executing", WAIT);
        from = at + 1;
    }
    assert_eq!(
        baton.count("upgrade: executing"),
        UPGRADES,
        "one line per upgrade"
    );
}

/// SIGUSR2 does the same as `ctl upgrade`.
#[test]
fn sigusr2_upgrades_in_place() {
    let baton = start("1");
    let workers = worker_pids(&baton);
    let mark = baton.mark();
    baton.signal(Signal::USR2);
    baton.wait_for_after(mark, "upgraded in place", WAIT);
    assert_eq!(worker_pids(&baton), workers);
    assert_eq!(http::get_ok(baton.port(), "/").generation(), Some(1));
    // And the new image reloads as the old one did.
    baton.reload(2, WAIT);
}

/// Compiles `source` (C) into `dir/name` with the machine's gcc.
fn compile(dir: &Path, name: &str, source: &str) -> PathBuf {
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, source).expect("write the C source");
    let out_path = dir.join(name);
    let mut cmd = Command::new("gcc");
    cmd.arg("-o").arg(&out_path).arg(&c);
    let out = run_bounded(cmd, WAIT);
    assert!(
        out.status.success(),
        "gcc failed (gcc is on every machine): {out:?}"
    );
    out_path
}

/// Every kind of bad binary is refused before the exec, with its reason;
/// baton keeps running with the same workers.
#[test]
fn each_kind_of_bad_binary_is_refused_with_its_reason() {
    let baton = start("1");
    let workers = worker_pids(&baton);
    let dir = baton.dir().to_path_buf();
    let write = |name: &str, bytes: &[u8], mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, bytes).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        p
    };
    let text = write("text", b"not a program\n", 0o755);
    let unreadable_mode = write("no-exec", &std::fs::read("/bin/true").expect("read"), 0o644);
    let script = write("script", b"#!/bin/sh\nexec baton \"$@\"\n", 0o755);
    // An ELF header for aarch64 (e_machine 183): a binary for another
    // architecture.
    let mut elf = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
    elf.resize(16, 0);
    elf.extend_from_slice(&[2, 0, 183, 0, 1, 0, 0, 0]);
    elf.resize(256, 0);
    let foreign = write("arm64", &elf, 0o755);
    let crash = compile(
        &dir,
        "crash",
        "int main(void) { volatile int *p = 0; *p = 1; return 0; }\n",
    );
    let schema = compile(
        &dir,
        "schema",
        "#include <stdio.h>\nint main(void) { puts(\"{\\\"baton\\\":\\\"9.0\\\",\\\"state_schemas\\\":[7,9]}\"); return 0; }\n",
    );
    let missing = dir.join("missing");
    let cases: Vec<(PathBuf, &str)> = vec![
        (missing, "does not exist"),
        (unreadable_mode, "(EACCES)"),
        (text, "(ENOEXEC)"),
        (foreign, "(ENOEXEC)"),
        (script, "is a script"),
        (crash, "crashed during its check (signal SIGSEGV)"),
        (
            schema,
            "reads state schemas 7..=9; this baton writes schema",
        ),
        (
            PathBuf::from("/bin/true"),
            "is not a baton that can take over",
        ),
        (PathBuf::from("/bin/false"), "exited with status 1"),
    ];
    for (path, why) in cases {
        let (code, out) = ctl(
            &baton,
            &["upgrade", "--binary", path.to_str().expect("UTF-8")],
        );
        assert_eq!(code, Some(13), "{}: {out}", path.display());
        assert!(out.contains("upgrade refused"), "{}: {out}", path.display());
        assert!(
            out.contains(why),
            "{}: wanted {why:?} in {out}",
            path.display()
        );
    }
    assert_eq!(worker_pids(&baton), workers);
    assert_eq!(http::get_ok(baton.port(), "/").generation(), Some(1));
    assert_eq!(
        ctl(&baton, &["upgrade"]).0,
        Some(0),
        "a good one still works"
    );
}

/// A new image that fails while loading the state (an error, a panic, an
/// abort, a segmentation fault) executes the old binary again with the same
/// state: the verdict says "rolled back", the pid and workers are the same,
/// and the next upgrade works.
#[test]
fn a_new_image_that_fails_while_loading_rolls_back_to_the_old_binary() {
    let baton = start("2");
    let pid = baton.pid();
    let workers = worker_pids(&baton);
    for failpoint in [
        "resume-error",
        "resume-panic",
        "resume-abort",
        "resume-segv",
    ] {
        let (code, out) = ctl(&baton, &["upgrade", "--failpoint", failpoint]);
        assert_eq!(code, Some(13), "{failpoint}: {out}");
        assert!(out.contains("upgrade rolled back"), "{failpoint}: {out}");
        assert_eq!(baton.pid(), pid);
        assert!(
            Proc::find(pid).is_some_and(|p| p.is_alive()),
            "{failpoint}: baton died"
        );
        assert_eq!(
            worker_pids(&baton),
            workers,
            "{failpoint}: the same workers"
        );
        assert_eq!(http::get_ok(baton.port(), "/").generation(), Some(1));
    }
    let (code, out) = ctl(&baton, &["upgrade"]);
    assert_eq!(code, Some(0), "{out}");
    baton.reload(2, WAIT);
}

/// Waits until the new image is inside the window (signals still blocked):
/// the failpoint holds it there for `ms`.
fn upgrade_paused(baton: &Baton, ms: u64) -> std::thread::JoinHandle<(Option<i32>, String)> {
    let sock = baton.dir().join("baton/baton.sock");
    let mark = baton.mark();
    let handle = std::thread::spawn(move || {
        let mut cmd = Command::new(bin("baton"));
        cmd.arg("ctl").arg("--control").arg(sock).args([
            "upgrade",
            "--failpoint",
            &format!("resume-pause:{ms}"),
        ]);
        let out = run_bounded(cmd, WAIT);
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    });
    baton.wait_for_after(mark, "resume paused", WAIT);
    handle
}

#[test]
fn a_hup_sent_inside_the_window_is_acted_on_after_it() {
    let baton = start("1");
    let upgrade = upgrade_paused(&baton, 700);
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    let (code, out) = upgrade.join().expect("the ctl thread");
    assert_eq!(code, Some(0), "{out}");
    baton.wait_for_after(mark, "generation 2 ready", WAIT);
    baton.wait_for_after(mark, "generation 1 exited", WAIT);
    assert_eq!(http::get_ok(baton.port(), "/").generation(), Some(2));
}

#[test]
fn a_term_sent_inside_the_window_is_acted_on_after_it() {
    let mut baton = start("1");
    let workers: Vec<Proc> = baton.workers_of(1).iter().filter_map(|w| w.proc).collect();
    let upgrade = upgrade_paused(&baton, 700);
    baton.signal(Signal::TERM);
    let status = baton.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "a clean stop");
    baton.assert_gone(workers, WAIT, "a worker after the stop");
    let _ = upgrade.join();
}

#[test]
fn a_worker_that_dies_inside_the_window_is_restarted_by_the_new_image() {
    let baton = start("2");
    let victim = baton.workers_of(1)[0];
    let upgrade = upgrade_paused(&baton, 700);
    let mark = baton.mark();
    victim.proc.expect("running").signal(Signal::KILL);
    let (code, out) = upgrade.join().expect("the ctl thread");
    assert_eq!(code, Some(0), "{out}");
    baton.wait_for_after(
        mark,
        &format!("(pid {}) exited with signal SIGKILL", victim.pid),
        WAIT,
    );
    baton.wait_for_after(
        mark,
        &format!("worker {} of generation 1 started", victim.index),
        WAIT,
    );
    baton.wait_for_after(mark, "ready again", WAIT);
    assert_eq!(worker_pids(&baton).len(), 2);
}

/// A `ctl reload` client waiting for its verdict while baton upgrades gets
/// the verdict from the new image; the reload in progress goes on.
#[test]
fn a_reload_in_progress_goes_on_across_an_upgrade_and_its_client_gets_the_verdict() {
    let baton = start("1");
    baton.set_script("--ready-after 1500ms");
    let sock = baton.dir().join("baton/baton.sock");
    let mark = baton.mark();
    let reload = std::thread::spawn(move || {
        let mut cmd = Command::new(bin("baton"));
        cmd.arg("ctl").arg("--control").arg(sock).arg("reload");
        run_bounded(cmd, WAIT)
    });
    baton.wait_for_after(mark, "worker 0 of generation 2 started", WAIT);
    let (code, out) = ctl(&baton, &["upgrade"]);
    assert_eq!(code, Some(0), "{out}");
    let out = reload.join().expect("the reload thread");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("generation 2 is serving"),
        "{out:?}"
    );
    baton.clear_script();
    baton.wait_for_after(mark, "generation 1 exited", WAIT);
}

/// Under systemd: `RELOADING=1` with `MONOTONIC_USEC` before the exec,
/// `READY=1` after; the pid (MAINPID) never changes.
#[test]
fn systemd_hears_reloading_then_ready_and_the_pid_stays() {
    let cmd = BatonCmd::new();
    let sock_path = cmd.dir().join("systemd-notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(WAIT)).expect("timeout");
    let baton = cmd
        .env("NOTIFY_SOCKET", &sock_path)
        .probe(&["--drain-ms", "100"])
        .spawn();
    let mut buf = [0u8; 4096];
    let mut next = || {
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(next().contains("READY=1"));
    let (code, out) = ctl(&baton, &["upgrade"]);
    assert_eq!(code, Some(0), "{out}");
    let reloading = next();
    assert!(reloading.contains("RELOADING=1"), "{reloading}");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let mut ready = next();
    while !ready.contains("READY=1") {
        ready = next();
    }
    assert!(
        !ready.contains("MAINPID"),
        "the pid does not change: {ready}"
    );
}

/// The state an image writes is read by the next one: the fixture (a state
/// written by this schema's first image, dumped with the `resume-dump`
/// failpoint) still parses, and a fresh dump parses too.
#[test]
fn the_state_of_schema_1_is_read_by_this_image() {
    let baton = start("1");
    let dump = baton.dir().join("state.json");
    let (code, out) = ctl(
        &baton,
        &[
            "upgrade",
            "--failpoint",
            &format!("resume-dump:{}", dump.display()),
        ],
    );
    assert_eq!(code, Some(13), "{out}");
    let text = std::fs::read_to_string(&dump).expect("the dumped state");
    assert!(text.contains("\"schema\":1"), "{text}");
    let mut cmd = Command::new(bin("baton"));
    cmd.args(["upgrade-check"]);
    let out = run_bounded(cmd, WAIT);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"state_schemas\":[1,"),
        "{out:?}"
    );
}

/// The time of a log line `2026-12-01T06:45:43.491Z baton ...`.
fn log_time(line: &str) -> std::time::SystemTime {
    let stamp = line.split_whitespace().next().unwrap_or_default();
    humantime::parse_rfc3339(stamp).unwrap_or_else(|e| panic!("no timestamp in {line:?}: {e}"))
}

/// Timers continue where they were: a drain's grace that began before the
/// upgrade ends when it would have without it (not a grace later); and the
/// counters, the last reload and the settings in force carry over.
#[test]
fn timers_counters_and_settings_carry_over() {
    let baton = BatonCmd::new()
        .args(["--grace", "4s", "--workers", "1"])
        .probe(&["--drain-ms", "100"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    // Generation 1 ignores TERM: its drain lasts the whole grace.
    baton.clear_script();
    let mark = baton.mark();
    baton.set_script("--ignore-term");
    baton.reload(2, WAIT);
    baton.clear_script();
    baton.reload(3, WAIT);
    let (_, draining) = baton.wait_for_after(mark, "generation 2 draining", WAIT);
    let (_, before) = ctl(&baton, &["status", "--json"]);
    // Late in the grace: a grace restarted by the upgrade would end 3 s later.
    // (Not a synchronisation: the point is to let time pass.)
    let late = log_time(&draining) + Duration::from_secs(3);
    if let Ok(left) = late.duration_since(std::time::SystemTime::now()) {
        std::thread::sleep(left);
    }
    let (code, out) = ctl(&baton, &["upgrade"]);
    assert_eq!(code, Some(0), "{out}");
    let (_, killed) = baton.wait_for_after(mark, "sending SIGKILL", WAIT);
    let after = log_time(&killed)
        .duration_since(log_time(&draining))
        .expect("after the drain began");
    assert!(
        after >= Duration::from_secs(4) && after < Duration::from_millis(5500),
        "the grace ended {after:?} after the drain began (4 s grace)"
    );
    let (_, now) = ctl(&baton, &["status", "--json"]);
    for field in [
        "\"reloads\": 2",
        "\"reloads_attempted\": 2",
        "\"workers_per_generation\": 1",
    ] {
        assert!(before.contains(field), "before: {before}");
        assert!(now.contains(field), "after the upgrade, {field}: {now}");
    }
}

/// baton's uptime (and every age it carries) goes on through an upgrade:
/// it used to lose the time between the old image writing its state and
/// the new one reading it (a few milliseconds each time; here a second,
/// held open by the failpoint).
#[test]
fn uptime_goes_on_through_the_exec_of_an_upgrade() {
    let baton = start("1");
    let uptime = |baton: &Baton| -> u64 {
        let (code, out) = ctl(baton, &["status", "--json"]);
        assert_eq!(code, Some(0), "{out}");
        let s: serde_json::Value = serde_json::from_str(&out).expect("status is JSON");
        s["uptime_ms"].as_u64().expect("uptime_ms")
    };
    let before = uptime(&baton);
    let asked = std::time::Instant::now();
    let (code, out) = ctl(&baton, &["upgrade", "--failpoint", "resume-pause:1000"]);
    assert_eq!(code, Some(0), "{out}");
    let elapsed = asked.elapsed();
    let after = uptime(&baton);
    let grew = Duration::from_millis(after.saturating_sub(before));
    // The two answers were measured at least `elapsed` apart (less the
    // milliseconds the figures are rounded to).
    assert!(
        grew + Duration::from_millis(2) >= elapsed,
        "uptime {before} ms -> {after} ms, across {elapsed:?} that held a 1 s pause"
    );
}

/// A rolling reload in progress goes on across an upgrade with its
/// settings (strategy, surge, quiet boot): the new image replaces the old
/// workers one at a time and gives the quiet worker its priority back.
#[test]
fn a_rolling_reload_in_progress_goes_on_across_an_upgrade_with_its_settings() {
    let baton = BatonCmd::new()
        .args([
            "--workers",
            "2",
            "--strategy",
            "rolling",
            "--max-surge",
            "1",
            "--max-draining",
            "2",
            "--quiet-boot",
            "on",
        ])
        .probe(&["--drain-ms", "50"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    baton.set_script("--ready-after 1500ms");
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    baton.wait_for_after(mark, "worker 0 of generation 2 started", WAIT);
    let quiet = baton.workers_of(2)[0].pid;
    baton.assert_booting_quietly(mark, &[quiet]);
    let (code, out) = ctl(&baton, &["upgrade"]);
    assert_eq!(code, Some(0), "{out}");
    let (upgraded, _) = baton.wait_for_after(mark, "upgraded in place", WAIT);
    // The worker read its script (a quiet worker may start late).
    baton.wait_for_after(mark, "probe gen=2 worker=0 pid", WAIT);
    assert!(baton.seen_after(mark, "(script: --ready-after 1500ms)"));
    // After the upgrade: one old worker replaced per new ready one, and
    // the second new worker only once there is room (3 processes).
    baton.wait_for_after(upgraded, "draining: replaced", WAIT);
    baton.wait_for_after(upgraded, "worker 1 of generation 2 started", WAIT);
    baton.wait_for_after(upgraded, "generation 2 ready", WAIT);
    baton.clear_script();
    baton.wait_for_after(upgraded, "generation 1 exited", WAIT);
    assert_eq!(
        baton_e2e::procs::sched_policy(quiet),
        Some(0),
        "the new image restored it"
    );
    assert_eq!(baton.count("rolling reload: generation 2"), 1);
}
