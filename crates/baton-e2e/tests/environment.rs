//! What a worker gets: the systemd socket-activation variables, its
//! identity, the readiness channel, and no other descriptor.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use baton_e2e::{BatonCmd, Signal, WAIT, baton::parse_unix_path, http, procs};

/// The descriptor numbers in a `/fds` listing.
fn fd_numbers(listing: &str) -> Vec<i32> {
    listing
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The target of descriptor `n` in a `/fds` listing.
fn fd_target(listing: &str, n: i32) -> Option<&str> {
    listing.lines().find_map(|l| {
        let (num, target) = l.split_once(' ')?;
        (num.parse() == Ok(n)).then_some(target)
    })
}

#[test]
fn listen_vars_and_descriptors_with_a_tcp_and_a_named_unix_listener() {
    let cmd = BatonCmd::new();
    let sock = cmd.dir().join("api.sock");
    let baton = cmd
        .listen("127.0.0.1:0")
        .listen(format!("api=unix:{}", sock.display()))
        .probe(&[])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let port = baton.port();
    let line = baton.wait_for("listening on unix:", WAIT);
    assert_eq!(parse_unix_path(&line).as_deref(), Some(sock.as_path()));
    assert!(line.contains("(name api)"), "{line:?}");

    let env = http::get_ok(port, "/env");
    let pid = env
        .var("PID")
        .expect("the probe reports its pid")
        .to_owned();
    assert_eq!(env.var("LISTEN_FDS"), Some("2"), "{}", env.body);
    assert_eq!(env.var("LISTEN_PID"), Some(pid.as_str()), "{}", env.body);
    assert_eq!(
        env.var("LISTEN_FDNAMES"),
        Some("listen0:api"),
        "{}",
        env.body
    );
    assert_eq!(env.var("BATON_GENERATION"), Some("1"), "{}", env.body);
    assert_eq!(env.var("BATON_WORKER"), Some("0"), "{}", env.body);
    assert!(
        env.var("NOTIFY_SOCKET").is_some(),
        "notify mode: {}",
        env.body
    );
    assert_eq!(env.var("BATON_READY_FD"), None, "notify mode: {}", env.body);

    // As inherited, and now: 0-2, then the two listeners, nothing else.
    for path in ["/fds?at=start", "/fds"] {
        let fds = http::get_ok(port, path).body;
        assert_eq!(fd_numbers(&fds), [0, 1, 2, 3, 4], "{path}:\n{fds}");
        for n in [3, 4] {
            let target = fd_target(&fds, n).expect("listed");
            assert!(target.starts_with("socket:"), "fd {n} is {target}");
        }
    }

    // Each worker leads its own process group.
    let worker: u32 = pid.parse().expect("numeric pid");
    let stat = procs::stat(worker).expect("the worker runs");
    assert_eq!(
        stat.pgrp, worker,
        "the worker is not its own process group leader"
    );

    // The named Unix listener serves the same worker.
    let via_unix = http::get_unix(&sock, "/").expect("GET over the Unix socket");
    assert_eq!(via_unix.status, 200);
    assert_eq!(via_unix.pid().map(|p| p.to_string()), Some(pid));
}

#[test]
fn fd_mode_passes_the_ready_fd_after_the_listeners() {
    let baton = BatonCmd::new().args(["--ready", "fd"]).probe(&[]).spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let port = baton.port();
    let env = http::get_ok(port, "/env");
    assert_eq!(env.var("LISTEN_FDS"), Some("1"), "{}", env.body);
    assert_eq!(env.var("BATON_READY_FD"), Some("4"), "{}", env.body);
    assert_eq!(env.var("NOTIFY_SOCKET"), None, "fd mode: {}", env.body);

    let at_start = http::get_ok(port, "/fds?at=start").body;
    assert_eq!(fd_numbers(&at_start), [0, 1, 2, 3, 4], "{at_start}");
    let ready_fd = fd_target(&at_start, 4).expect("listed");
    assert!(
        ready_fd.starts_with("pipe:") || ready_fd.starts_with("socket:"),
        "{ready_fd}"
    );
    // The probe closed the ready fd after writing its newline.
    let now = http::get_ok(port, "/fds").body;
    assert_eq!(fd_numbers(&now), [0, 1, 2, 3], "{now}");
}

#[test]
fn generation_and_worker_numbers_follow_reloads() {
    let baton = BatonCmd::new()
        .args(["--workers", "2"])
        .probe(&["--drain-ms", "50"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    baton.reload(2, WAIT);
    let port = baton.port();
    let workers = baton.workers_of(2);
    let mut seen = std::collections::BTreeSet::new();
    // Both workers share one accept queue; ask until both answered.
    for _ in 0..200 {
        let env = http::get_ok(port, "/env");
        assert_eq!(env.var("BATON_GENERATION"), Some("2"), "{}", env.body);
        let pid: u32 = env.var("PID").and_then(|p| p.parse().ok()).expect("PID");
        let w = workers
            .iter()
            .find(|w| w.pid == pid)
            .unwrap_or_else(|| panic!("pid {pid} is not a worker of generation 2"));
        assert_eq!(env.var("BATON_WORKER"), Some(w.index.to_string().as_str()));
        assert_eq!(env.var("LISTEN_PID"), Some(pid.to_string().as_str()));
        seen.insert(w.index);
        if seen.len() == 2 {
            break;
        }
    }
    assert!(!seen.is_empty());
}

#[test]
fn unix_socket_keeps_its_inode_across_reloads_and_is_removed_at_stop() {
    let cmd = BatonCmd::new();
    let sock = cmd.dir().join("web.sock");
    let mut baton = cmd
        .listen(format!("unix:{}", sock.display()))
        .probe(&["--drain-ms", "50"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let inode = std::fs::metadata(&sock).expect("socket file exists").ino();
    for g in 2..=3 {
        baton.reload(g, WAIT);
        let r = http::get_unix(&sock, "/").expect("GET over the Unix socket");
        assert_eq!(r.generation(), Some(g));
        let now = std::fs::metadata(&sock)
            .expect("socket file still exists")
            .ino();
        assert_eq!(
            now,
            inode,
            "the socket file was replaced at reload {}",
            g - 1
        );
    }
    let status = baton.stop(Signal::TERM, WAIT);
    assert_eq!(status.code(), Some(0));
    assert!(
        std::fs::symlink_metadata(&sock).is_err(),
        "{} still exists after stop",
        sock.display()
    );
}

#[test]
fn unix_socket_gets_the_requested_mode() {
    let cmd = BatonCmd::new();
    let sock = cmd.dir().join("private.sock");
    let baton = cmd
        .listen(format!("unix:{}?mode=0600", sock.display()))
        .probe(&[])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let mode = std::fs::metadata(&sock)
        .expect("socket file exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    let r = http::get_unix(&sock, "/").expect("GET over the Unix socket");
    assert_eq!(r.status, 200);
}
