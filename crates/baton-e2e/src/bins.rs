//! Finding (and, when needed, building) the binaries under test.
//!
//! Integration tests run from `target/<profile>/deps/`; binaries live in
//! `target/<profile>/`. Cargo only builds a package's binaries for that same
//! package's integration tests, so `cargo nextest run --workspace` does not
//! by itself produce `baton`, `baton-probe` or `demo-server`. The first test
//! of each test process therefore runs `cargo build --workspace --bins` with
//! the profile and target directory of the running test: a no-op when they
//! are up to date (as after `./test`'s own build), and never a stale binary
//! when they are not.
//!
//! Under nextest (one process per test) a stamp file named after the run
//! (`NEXTEST_RUN_ID`) makes that once per run rather than once per test.
//!
//! `BATON_E2E_BIN_DIR=DIR` uses binaries from `DIR` and builds nothing;
//! `BATON_E2E_NO_BUILD=1` uses the target directory as it is.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The path of binary `name` (`baton`, `baton-probe`, `demo-server`).
///
/// # Panics
/// When the binary is missing and cannot be built, with a message that says
/// where it was looked for and how to build it.
pub fn bin(name: &str) -> PathBuf {
    let dir = bin_dir();
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "binary {name:?} not found at {}: build it with `cargo build --bins -p {name}` \
         (same profile as the tests), or point BATON_E2E_BIN_DIR at a directory holding it",
        path.display()
    );
    path
}

/// The directory holding the binaries, after building them once per process.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("BATON_E2E_BIN_DIR") {
            return PathBuf::from(dir);
        }
        let dir = profile_dir();
        if std::env::var_os("BATON_E2E_NO_BUILD").is_some() {
            return dir;
        }
        // nextest runs each test in its own process; build once per run,
        // not once per test (a no-op build still costs about a second).
        let stamp = std::env::var("NEXTEST_RUN_ID")
            .ok()
            .map(|id| dir.join(format!(".baton-e2e-built-{id}")));
        if stamp.as_ref().is_some_and(|s| s.exists()) {
            return dir;
        }
        build(&dir);
        if let Some(stamp) = stamp {
            // Best effort: without the stamp the next test builds again.
            let _ = std::fs::write(stamp, "");
        }
        dir
    })
}

/// `target/<profile>/`, from the path of the running test executable.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own executable path");
    let deps = exe
        .parent()
        .expect("a test executable lives in a directory");
    let dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps/ has a parent")
    } else {
        deps
    };
    dir.to_path_buf()
}

/// Runs `cargo build` for the binaries, in the running test's profile and
/// target directory. Cargo's own lock serialises concurrent test processes.
fn build(profile_dir: &Path) {
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("the profile directory has a UTF-8 name");
    let target_dir = profile_dir
        .parent()
        .expect("the profile directory lives in a target directory");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut cmd = Command::new(&cargo);
    cmd.arg("build")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        // The same selection as `./test` (`cargo build --workspace --bins`),
        // so that features unify the same way and this is a no-op there.
        .args(["--workspace", "--bins"]);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!(
            "cannot run {:?} to build the binaries under test: {e}",
            cargo.to_string_lossy()
        )
    });
    assert!(
        status.success(),
        "building the binaries under test failed ({status}): {cmd:?}"
    );
}
