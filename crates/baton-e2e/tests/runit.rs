//! baton as a runit service: Debian's `runsv` runs a service directory
//! whose `run` script is `examples/runit/run` adapted for the test (the
//! same `exec 2>&1` and `exec chpst -u ... baton run ...`, with the test's
//! baton, port and probe). Reloads go through `sv hup`, and runit never
//! notices: the pid `sv status` reports is baton's and never changes (both
//! `exec`s keep it), baton is runsv's only child, no orphan is left after a
//! drain, and `sv down` leaves nothing running.
//!
//! The test reloads only with `sv hup` and stops only with `sv down` and
//! `sv exit` (`sv 1` and `sv 2` send USR1 and USR2: log reopening for the
//! workers, and an upgrade of baton itself, not reloads).
//!
//! `runsv`, `sv` and `chpst` come from Debian's runit, which `./test`
//! installs; without them the test fails unless skips are allowed
//! (`BATON_E2E_ALLOW_SKIP=1`, see `baton_e2e::tools::skip`).

mod common;

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use baton_e2e::procs::{self, Proc};
use baton_e2e::tools::{output_text, run_bounded, which_or_skip};
use baton_e2e::{Baton, BatonCmd, WAIT};
use common::{Load, reloads_under_load};

/// The example service script the test adapts.
fn example_run() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/runit/run");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A word for `/bin/sh`, single-quoted.
fn sh_quote(arg: &OsString) -> String {
    format!("'{}'", arg.to_string_lossy().replace('\'', r"'\''"))
}

/// Writes the service directory `DIR/sv/demo` whose `run` is
/// examples/runit/run with its `exec chpst ...` command replaced by
/// `exec chpst -u :UID:GID BATON_ARGV...` (the test's own user, so the
/// example's `exec` through chpst is kept; www-data could not use the
/// test's temp dir). Returns the service directory.
fn write_service(dir: &Path, baton_argv: &[OsString]) -> PathBuf {
    let example = example_run();
    // The example's shape, which the adaptation keeps: comments, then the
    // two `exec` lines (the second continued over several lines).
    let (head, command) = example
        .split_once("\nexec chpst ")
        .expect("examples/runit/run execs baton through chpst");
    assert!(
        head.lines().any(|l| l == "exec 2>&1"),
        "examples/runit/run sends stderr to the log: {head}"
    );
    assert!(
        command.contains("baton run"),
        "examples/runit/run runs baton: {command}"
    );
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let words: Vec<String> = baton_argv.iter().map(sh_quote).collect();
    let script = format!(
        "{head}\n# Adapted by tests/runit.rs: the test's user, baton and worker.\n\
         exec chpst -u :{uid}:{gid} {}\n",
        words.join(" ")
    );
    let service = dir.join("sv").join("demo");
    std::fs::create_dir_all(&service).expect("create the service directory");
    let run = service.join("run");
    std::fs::write(&run, script).expect("write the run script");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).expect("chmod run");
    service
}

/// `sv ARGS SERVICE`, bounded; returns stdout, panics unless it exits 0.
fn sv(sv: &Path, args: &[&str], service: &Path) -> String {
    let mut cmd = Command::new(sv);
    cmd.args(args).arg(service);
    let out = run_bounded(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "sv {args:?} {}: {}",
        service.display(),
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pid in `run: DIR: (pid 1234) 5s`.
fn supervised_pid(sv_bin: &Path, service: &Path) -> u32 {
    let out = sv(sv_bin, &["status"], service);
    out.split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("sv status said {out:?}"))
}

/// baton is runsv's only child, and baton's children are exactly the
/// workers of generation `g`: no orphan, nothing left over.
fn assert_tree(baton: &Baton, baton_pid: u32, g: u32) {
    assert_eq!(
        procs::children(baton.pid()),
        vec![baton_pid],
        "runsv's children"
    );
    let mut workers: Vec<u32> = baton.workers_of(g).iter().map(|w| w.pid).collect();
    workers.sort_unstable();
    assert_eq!(
        procs::children_but_guard(baton_pid),
        workers,
        "baton's children after generation {} drained: only generation {g}'s workers",
        g - 1
    );
}

#[test]
fn twenty_reloads_via_sv_hup_under_load() {
    let name = "twenty_reloads_via_sv_hup_under_load";
    let (Some(runsv), Some(sv_bin), Some(_)) = (
        which_or_skip(name, "runsv", "runit"),
        which_or_skip(name, "sv", "runit"),
        which_or_skip(name, "chpst", "runit"),
    ) else {
        return;
    };
    let mut service = PathBuf::new();
    let mut baton = BatonCmd::new()
        .args(["--workers", "2", "--grace", "10s"])
        .probe(&["--drain-ms", "100"])
        .spawn_under(|argv, dir| {
            service = write_service(dir, argv);
            let mut cmd = Command::new(&runsv);
            cmd.arg(&service);
            cmd
        });
    baton.wait_for("generation 1 ready", WAIT);
    let port = baton.port();
    let baton_pid = baton.baton_pid();
    assert_eq!(
        supervised_pid(&sv_bin, &service),
        baton_pid,
        "the pid runit supervises is baton's (run and chpst exec)"
    );
    assert_tree(&baton, baton_pid, 1);

    let report = reloads_under_load(
        &baton,
        port,
        &Load::default(),
        || {
            sv(&sv_bin, &["hup"], &service);
        },
        |g| {
            assert_eq!(
                supervised_pid(&sv_bin, &service),
                baton_pid,
                "the pid runit knows changed by generation {g}"
            );
            assert_tree(&baton, baton_pid, g);
        },
    );
    eprintln!("[e2e] runit: 20 reloads via sv hup: {report}");
    println!(
        "runit figures: reloads 20, requests {}, ok {}, failed {}",
        report.requests, report.ok, report.failed
    );

    // `sv down` (TERM, then CONT) drains and stops baton; nothing is left.
    let everyone: Vec<Proc> = std::iter::once(Proc::find(baton_pid).expect("baton runs"))
        .chain(baton.workers().iter().filter_map(|w| w.proc))
        .collect();
    let out = sv(&sv_bin, &["-w", "30", "-v", "down"], &service);
    assert!(out.starts_with("ok: down:"), "sv down said {out:?}");
    for p in &everyone {
        assert!(
            p.wait_gone(Duration::from_secs(5), None),
            "process {} still there after sv down: {:?}",
            p.pid,
            p.stat()
        );
    }
    baton.wait_for("stopped", WAIT);
    assert!(
        procs::children(baton.pid()).is_empty(),
        "runsv has children left"
    );
    let status = sv(&sv_bin, &["status"], &service);
    assert!(status.starts_with("down:"), "{status}");

    // `sv exit`: runsv itself exits (the service is down, it has no log).
    sv(&sv_bin, &["exit"], &service);
    let status = baton.wait_exit(WAIT);
    assert!(status.success(), "runsv exited with {status}");
}
