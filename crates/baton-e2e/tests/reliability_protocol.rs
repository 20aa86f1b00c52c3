//! The fd/env protocol, edge by edge: descriptor order and names, LISTEN_PID
//! through a wrapper, descriptors and variables baton itself inherited,
//! and a Unix socket path that never disappears.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use baton_e2e::baton::{parse_port, parse_unix_path};
use baton_e2e::{Baton, BatonCmd, Signal, WAIT, Worker, bin, http, inspect};

/// The `sockets:` line a probe prints at start: `(fd, name, address)` of
/// each inherited listener, in fd order.
fn sockets_of(baton: &Baton, w: &Worker) -> Vec<(i32, String, String)> {
    let line = baton.wait_for(&format!("pid={} sockets: ", w.pid), WAIT);
    let list = line.split("sockets: ").nth(1).expect("a sockets line");
    list.split("; ")
        .map(|entry| {
            let mut parts = entry.split(' ');
            let fd = parts.next().and_then(|f| f.parse().ok()).expect("an fd");
            let name = parts.next().expect("a name").to_owned();
            let addr = parts.collect::<Vec<_>>().join(" ");
            (fd, name, addr)
        })
        .collect()
}

/// What baton says it listens on, in the order it says it: the address
/// as a worker's getsockname shows it, and the name.
fn listening(baton: &Baton) -> Vec<(String, String)> {
    baton
        .lines()
        .iter()
        .filter(|l| l.contains("listening on "))
        .map(|l| {
            let addr = if let Some(port) = parse_port(l) {
                let host = l
                    .split("listening on tcp://")
                    .nth(1)
                    .and_then(|a| a.split_whitespace().next())
                    .and_then(|a| a.rsplit_once(':'))
                    .map(|(h, _)| h.to_owned())
                    .expect("a host");
                format!("tcp://{host}:{port}")
            } else {
                let path = parse_unix_path(l).expect("a unix path");
                format!("unix:{}", path.display())
            };
            let name = l
                .split(" (name ")
                .nth(1)
                .map(|n| n.trim_end_matches(')').to_owned());
            (addr, name.unwrap_or_default())
        })
        .collect()
}

/// A listener's address as getsockname reports it, with a Unix socket's
/// temporary bind name (`DIR/.NAME.baton-PID.tmp`, see
/// `unix_listeners_report_their_listen_path_not_a_temporary_name`) mapped
/// to the path it was renamed to, so the order and names can be checked
/// apart from that.
fn same_listener(addr: &str) -> String {
    let Some(path) = addr.strip_prefix("unix:") else {
        return addr.to_owned();
    };
    let path = Path::new(path);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let renamed = name
        .strip_prefix('.')
        .and_then(|n| n.rsplit_once(".baton-"))
        .filter(|(_, pid)| {
            pid.strip_suffix(".tmp")
                .is_some_and(|p| p.parse::<u32>().is_ok())
        })
        .map(|(real, _)| real);
    match renamed {
        Some(real) => format!("unix:{}", path.with_file_name(real).display()),
        None => addr.to_owned(),
    }
}

/// Bug: a Unix listener is bound under a temporary name and renamed into
/// place, so `getsockname` (in baton and in every worker) says
/// `DIR/.NAME.baton-PID.tmp`, a path that no longer exists, instead of the
/// `--listen` path: an app that logs, checks or reconnects to its own
/// address is misled. Each worker's Unix listener must report its path.
#[test]
fn unix_listeners_report_their_listen_path_not_a_temporary_name() {
    let cmd = BatonCmd::new();
    let sock = cmd.dir().join("web.sock");
    let baton = cmd
        .listen(format!("web=unix:{}?mode=0660", sock.display()))
        .probe(&[])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let w = baton.workers_of(1)[0];
    let got = sockets_of(&baton, &w);
    assert_eq!(
        got,
        [(3, "web".to_owned(), format!("unix:{}", sock.display()))],
        "getsockname of the worker's fd 3"
    );
}

/// Whether `::1` works here (an IPv6 loopback address is configured).
fn has_ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// Five listeners of both families, named and unnamed, three workers, two
/// generations: every worker has exactly those sockets at fds 3..7, in
/// `--listen` order, each the address baton bound (getsockname) and named
/// as `LISTEN_FDNAMES` says (given name, or `listenN` by position), and
/// each the very socket baton holds.
#[test]
fn worker_fds_match_the_listen_order_and_names() {
    let cmd = BatonCmd::new();
    let a = cmd.dir().join("a.sock");
    let b = cmd.dir().join("b.sock");
    let v6 = if has_ipv6_loopback() {
        "[::1]:0"
    } else {
        "127.0.0.2:0"
    };
    let baton = cmd
        .args(["--workers", "3"])
        .listen("web=127.0.0.1:0")
        .listen(format!("unix:{}", a.display()))
        .listen(format!("admin={v6}"))
        .listen(format!("api=unix:{}?mode=0600", b.display()))
        .listen("127.0.0.1:0")
        .probe(&["--drain-ms", "50"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    baton.reload(2, WAIT);
    let names = ["web", "listen1", "admin", "api", "listen4"];
    let bound = listening(&baton);
    assert_eq!(bound.len(), 5, "{bound:?}");
    for (i, (_, name)) in bound.iter().enumerate() {
        if !name.is_empty() {
            assert_eq!(name, names[i], "listener {i}: {bound:?}");
        }
    }
    let held: BTreeSet<u64> = inspect::socket_inodes(baton.pid())
        .into_iter()
        .map(|(_, i)| i)
        .collect();
    for g in [1, 2] {
        let workers = baton.workers_of(g);
        assert_eq!(workers.len(), 3);
        for w in &workers {
            if g == 2 {
                assert_eq!(
                    inspect::environ_values(w.pid, "LISTEN_FDNAMES"),
                    [names.join(":")],
                    "worker {} of generation {g}",
                    w.index
                );
                assert_eq!(inspect::environ_values(w.pid, "LISTEN_FDS"), ["5"]);
                for i in 0..5 {
                    let ino = inspect::socket_inode(w.pid, 3 + i).unwrap_or_else(|| {
                        panic!("worker pid {} has no socket at fd {}", w.pid, 3 + i)
                    });
                    assert!(
                        held.contains(&ino),
                        "fd {} of worker pid {} is socket {ino}, not one baton holds ({held:?})",
                        3 + i,
                        w.pid
                    );
                }
            }
            let got: Vec<(i32, String, String)> = sockets_of(&baton, w)
                .into_iter()
                .map(|(fd, name, addr)| (fd, name, same_listener(&addr)))
                .collect();
            let want: Vec<(i32, String, String)> = (0..5)
                .map(|i| {
                    (
                        3 + i as i32,
                        names[i].to_owned(),
                        same_listener(&bound[i].0),
                    )
                })
                .collect();
            assert_eq!(got, want, "worker {} of generation {g}", w.index);
        }
    }
}

/// `-- env FOO=1 probe`: `env` execs the probe in the same process, so
/// `LISTEN_PID` (set for the process baton started) is the probe's pid and
/// it takes its sockets; the wrapper's own variable arrives too.
#[test]
fn listen_pid_is_right_through_an_env_wrapper() {
    let cmd = BatonCmd::new();
    let script = cmd.script_path();
    let probe = bin("baton-probe");
    let baton = cmd
        .args(["--workers", "2"])
        .command([
            OsString::from("env"),
            "FOO=1".into(),
            probe.into(),
            "--script".into(),
            script.into(),
            "--drain-ms".into(),
            "50".into(),
        ])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    baton.reload(2, WAIT);
    let port = baton.port();
    for w in baton.workers_of(2) {
        assert_eq!(
            inspect::environ_values(w.pid, "LISTEN_PID"),
            [w.pid.to_string()],
            "worker {}",
            w.index
        );
        assert_eq!(inspect::environ_values(w.pid, "FOO"), ["1"]);
    }
    let env = http::get_ok(port, "/env");
    assert_eq!(env.var("LISTEN_PID"), env.var("PID"), "{}", env.body);
    assert_eq!(env.var("LISTEN_FDS"), Some("1"), "{}", env.body);
}

/// The descriptor numbers in a `/fds` listing.
fn fd_numbers(listing: &str) -> Vec<i32> {
    listing
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// baton started with fds 3–9 already open (files, a directory, /dev/null,
/// none of them close-on-exec): every worker still gets exactly 0–2 and
/// its one listener at fd 3, which is baton's listening socket and none
/// of the inherited descriptors.
#[test]
fn descriptors_3_to_9_open_in_baton_never_reach_a_worker() {
    let cmd = BatonCmd::new();
    let junk = cmd.dir().join("junk");
    std::fs::write(&junk, "not for workers\n").expect("write a file");
    let dir = cmd.dir().to_path_buf();
    let junk_arg = junk.clone();
    let baton = cmd
        .args(["--workers", "2"])
        .probe(&["--drain-ms", "50"])
        .spawn_under(|argv, _| {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(
                    "exec 3<\"$1\" 4<\"$2\" 5</dev/null 6>>\"$1\" 7<\"$1\" 8<\"$2\" 9</dev/null; \
                     shift 2; exec \"$@\"",
                )
                .arg("sh")
                .arg(&junk_arg)
                .arg(&dir)
                .args(argv);
            c
        });
    baton.wait_for("generation 1 ready", WAIT);
    let me = baton.baton_pid();
    // baton itself did inherit them (else this test shows nothing).
    for fd in 3..=9 {
        assert!(
            std::fs::read_link(format!("/proc/{me}/fd/{fd}")).is_ok(),
            "baton was started without fd {fd}"
        );
    }
    baton.reload(2, WAIT);
    let port = baton.port();
    // Nothing the worker holds now is one of them either.
    let theirs = [junk.clone(), baton.dir().to_path_buf()];
    for w in baton.workers_of(2) {
        for entry in std::fs::read_dir(format!("/proc/{}/fd", w.pid)).expect("the worker's fds") {
            let Ok(target) = entry.map(|e| e.path()).and_then(std::fs::read_link) else {
                continue;
            };
            assert!(
                !theirs.contains(&target),
                "worker pid {} holds {} (one of baton's inherited descriptors)",
                w.pid,
                target.display()
            );
        }
    }
    for _ in 0..4 {
        let at_start = http::get_ok(port, "/fds?at=start").body;
        assert_eq!(fd_numbers(&at_start), [0, 1, 2, 3], "{at_start}");
    }
    let listener = inspect::socket_inode(baton.workers_of(2)[0].pid, 3).expect("a socket at fd 3");
    assert!(
        inspect::socket_inodes(me)
            .iter()
            .any(|(_, i)| *i == listener),
        "fd 3 of the worker is not baton's listener"
    );
}

/// `LISTEN_*`, `NOTIFY_SOCKET` and baton's own worker variables in
/// baton's environment, none meant for it (`LISTEN_PID` is another
/// process): each worker sees every such variable exactly once, with
/// baton's value for this worker, and the stale ones nowhere.
#[test]
fn stale_listen_and_notify_variables_never_reach_a_worker() {
    let cmd = BatonCmd::new();
    let stale_notify = cmd.dir().join("stale-notify.sock");
    let baton = cmd
        .env("LISTEN_FDS", "4")
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDNAMES", "stale:stale:stale:stale")
        .env("NOTIFY_SOCKET", &stale_notify)
        .env("BATON_READY_FD", "7")
        .env("BATON_GENERATION", "99")
        .env("BATON_WORKER", "42")
        .args(["--workers", "2"])
        .probe(&["--drain-ms", "50"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    baton.reload(2, WAIT);
    for w in baton.workers_of(2) {
        let one = |key: &str| {
            let v = inspect::environ_values(w.pid, key);
            assert!(
                v.len() <= 1,
                "worker {}: {key} passed {} times: {v:?}",
                w.index,
                v.len()
            );
            v.into_iter().next()
        };
        assert_eq!(one("LISTEN_FDS").as_deref(), Some("1"));
        assert_eq!(one("LISTEN_PID"), Some(w.pid.to_string()));
        assert_eq!(one("LISTEN_FDNAMES").as_deref(), Some("listen0"));
        assert_eq!(one("BATON_GENERATION").as_deref(), Some("2"));
        assert_eq!(one("BATON_WORKER"), Some(w.index.to_string()));
        assert_eq!(one("BATON_READY_FD"), None, "notify mode has no ready fd");
        let notify = one("NOTIFY_SOCKET").expect("notify mode sets NOTIFY_SOCKET");
        assert_ne!(Path::new(&notify), stale_notify.as_path());
        assert!(
            Path::new(&notify).starts_with(baton.dir()),
            "NOTIFY_SOCKET {notify} is not one of baton's"
        );
    }
}

/// What a prober saw of a Unix socket path.
#[derive(Debug, Default)]
struct Probed {
    attempts: u64,
    connected: u64,
    enoent: u64,
    refused: u64,
    other: Vec<String>,
    inodes: BTreeSet<u64>,
}

/// Connects to `path` every millisecond until `stop`.
fn probe_path(path: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Probed> {
    std::thread::spawn(move || {
        let mut seen = Probed::default();
        while !stop.load(Ordering::Relaxed) {
            seen.attempts += 1;
            match std::fs::symlink_metadata(&path) {
                Ok(m) => {
                    seen.inodes.insert(m.ino());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => seen.enoent += 1,
                Err(e) => seen.other.push(format!("stat: {e}")),
            }
            match UnixStream::connect(&path) {
                Ok(_) => seen.connected += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => seen.enoent += 1,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => seen.refused += 1,
                Err(e) => seen.other.push(format!("connect: {e}")),
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        seen
    })
}

/// A Unix socket path stat'ed and connected to every millisecond through
/// 100 reloads: it never disappears (0 ENOENT), never refuses, and is the
/// same inode throughout.
#[test]
fn unix_socket_path_never_disappears_through_100_reloads() {
    let cmd = BatonCmd::new();
    let sock = cmd.dir().join("web.sock");
    let mut baton = cmd
        .args(["--workers", "2"])
        .listen(format!("unix:{}", sock.display()))
        .probe(&["--drain-ms", "50"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let stop = Arc::new(AtomicBool::new(false));
    let prober = probe_path(sock.clone(), Arc::clone(&stop));
    for g in 2..=101 {
        baton.reload(g, WAIT);
    }
    stop.store(true, Ordering::Relaxed);
    let seen = prober.join().expect("the prober");
    eprintln!("[e2e] unix path probed: {seen:?}");
    assert_eq!(seen.enoent, 0, "the socket path was missing: {seen:?}");
    assert_eq!(seen.refused, 0, "connections were refused: {seen:?}");
    assert!(seen.other.is_empty(), "{seen:?}");
    assert_eq!(
        seen.inodes.len(),
        1,
        "the socket file was replaced: {seen:?}"
    );
    assert!(
        seen.attempts >= 100,
        "the path was probed only {} times",
        seen.attempts
    );
    let status = baton.stop(Signal::TERM, WAIT);
    assert_eq!(status.code(), Some(0));
}
