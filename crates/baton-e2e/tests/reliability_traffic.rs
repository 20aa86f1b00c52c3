//! Reliability under traffic: reloads under load change nothing a client
//! or the kernel can see.
//!
//! Each test runs in its own network namespace ([`NetNs`]): its ports and
//! its `TcpExt` counters are private, so "the kernel dropped no connection"
//! is an exact assertion even with other tests running on the machine.
//! Heavy: the nextest config runs this binary's tests one at a time.

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use baton_e2e::{Baton, BatonCmd, NetNs, Signal, WAIT, inspect};
use baton_load::{Config, Target};
use common::{Load, reloads_under_load};

const RELOADS: u32 = 50;

/// `drain_ms`: how long a draining probe answers with `Connection: close`
/// before it closes idle keep-alive connections. Under keep-alive load a
/// connection is idle only between a response and the next request, unless
/// the client thread is descheduled; a window longer than any such stall
/// on a busy 2-core machine keeps the probe's side of the hand-over (closing
/// an idle connection just as a request arrives, a race HTTP/1.1 keep-alive
/// cannot avoid) out of the figures. It costs nothing: a worker exits as
/// soon as its last connection is closed.
fn started(workers: &str, drain_ms: &str) -> Baton {
    let baton = BatonCmd::new()
        .args(["--workers", workers])
        .probe(&["--drain-ms", drain_ms])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    baton
}

/// The listening socket every worker of generation `g` has at fd 3.
fn listener_inodes_of(baton: &Baton, g: u32) -> Vec<(u32, u64)> {
    baton
        .workers_of(g)
        .iter()
        .map(|w| {
            let ino = inspect::socket_inode(w.pid, 3).unwrap_or_else(|| {
                panic!(
                    "worker {} of generation {g} (pid {}) has no socket at fd 3",
                    w.index, w.pid
                )
            });
            (w.pid, ino)
        })
        .collect()
}

/// Checks, after each reload, that the listener is the one socket baton
/// bound at start: every worker's fd 3 is that socket (same inode), baton
/// still holds it, and `ss` shows exactly one listener on the port.
struct ListenerIdentity {
    port: u16,
    inode: u64,
    baton: u32,
}

impl ListenerIdentity {
    fn at_start(baton: &Baton, port: u16) -> Self {
        let first = listener_inodes_of(baton, 1);
        let inode = first[0].1;
        assert!(
            first.iter().all(|(_, i)| *i == inode),
            "generation 1's workers have different sockets at fd 3: {first:?}"
        );
        let me = Self {
            port,
            inode,
            baton: baton.pid(),
        };
        me.check(baton, 1);
        me
    }

    fn check(&self, baton: &Baton, g: u32) {
        for (pid, ino) in listener_inodes_of(baton, g) {
            assert_eq!(
                ino, self.inode,
                "worker pid {pid} of generation {g} has socket {ino} at fd 3, not baton's listener {}",
                self.inode
            );
        }
        assert!(
            inspect::socket_inodes(self.baton)
                .iter()
                .any(|(_, i)| *i == self.inode),
            "baton no longer holds listener socket {} after reload to generation {g}",
            self.inode
        );
        let listening = inspect::tcp_listeners(self.port);
        assert_eq!(
            listening.len(),
            1,
            "after reload to generation {g}, `ss -ltn` shows not exactly one listener on port {}: {listening:#?}",
            self.port
        );
    }
}

fn stop_cleanly(mut baton: Baton) {
    let status = baton.stop(Signal::TERM, WAIT);
    assert_eq!(status.code(), Some(0), "graceful stop after the reloads");
}

/// 50 reloads under `Connection: close` load (a new connection per
/// request, so the accept queue is always busy): 0 failed requests, and
/// the kernel counted no accept-queue overflow or drop.
#[test]
fn connection_close_load_through_50_reloads_fails_nothing_and_drops_no_connection() {
    let ns = NetNs::enter();
    let before = ns.listen_counters();
    let baton = started("2", "100");
    let port = baton.port();
    let load = Load {
        reloads: RELOADS,
        keep_alive: false,
        ..Load::default()
    };
    let report = reloads_under_load(&baton, port, &load, || baton.signal(Signal::HUP), |_| {});
    let after = ns.listen_counters();
    eprintln!("[e2e] load report: {report}");
    assert_eq!(report.failed, 0, "{report}");
    assert_eq!(
        before, after,
        "(ListenOverflows, ListenDrops) moved over {RELOADS} reloads in this test's own network \
         namespace: the kernel dropped connections"
    );
    for g in 1..=RELOADS + 1 {
        assert!(
            report.generations.contains_key(&g.to_string()),
            "generation {g} answered nothing: {report}"
        );
    }
    stop_cleanly(baton);
}

/// The TCP listener is one socket for baton's whole life: through 50
/// reloads under load, every worker's fd 3 is the inode baton bound at
/// start, and `ss` never shows a second listener on the port.
#[test]
fn tcp_listener_identity_is_constant_through_50_reloads() {
    let _ns = NetNs::enter();
    let baton = started("2", "100");
    let port = baton.port();
    let identity = ListenerIdentity::at_start(&baton, port);
    let load = Load {
        reloads: RELOADS,
        keep_alive: false,
        ..Load::default()
    };
    let report = reloads_under_load(
        &baton,
        port,
        &load,
        || baton.signal(Signal::HUP),
        |g| identity.check(&baton, g),
    );
    assert_eq!(report.failed, 0, "{report}");
    stop_cleanly(baton);
}

/// 50 reloads under keep-alive load: idle and busy keep-alive connections
/// are handed over without a failed request.
#[test]
fn keep_alive_load_through_50_reloads_fails_nothing() {
    let ns = NetNs::enter();
    let before = ns.listen_counters();
    let baton = started("2", "2000");
    let port = baton.port();
    let load = Load {
        reloads: RELOADS,
        keep_alive: true,
        ..Load::default()
    };
    let report = reloads_under_load(&baton, port, &load, || baton.signal(Signal::HUP), |_| {});
    eprintln!("[e2e] load report: {report}");
    assert_eq!(report.failed, 0, "{report}");
    assert_eq!(
        before,
        ns.listen_counters(),
        "the kernel dropped connections"
    );
    for g in 1..=RELOADS + 1 {
        assert!(
            report.generations.contains_key(&g.to_string()),
            "generation {g} answered nothing: {report}"
        );
    }
    stop_cleanly(baton);
}

/// A request sent one byte at a time, never finished: a slowloris client.
const DRIP: &[u8] = b"GET / HTTP/1.1\r\nHost: slowloris\r\nX-Drip: ";

/// 50 slowloris connections, fed one byte every 50 ms by one thread until
/// `stop`; `open` counts those the server has not closed.
fn start_slowloris(
    port: u16,
    stop: &Arc<AtomicBool>,
    open: &Arc<AtomicUsize>,
) -> std::thread::JoinHandle<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut conns: Vec<TcpStream> = (0..50)
        .map(|i| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("slowloris connection {i}: {e}"));
            s.write_all(&DRIP[..1]).expect("first byte");
            s
        })
        .collect();
    open.store(conns.len(), Ordering::SeqCst);
    let (stop, open) = (Arc::clone(stop), Arc::clone(open));
    std::thread::spawn(move || {
        let mut sent = 1;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            let byte = if sent < DRIP.len() { DRIP[sent] } else { b'x' };
            sent += 1;
            // A write to a connection whose server was killed fails (the
            // first one after the reset at the latest): it is closed.
            conns.retain_mut(|c| c.write_all(&[byte]).is_ok());
            open.store(conns.len(), Ordering::SeqCst);
        }
    })
}

/// Slowloris during a reload: 50 connections that drip a request byte by
/// byte hold generation 1's workers busy forever. baton kills generation
/// 1 at `--grace` (not before), it is gone within grace + 1 s, and
/// generation 2 serves the whole time: a load running throughout sees 0
/// failed requests.
#[test]
fn slowloris_holding_the_old_generation_is_killed_at_grace_while_the_new_one_serves() {
    const GRACE: Duration = Duration::from_secs(2);
    let _ns = NetNs::enter();
    let baton = BatonCmd::new()
        .args(["--workers", "2", "--grace", "2s"])
        .probe(&["--drain-ms", "100"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let port = baton.port();
    let old: Vec<_> = baton.workers_of(1).iter().filter_map(|w| w.proc).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let open = Arc::new(AtomicUsize::new(0));
    let drip = start_slowloris(port, &stop, &open);
    // Every slowloris connection accepted (by generation 1: the only one).
    let deadline = Instant::now() + WAIT;
    while inspect::accept_queue(port) != Some(0) {
        assert!(
            Instant::now() < deadline,
            "generation 1 did not accept the slowloris connections"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut cfg = Config::new(Target::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, port))));
    cfg.concurrency = 4;
    cfg.keep_alive = false;
    cfg.request_timeout = Duration::from_secs(20);
    let run = baton_load::start(cfg);
    assert!(
        run.wait_for_generation("1", WAIT).is_some(),
        "{}",
        run.snapshot()
    );

    let mark = baton.mark();
    baton.signal(Signal::HUP);
    baton.wait_for_after(mark, "generation 2 ready", WAIT);
    let (_, draining) = baton.wait_for_after(mark, "generation 1 draining", WAIT);
    assert!(
        run.wait_for_generation("2", WAIT).is_some(),
        "{}",
        run.snapshot()
    );
    assert_eq!(
        open.load(Ordering::SeqCst),
        50,
        "slowloris connections were closed before the grace period ended"
    );
    let (_, kill_line) = baton.wait_until_after(
        mark,
        "saying generation 1 is killed at the end of the grace period",
        GRACE + WAIT,
        |l| {
            l.contains("generation 1: ")
                && l.contains("still running at the end of the grace period")
        },
    );
    let served_during_grace = run.snapshot();
    baton.assert_gone(
        old.iter().copied(),
        WAIT,
        "a worker of generation 1 held by slowloris",
    );
    let (_, exited) = baton.wait_for_after(mark, "generation 1 exited", WAIT);
    // Measured by baton's own clock (its log timestamps), so that a slow
    // reader of its output cannot skew them.
    let at = |line: &str| {
        baton_e2e::baton::log_time(line).unwrap_or_else(|| panic!("no timestamp in {line:?}"))
    };
    let since = |line: &str| {
        at(line)
            .duration_since(at(&draining))
            .unwrap_or(Duration::ZERO)
    };
    let (killed_at, gone_at) = (since(&kill_line), since(&exited));
    eprintln!(
        "[e2e] generation 1 killed {killed_at:?} after it began draining, reaped at {gone_at:?}"
    );

    // Keep the load going until every slowloris connection has seen the
    // kill, then count.
    let deadline = Instant::now() + WAIT;
    while open.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let report = run.stop();
    stop.store(true, Ordering::Relaxed);
    drip.join().expect("the drip thread");
    let still_open = open.load(Ordering::SeqCst);

    assert!(
        killed_at + Duration::from_millis(5) >= GRACE,
        "generation 1 was killed {killed_at:?} after it began draining, before --grace {GRACE:?}"
    );
    assert!(
        gone_at <= GRACE + Duration::from_secs(1),
        "generation 1 was gone only {gone_at:?} after it began draining (grace {GRACE:?} + 1 s)"
    );
    assert_eq!(report.failed, 0, "{report}");
    assert!(
        served_during_grace
            .generations
            .get("2")
            .copied()
            .unwrap_or(0)
            > 0,
        "generation 2 answered nothing during the grace period: {served_during_grace}"
    );
    assert!(
        report.generations.get("2") > served_during_grace.generations.get("2"),
        "generation 2 stopped answering after the kill: {report}"
    );
    assert_eq!(
        still_open, 0,
        "slowloris connections survived the kill of generation 1"
    );
    // (Its exit code is not this test's business: a worker was killed.)
    let mut baton = baton;
    baton.stop(Signal::TERM, WAIT);
}
