//! `baton ctl` against a [`Baton`] started by the harness (its control
//! socket is `$XDG_RUNTIME_DIR/baton/baton.sock`, in the test's temp dir).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use crate::Baton;
use crate::bins::bin;
use crate::tools::run_bounded;

/// Where the harness's baton puts its control socket.
pub fn control_path(baton: &Baton) -> PathBuf {
    baton.dir().join("baton").join("baton.sock")
}

/// Runs `baton ctl --control SOCKET --timeout 60s ARGS` to completion
/// (killed, failing the test, if it outlives 90 s).
pub fn ctl(baton: &Baton, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("baton"));
    cmd.arg("ctl")
        .arg("--control")
        .arg(control_path(baton))
        .args(["--timeout", "60s"])
        .args(args);
    run_bounded(cmd, Duration::from_secs(90))
}

/// Like [`ctl`], giving its exit code and its stdout and stderr as one
/// text (for asserting on a message wherever baton wrote it).
pub fn ctl_text(baton: &Baton, args: &[&str]) -> (Option<i32>, String) {
    let out = ctl(baton, args);
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
