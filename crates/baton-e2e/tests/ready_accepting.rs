//! `--ready accepting`: baton sees a worker wait for connections on its
//! socket in `/proc`, without the app's help. The apps are
//! `tests/apps/waiter.py` (it waits in the way it is told and never reports
//! ready itself) and `tests/apps/uring_accept.c` (io_uring).
//!
//! What it sees (an epoll set watching the listener, a thread in accept, a
//! pre-forking master's children) makes a generation ready, and no sooner
//! than it happens; what it cannot see (poll, select, io_uring, a socket of
//! the app's own, an app that never listens) fails with the explanation
//! instead of passing. The real servers (uvicorn, Node, Go, the demo) are
//! in `real_apps.rs`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use baton_e2e::tools::{output_text, run_bounded, which_or_skip};
use baton_e2e::{Baton, BatonCmd, Signal, WAIT, http};

fn waiter() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/waiter.py")
}

/// `baton run --ready MODE -- python3 waiter.py ARGS...`, at debug level
/// (the lines that say how a worker was seen).
fn waiter_cmd(python: &Path, ready: &str, args: &[&str]) -> BatonCmd {
    let mut argv: Vec<OsString> = vec![python.into(), waiter().into()];
    argv.extend(args.iter().map(OsString::from));
    BatonCmd::new()
        .args(["--ready", ready, "--grace", "5s"])
        .env("BATON_LOG", "debug")
        .command(argv)
}

fn python(test: &str) -> Option<PathBuf> {
    which_or_skip(test, "python3", "python3")
}

/// Generation 1 serves, a reload to 2 goes through and serves; returns the
/// line that said how generation 1's worker 0 was seen.
fn serves_and_reloads(mut baton: Baton) -> String {
    let seen = baton.wait_for("worker 0 of generation 1 (pid", WAIT);
    baton.wait_for("generation 1 ready", WAIT);
    let port = baton.port();
    assert_eq!(http::get_ok(port, "/").generation(), Some(1));
    baton.reload(2, WAIT);
    assert_eq!(http::get_ok(port, "/").generation(), Some(2));
    let status = baton.stop(Signal::TERM, WAIT);
    assert_eq!(status.code(), Some(0), "graceful stop");
    seen
}

#[test]
fn accepting_sees_an_event_loop_watching_a_dup_of_the_listener() {
    let Some(py) = python("accepting_sees_an_event_loop_watching_a_dup_of_the_listener") else {
        return;
    };
    let seen = serves_and_reloads(waiter_cmd(&py, "accepting", &["epoll"]).spawn());
    assert!(seen.contains("accepts: an epoll set of pid"), "{seen}");
}

#[test]
fn accepting_sees_a_thread_blocked_in_accept() {
    let Some(py) = python("accepting_sees_a_thread_blocked_in_accept") else {
        return;
    };
    let seen = serves_and_reloads(waiter_cmd(&py, "accepting", &["accept"]).spawn());
    assert!(seen.contains("is in accept on tcp://127.0.0.1:"), "{seen}");
}

/// The master only waits for its children; one of them is seen.
#[test]
fn accepting_sees_the_children_of_a_pre_forking_master() {
    let Some(py) = python("accepting_sees_the_children_of_a_pre_forking_master") else {
        return;
    };
    let baton = waiter_cmd(&py, "accepting", &["prefork"]).spawn();
    let line = baton.wait_for("worker 0 of generation 1 (pid", WAIT);
    let worker: u32 = field(&line, "(pid ", ")");
    let seen: u32 = field(&line, "an epoll set of pid ", " ");
    assert_ne!(worker, seen, "seen in a child, not the master: {line}");
    serves_and_reloads(baton);
}

fn field<T: std::str::FromStr>(line: &str, before: &str, after: &str) -> T {
    let rest = &line[line
        .find(before)
        .unwrap_or_else(|| panic!("{before:?} in {line}"))
        + before.len()..];
    let end = rest.find(after).unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|_| panic!("a number after {before:?} in {line}"))
}

/// Ready when it listens, not when it starts: 2 s of sleep first.
#[test]
fn a_worker_that_sleeps_2s_before_it_listens_is_ready_no_sooner() {
    let Some(py) = python("a_worker_that_sleeps_2s_before_it_listens_is_ready_no_sooner") else {
        return;
    };
    let mut baton = waiter_cmd(&py, "accepting", &["epoll", "--sleep", "2"]).spawn();
    let (g, took) = baton.wait_ready_after(0, WAIT);
    assert_eq!(g, 1);
    let took = took.expect("the ready line says how long it took");
    assert!(took >= Duration::from_secs(2), "ready after {took:?}");
    let line = baton.wait_for("worker 0 of generation 1 is ready, ", WAIT);
    let after: f64 = field(&line, "is ready, ", " ms");
    assert!(after >= 2000.0, "{line}");
    assert_eq!(http::get_ok(baton.port(), "/").generation(), Some(1));
    let status = baton.stop(Signal::TERM, WAIT);
    assert_eq!(status.code(), Some(0));
}

/// Runs `argv` under `--ready accepting --ready-timeout 3s`: it must not
/// become ready, and baton must exit 6 saying what it saw, including
/// `clue`. Returns the failure line.
fn fails_unseen(argv: Vec<OsString>, clue: &str) -> String {
    let (status, lines) = BatonCmd::new()
        .args([
            "--ready",
            "accepting",
            "--ready-timeout",
            "3s",
            "--grace",
            "5s",
        ])
        .command(argv)
        .run_to_exit(Duration::from_secs(60));
    let text = lines.join("\n");
    assert!(
        !text.contains("generation 1 ready"),
        "passed wrongly:\n{text}"
    );
    assert_eq!(status.code(), Some(6), "not ready in time:\n{text}");
    let line = lines
        .iter()
        .find(|l| l.contains("generation 1 failed: was not ready within 3s"))
        .unwrap_or_else(|| panic!("no timeout line:\n{text}"))
        .clone();
    let port = lines
        .iter()
        .find_map(|l| baton_e2e::baton::parse_port(l))
        .expect("a listening line");
    assert!(
        line.contains("still waiting for worker 0 to accept connections: worker 0 (pid "),
        "{line}"
    );
    let expected =
        format!("has no epoll set watching tcp://127.0.0.1:{port} and is not in accept on it");
    assert!(line.contains(&expected), "{line}");
    assert!(line.contains(clue), "{clue:?} in {line}");
    assert!(
        line.contains("needs --ready notify, fd or exec:CMD"),
        "{line}"
    );
    line
}

fn waiter_argv(py: &Path, mode: &str) -> Vec<OsString> {
    vec![py.into(), waiter().into(), mode.into()]
}

#[test]
fn a_worker_that_never_listens_times_out_with_the_explanation() {
    let Some(py) = python("a_worker_that_never_listens_times_out_with_the_explanation") else {
        return;
    };
    let line = fails_unseen(waiter_argv(&py, "never"), "(1 process)");
    assert!(!line.contains("cannot look into"), "{line}");
}

/// poll(2) and select(2) keep their sets in the process's memory: baton
/// reads them there, and a server waiting in either on its listener is
/// seen (glibc's select() is the pselect6 system call on x86_64).
#[test]
fn accepting_sees_a_thread_waiting_in_poll_on_the_listener() {
    let Some(py) = python("accepting_sees_a_thread_waiting_in_poll_on_the_listener") else {
        return;
    };
    let seen = serves_and_reloads(waiter_cmd(&py, "accepting", &["poll"]).spawn());
    assert!(
        seen.contains("waits in poll() for tcp://127.0.0.1:")
            || seen.contains("waits in ppoll() for tcp://127.0.0.1:"),
        "{seen}"
    );
}

#[test]
fn accepting_sees_a_thread_waiting_in_select_on_the_listener() {
    let Some(py) = python("accepting_sees_a_thread_waiting_in_select_on_the_listener") else {
        return;
    };
    let seen = serves_and_reloads(waiter_cmd(&py, "accepting", &["select"]).spawn());
    assert!(
        seen.contains("waits in select() for tcp://127.0.0.1:")
            || seen.contains("waits in pselect6() for tcp://127.0.0.1:"),
        "{seen}"
    );
}

/// A generation that sleeps before it polls is not ready before it polls:
/// the set is read, not assumed.
#[test]
fn a_server_polling_only_other_descriptors_is_not_seen_and_the_timeout_says_why() {
    let Some(py) =
        python("a_server_polling_only_other_descriptors_is_not_seen_and_the_timeout_says_why")
    else {
        return;
    };
    fails_unseen(waiter_argv(&py, "poll-other"), "on other descriptors");
}

#[test]
fn an_app_listening_on_a_socket_of_its_own_is_not_seen_and_the_timeout_says_why() {
    let Some(py) =
        python("an_app_listening_on_a_socket_of_its_own_is_not_seen_and_the_timeout_says_why")
    else {
        return;
    };
    fails_unseen(
        waiter_argv(&py, "own"),
        "none of its processes has the listener open: an app that listens on a socket of its own is not seen",
    );
}

#[test]
fn an_io_uring_server_is_not_seen_and_the_timeout_says_why() {
    let test = "an_io_uring_server_is_not_seen_and_the_timeout_says_why";
    let Some(cc) = which_or_skip(test, "gcc", "gcc") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = dir.path().join("uring_accept");
    let mut cmd = Command::new(cc);
    cmd.arg("-O2")
        .arg("-o")
        .arg(&exe)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/uring_accept.c"));
    let out = run_bounded(cmd, Duration::from_secs(120));
    assert!(out.status.success(), "gcc: {}", output_text(&out));
    fails_unseen(
        vec![exe.into()],
        "a thread waits in io_uring_enter(), which baton cannot look into",
    );
}

/// `accepting+exec:CMD`: accepting alone is not enough.
#[test]
fn accepting_and_exec_waits_for_both() {
    let Some(py) = python("accepting_and_exec_waits_for_both") else {
        return;
    };
    let cmd = waiter_cmd(&py, "accepting+exec:test -e \"$GO\"", &["epoll"]);
    let go = cmd.dir().join("go");
    let baton = cmd.env("GO", &go).spawn();
    baton.wait_for("worker 0 of generation 1 (pid", WAIT);
    // Accepting, but the command fails: a few of its runs go by unready.
    let mut mark = baton.mark();
    for _ in 0..3 {
        let (i, _) = baton.wait_for_after(mark, "readiness command for generation 1 exited", WAIT);
        mark = i + 1;
    }
    assert_eq!(
        baton.count("generation 1 ready"),
        0,
        "ready without the command"
    );
    std::fs::write(&go, "").expect("let the command pass");
    baton.wait_for("generation 1 ready", WAIT);
    assert_eq!(http::get_ok(baton.port(), "/").generation(), Some(1));
}

/// `notify|accepting`: whichever comes first. One app only says READY=1
/// (it never waits on the socket); the other only accepts.
#[test]
fn notify_or_accepting_takes_either() {
    let Some(py) = python("notify_or_accepting_takes_either") else {
        return;
    };
    let mut notifies = waiter_cmd(&py, "notify|accepting", &["never", "--notify"]).spawn();
    notifies.wait_for("generation 1 ready", WAIT);
    assert_eq!(notifies.count("accepts:"), 0, "it never accepts");
    assert_eq!(notifies.stop(Signal::TERM, WAIT).code(), Some(0));

    let accepts = waiter_cmd(&py, "notify|accepting", &["epoll"]).spawn();
    serves_and_reloads(accepts);
}

/// A Unix socket listener is matched the same way (its inode in sockfs).
#[test]
fn accepting_sees_a_unix_socket_listener() {
    let Some(py) = python("accepting_sees_a_unix_socket_listener") else {
        return;
    };
    let cmd = waiter_cmd(&py, "accepting", &["epoll"]);
    let sock = cmd.dir().join("app.sock");
    let mut spec = OsString::from("unix:");
    spec.push(&sock);
    let mut baton = cmd.listen(spec).spawn();
    let line = baton.wait_for("worker 0 of generation 1 (pid", WAIT);
    assert!(line.contains("watches unix:"), "{line}");
    baton.wait_for("generation 1 ready", WAIT);
    let reply = http::get_unix(&sock, "/").expect("a reply on the unix socket");
    assert_eq!(reply.generation(), Some(1));
    assert_eq!(baton.stop(Signal::TERM, WAIT).code(), Some(0));
}

/// baton upgrades itself in place while a generation is being looked at:
/// the look in flight is lost with the old image's thread, and the new
/// image starts looking again, so the worker is seen when it listens
/// rather than timed out (`--ready-timeout 8s` against a 2 s start).
#[test]
fn accepting_goes_on_looking_across_an_in_place_upgrade() {
    let Some(py) = python("accepting_goes_on_looking_across_an_in_place_upgrade") else {
        return;
    };
    let baton = waiter_cmd(&py, "accepting", &["epoll", "--sleep", "2"])
        .args(["--ready-timeout", "8s"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    baton.wait_for_after(mark, "worker 0 of generation 2 started", WAIT);
    let mut ctl = Command::new(baton_e2e::bin("baton"));
    ctl.arg("ctl")
        .arg("--control")
        .arg(baton.dir().join("baton/baton.sock"))
        .arg("upgrade");
    let out = run_bounded(ctl, WAIT);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    baton.wait_for_after(mark, "upgraded in place", WAIT);
    baton.wait_for_after(mark, "generation 2 ready", WAIT);
    assert_eq!(baton.count("was not ready within"), 0, "no timeout");
    assert_eq!(http::get_ok(baton.port(), "/").generation(), Some(2));
}
