//! Finding the real programs the integration tests run baton with or
//! under (gunicorn, supervisord, node, systemd-socket-activate), running
//! short commands with a bound, and guarding processes the test started
//! some other way than through [`crate::BatonCmd`].
//!
//! `./test` prepares a Python venv with gunicorn and supervisor (PyPI) and
//! installs Debian's systemd when `systemd-socket-activate` is missing; it
//! passes the venv to the tests as `BATON_E2E_VENV` (default here:
//! `target/py-venv` of the workspace). A test whose tool is missing prints
//! `skipped: ...` and returns: see [`skip`].

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rustix::process::Signal;

use crate::procs::Proc;

/// The venv `./test` prepares (`BATON_E2E_VENV`, else `target/py-venv`).
pub fn venv() -> PathBuf {
    std::env::var_os("BATON_E2E_VENV").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/py-venv"),
        PathBuf::from,
    )
}

/// `name` from the venv's `bin/`, if it is there.
pub fn venv_bin(name: &str) -> Option<PathBuf> {
    let path = venv().join("bin").join(name);
    path.is_file().then_some(path)
}

/// `name` found on `PATH`, if any.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Prints why a test does not run (`skipped: TEST because WHY`): only
/// for a tool that could not be installed or found, never for a failure.
pub fn skip(test: &str, why: &str) {
    eprintln!("skipped: {test} because {why}");
    println!("skipped: {test} because {why}");
}

/// Runs `cmd` to completion with stdin from `/dev/null` and its output
/// captured, killing it (by pid) if it outlives `timeout`.
///
/// # Panics
/// When it cannot be started or runs longer than `timeout`.
pub fn run_bounded(cmd: Command, timeout: Duration) -> Output {
    let shown = format!("{cmd:?}");
    try_run_bounded(cmd, timeout)
        .unwrap_or_else(|pid| panic!("{shown} (pid {pid}) did not finish within {timeout:?}"))
}

/// Like [`run_bounded`], but a command that outlives `timeout` is killed
/// (by pid) and reported as `Err(pid)` instead of failing the test.
///
/// # Panics
/// When it cannot be started.
pub fn try_run_bounded(mut cmd: Command, timeout: Duration) -> Result<Output, u32> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    if let Ok(out) = rx.recv_timeout(timeout) {
        Ok(out.unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}")))
    } else {
        if let Some(p) = Proc::find(pid) {
            p.signal(Signal::KILL);
        }
        Err(pid)
    }
}

/// stdout and stderr of a finished command, for messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `program ARGS` (bounded by 30 s) and returns its stdout; panics,
/// with the whole output, unless it exits 0.
pub fn run_ok<S: AsRef<OsStr>>(program: impl AsRef<OsStr>, args: &[S]) -> String {
    let mut cmd = Command::new(program.as_ref());
    cmd.args(args);
    let out = run_bounded(cmd, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{} {:?} failed: {}",
        program.as_ref().display(),
        args.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Kills (SIGKILL) every process it holds that still runs when dropped:
/// for processes a test started or learned of outside the [`crate::Baton`]
/// guard (a leaked orphan, a test's own helper).
#[derive(Debug, Default)]
pub struct KillOnDrop(pub Vec<Proc>);

impl KillOnDrop {
    pub fn push(&mut self, p: Proc) {
        self.0.push(p);
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            if p.is_alive() {
                eprintln!("[e2e] killing leftover process {}", p.pid);
                p.signal(Signal::KILL);
            }
        }
    }
}
