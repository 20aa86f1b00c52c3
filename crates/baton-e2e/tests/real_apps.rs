//! Real applications under baton, unchanged: gunicorn (sync workers, a
//! tiny WSGI app), uvicorn (a tiny ASGI app on `--fd 3`), a Node.js `http`
//! server and a Go `net/http` server (standard library only), each through
//! 20 reloads under load with no failed request. The apps are
//! `examples/apps/`. uvicorn, Node, Go and the demo server also run with
//! `--ready accepting` and no readiness code at all (the end of this file).
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
//! gunicorn and uvicorn come from the venv `./test` prepares (PyPI); node,
//! go from Debian's nodejs and golang, which `./test` installs. Without its
//! program a test fails unless skips are allowed (`BATON_E2E_ALLOW_SKIP=1`,
//! see `baton_e2e::tools::skip`).

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use baton_e2e::tools::{output_text, run_bounded, venv_bin, venv_bin_or_skip, which_or_skip};
use baton_e2e::{Baton, BatonCmd, Signal, WAIT, http};
use baton_load::Report;
use common::{Load, reloads_under_load};

fn apps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/apps")
}

fn gunicorn_or_skip(test: &str) -> Option<PathBuf> {
    venv_bin_or_skip(test, "gunicorn", "gunicorn")
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

/// `--ready accepting` without `--preload`: a generation is ready once one
/// of its sync workers has imported the app (300 ms) and takes connections
/// (seen in select(2), or holding one it accepted, as busy workers under
/// this load mostly are), not at the arbiter's early READY=1.
#[test]
fn gunicorn_ready_accepting_without_preload_twenty_reloads_under_load() {
    let test = "gunicorn_ready_accepting_without_preload_twenty_reloads_under_load";
    let Some(g) = gunicorn_or_skip(test) else {
        return;
    };
    let baton = gunicorn(&g, &[], "0.3")
        .args(["--ready", "accepting"])
        .spawn();
    let report = twenty_reloads(&baton, "gunicorn (accepting, no --preload)");
    assert_eq!(report.failed, 0);
    stop_cleanly(baton);
}

/// Starts the app, breaks its release (APP_FAIL_IF), reloads: the reload
/// fails and generation 1 keeps serving. Returns baton and the file whose
/// removal fixes the release.
fn a_broken_release_is_rolled_back(cmd: BatonCmd) -> (Baton, PathBuf) {
    let broken = cmd.dir().join("BROKEN");
    let baton = cmd.env("APP_FAIL_IF", &broken).spawn();
    baton.wait_for("generation 1 ready", WAIT);
    std::fs::write(&broken, "").expect("break the release");
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    let (_, line) = baton.wait_for_after(mark, "reload failed", WAIT);
    assert!(line.contains("generation 1 keeps serving"), "{line}");
    assert_eq!(http::get_ok(baton.port(), "/").generation(), Some(1));
    (baton, broken)
}

/// Why `--preload`: a release whose app fails to import fails before
/// READY=1, so baton rolls back and the old generation keeps serving.
#[test]
fn gunicorn_with_preload_a_broken_release_rolls_back() {
    let Some(g) = gunicorn_or_skip("gunicorn_with_preload_a_broken_release_rolls_back") else {
        return;
    };
    let cmd = gunicorn(&g, &["--preload"], "0");
    let (baton, broken) = a_broken_release_is_rolled_back(cmd);
    let port = baton.port();
    std::fs::remove_file(&broken).expect("fix the release");
    // The failed generation 2 is gone; generation 3 replaces generation 1.
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    baton.wait_for_after(mark, "generation 3 ready", WAIT);
    baton.wait_for_after(mark, "generation 1 exited", WAIT);
    assert_eq!(http::get_ok(port, "/").generation(), Some(3));
    stop_cleanly(baton);
}

/// Without `--preload`, `--ready accepting` also makes a broken release a
/// rollback: its workers never take a connection, so generation 2 never
/// becomes ready and generation 1 keeps serving.
#[test]
fn gunicorn_ready_accepting_without_preload_a_broken_release_rolls_back() {
    let test = "gunicorn_ready_accepting_without_preload_a_broken_release_rolls_back";
    let Some(g) = gunicorn_or_skip(test) else {
        return;
    };
    // One worker: a generation is ready once one of its workers takes
    // connections, and gunicorn halts when any worker fails to boot, so a
    // second worker of generation 1 importing after the release broke
    // would take generation 1 down with it.
    let cmd = gunicorn(&g, &["--workers", "1"], "0").args([
        "--ready",
        "accepting",
        "--ready-timeout",
        "10s",
    ]);
    let (baton, _) = a_broken_release_is_rolled_back(cmd);
    stop_cleanly(baton);
}

/// Node.js on fd 3, ready by `--ready fd`, draining keep-alive connections
/// in band (examples/apps/server.js).
#[test]
fn node_on_fd_3_twenty_reloads_under_keep_alive_load() {
    let test = "node_on_fd_3_twenty_reloads_under_keep_alive_load";
    let Some(node) = which_or_skip(test, "node", "nodejs") else {
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

/// `baton run --ready fd -- uvicorn --fd 3 ... asgi_app:app`: the recipe
/// of docs/integrations/uvicorn.md as it stands.
fn uvicorn(uvicorn: &Path) -> BatonCmd {
    let argv: Vec<OsString> = vec![
        uvicorn.into(),
        "--fd".into(),
        "3".into(),
        "--app-dir".into(),
        apps_dir().into(),
        // The app's lifespan startup reports readiness: never run without it.
        "--lifespan".into(),
        "on".into(),
        "--timeout-graceful-shutdown".into(),
        "10".into(),
        "--log-level".into(),
        "warning".into(),
        "asgi_app:app".into(),
    ];
    BatonCmd::new()
        .args(["--ready", "fd", "--grace", "15s"])
        .command(argv)
}

/// `uvicorn --fd 3`, ready from the app's lifespan startup writing to
/// `BATON_READY_FD` (examples/apps/asgi_app.py): every reload is ready and
/// served by the new generation, and a release whose startup fails never
/// reports ready, so baton rolls it back and the old generation keeps
/// serving. (Not under load: uvicorn's own shutdown closes idle keep-alive
/// and just-accepted connections without answering; see
/// `uvicorn_through_serve_uvicorn_twenty_reloads_under_keep_alive_load`.)
#[test]
fn uvicorn_on_fd_3_reloads_and_a_failed_startup_rolls_back() {
    let test = "uvicorn_on_fd_3_reloads_and_a_failed_startup_rolls_back";
    let Some(u) = venv_bin_or_skip(test, "uvicorn", "uvicorn") else {
        return;
    };
    let cmd = uvicorn(&u);
    let broken = cmd.dir().join("BROKEN");
    let baton = cmd.env("APP_FAIL_IF", &broken).spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let port = baton.port();
    assert_eq!(http::get_ok(port, "/").generation(), Some(1));
    for g in 2..=4 {
        baton.reload(g, WAIT);
        assert_eq!(http::get_ok(port, "/").generation(), Some(g));
    }
    std::fs::write(&broken, "").expect("break the release");
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    let (_, line) = baton.wait_for_after(mark, "reload failed", WAIT);
    assert!(line.contains("generation 4 keeps serving"), "{line}");
    assert_eq!(http::get_ok(port, "/").generation(), Some(4));
    std::fs::remove_file(&broken).expect("fix the release");
    // The failed generation 5 is gone; generation 6 replaces generation 4.
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    baton.wait_for_after(mark, "generation 6 ready", WAIT);
    baton.wait_for_after(mark, "generation 4 exited", WAIT);
    assert_eq!(http::get_ok(port, "/").generation(), Some(6));
    stop_cleanly(baton);
}

/// uvicorn through examples/apps/serve_uvicorn.py (the same uvicorn on fd
/// 3, with a drain that stops accepting first and ends keep-alive
/// connections in band): 20 reloads under keep-alive load, none failed.
#[test]
fn uvicorn_through_serve_uvicorn_twenty_reloads_under_keep_alive_load() {
    let test = "uvicorn_through_serve_uvicorn_twenty_reloads_under_keep_alive_load";
    if venv_bin_or_skip(test, "uvicorn", "uvicorn").is_none() {
        return;
    }
    let python = venv_bin("python").expect("a venv with uvicorn has its python");
    let baton = BatonCmd::new()
        .args(["--ready", "fd", "--grace", "15s", "--chdir"])
        .arg(apps_dir())
        .command([
            python.into(),
            OsString::from("serve_uvicorn.py"),
            "asgi_app:app".into(),
        ])
        .spawn();
    let report = twenty_reloads(&baton, "uvicorn (serve_uvicorn.py, fd 3, --ready fd)");
    assert_eq!(report.failed, 0);
    stop_cleanly(baton);
}

/// Builds examples/apps/go into `dir` with Debian's Go: standard library
/// only, so no module download (`GOPROXY=off`, `GOFLAGS=-mod=mod`); the
/// build cache is kept in the workspace's `target/go-cache`, so only the
/// first build on a machine compiles everything.
fn build_go_server(go: &Path, dir: &Path) -> PathBuf {
    let out = dir.join("go-server");
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/go-cache");
    let mut cmd = Command::new(go);
    cmd.arg("build")
        .arg("-o")
        .arg(&out)
        .arg(".")
        .current_dir(apps_dir().join("go"))
        .env("GOCACHE", &cache)
        .env("GOPATH", dir.join("gopath"))
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0");
    let result = run_bounded(cmd, Duration::from_secs(300));
    assert!(
        result.status.success(),
        "go build of examples/apps/go failed: {}",
        output_text(&result)
    );
    out
}

/// A Go `net/http` server on fd 3 (`net.FileListener(os.NewFile(3, ...))`),
/// ready by `READY=1` on `NOTIFY_SOCKET` (baton's default, sent without a
/// library), draining keep-alive connections in band.
#[test]
fn go_on_fd_3_notify_twenty_reloads_under_keep_alive_load() {
    let test = "go_on_fd_3_notify_twenty_reloads_under_keep_alive_load";
    let Some(go) = which_or_skip(test, "go", "golang") else {
        return;
    };
    let cmd = BatonCmd::new().args(["--workers", "2", "--grace", "15s"]);
    let server = build_go_server(&go, cmd.dir());
    let baton = cmd.command([server]).spawn();
    let report = twenty_reloads(&baton, "go (fd 3, notify)");
    assert_eq!(report.failed, 0);
    stop_cleanly(baton);
}

/// The same server with `--ready fd`: a newline on `BATON_READY_FD`.
#[test]
fn go_on_fd_3_ready_fd_reloads() {
    let test = "go_on_fd_3_ready_fd_reloads";
    let Some(go) = which_or_skip(test, "go", "golang") else {
        return;
    };
    let cmd = BatonCmd::new().args(["--ready", "fd", "--grace", "15s"]);
    let server = build_go_server(&go, cmd.dir());
    let baton = cmd.command([server]).spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let port = baton.port();
    assert_eq!(http::get_ok(port, "/").generation(), Some(1));
    baton.reload(2, WAIT);
    assert_eq!(http::get_ok(port, "/").generation(), Some(2));
    stop_cleanly(baton);
}

// `--ready accepting`: the same servers with no readiness code at all
// running (no BATON_READY_FD, no NOTIFY_SOCKET: each app's own readiness
// report does nothing), seen waiting for connections on baton's socket in
// /proc. 20 reloads under keep-alive load, none failed.

/// uvicorn on fd 3 (through serve_uvicorn.py, for its drain), seen in its
/// asyncio loop's epoll set: it watches a dup of fd 3.
#[test]
fn uvicorn_ready_accepting_twenty_reloads_under_keep_alive_load() {
    let test = "uvicorn_ready_accepting_twenty_reloads_under_keep_alive_load";
    if venv_bin_or_skip(test, "uvicorn", "uvicorn").is_none() {
        return;
    }
    let python = venv_bin("python").expect("a venv with uvicorn has its python");
    let baton = BatonCmd::new()
        .args(["--ready", "accepting", "--grace", "15s", "--chdir"])
        .arg(apps_dir())
        .command([
            python.into(),
            OsString::from("serve_uvicorn.py"),
            "asgi_app:app".into(),
        ])
        .spawn();
    let report = twenty_reloads(
        &baton,
        "uvicorn (serve_uvicorn.py, fd 3, --ready accepting)",
    );
    assert_eq!(report.failed, 0);
    stop_cleanly(baton);
}

/// Node.js `listen({fd: 3})`, seen in libuv's epoll set.
#[test]
fn node_ready_accepting_twenty_reloads_under_keep_alive_load() {
    let test = "node_ready_accepting_twenty_reloads_under_keep_alive_load";
    let Some(node) = which_or_skip(test, "node", "nodejs") else {
        return;
    };
    let baton = BatonCmd::new()
        .args(["--ready", "accepting", "--grace", "15s"])
        .command([node, apps_dir().join("server.js")])
        .spawn();
    let report = twenty_reloads(&baton, "node (fd 3, --ready accepting)");
    assert_eq!(report.failed, 0);
    stop_cleanly(baton);
}

/// Go `net.FileListener(os.NewFile(3, ...))`, two workers, seen in the
/// netpoller's epoll set (a copy of fd 3 made by FileListener).
#[test]
fn go_ready_accepting_twenty_reloads_under_keep_alive_load() {
    let test = "go_ready_accepting_twenty_reloads_under_keep_alive_load";
    let Some(go) = which_or_skip(test, "go", "golang") else {
        return;
    };
    let cmd = BatonCmd::new().args(["--ready", "accepting", "--workers", "2", "--grace", "15s"]);
    let server = build_go_server(&go, cmd.dir());
    let baton = cmd.command([server]).spawn();
    let report = twenty_reloads(&baton, "go (fd 3, --ready accepting)");
    assert_eq!(report.failed, 0);
    stop_cleanly(baton);
}

/// The demo server (tokio), two workers, seen in tokio's epoll set.
#[test]
fn demo_server_ready_accepting_twenty_reloads_under_keep_alive_load() {
    let demo = baton_e2e::bin("demo-server");
    let baton = BatonCmd::new()
        .args(["--ready", "accepting", "--workers", "2", "--grace", "15s"])
        .command([demo.as_os_str(), "--drain-grace".as_ref(), "200ms".as_ref()])
        .spawn();
    let report = twenty_reloads(&baton, "demo-server (--ready accepting)");
    assert_eq!(report.failed, 0);
    stop_cleanly(baton);
}

/// Plain `uvicorn --fd 3` with `--ready accepting`: asyncio watches the
/// socket only after the app's lifespan startup succeeded, so a release
/// whose startup fails is never seen accepting and is rolled back, with no
/// readiness code in the app. (Not under load: uvicorn's own shutdown, see
/// `uvicorn_on_fd_3_reloads_and_a_failed_startup_rolls_back`.)
#[test]
fn plain_uvicorn_ready_accepting_reloads_and_a_failed_startup_rolls_back() {
    let test = "plain_uvicorn_ready_accepting_reloads_and_a_failed_startup_rolls_back";
    let Some(u) = venv_bin_or_skip(test, "uvicorn", "uvicorn") else {
        return;
    };
    let argv: Vec<OsString> = vec![
        u.into(),
        "--fd".into(),
        "3".into(),
        "--app-dir".into(),
        apps_dir().into(),
        "--lifespan".into(),
        "on".into(),
        "--log-level".into(),
        "warning".into(),
        "asgi_app:app".into(),
    ];
    let cmd = BatonCmd::new()
        .args([
            "--ready",
            "accepting",
            "--ready-timeout",
            "20s",
            "--grace",
            "15s",
        ])
        .command(argv);
    let broken = cmd.dir().join("BROKEN");
    let baton = cmd.env("APP_FAIL_IF", &broken).spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let port = baton.port();
    assert_eq!(http::get_ok(port, "/").generation(), Some(1));
    baton.reload(2, WAIT);
    assert_eq!(http::get_ok(port, "/").generation(), Some(2));
    std::fs::write(&broken, "").expect("break the release");
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    let (_, line) = baton.wait_for_after(mark, "reload failed", WAIT);
    assert!(line.contains("generation 2 keeps serving"), "{line}");
    assert!(line.contains("before it was ready"), "{line}");
    assert_eq!(http::get_ok(port, "/").generation(), Some(2));
    stop_cleanly(baton);
}

/// gunicorn's sync workers wait in select(2), whose set baton reads from
/// their memory; threaded workers wait in epoll. Both are seen by
/// `--ready accepting`, in the arbiter's children
/// (docs/integrations/gunicorn.md).
#[test]
fn gunicorn_sync_and_gthread_workers_are_seen_accepting() {
    let test = "gunicorn_sync_and_gthread_workers_are_seen_accepting";
    let Some(g) = gunicorn_or_skip(test) else {
        return;
    };
    for (class, seen_as) in [
        (
            "sync",
            &["waits in select() for", "waits in pselect6() for"][..],
        ),
        ("gthread", &["accepts: an epoll set of pid"]),
    ] {
        let mut baton = gunicorn(&g, &["--worker-class", class], "0")
            .args(["--ready", "accepting"])
            .spawn();
        let line = baton.wait_for("worker 0 of generation 1 (pid", WAIT);
        assert!(seen_as.iter().any(|s| line.contains(s)), "{class}: {line}");
        baton.wait_for("generation 1 ready", WAIT);
        assert_eq!(http::get_ok(baton.port(), "/").generation(), Some(1));
        baton.reload(2, WAIT);
        assert_eq!(http::get_ok(baton.port(), "/").generation(), Some(2));
        let status = baton.stop(Signal::TERM, WAIT);
        assert_eq!(status.code(), Some(0), "{class}");
    }
}
