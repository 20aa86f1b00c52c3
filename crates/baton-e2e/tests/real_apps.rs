//! Real applications under baton, unchanged: gunicorn (sync workers, a
//! tiny WSGI app) and a Node.js `http` server, each through 20 reloads
//! under load with no failed request. The apps are `examples/apps/`.
//!
//! gunicorn takes baton's socket through `LISTEN_FDS` and sends `READY=1`
//! from its arbiter. Without `--preload` that is *before* its workers have
//! imported the app: baton then drains the old generation while the new one
//! still imports. Requests wait in the shared accept queue meanwhile (no
//! failure, a latency spike), but a release that fails to import is found
//! only after the old generation is gone. With `--preload` the app is
//! imported before `READY=1`, so a broken release rolls back. Both are
//! tested; docs/integrations/gunicorn.md says which to use.
//!
//! gunicorn comes from the venv `./test` prepares; node from the machine.
//! A test skips, saying so, only when its program is not there.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use baton_e2e::tools::{skip, venv, venv_bin, which};
use baton_e2e::{Baton, BatonCmd, Signal, WAIT, http};
use baton_load::Report;
use common::{Load, reloads_under_load};

fn apps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/apps")
}

fn gunicorn_or_skip(test: &str) -> Option<PathBuf> {
    let g = venv_bin("gunicorn");
    if g.is_none() {
        skip(
            test,
            &format!(
                "gunicorn is not in {} (./test installs it from PyPI)",
                venv().display()
            ),
        );
    }
    g
}

/// `baton run -l 127.0.0.1:0 -- gunicorn --chdir examples/apps --workers 2
/// EXTRA... app:app`, with the app's import taking `import_delay` seconds.
fn gunicorn(gunicorn: &Path, extra: &[&str], import_delay: &str) -> BatonCmd {
    let mut argv: Vec<OsString> = vec![
        gunicorn.into(),
        "--chdir".into(),
        apps_dir().into(),
        "--workers".into(),
        "2".into(),
        "--graceful-timeout".into(),
        "10".into(),
        "--log-level".into(),
        "warning".into(),
        // gunicorn >= 25 opens a control socket at one fixed path
        // ($XDG_RUNTIME_DIR/gunicorn.ctl) in every arbiter: two generations
        // would share it (see docs/integrations/gunicorn.md).
        "--no-control-socket".into(),
    ];
    argv.extend(extra.iter().map(OsString::from));
    argv.push("app:app".into());
    BatonCmd::new()
        .args(["--grace", "15s"])
        .env("APP_IMPORT_DELAY", import_delay)
        .command(argv)
}

fn twenty_reloads(baton: &Baton, what: &str) -> Report {
    baton.wait_for("generation 1 ready", WAIT);
    let port = baton.port();
    let load = Load {
        concurrency: 4,
        ..Load::default()
    };
    let report = reloads_under_load(baton, port, &load, || baton.signal(Signal::HUP), |_| {});
    eprintln!("[e2e] {what}: 20 reloads: {report}");
    println!(
        "{what} figures: reloads 20, requests {}, ok {}, failed {}, latency max {:?} p99 {:?}",
        report.requests, report.ok, report.failed, report.latency.max, report.latency.p99
    );
    report
}

fn stop_cleanly(mut baton: Baton) {
    let status = baton.stop(Signal::TERM, WAIT);
    assert_eq!(status.code(), Some(0), "graceful stop");
}

/// Notify readiness without `--preload`: gunicorn's arbiter says READY=1
/// before its workers import the app (here a 300 ms import). No request
/// fails: they wait in the accept queue; the cost is latency.
#[test]
fn gunicorn_notify_without_preload_twenty_reloads_under_load() {
    let Some(g) = gunicorn_or_skip("gunicorn_notify_without_preload_twenty_reloads_under_load")
    else {
        return;
    };
    let baton = gunicorn(&g, &[], "0.3").spawn();
    let report = twenty_reloads(&baton, "gunicorn (notify, no --preload)");
    assert_eq!(report.failed, 0);
    stop_cleanly(baton);
}

/// Notify readiness with `--preload`: the app is imported before READY=1.
#[test]
fn gunicorn_notify_with_preload_twenty_reloads_under_load() {
    let Some(g) = gunicorn_or_skip("gunicorn_notify_with_preload_twenty_reloads_under_load") else {
        return;
    };
    let baton = gunicorn(&g, &["--preload"], "0.3").spawn();
    let report = twenty_reloads(&baton, "gunicorn (notify, --preload)");
    assert_eq!(report.failed, 0);
    stop_cleanly(baton);
}

/// Why `--preload`: a release whose app fails to import fails before
/// READY=1, so baton rolls back and the old generation keeps serving.
#[test]
fn gunicorn_with_preload_a_broken_release_rolls_back() {
    let Some(g) = gunicorn_or_skip("gunicorn_with_preload_a_broken_release_rolls_back") else {
        return;
    };
    let cmd = gunicorn(&g, &["--preload"], "0");
    let broken = cmd.dir().join("BROKEN");
    let baton = cmd.env("APP_FAIL_IF", &broken).spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let port = baton.port();
    std::fs::write(&broken, "").expect("break the release");
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    let (_, line) = baton.wait_for_after(mark, "reload failed", WAIT);
    assert!(line.contains("generation 1 keeps serving"), "{line}");
    assert_eq!(http::get_ok(port, "/").generation(), Some(1));
    std::fs::remove_file(&broken).expect("fix the release");
    // The failed generation 2 is gone; generation 3 replaces generation 1.
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    baton.wait_for_after(mark, "generation 3 ready", WAIT);
    baton.wait_for_after(mark, "generation 1 exited", WAIT);
    assert_eq!(http::get_ok(port, "/").generation(), Some(3));
    stop_cleanly(baton);
}

/// Node.js on fd 3, ready by `--ready fd`, draining keep-alive connections
/// in band (examples/apps/server.js).
#[test]
fn node_on_fd_3_twenty_reloads_under_keep_alive_load() {
    let Some(node) = which("node") else {
        skip(
            "node_on_fd_3_twenty_reloads_under_keep_alive_load",
            "node is not installed",
        );
        return;
    };
    let baton = BatonCmd::new()
        .args(["--ready", "fd", "--grace", "15s"])
        .command([node, apps_dir().join("server.js")])
        .spawn();
    let report = twenty_reloads(&baton, "node (fd 3, --ready fd)");
    assert_eq!(report.failed, 0);
    stop_cleanly(baton);
}
