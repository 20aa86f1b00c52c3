//! Regression tests, named after the bug they pin down.

use std::os::unix::net::UnixDatagram;

use baton_e2e::{Baton, BatonCmd, WAIT, http};

/// hyper's `graceful_shutdown` closes idle keep-alive connections without
/// answering, so a client's next request on one fails with a reset: one
/// failed request per open connection at every hand-over. A draining
/// worker must instead answer it, in band, with `Connection: close`.
fn idle_keep_alive_connection_is_answered_not_reset(
    baton: &Baton,
    draining_line: impl Fn(&Baton) -> String,
) {
    baton.wait_for("generation 1 ready", WAIT);
    let draining_line = draining_line(baton);
    let port = baton.port();
    let mut conn = http::KeepAlive::connect(port).expect("connect");
    let first = conn.get("/").expect("first request");
    assert_eq!(first.status, 200);
    assert_eq!(first.generation(), Some(1));
    assert_ne!(first.header("Connection"), Some("close"), "{first:?}");

    // The connection is now idle, held by generation 1. Reload, and wait
    // until generation 1's worker is draining.
    let mark = baton.mark();
    baton.signal(baton_e2e::Signal::HUP);
    baton.wait_for_after(mark, "generation 2 ready", WAIT);
    baton.wait_for_after(mark, &draining_line, WAIT);

    let next = conn
        .get("/")
        .expect("a request on an idle keep-alive connection of a draining worker is answered");
    assert_eq!(next.status, 200);
    assert_eq!(next.generation(), Some(1), "{next:?}");
    assert_eq!(next.header("Connection"), Some("close"), "{next:?}");
    assert!(conn.is_closed_by_peer(), "closed after `Connection: close`");
    baton.wait_for_after(mark, "generation 1 exited", WAIT);
    assert_eq!(http::get_ok(port, "/").generation(), Some(2));
}

#[test]
fn idle_keep_alive_connection_is_answered_not_reset_at_hand_over_probe() {
    let baton = BatonCmd::new().probe(&["--drain-ms", "5000"]).spawn();
    idle_keep_alive_connection_is_answered_not_reset(&baton, |b| {
        format!("pid={} draining", b.workers_of(1)[0].pid)
    });
}

#[test]
fn idle_keep_alive_connection_is_answered_not_reset_at_hand_over_demo_server() {
    let demo = baton_e2e::bin("demo-server");
    let baton = BatonCmd::new()
        .command([demo.as_os_str(), "--drain-grace".as_ref(), "5s".as_ref()])
        .spawn();
    idle_keep_alive_connection_is_answered_not_reset(&baton, |_| "draining 1 connection".into());
}

/// Under systemd (`Type=notify`) baton itself gets a `NOTIFY_SOCKET`; it is
/// baton's, and must not leak into a worker that was told to use another
/// readiness channel (its READY=1 would reach systemd directly).
#[test]
fn parent_notify_socket_does_not_leak_into_workers() {
    let cmd = BatonCmd::new();
    let parent = cmd.dir().join("parent-notify.sock");
    let _listener = UnixDatagram::bind(&parent).expect("bind the parent's notify socket");
    let baton = cmd
        .env("NOTIFY_SOCKET", &parent)
        .args(["--ready", "fd"])
        .probe(&[])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let env = http::get_ok(baton.port(), "/env");
    assert_eq!(env.var("NOTIFY_SOCKET"), None, "{}", env.body);
}
