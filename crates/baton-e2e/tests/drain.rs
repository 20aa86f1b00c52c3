//! Draining: a request in flight when its generation is told to stop is
//! answered (with `Connection: close`) before the worker exits.

use baton_e2e::{Baton, BatonCmd, Signal, WAIT, http};

/// Sends a slow request to generation 1's only worker and makes sure the
/// worker has accepted it. Returns the pending request and the worker pid.
fn slow_request_in_flight(baton: &Baton, ms: u32) -> (http::Pending, u32) {
    baton.wait_for("generation 1 ready", WAIT);
    let port = baton.port();
    let worker = baton.workers_of(1)[0].pid;
    let slow = http::send(port, &format!("/slow?ms={ms}")).expect("send the slow request");
    // The probe has one accept loop, which takes connections in order: once
    // a later connection is answered, the slow one was accepted.
    let r = http::get_ok(port, "/");
    assert_eq!(r.pid(), Some(worker));
    (slow, worker)
}

#[test]
fn a_request_in_flight_is_answered_across_a_graceful_stop() {
    let mut baton = BatonCmd::new().probe(&["--drain-ms", "50"]).spawn();
    let (slow, worker) = slow_request_in_flight(&baton, 1500);
    let mark = baton.mark();
    baton.signal(Signal::TERM);
    baton.wait_for_after(mark, &format!("pid={worker} draining"), WAIT);
    let reply = slow.finish().expect("the request in flight was answered");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.pid(), Some(worker));
    assert_eq!(reply.header("Connection"), Some("close"), "{reply:?}");
    let status = baton.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_request_in_flight_is_answered_across_a_reload() {
    let baton = BatonCmd::new().probe(&["--drain-ms", "50"]).spawn();
    let (slow, worker) = slow_request_in_flight(&baton, 1500);
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    baton.wait_for_after(mark, "generation 2 ready", WAIT);
    baton.wait_for_after(mark, &format!("pid={worker} draining"), WAIT);
    // Generation 2 serves new requests while 1 finishes the slow one.
    assert_eq!(http::get_ok(baton.port(), "/").generation(), Some(2));
    assert_eq!(baton.count("generation 1 exited"), 0);
    let reply = slow.finish().expect("the request in flight was answered");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.generation(), Some(1));
    assert_eq!(reply.header("Connection"), Some("close"), "{reply:?}");
    baton.wait_for_after(mark, "generation 1 exited", WAIT);
}
