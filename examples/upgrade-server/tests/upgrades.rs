//! End-to-end tests of self-upgrade with baton-app, through the
//! upgrade-server example: the real binary, real signals, real sockets on
//! 127.0.0.1, the load client counting every failed request.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Server, exited};
use rustix::process::Signal;

fn generation(r: &baton_load::Response) -> u64 {
    r.generation()
        .and_then(|g| g.parse().ok())
        .expect("an X-Generation header")
}

fn body(r: &baton_load::Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

#[test]
fn zero_failed_requests_across_20_upgrades_under_keep_alive_load() {
    let server = Server::start(&[]);
    let mut cfg = baton_load::Config::new(server.target());
    cfg.concurrency = 8;
    let load = baton_load::start(cfg);
    assert!(
        load.wait_for_generation("1", Duration::from_secs(10))
            .is_some(),
        "no response from generation 1"
    );
    let mut pids = vec![server.serving_pid().expect("pid file")];
    for i in 2..=21u64 {
        let new = server.upgrade();
        pids.push(new);
        assert!(
            load.wait_for_generation(&i.to_string(), Duration::from_secs(10))
                .is_some(),
            "the load never reached generation {i}"
        );
    }
    let report = load.stop();
    assert_eq!(report.failed, 0, "failed requests: {report}");
    assert!(report.ok > 0, "{report}");
    assert!(report.generations.contains_key("21"), "{report}");
    // Twenty-one distinct processes, all but the last gone.
    let distinct: std::collections::BTreeSet<_> = pids.iter().collect();
    assert_eq!(distinct.len(), 21);
    for pid in &pids[..20] {
        assert!(exited(*pid), "pid {pid} still runs");
    }
    assert_eq!(generation(&server.get("/")), 21);
}

/// The failed successor's pid, from the log line that reports the failure.
fn failed_pid(line: &str) -> u32 {
    let at = line.find("(pid ").expect("a pid in the failure line") + 5;
    line[at..]
        .split(')')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a pid number")
}

#[test]
fn a_failed_successor_is_killed_and_reaped_and_the_old_process_serves_on() {
    let server = Server::start(&["--ready-timeout", "2s"]);
    let original = server.serving_pid().expect("pid file");
    let cases = [
        ("exit", "exited with status 3"),
        ("crash", "exited with signal SIGABRT"),
        ("hang", "was not ready within 2s"),
    ];
    for (i, (mode, why)) in cases.into_iter().enumerate() {
        server.misbehave(Some(mode));
        server.signal_serving(Signal::HUP);
        let line = server.wait_line("upgrade failed, still serving", i, Duration::from_secs(15));
        assert!(line.contains(why), "{mode}: {line}");
        let pid = failed_pid(&line);
        // Reaped by the server (the upgrader), not left as a zombie.
        assert_eq!(
            common::proc_state(pid),
            None,
            "{mode}: failed successor {pid} is still there"
        );
        assert_eq!(server.serving_pid(), Some(original), "{mode}: pid file");
        let r = server.get("/");
        assert_eq!(generation(&r), 1, "{mode}");
        assert_eq!(r.header("x-pid"), Some(original.to_string().as_str()));
    }
    // And the next upgrade, with a well-behaved binary, works.
    server.misbehave(None);
    let new = server.upgrade();
    assert_ne!(new, original);
    assert_eq!(generation(&server.get("/")), 2);
}

#[test]
fn an_upgrade_requested_during_an_upgrade_is_refused_as_in_progress() {
    let server = Server::start(&[]);
    let gate = server.dir.path().join("gate");
    server.misbehave(Some(&format!("gate:{}", gate.display())));
    let original = server.signal_serving(Signal::HUP);
    let started = server.wait_line("upgrade: started pid", 0, Duration::from_secs(10));
    server.signal_serving(Signal::HUP);
    server.wait_line(
        "upgrade refused: an upgrade is already in progress",
        0,
        Duration::from_secs(10),
    );
    // The first upgrade still runs; let its successor become ready.
    server.misbehave(None);
    std::fs::write(&gate, "").expect("open the gate");
    let new = server.wait_new_pid(original, Duration::from_secs(10));
    assert!(
        started.contains(&format!("started pid {new},")),
        "{started}"
    );
    server.wait_gone(original, Duration::from_secs(15));
    assert_eq!(generation(&server.get("/")), 2);
    // Exactly one successor was started.
    assert_eq!(server.count_lines("upgrade: started pid"), 1);
}

#[test]
fn back_to_back_upgrades_while_the_first_process_still_drains() {
    let server = Server::start(&["--grace", "10s"]);
    let first = server.serving_pid().expect("pid file");
    // A kept-alive connection, served by generation 1, keeps it draining
    // (for up to the 10 s grace) until its next request.
    let deadline = || Instant::now() + Duration::from_secs(10);
    let request = baton_load::get_request("/", &server.addr.to_string(), true);
    let mut conn = baton_load::Conn::connect(&server.target(), deadline()).expect("connect");
    let r = conn
        .round_trip(&request, deadline(), true)
        .expect("first request");
    assert_eq!(generation(&r), 1);
    assert!(r.keep_alive);

    server.signal_serving(Signal::HUP);
    let second = server.wait_new_pid(first, Duration::from_secs(10));
    // Generation 1 still drains: upgrade again at once.
    assert!(!exited(first), "generation 1 should still be draining");
    server.signal_serving(Signal::HUP);
    let third = server.wait_new_pid(second, Duration::from_secs(10));
    // Generation 2 had no connection left: it exits at once. Until it
    // has stopped accepting, a new connection may still reach it.
    server.wait_gone(second, Duration::from_secs(15));
    assert!(!exited(first), "generation 1 should still be draining");
    assert_eq!(generation(&server.get("/")), 3);

    // Generation 1 answers the kept-alive connection, saying close.
    let r = conn
        .round_trip(&request, deadline(), true)
        .expect("second request on the draining connection");
    assert_eq!(generation(&r), 1);
    assert!(
        !r.keep_alive,
        "the draining process must say Connection: close"
    );
    server.wait_gone(first, Duration::from_secs(15));
    assert!(!exited(third));
}

#[test]
fn the_request_counter_is_handed_over_intact() {
    let server = Server::start(&[]);
    for _ in 0..5 {
        server.get("/");
    }
    let before: u64 = body(&server.get("/count")).trim().parse().expect("count");
    assert_eq!(before, 6);
    server.upgrade();
    let after = server.get("/count");
    assert_eq!(generation(&after), 2);
    // Nothing else talks to the server, so the count is exact.
    assert_eq!(body(&after).trim(), "7");
    server.upgrade();
    let after = server.get("/count");
    assert_eq!(generation(&after), 3);
    assert_eq!(body(&after).trim(), "8");
}

/// `fd target` pairs of one section of the `/fds` answer.
fn fds_section(text: &str, section: &str) -> BTreeMap<i32, String> {
    text.split(section)
        .nth(1)
        .expect("section")
        .lines()
        .skip(1)
        .take_while(|l| !l.ends_with(':'))
        .filter_map(|l| {
            let (fd, target) = l.split_once(' ')?;
            Some((fd.parse().ok()?, target.to_owned()))
        })
        .collect()
}

#[test]
fn an_upgraded_process_inherits_exactly_stdio_listener_readiness_and_state() {
    let server = Server::start(&[]);
    // The first process inherits whatever its starter leaked (under
    // nextest: a descriptor or two above 2); an upgrade passes on none of it.
    let first = body(&server.get("/fds"));
    let leaked: Vec<i32> = fds_section(&first, "at start:")
        .into_keys()
        .filter(|fd| *fd > 2)
        .collect();
    server.upgrade();
    let text = body(&server.get("/fds"));
    let at_start = fds_section(&text, "at start:");
    assert_eq!(
        at_start.keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4, 5],
        "not passed on: {leaked:?}; {text}"
    );
    assert!(at_start[&3].starts_with("socket:"), "listener: {text}");
    assert!(at_start[&4].starts_with("pipe:"), "readiness pipe: {text}");
    assert!(at_start[&5].contains("memfd:baton-state"), "state: {text}");
    // After ready, neither the readiness pipe nor the state is open.
    let now = fds_section(&text, "now:");
    for (fd, target) in now.range(3..) {
        assert!(
            !target.starts_with("pipe:") && !target.contains("memfd"),
            "fd {fd} ({target}) is still open after ready: {text}"
        );
    }
    assert_eq!(now.get(&3), at_start.get(&3), "the listener: {text}");

    // Without state, the successor gets the listener and the readiness
    // pipe only.
    let server = Server::start(&["--no-state"]);
    server.upgrade();
    let text = body(&server.get("/fds"));
    let at_start = fds_section(&text, "at start:");
    assert_eq!(
        at_start.keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4],
        "{text}"
    );
}
