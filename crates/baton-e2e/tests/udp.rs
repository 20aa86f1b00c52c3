//! `udp://HOST:PORT` listeners: bound once, passed like the others (named
//! in `LISTEN_FDNAMES`), shared by every generation, so a datagram is
//! answered across reloads and across an in-place upgrade.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use baton_e2e::{Baton, BatonCmd, WAIT, ctl, http};

/// How long one datagram may wait for its answer: far beyond what a
/// reload on a busy machine needs, yet a lost datagram fails the test.
const ANSWER: Duration = Duration::from_secs(10);

/// The port of the UDP listener named `name`, from `listening on
/// udp://127.0.0.1:PORT (name NAME)`.
fn udp_port(baton: &Baton, name: &str) -> u16 {
    let line = baton.wait_for(&format!("(name {name})"), WAIT);
    assert!(line.contains("listening on udp://127.0.0.1:"), "{line}");
    line.split("udp://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
}

/// Sends `payload` and waits for its answer: `gen=G worker=W pid=P: PAYLOAD`.
fn ask(client: &UdpSocket, port: u16, payload: &str) -> Result<u32, String> {
    client
        .send_to(payload.as_bytes(), ("127.0.0.1", port))
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 512];
    let n = client
        .recv(&mut buf)
        .map_err(|e| format!("no answer to {payload:?} within {ANSWER:?}: {e}"))?;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    let (who, echoed) = text
        .split_once(": ")
        .ok_or_else(|| format!("odd answer {text:?}"))?;
    if echoed != payload {
        return Err(format!("{payload:?} answered with {text:?}"));
    }
    who.strip_prefix("gen=")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|g| g.parse().ok())
        .ok_or_else(|| format!("no generation in {text:?}"))
}

/// A client asking one datagram at a time until told to stop; returns the
/// generations that answered, in order, or the first failure.
fn keep_asking(
    port: u16,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<Vec<u32>, String>> {
    std::thread::spawn(move || {
        let client = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        client
            .set_read_timeout(Some(ANSWER))
            .map_err(|e| e.to_string())?;
        let mut seen = Vec::new();
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            i += 1;
            seen.push(ask(&client, port, &format!("datagram {i}"))?);
        }
        Ok(seen)
    })
}

#[test]
fn a_datagram_is_answered_across_reloads() {
    let baton = BatonCmd::new()
        .listen("127.0.0.1:0")
        .listen("dns=udp://127.0.0.1:0")
        .args(["--workers", "2"])
        .probe(&["--drain-ms", "50"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let port = udp_port(&baton, "dns");
    let env = http::get_ok(baton.port(), "/env");
    assert_eq!(env.var("LISTEN_FDS"), Some("2"), "{}", env.body);
    assert_eq!(
        env.var("LISTEN_FDNAMES"),
        Some("listen0:dns"),
        "{}",
        env.body
    );
    let sockets = http::get_ok(baton.port(), "/sockets").body;
    assert!(
        sockets.contains(&format!("4 dns udp://127.0.0.1:{port}")),
        "{sockets}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let client = keep_asking(port, Arc::clone(&stop));
    for g in 2..=6 {
        baton.reload(g, WAIT);
    }
    // At least one more answer after the last reload, from the last
    // generation.
    let last = UdpSocket::bind("127.0.0.1:0").expect("a client");
    last.set_read_timeout(Some(ANSWER)).expect("timeout");
    assert_eq!(ask(&last, port, "after"), Ok(6));
    stop.store(true, Ordering::SeqCst);
    let seen = client
        .join()
        .expect("the client thread")
        .unwrap_or_else(|e| panic!("a datagram was lost: {e}"));
    assert!(seen.len() > 10, "only {} datagrams answered", seen.len());
    assert_eq!(seen.first(), Some(&1), "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1] + 1),
        "answers jump back more than one generation: {seen:?}"
    );
    eprintln!("{} datagrams answered across 5 reloads", seen.len());
}

#[test]
fn a_udp_listener_survives_an_upgrade_in_place() {
    let baton = BatonCmd::new()
        .listen("127.0.0.1:0")
        .listen("dns=udp://127.0.0.1:0")
        .probe(&["--drain-ms", "50"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let port = udp_port(&baton, "dns");
    let client = UdpSocket::bind("127.0.0.1:0").expect("a client");
    client.set_read_timeout(Some(ANSWER)).expect("timeout");
    assert_eq!(ask(&client, port, "before"), Ok(1));
    let out = ctl::ctl(&baton, &["upgrade"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(ask(&client, port, "after the upgrade"), Ok(1));
    // The new image passes the same socket to a new generation.
    baton.reload(2, WAIT);
    assert_eq!(ask(&client, port, "after a reload"), Ok(2));
    let sockets = http::get_ok(baton.port(), "/sockets").body;
    assert!(
        sockets.contains(&format!("4 dns udp://127.0.0.1:{port}")),
        "{sockets}"
    );
}

/// `--ready accepting` looks for a worker waiting for connections: with
/// only a UDP socket there is none to wait for, and baton says so at
/// start; beside a TCP listener the UDP socket is left out of the look.
#[test]
fn ready_accepting_refuses_udp_alone_and_ignores_it_beside_tcp() {
    let (status, lines) = BatonCmd::new()
        .listen("udp://127.0.0.1:0")
        .args(["--ready", "accepting"])
        .probe(&[])
        .run_to_exit(WAIT);
    assert_eq!(status.code(), Some(2), "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("a UDP socket has none to accept")),
        "{lines:#?}"
    );
    // The probe waits in poll(2), which --ready accepting cannot see; the
    // accepting tests' epoll server takes fd 3 (TCP) and leaves fd 4.
    let Some(python) = baton_e2e::tools::which_or_skip(
        "ready_accepting_refuses_udp_alone_and_ignores_it_beside_tcp",
        "python3",
        "python3",
    ) else {
        return;
    };
    let waiter = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/waiter.py");
    let baton = BatonCmd::new()
        .listen("127.0.0.1:0")
        .listen("udp://127.0.0.1:0")
        .args(["--ready", "accepting"])
        .command([python.as_os_str(), waiter.as_os_str(), "epoll".as_ref()])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let line = baton.wait_for("accepts: ", WAIT);
    assert!(line.contains("tcp://127.0.0.1:"), "{line}");
    assert!(!line.contains("udp://"), "{line}");
}

#[test]
fn udp_mistakes_are_named() {
    let taken = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    for (spec, code, want) in [
        ("udp://127.0.0.1".to_owned(), 2, "missing ':PORT'"),
        ("udp://::1:53".to_owned(), 2, "brackets"),
        (
            format!("udp://127.0.0.1:{port}"),
            3,
            "address already in use",
        ),
    ] {
        let (status, lines) = BatonCmd::new().listen(&spec).probe(&[]).run_to_exit(WAIT);
        assert_eq!(status.code(), Some(code), "{spec}: {lines:#?}");
        assert!(
            lines.iter().any(|l| l.contains(want)),
            "{spec}: no {want:?} in {lines:#?}"
        );
    }
}
