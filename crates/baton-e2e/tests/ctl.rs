//! The control plane: `baton ctl` against a running supervisor, the control
//! socket's defences, `TTIN`/`TTOU`, and what baton tells its own service
//! manager on `NOTIFY_SOCKET`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use baton_e2e::tools::{root_or_skip, which_or_skip};
use baton_e2e::{Baton, BatonCmd, Signal, WAIT, bin, http};

fn control_path(baton: &Baton) -> PathBuf {
    baton.dir().join("baton").join("baton.sock")
}

/// Runs `baton ctl --control SOCKET ARGS` to completion (bounded).
fn ctl(baton: &Baton, args: &[&str]) -> Output {
    ctl_at(&control_path(baton), args)
}

fn ctl_at(socket: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("baton"));
    cmd.arg("ctl")
        .arg("--control")
        .arg(socket)
        .arg("--timeout")
        .arg("30s")
        .args(args);
    run_bounded(cmd)
}

/// Runs a command, killing it (by pid) if it outlives 40 s.
fn run_bounded(cmd: Command) -> Output {
    run_bounded_to(cmd, std::process::Stdio::piped())
}

/// [`run_bounded`], its standard output going to `stdout`.
fn run_bounded_to(mut cmd: Command, stdout: std::process::Stdio) -> Output {
    cmd.stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("start baton ctl");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(40)) {
        Ok(out) => out.expect("baton ctl ran"),
        Err(_) => {
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, Signal::KILL);
            }
            panic!("baton ctl (pid {pid}) did not finish within 40 s");
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn started() -> Baton {
    let baton = BatonCmd::new()
        .args(["--workers", "2"])
        .probe(&["--drain-ms", "50"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    baton.wait_for("control socket", WAIT);
    baton
}

#[test]
fn ctl_reload_blocks_until_the_verdict_and_reports_rollback() {
    let baton = started();
    let out = ctl(&baton, &["reload"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("reloaded: generation 2 is serving (ready in"),
        "{}",
        text(&out)
    );
    // Progress came before the verdict.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("generation 2 starting (2 workers)"),
        "{}",
        text(&out)
    );
    assert!(stderr.contains("generation 1 draining"), "{}", text(&out));
    // When ctl returns, generation 2 serves and 1 was told to drain (it may
    // still take a connection until it handles the stop signal); once 1 is
    // gone, only 2 answers.
    baton.wait_for("generation 1 exited", WAIT);
    assert_eq!(http::get_ok(baton.port(), "/").generation(), Some(2));

    baton.set_script("--exit-at-start 3");
    let out = ctl(&baton, &["reload"]);
    assert_eq!(out.status.code(), Some(10), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("reload failed: generation 3 worker")
            && stderr
                .contains("exited with status 3 before it was ready; generation 2 keeps serving"),
        "{}",
        text(&out)
    );
    assert!(
        stderr.contains("| probe: exiting with 3 as asked"),
        "the failed worker's output: {}",
        text(&out)
    );
    assert_eq!(http::get_ok(baton.port(), "/").generation(), Some(2));

    baton.clear_script();
    let out = ctl(&baton, &["reload"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("generation 4 is serving"));
}

#[test]
fn ctl_status_reports_generations_workers_listeners_and_last_reload() {
    let baton = started();
    let out = ctl(&baton, &["reload"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    baton.wait_for("generation 1 exited", WAIT);
    let out = ctl(&baton, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let json = String::from_utf8_lossy(&out.stdout);
    for needle in [
        &format!("\"pid\": {}", baton.pid()),
        "\"serving\": 2",
        "\"workers_per_generation\": 2",
        "\"reloads\": 1",
        "\"ok\": true",
        "\"name\": \"listen0\"",
        &format!("\"address\": \"tcp://127.0.0.1:{}\"", baton.port()),
        "\"state\": \"serving\"",
        "\"state\": \"ready\"",
    ] {
        assert!(json.contains(needle), "{needle} missing from:\n{json}");
    }
    for w in baton.workers_of(2) {
        assert!(
            json.contains(&format!("\"pid\": {}", w.pid)),
            "worker {} missing:\n{json}",
            w.pid
        );
    }
    let out = ctl(&baton, &["status"]);
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(
        human.contains("serving generation 2") && human.contains("last reload: ok"),
        "{human}"
    );
}

#[test]
fn ctl_stop_waits_until_baton_has_exited() {
    let mut baton = started();
    let out = ctl(&baton, &["stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("stopped"));
    // ctl returned after baton closed the socket at exit.
    let status = baton.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0));
    assert!(
        !control_path(&baton).exists(),
        "the control socket is removed at exit"
    );
}

#[test]
fn ctl_scale_and_ttin_ttou_change_the_worker_count() {
    let baton = started();
    let out = ctl(&baton, &["scale", "3"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    baton.wait_for("worker 2 of generation 1 started", WAIT);
    baton.signal(Signal::TTIN);
    baton.wait_for("worker 3 of generation 1 started", WAIT);
    let mark = baton.mark();
    baton.signal(Signal::TTOU);
    baton.wait_for_after(mark, "worker 3 of generation 1", WAIT);
    baton.wait_for_after(mark, "removed", WAIT);
    // A reload starts the new generation with the new count.
    let out = ctl(&baton, &["reload"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("generation 2 starting (3 workers)"),
        "{}",
        text(&out)
    );
    let out = ctl(&baton, &["scale", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn ctl_without_a_supervisor_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = ctl_at(&dir.path().join("none.sock"), &["status"]);
    assert_eq!(out.status.code(), Some(8), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{}",
        text(&out)
    );
    // A stale socket file: nobody listens.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    let out = ctl_at(&stale, &["reload"]);
    assert_eq!(out.status.code(), Some(8), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stale"),
        "{}",
        text(&out)
    );
}

/// `baton ctl reload --timeout 90s` or `baton ctl status --control PATH`
/// (the options after the command, as most CLIs allow) was a usage error,
/// "unexpected argument '--control' found", with no hint: the options were
/// accepted only before the command.
#[test]
fn ctl_options_after_the_command_are_accepted() {
    let baton = started();
    let socket = control_path(&baton);
    let mut cmd = Command::new(bin("baton"));
    cmd.args(["ctl", "status", "--json", "--control"])
        .arg(&socket)
        .args(["--timeout", "30s"]);
    let out = run_bounded(cmd);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"serving\": 1"),
        "{}",
        text(&out)
    );
    let mut cmd = Command::new(bin("baton"));
    cmd.args(["ctl", "reload", "--timeout", "30s", "--control"])
        .arg(&socket);
    let out = run_bounded(cmd);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // --name after the command picks the socket as it does before it.
    let mut cmd = Command::new(bin("baton"));
    cmd.env("XDG_RUNTIME_DIR", baton.dir())
        .args(["ctl", "status", "--name", "baton"]);
    let out = run_bounded(cmd);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// `baton ctl status | head -1` (or `ctl events | jq`, once jq exits):
/// the write to the closed pipe made `println!` panic, printing a
/// backtrace and exiting 101. It must end quietly, as `cat` does: killed
/// by SIGPIPE, nothing on stderr.
#[test]
fn ctl_writing_to_a_closed_pipe_ends_quietly_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    let baton = started();
    for args in [&["status"][..], &["status", "--json"], &["events"]] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        // The reader is gone before baton ctl writes anything.
        drop(reader);
        let mut cmd = Command::new(bin("baton"));
        cmd.arg("ctl")
            .arg("--control")
            .arg(control_path(&baton))
            .args(["--timeout", "30s"])
            .args(args);
        let out = run_bounded_to(cmd, writer.into());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {:?}, stderr:\n{stderr}",
            out.status
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// `baton ctl status` against a baton that is stopped (SIGSTOP, Ctrl-Z in
/// its terminal) waited forever: no --timeout meant no limit even for a
/// command that is answered at once. It must give up (exit 11) and say
/// why.
#[test]
fn ctl_status_against_a_stopped_baton_gives_up_instead_of_hanging() {
    let baton = started();
    baton.signal(Signal::STOP);
    let mut cmd = Command::new(bin("baton"));
    cmd.args(["ctl", "--control"])
        .arg(control_path(&baton))
        .arg("status");
    let out = run_bounded(cmd);
    baton.signal(Signal::CONT);
    assert_eq!(out.status.code(), Some(11), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no answer within the timeout"),
        "{}",
        text(&out)
    );
    // Going again, it answers.
    let out = ctl(&baton, &["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn second_supervisor_with_the_same_name_is_refused() {
    let baton = started();
    let second = BatonCmd::new()
        .env("XDG_RUNTIME_DIR", baton.dir())
        .probe(&[])
        .run_to_exit(WAIT);
    assert_eq!(second.0.code(), Some(3), "{:?}", second.1);
    assert!(
        second
            .1
            .iter()
            .any(|l| l.contains("another baton is running") && l.contains("--name")),
        "{:?}",
        second.1
    );
    // The first one is unaffected.
    assert_eq!(ctl(&baton, &["status"]).status.code(), Some(0));
}

/// Runs `baton ctl` as the unprivileged user `nobody`.
fn ctl_as_nobody(socket: &Path) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin("baton"))
        .arg("ctl")
        .arg("--control")
        .arg(socket)
        .arg("status");
    run_bounded(cmd)
}

#[test]
fn other_users_are_refused() {
    let name = "other_users_are_refused";
    if which_or_skip(name, "setpriv", "util-linux").is_none()
        || !root_or_skip(name, "setpriv acts as the user nobody")
    {
        return;
    }
    let baton = started();
    let socket = control_path(&baton);
    // The socket's directory is private: another user cannot even reach it.
    let out = ctl_as_nobody(&socket);
    assert_eq!(out.status.code(), Some(9), "{}", text(&out));
    // Even with the file system opened up by mistake, the peer uid check
    // refuses the command.
    for p in [baton.dir(), socket.parent().expect("dir")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    }
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let out = ctl_as_nobody(&socket);
    assert_eq!(out.status.code(), Some(9), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only that user and root"),
        "{}",
        text(&out)
    );
    assert_eq!(http::get_ok(baton.port(), "/").generation(), Some(1));
}

fn raw_exchange(socket: &Path, request: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.write_all(request).expect("send");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply
}

#[test]
fn malformed_oversized_and_silent_clients_do_not_stall_the_supervisor() {
    let baton = started();
    let socket = control_path(&baton);
    assert!(raw_exchange(&socket, b"reload please\n").contains("malformed request"));
    assert!(
        raw_exchange(&socket, b"{\"v\":9,\"cmd\":\"reload\"}\n")
            .contains("protocol version 9 is not supported")
    );
    let huge = vec![b'x'; 70 * 1024];
    assert!(raw_exchange(&socket, &huge).contains("request longer than"));

    // A client that connects and says nothing...
    let silent = UnixStream::connect(&socket).expect("connect");
    silent.set_read_timeout(Some(WAIT)).expect("timeout");
    // ...does not keep others waiting,
    let t = Instant::now();
    let out = ctl(&baton, &["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "status took {:?} beside a silent client",
        t.elapsed()
    );
    // and is dropped after the client timeout.
    let mut reply = String::new();
    let _ = BufReader::new(&silent).read_line(&mut reply);
    assert!(reply.contains("no complete request within"), "{reply:?}");
}

/// Reads notify datagrams until one contains `needle` (bounded).
fn wait_notify(sock: &UnixDatagram, needle: &str, seen: &mut Vec<String>) -> String {
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .expect("timeout");
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                seen.push(msg.clone());
                if msg.contains(needle) {
                    return msg;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no notify message with {needle:?}; got {seen:?}");
}

#[test]
fn baton_under_systemd_reports_ready_reloading_rollback_and_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind mock NOTIFY_SOCKET");
    let mut baton = BatonCmd::new()
        .env("NOTIFY_SOCKET", &path)
        .probe(&["--drain-ms", "50"])
        .spawn();
    let mut seen = Vec::new();
    let ready = wait_notify(&sock, "READY=1", &mut seen);
    assert!(ready.contains("STATUS=serving generation 1"), "{ready}");
    baton.wait_for("generation 1 ready", WAIT);

    baton.signal(Signal::HUP);
    let reloading = wait_notify(&sock, "RELOADING=1", &mut seen);
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let ready = wait_notify(&sock, "READY=1", &mut seen);
    assert!(ready.contains("STATUS=serving generation 2"), "{ready}");

    baton.set_script("--exit-at-start 1");
    baton.signal(Signal::HUP);
    wait_notify(&sock, "RELOADING=1", &mut seen);
    let ready = wait_notify(&sock, "READY=1", &mut seen);
    assert!(
        ready.contains("serving generation 2 (reload to generation 3 failed)"),
        "{ready}"
    );

    baton.signal(Signal::TERM);
    wait_notify(&sock, "STOPPING=1", &mut seen);
    assert_eq!(baton.wait_exit(WAIT).code(), Some(0));
    // Every message came from baton itself (MAINPID never changes).
    assert!(!seen.iter().any(|m| m.contains("MAINPID")), "{seen:?}");
}
