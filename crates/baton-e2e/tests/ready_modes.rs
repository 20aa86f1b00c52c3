//! Each readiness mode makes a generation ready, for the first generation
//! and for a reload.

use std::time::Duration;

use baton_e2e::{Baton, BatonCmd, Signal, WAIT, http};

/// Generation 1 is ready and serving, a reload to 2 goes through, and a
/// graceful stop ends it. Returns generation 1's reported readiness time.
fn ready_serves_and_reloads(mut baton: Baton) -> Option<Duration> {
    let (g, took) = baton.wait_ready_after(0, WAIT);
    assert_eq!(g, 1);
    let port = baton.port();
    assert_eq!(http::get_ok(port, "/").generation(), Some(1));
    baton.reload(2, WAIT);
    assert_eq!(http::get_ok(port, "/").generation(), Some(2));
    let status = baton.stop(Signal::TERM, WAIT);
    assert_eq!(status.code(), Some(0));
    took
}

#[test]
fn ready_mode_notify() {
    let baton = BatonCmd::new()
        .args(["--ready", "notify"])
        .probe(&["--drain-ms", "50"])
        .spawn();
    ready_serves_and_reloads(baton);
}

#[test]
fn ready_mode_fd() {
    let baton = BatonCmd::new()
        .args(["--ready", "fd"])
        .probe(&["--drain-ms", "50"])
        .spawn();
    ready_serves_and_reloads(baton);
}

#[test]
fn ready_mode_delay_waits_the_delay() {
    let baton = BatonCmd::new()
        .args(["--ready", "delay:300ms"])
        .probe(&["--drain-ms", "50"])
        .spawn();
    let took = ready_serves_and_reloads(baton);
    if let Some(took) = took {
        assert!(took >= Duration::from_millis(300), "ready after {took:?}");
    }
}

#[test]
fn ready_mode_delay_ignores_an_early_notify() {
    // The probe says READY=1 at once, but delay mode waits the delay.
    let baton = BatonCmd::new()
        .args(["--ready", "delay:1s"])
        .probe(&["--drain-ms", "50"])
        .spawn();
    let (_, took) = baton.wait_ready_after(0, WAIT);
    let took = took.expect("the ready line reports a time");
    assert!(took >= Duration::from_secs(1), "ready after {took:?}");
}

#[test]
fn ready_mode_exec() {
    let cmd = BatonCmd::new();
    let marker = cmd.dir().join("healthy");
    std::fs::write(&marker, "").expect("create the marker file");
    let check = format!("exec:sh -c 'test -e {}'", marker.display());
    let baton = cmd
        .args(["--ready", &check])
        .probe(&["--drain-ms", "50"])
        .spawn();
    ready_serves_and_reloads(baton);
}

#[test]
fn notify_mode_waits_for_the_app_to_say_ready() {
    let baton = BatonCmd::new()
        .probe(&["--ready-after", "700ms", "--drain-ms", "50"])
        .spawn();
    let (_, took) = baton.wait_ready_after(0, WAIT);
    let took = took.expect("the ready line reports a time");
    assert!(took >= Duration::from_millis(700), "ready after {took:?}");
}
