//! Regression: baton froze when nobody read its output.
//!
//! baton's log and the worker output it passes on used to be written with
//! blocking writes. Under a stalled log collector (seen under supervisord
//! on a starved machine) the pipe filled, baton blocked in `write`, and the
//! whole supervisor stopped: no reload, no reaping, no stop; and its
//! workers, writing to their own pipes to baton, would have blocked too.
//! The pipes here are shrunk to one page so that happens within a few
//! reloads if it can happen at all.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use baton_e2e::tools::{output_text, run_bounded};
use baton_e2e::{Proc, Signal, bin};

/// A pipe of one page whose read end is kept open and never read.
fn stalled_pipe() -> (OwnedFd, OwnedFd) {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe");
    rustix::pipe::fcntl_setpipe_size(&w, 4096).expect("shrink the pipe");
    (r, w)
}

fn ctl(socket: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(bin("baton"));
    cmd.arg("ctl")
        .arg("--control")
        .arg(socket)
        .arg("--timeout")
        .arg("20s")
        .args(args);
    run_bounded(cmd, Duration::from_secs(30))
}

#[test]
fn baton_keeps_supervising_when_nobody_reads_its_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("ctl.sock");
    let (_out_r, out_w) = stalled_pipe();
    let (_err_r, err_w) = stalled_pipe();
    let mut child = Command::new(bin("baton"))
        .arg("run")
        .arg("--control")
        .arg(&socket)
        .args(["-l", "127.0.0.1:0", "--workers", "2", "--"])
        .arg(bin("baton-probe"))
        .args(["--drain-ms", "20"])
        .env("BATON_LOG", "debug")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .spawn()
        .expect("start baton");
    let pid = child.id();
    let _guard = scopeguard(pid);

    // Its output is not read, so there is no log line to wait on: wait for
    // the control socket to accept (bounded) and for generation 1.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "baton's control socket did not appear within 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ready_deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = ctl(&socket, &["status"]);
        if String::from_utf8_lossy(&out.stdout).contains("serving generation 1") {
            break;
        }
        assert!(
            std::time::Instant::now() < ready_deadline,
            "generation 1 not serving within 20 s: {}",
            output_text(&out)
        );
    }

    // Each reload writes far more than a page of log lines and probe output.
    for n in 1..=40 {
        let out = ctl(&socket, &["reload"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "reload {n} with nobody reading baton's output: {}",
            output_text(&out)
        );
    }
    let out = ctl(&socket, &["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("serving generation 41"));
    let out = ctl(&socket, &["stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let status = child.wait().expect("baton exits");
    assert_eq!(status.code(), Some(0));
}

/// Kills baton (by pid) if the test fails before stopping it.
fn scopeguard(pid: u32) -> impl Drop {
    struct Guard(u32);
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(p) = Proc::find(self.0) {
                p.signal(Signal::KILL);
            }
        }
    }
    Guard(pid)
}
