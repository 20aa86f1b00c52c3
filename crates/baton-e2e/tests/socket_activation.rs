//! Socket-activated baton: Debian's `systemd-socket-activate` (what a
//! `.socket` unit does, without a running systemd) binds a named Unix
//! socket and execs baton on the first connection; baton adopts the socket
//! named by `--listen web=...` instead of binding, serves that first
//! connection from the accept queue, reloads with no failed request, and
//! on stop leaves the socket file alone: it did not create it.
//!
//! `./test` installs Debian's systemd when the tool is missing; without
//! it the test fails unless skips are allowed (`BATON_E2E_ALLOW_SKIP=1`,
//! see `baton_e2e::tools::skip`).

mod common;

use std::process::Command;

use baton_e2e::tools::which_or_skip;
use baton_e2e::{BatonCmd, Signal, WAIT, http};
use baton_load::Target;
use common::{Load, reloads_under_load_at};

#[test]
fn adopts_the_named_socket_reloads_and_leaves_its_file() {
    let name = "adopts_the_named_socket_reloads_and_leaves_its_file";
    let Some(activate) = which_or_skip(name, "systemd-socket-activate", "systemd") else {
        return;
    };
    let cmd = BatonCmd::new();
    let sock = cmd.dir().join("web.sock");
    let mut spec = std::ffi::OsString::from("web=unix:");
    spec.push(&sock);
    let activator_sock = sock.clone();
    let mut baton = cmd
        .listen(spec)
        .args(["--workers", "2"])
        .probe(&["--drain-ms", "100"])
        .spawn_under(|argv, _dir| {
            let mut c = Command::new(&activate);
            c.arg("-l")
                .arg(&activator_sock)
                .arg("--fdname=web")
                .arg("--")
                .args(argv);
            c
        });
    // The activator binds, then waits for the first connection to exec.
    baton.wait_for("Listening on ", WAIT);
    let first = http::get_unix(&sock, "/env").expect("the first connection starts baton");
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.var("LISTEN_FDNAMES"), Some("web"), "{}", first.body);
    let line = baton.wait_for("listening on unix:", WAIT);
    assert!(line.contains("(adopted, name web)"), "{line}");
    // baton is the process the activator exec'd: LISTEN_PID was its pid.
    assert_eq!(baton.baton_pid(), baton.pid());
    baton.wait_for("generation 1 ready", WAIT);

    let load = Load {
        reloads: 5,
        concurrency: 4,
        ..Load::default()
    };
    let report = reloads_under_load_at(
        &baton,
        Target::Unix(sock.clone()),
        &load,
        || baton.signal(Signal::HUP),
        |_| {},
    );
    eprintln!(
        "[e2e] socket activation: {} reloads: {report}",
        load.reloads
    );

    let status = baton.stop(Signal::TERM, WAIT);
    assert_eq!(status.code(), Some(0), "graceful stop");
    assert!(
        std::fs::symlink_metadata(&sock).is_ok(),
        "baton removed {}, which the activator created",
        sock.display()
    );
}
