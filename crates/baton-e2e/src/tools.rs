//! Finding the real programs the integration tests run baton with or
//! under (gunicorn, uvicorn, supervisord, node, go, runit,
//! systemd-socket-activate, unshare, setpriv), running short commands with
//! a bound, and guarding processes the test started some other way than
//! through [`crate::BatonCmd`].
//!
//! `./test` installs every one of them: a Python venv with gunicorn,
//! uvicorn and supervisor (PyPI), and Debian's systemd, nodejs, golang and
//! runit when their programs are missing. It passes the venv to the tests
//! as `BATON_E2E_VENV` (default here: `target/py-venv` of the workspace).
//!
//! A test whose tool is missing (or that needs root and does not have it)
//! calls [`skip`], which **fails the test** unless the person running it
//! allowed skips with `BATON_E2E_ALLOW_SKIP=1`; allowed, the test returns
//! early and passes as skipped. Either way the skip is appended to the file
//! named by `BATON_E2E_SKIP_LOG` (`./test` prints that list at the end), so
//! a skip is never silent.

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

/// Set to `1` to let a test whose tool is missing pass as skipped instead
/// of failing.
pub const ALLOW_SKIP_VAR: &str = "BATON_E2E_ALLOW_SKIP";

/// A file every [`skip`] appends a line to (`./test` sets it and prints
/// the list after the run).
pub const SKIP_LOG_VAR: &str = "BATON_E2E_SKIP_LOG";

/// Whether skips are allowed (`BATON_E2E_ALLOW_SKIP=1`).
pub fn skips_allowed() -> bool {
    std::env::var_os(ALLOW_SKIP_VAR).is_some_and(|v| v == "1")
}

/// `test` cannot run here because `why` (a tool that could not be
/// installed or found, or root that it needs): never for a failure.
///
/// Appends `TEST: WHY` to the file in `BATON_E2E_SKIP_LOG` (if set), then
/// fails the test unless skips are allowed (`BATON_E2E_ALLOW_SKIP=1`);
/// when they are, it prints `skipped: TEST because WHY` and returns, and
/// the caller returns at once.
///
/// # Panics
/// Unless skips are allowed; or when the skip log cannot be written.
pub fn skip(test: &str, why: &str) {
    let allowed = skips_allowed();
    if let Some(log) = std::env::var_os(SKIP_LOG_VAR) {
        let verdict = if allowed { "skipped" } else { "FAILED" };
        let line = format!("{test}: {why} ({verdict})\n");
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()))
            .unwrap_or_else(|e| {
                panic!(
                    "cannot append to the skip log {} ({SKIP_LOG_VAR}): {e}",
                    Path::new(&log).display()
                )
            });
    }
    assert!(
        allowed,
        "{test} cannot run: {why}. ./test installs what the tests need (as root, with \
         apt-get and pip); to let such a test pass as skipped instead, set {ALLOW_SKIP_VAR}=1"
    );
    eprintln!("skipped: {test} because {why} (allowed by {ALLOW_SKIP_VAR}=1)");
    println!("skipped: {test} because {why} (allowed by {ALLOW_SKIP_VAR}=1)");
}

/// `name` on `PATH`, or [`skip`] `test` saying that Debian's `package`
/// has it (and `None`).
pub fn which_or_skip(test: &str, name: &str, package: &str) -> Option<PathBuf> {
    let found = which(name);
    if found.is_none() {
        skip(
            test,
            &format!("{name} is not on PATH (Debian package {package})"),
        );
    }
    found
}

/// `name` from the venv's `bin/`, or [`skip`] `test` saying that the PyPI
/// package `package` has it (and `None`).
pub fn venv_bin_or_skip(test: &str, name: &str, package: &str) -> Option<PathBuf> {
    let found = venv_bin(name);
    if found.is_none() {
        skip(
            test,
            &format!(
                "{name} is not in {} (PyPI package {package})",
                venv().join("bin").display()
            ),
        );
    }
    found
}

/// Whether this process runs as root; if not, [`skip`]s `test`, which
/// needs root because `why`.
pub fn root_or_skip(test: &str, why: &str) -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        skip(test, &format!("it needs root: {why}"));
    }
    root
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
