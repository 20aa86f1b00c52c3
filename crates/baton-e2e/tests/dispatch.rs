//! `baton run --dispatch`: baton alone watches the listener and hands each
//! connection to an idle worker (docs/dispatch.md). The demo server speaks
//! the protocol through `baton_app::dispatch`, unchanged from its
//! shared-accept self; the Python worker in examples/python-dispatch speaks
//! it with the standard library alone.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use baton_e2e::{Baton, BatonCmd, Signal, WAIT, ctl, http};
use common::{Load, reloads_under_load};

const RELOADS: u32 = 50;

fn demo(mode: &str, workers: &str) -> Baton {
    let demo = baton_e2e::bin("demo-server");
    // A draining worker answers each keep-alive connection's next request
    // with `Connection: close` for this long, then closes what is idle (and
    // stops waiting as soon as no connection is left, so the usual drain is
    // much shorter). A load client that stalls past it on a busy machine
    // (a 4 s stall was seen in a full run beside a benchmark) sends its next
    // request on a connection closed meanwhile and reads an end of file:
    // HTTP/1's own idle-close race, which only a retry could absorb, and
    // the strict client does not retry.
    let baton = BatonCmd::new()
        .arg(format!("--dispatch={mode}"))
        .args(["--workers", workers])
        .command([demo.as_os_str(), "--drain-grace".as_ref(), "2s".as_ref()])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    baton
}

fn stop_cleanly(mut baton: Baton) {
    let status = baton.stop(Signal::TERM, WAIT);
    assert_eq!(status.code(), Some(0), "graceful stop");
    baton.wait_for("stopped", WAIT);
}

/// `baton ctl status --json`, parsed.
fn status(baton: &Baton) -> serde_json::Value {
    let out = ctl::ctl(baton, &["status", "--json"]);
    assert!(out.status.success(), "ctl status: {out:?}");
    serde_json::from_slice(&out.stdout).expect("status is JSON")
}

/// Connections each live worker of generation `g` was handed, by slot.
fn per_worker(status: &serde_json::Value, g: u64) -> BTreeMap<u64, u64> {
    let gens = status["generations"].as_array().expect("generations");
    let gen_ = gens
        .iter()
        .find(|x| x["id"].as_u64() == Some(g))
        .unwrap_or_else(|| panic!("generation {g} in {status}"));
    gen_["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| {
            let n = w["dispatch"]["dispatched"]
                .as_u64()
                .unwrap_or_else(|| panic!("a dispatch count in {w}"));
            (w["slot"].as_u64().expect("slot"), n)
        })
        .collect()
}

fn reloads(mode: &str, keep_alive: bool) {
    let baton = demo(mode, "2");
    let load = Load {
        reloads: RELOADS,
        keep_alive,
        ..Load::default()
    };
    let report = reloads_under_load(
        &baton,
        baton.port(),
        &load,
        || baton.signal(Signal::HUP),
        |_| {},
    );
    for g in 1..=RELOADS + 1 {
        assert!(
            report.generations.contains_key(&g.to_string()),
            "generation {g} answered nothing: {report}"
        );
    }
    eprintln!("[e2e] load report: {report}");
    let s = status(&baton);
    assert_eq!(s["dispatch"]["mode"], mode, "{s}");
    assert_eq!(s["dispatch"]["dropped"], 0, "{s}");
    assert_eq!(s["dispatch"]["timeouts"], 0, "{s}");
    stop_cleanly(baton);
}

#[test]
fn no_failed_request_across_50_reloads_pass_keep_alive() {
    reloads("pass", true);
}

#[test]
fn no_failed_request_across_50_reloads_pass_connection_close() {
    reloads("pass", false);
}

#[test]
fn no_failed_request_across_50_reloads_accept_keep_alive() {
    reloads("accept", true);
}

#[test]
fn no_failed_request_across_50_reloads_accept_connection_close() {
    reloads("accept", false);
}

/// `n` keep-alive clients that connect while baton is stopped (so it
/// finds them all waiting at once), each answered once and kept open.
fn burst(baton: &Baton, n: usize) -> Vec<std::net::TcpStream> {
    use std::io::{Read, Write};
    baton.signal(Signal::STOP);
    let mut clients: Vec<std::net::TcpStream> = (0..n)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", baton.port())).expect("connect"))
        .collect();
    baton.signal(Signal::CONT);
    for c in &mut clients {
        c.set_read_timeout(Some(WAIT)).expect("timeout");
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("request");
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = c.read(&mut buf).expect("response");
            assert!(n > 0, "closed before answering");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }
    clients
}

/// The connections each worker of the first generation holds now.
fn active(s: &serde_json::Value) -> Vec<u64> {
    s["generations"][0]["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| w["dispatch"]["active"].as_u64().expect("active"))
        .collect()
}

/// Polls `ctl status` until `done` says so (bounded by [`WAIT`]).
fn status_until(
    baton: &Baton,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status(baton);
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A burst of long-lived connections spreads evenly even though a worker
/// may take several in one packet (baton_app says `batch 16`): baton is
/// stopped while 16 keep-alive clients connect, so it finds all of them
/// waiting at once, and each of the 4 workers ends up holding 4 (a packet
/// per free worker would have given one worker all 16).
#[test]
fn a_burst_of_keep_alive_connections_spreads_evenly_over_batching_workers() {
    let baton = demo("pass", "4");
    let clients = burst(&baton, 16);
    let s = status(&baton);
    assert_eq!(
        s["dispatch"]["slack"], 1,
        "nothing known of lifetimes yet: {s}"
    );
    let counts = active(&s);
    assert_eq!(counts.iter().sum::<u64>(), 16, "{s}");
    assert_eq!(counts, [4, 4, 4, 4], "{s}");
    drop(clients);
    stop_cleanly(baton);
}

/// After a run of short-lived connections (`Connection: close`, each
/// closed within milliseconds), with more workers than CPUs, one packet
/// may take a worker up to workers/CPUs (at most 4) above the least loaded
/// other: the same burst of 8 then goes to fewer workers (on 2 CPUs, 4 and
/// 4), with fewer wake-ups. One connection that lives 100 ms or more, and
/// the spread is exact again.
#[test]
fn after_short_lived_traffic_a_burst_shares_packets_within_the_slack() {
    let workers: u64 = 8;
    let baton = demo("pass", &workers.to_string());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let slack = workers.div_ceil(cpus).clamp(1, 4);
    // Requests until baton counts the traffic short-lived: 64 in a row
    // within 100 ms, which a loaded machine may take more than 64 to make.
    let deadline = Instant::now() + WAIT;
    loop {
        for _ in 0..32 {
            http::get_ok(baton.port(), "/");
        }
        if status(&baton)["dispatch"]["short_lived"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "never short-lived");
    }
    // Every `done` counted (they may still be on their way).
    let s = status_until(&baton, "short-lived and idle", |s| {
        s["dispatch"]["short_lived"] == true && active(s).iter().all(|&n| n == 0)
    });
    assert_eq!(
        s["dispatch"]["slack"], slack,
        "{workers} workers, {cpus} CPUs: {s}"
    );
    let opened = Instant::now();
    let clients = burst(&baton, workers as usize);
    let s = status(&baton);
    let mut counts = active(&s);
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let mut expected = vec![0; workers as usize];
    for (i, n) in expected.iter_mut().enumerate() {
        let i = i as u64;
        *n = slack.min(workers.saturating_sub(i * slack));
    }
    assert_eq!(counts, expected, "slack {slack}: {s}");
    // Connections that live longer than short: not a condition to wait
    // for, the lifetime they must have.
    std::thread::sleep(Duration::from_millis(150).saturating_sub(opened.elapsed()));
    drop(clients);
    let s = status_until(&baton, "exact again", |s| {
        s["dispatch"]["short_lived"] == false && active(s).iter().all(|&n| n == 0)
    });
    assert_eq!(s["dispatch"]["slack"], 1, "{s}");
    let out = ctl::ctl(&baton, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("spread exact"), "{text}");
    stop_cleanly(baton);
}

/// One connection at a time per worker (`--credits 1`, seed 004's sync
/// children), in fifo order and least-loaded: 400 sequential connections
/// over 4 workers give each about 100, where a shared accept queue gives
/// most to one.
#[test]
fn sequential_connections_spread_evenly_over_single_connection_workers() {
    for (mode, order) in [
        ("pass", "fifo"),
        ("accept", "fifo"),
        ("pass", "least-loaded"),
    ] {
        let demo = baton_e2e::bin("demo-server");
        let baton = BatonCmd::new()
            .arg(format!("--dispatch={mode}"))
            .args(["--dispatch-order", order, "--workers", "4"])
            .command([demo.as_os_str(), "--credits".as_ref(), "1".as_ref()])
            .spawn();
        baton.wait_for("generation 1 ready", WAIT);
        for _ in 0..400 {
            http::get_ok(baton.port(), "/");
        }
        // The last `done` may still be on its way: wait until all 400 are
        // counted (bounded).
        let deadline = Instant::now() + WAIT;
        let counts = loop {
            let c = per_worker(&status(&baton), 1);
            if c.values().sum::<u64>() >= 400 || Instant::now() > deadline {
                break c;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let max = counts.values().max().copied().unwrap_or(0);
        let min = counts.values().min().copied().unwrap_or(0);
        assert_eq!(counts.len(), 4, "{mode}: {counts:?}");
        assert!(
            min > 0 && max * 10 <= min * 12,
            "{mode}: spread max/min above 1.2: {counts:?}"
        );
        stop_cleanly(baton);
    }
}

/// The channels, the counters and the per-worker counts survive `baton
/// ctl upgrade`: the same workers go on receiving connections from the
/// new image, and what was counted before is still counted.
#[test]
fn dispatch_channels_and_counts_survive_an_in_place_upgrade() {
    for mode in ["pass", "accept"] {
        let baton = demo(mode, "2");
        for _ in 0..20 {
            http::get_ok(baton.port(), "/");
        }
        let before = status(&baton);
        let dispatched = before["dispatch"]["dispatched"].as_u64().expect("count");
        assert!(dispatched >= 20, "{mode}: {before}");
        // The demo server asks for batches in pass mode (baton_app's
        // `batch 16`); what it said is carried like the rest.
        let batch = if mode == "pass" { 16 } else { 1 };
        let batches = |s: &serde_json::Value| -> Vec<u64> {
            s["generations"][0]["workers"]
                .as_array()
                .expect("workers")
                .iter()
                .map(|w| w["dispatch"]["batch"].as_u64().expect("batch"))
                .collect()
        };
        assert_eq!(batches(&before), [batch, batch], "{mode}: {before}");
        let out = ctl::ctl(&baton, &["upgrade"]);
        assert!(out.status.success(), "{mode}: ctl upgrade: {out:?}");
        let pids: Vec<u32> = baton.workers_of(1).iter().map(|w| w.pid).collect();
        for _ in 0..20 {
            let r = http::get_ok(baton.port(), "/");
            assert!(
                r.pid().is_some_and(|p| pids.contains(&p)),
                "{mode}: answered by a worker baton had before the upgrade"
            );
        }
        let after = status(&baton);
        assert_eq!(after["upgrades"], 1, "{mode}: {after}");
        assert_eq!(batches(&after), [batch, batch], "{mode}: {after}");
        let now = after["dispatch"]["dispatched"].as_u64().expect("count");
        assert!(now >= dispatched + 20, "{mode}: {dispatched} then {after}");
        let sum: u64 = per_worker(&after, 1).values().sum();
        assert!(sum >= 40, "{mode}: per worker after the upgrade: {after}");
        stop_cleanly(baton);
    }
}

/// A mistake in the flags says what to write.
#[test]
fn dispatch_flags_without_dispatch_say_so() {
    let (status, lines) = BatonCmd::new()
        .args(["--queue", "8"])
        .probe(&[])
        .run_to_exit(WAIT);
    assert_eq!(status.code(), Some(2), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("--queue applies to dispatch mode only")),
        "{lines:?}"
    );
    let (status, lines) = BatonCmd::new()
        .args(["--dispatch=accept", "--queue", "8"])
        .probe(&[])
        .run_to_exit(WAIT);
    assert_eq!(status.code(), Some(2), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("only --dispatch=pass")),
        "{lines:?}"
    );
}

fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// `baton run --dispatch=MODE -- python3 examples/python-dispatch/... app:app`
/// (the WSGI app of the gunicorn tests).
fn python_worker(python: &std::path::Path, mode: &str) -> BatonCmd {
    BatonCmd::new()
        .arg(format!("--dispatch={mode}"))
        .args(["--workers", "2"])
        .command([
            python.as_os_str(),
            repo("examples/python-dispatch/baton_dispatch.py").as_os_str(),
            "--chdir".as_ref(),
            repo("examples/apps").as_os_str(),
            "app:app".as_ref(),
        ])
}

fn python_twenty_reloads(test: &str, mode: &str) {
    let Some(python) = baton_e2e::tools::which_or_skip(test, "python3", "python3") else {
        return;
    };
    let baton = python_worker(&python, mode).spawn();
    baton.wait_for("generation 1 ready", WAIT);
    // One request per connection: the worker is synchronous (HTTP/1.0).
    let load = Load {
        reloads: 20,
        keep_alive: false,
        concurrency: 4,
        ..Load::default()
    };
    let report = reloads_under_load(
        &baton,
        baton.port(),
        &load,
        || baton.signal(Signal::HUP),
        |_| {},
    );
    eprintln!("[e2e] load report: {report}");
    stop_cleanly(baton);
}

#[test]
fn python_worker_twenty_reloads_under_load_pass() {
    python_twenty_reloads("python_worker_twenty_reloads_under_load_pass", "pass");
}

#[test]
fn python_worker_twenty_reloads_under_load_accept() {
    python_twenty_reloads("python_worker_twenty_reloads_under_load_accept", "accept");
}

/// Worker 0 says `ready`, then holds what it is sent and never answers
/// (tests/apps/dispatch_ignorer.py): after --dispatch-timeout baton kills
/// it and the connection is served by another worker; no request fails.
#[test]
fn a_worker_that_ignores_a_dispatch_is_killed_and_its_connection_served_by_another() {
    let test = "a_worker_that_ignores_a_dispatch_is_killed_and_its_connection_served_by_another";
    let Some(python) = baton_e2e::tools::which_or_skip(test, "python3", "python3") else {
        return;
    };
    let cmd = BatonCmd::new();
    let marker = cmd.dir().join("ignored-once");
    let baton = cmd
        .args(["--dispatch", "--workers", "2", "--dispatch-timeout", "1s"])
        .command([
            python.as_os_str(),
            repo("crates/baton-e2e/tests/apps/dispatch_ignorer.py").as_os_str(),
            marker.as_os_str(),
            repo("examples/python-dispatch/baton_dispatch.py").as_os_str(),
            repo("examples/apps").as_os_str(),
        ])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    // fifo alternates between the two workers: of four connections in a
    // row, one goes to worker 0.
    for i in 0..4 {
        let r = http::get(baton.port(), "/").unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.generation(), Some(1), "request {i}");
    }
    baton.wait_for("did not take connection", WAIT);
    let s = status(&baton);
    assert_eq!(s["dispatch"]["timeouts"], 1, "{s}");
    assert!(s["dispatch"]["redispatched"].as_u64() >= Some(1), "{s}");
    assert_eq!(s["dispatch"]["dropped"], 0, "{s}");
    stop_cleanly(baton);
}

/// One demo worker that takes one connection at a time, with `extra`
/// flags for baton.
fn one_slot(extra: &[&str]) -> Baton {
    let demo = baton_e2e::bin("demo-server");
    let baton = BatonCmd::new()
        .args(["--dispatch", "--workers", "1"])
        .args(extra)
        .command([demo.as_os_str(), "--credits".as_ref(), "1".as_ref()])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    baton
}

/// Waits (bounded) until the workers of generation 1 hold `n`
/// connections in all, as `ctl status` counts them.
fn wait_active(baton: &Baton, n: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status(baton);
        let active: u64 = s["generations"][0]["workers"].as_array().map_or(0, |ws| {
            ws.iter()
                .filter_map(|w| w["dispatch"]["active"].as_u64())
                .sum()
        });
        if active == n {
            return;
        }
        assert!(Instant::now() < deadline, "never {n} active: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `--overload wait`: the only worker is busy; ten clients wait in the
/// kernel's backlog, and every one is served once it is free.
#[test]
fn overload_wait_refuses_nothing_while_the_backlog_holds() {
    let baton = one_slot(&[]);
    let busy = http::send(baton.port(), "/sleep?ms=1500").expect("send");
    wait_active(&baton, 1);
    let waiting: Vec<_> = (0..10)
        .map(|_| http::send(baton.port(), "/").expect("send"))
        .collect();
    assert_eq!(busy.finish().expect("the busy one").status, 200);
    for (i, p) in waiting.into_iter().enumerate() {
        let r = p
            .finish()
            .unwrap_or_else(|e| panic!("waiting client {i}: {e}"));
        assert_eq!(r.status, 200, "waiting client {i}");
    }
    let s = status(&baton);
    assert!(s["dispatch"]["waits"].as_u64() >= Some(1), "{s}");
    assert_eq!(s["dispatch"]["closed"], 0, "{s}");
    assert_eq!(s["dispatch"]["rejected_503"], 0, "{s}");
    stop_cleanly(baton);
}

/// `--overload close`: a client that comes while the only worker is busy
/// is closed at once, and counted.
#[test]
fn overload_close_closes_what_no_worker_can_take() {
    let baton = one_slot(&["--overload", "close"]);
    let busy = http::send(baton.port(), "/sleep?ms=1500").expect("send");
    wait_active(&baton, 1);
    let refused = http::get(baton.port(), "/");
    assert!(refused.is_err(), "a refused client got {refused:?}");
    assert_eq!(busy.finish().expect("the busy one").status, 200);
    let s = status(&baton);
    assert_eq!(s["dispatch"]["closed"], 1, "{s}");
    // Free again: served.
    assert_eq!(http::get_ok(baton.port(), "/").status, 200);
    stop_cleanly(baton);
}

/// `--overload 503`: the client reads a whole 503 with `Retry-After`.
#[test]
#[expect(
    clippy::float_cmp,
    reason = "the counts are small integers, exact in f64"
)]
fn overload_503_answers_503_with_retry_after() {
    let Some(python) =
        baton_e2e::metrics::python_or_skip("overload_503_answers_503_with_retry_after")
    else {
        return;
    };
    let baton = one_slot(&["--overload", "503", "--metrics", "127.0.0.1:0"]);
    let busy = http::send(baton.port(), "/sleep?ms=1500").expect("send");
    wait_active(&baton, 1);
    let r = http::get(baton.port(), "/").expect("a 503, not a reset");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("Retry-After"), Some("1"), "{r:?}");
    assert_eq!(busy.finish().expect("the busy one").status, 200);
    let s = status(&baton);
    assert_eq!(s["dispatch"]["rejected_503"], 1, "{s}");
    // The metrics count the same overload event, and both connections.
    let samples = baton_e2e::metrics::scrape(&python, baton_e2e::metrics::port(&baton));
    let get = |name: &str, labels: &[(&str, &str)]| baton_e2e::metrics::get(&samples, name, labels);
    assert_eq!(
        get("baton_dispatch_overload_total", &[("kind", "503")]),
        1.0
    );
    assert_eq!(
        get("baton_dispatch_overload_total", &[("kind", "closed")]),
        0.0
    );
    assert_eq!(
        get(
            "baton_dispatch_connections_total",
            &[("outcome", "dispatched")]
        ),
        1.0
    );
    stop_cleanly(baton);
}

/// `--queue 1 --queue-timeout 300ms --overload 503`: one client waits in
/// baton's queue and gets a 503 when its time is up; the next finds the
/// queue full and gets its 503 at once.
#[test]
fn a_queued_connection_gets_the_overload_answer_at_its_deadline() {
    let baton = one_slot(&[
        "--overload",
        "503",
        "--queue",
        "1",
        "--queue-timeout",
        "300ms",
    ]);
    let busy = http::send(baton.port(), "/sleep?ms=3000").expect("send");
    wait_active(&baton, 1);
    let queued = http::send(baton.port(), "/").expect("send");
    let full = http::get(baton.port(), "/").expect("a 503");
    assert_eq!(full.status, 503, "{full:?}");
    let r = queued.finish().expect("a 503 after the queue timeout");
    assert_eq!(r.status, 503, "{r:?}");
    let s = status(&baton);
    assert_eq!(s["dispatch"]["queued"], 1, "{s}");
    assert_eq!(s["dispatch"]["queue_expired"], 1, "{s}");
    assert_eq!(s["dispatch"]["rejected_503"], 2, "{s}");
    assert_eq!(busy.finish().expect("the busy one").status, 200);
    stop_cleanly(baton);
}

/// A worker killed while it serves a connection fails that connection
/// only: the one the other worker serves completes, and the next ones are
/// served (by the other worker, then by the replacement).
#[test]
fn a_worker_crashing_mid_connection_fails_only_that_connection() {
    let demo = baton_e2e::bin("demo-server");
    let baton = BatonCmd::new()
        .args(["--dispatch", "--workers", "2"])
        .command([demo.as_os_str(), "--credits".as_ref(), "1".as_ref()])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let doomed = http::send(baton.port(), "/sleep?ms=5000").expect("send");
    wait_active(&baton, 1);
    let other = http::send(baton.port(), "/sleep?ms=1000").expect("send");
    wait_active(&baton, 2);
    // The first connection went to the worker spawned first (fifo: the
    // longest waiting), slot 0.
    let w0 = baton
        .workers_of(1)
        .into_iter()
        .find(|w| w.index == 0)
        .expect("worker 0");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(i32::try_from(w0.pid).expect("pid")).expect("pid"),
        Signal::KILL,
    )
    .expect("kill worker 0");
    assert!(doomed.finish().is_err(), "the killed worker's connection");
    assert_eq!(other.finish().expect("the other worker's").status, 200);
    for i in 0..5 {
        let r = http::get(baton.port(), "/").unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status, 200, "request {i}");
    }
    let s = status(&baton);
    assert_eq!(s["dispatch"]["dropped"], 0, "{s}");
    stop_cleanly(baton);
}

/// baton's descriptors stay flat over 100,000 dispatched connections
/// (each `Connection: close`): every copy it kept until `taken` is closed.
#[test]
fn baton_fd_count_is_flat_over_100000_dispatched_connections() {
    let baton = demo("pass", "2");
    let pid = baton.pid();
    let run = |n: u64| {
        let mut cfg = baton_load::Config::new(baton_load::Target::Tcp(std::net::SocketAddr::from(
            (std::net::Ipv4Addr::LOCALHOST, baton.port()),
        )));
        cfg.keep_alive = false;
        cfg.concurrency = 8;
        cfg.max_requests = Some(n);
        let report = baton_load::start(cfg).wait();
        assert_eq!(report.failed, 0, "{report}");
        report
    };
    run(1000);
    let before = baton_e2e::inspect::fd_count(pid).expect("baton's fds");
    run(100_000);
    let after = baton_e2e::inspect::fd_count(pid).expect("baton's fds");
    assert!(
        after <= before + 2,
        "baton had {before} descriptors, and {after} after 100,000 connections"
    );
    let s = status(&baton);
    assert!(s["dispatch"]["dispatched"].as_u64() >= Some(101_000), "{s}");
    stop_cleanly(baton);
}

/// baton's user+system CPU time so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line: 11 and 12 here.
    Duration::from_millis((f[11] + f[12]) * 10)
}

/// Out of descriptors (`ulimit -n 64`), `accept` fails with `EMFILE`:
/// baton pauses accepting instead of spinning on the readable listener,
/// says so, and once descriptors are free again serves every client
/// that waited (queued in baton, or still in the kernel's backlog).
#[test]
fn emfile_on_accept_pauses_instead_of_spinning() {
    let demo = baton_e2e::bin("demo-server");
    let baton = BatonCmd::new()
        .args([
            "--dispatch",
            "--workers",
            "1",
            "--queue",
            "1000",
            "--queue-timeout",
            "60s",
        ])
        .command([demo.as_os_str(), "--credits".as_ref(), "1".as_ref()])
        .spawn_under(|argv, _| {
            let mut cmd = std::process::Command::new("sh");
            cmd.arg("-c")
                .arg("ulimit -n 64 && exec \"$@\"")
                .arg("sh")
                .args(argv);
            cmd
        });
    baton.wait_for("generation 1 ready", WAIT);
    let pid = baton.baton_pid();
    let busy = http::send(baton.port(), "/sleep?ms=4000").expect("send");
    wait_active(&baton, 1);
    let waiting: Vec<_> = (0..80)
        .map(|i| http::send(baton.port(), "/").unwrap_or_else(|e| panic!("client {i}: {e}")))
        .collect();
    baton.wait_for("baton is out of file descriptors", WAIT);
    // Let a second pass (not a synchronisation): a spinning loop would use
    // a good part of it even on a busy machine, a paused one almost none
    // (`ctl status` cannot answer now: baton cannot accept its client
    // either). A loop that spins also never serves the clients below.
    let before = cpu_time(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_time(pid).saturating_sub(before);
    assert!(
        used < Duration::from_millis(250),
        "baton used {used:?} of CPU in 1 s while out of descriptors: it spins"
    );
    assert_eq!(busy.finish().expect("the busy one").status, 200);
    for (i, p) in waiting.into_iter().enumerate() {
        let r = p
            .finish()
            .unwrap_or_else(|e| panic!("waiting client {i}: {e}"));
        assert_eq!(r.status, 200, "waiting client {i}");
    }
    let s = status(&baton);
    assert!(s["dispatch"]["accept_errors"].as_u64() >= Some(1), "{s}");
    assert_eq!(s["dispatch"]["dropped"], 0, "{s}");
    stop_cleanly(baton);
}

/// Connections waiting in baton's queue when it upgrades itself in place
/// are descriptors in the state: the new image hands them to the worker
/// once it is free, and every client is served.
#[test]
fn queued_connections_survive_an_in_place_upgrade() {
    let baton = one_slot(&["--queue", "16", "--queue-timeout", "60s"]);
    let busy = http::send(baton.port(), "/sleep?ms=2000").expect("send");
    wait_active(&baton, 1);
    let queued: Vec<_> = (0..3)
        .map(|_| http::send(baton.port(), "/").expect("send"))
        .collect();
    // Wait (bounded) until baton holds the three.
    let deadline = Instant::now() + WAIT;
    while status(&baton)["dispatch"]["queued_now"] != 3 {
        assert!(
            Instant::now() < deadline,
            "never 3 queued: {}",
            status(&baton)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = ctl::ctl(&baton, &["upgrade"]);
    assert!(out.status.success(), "ctl upgrade: {out:?}");
    assert_eq!(status(&baton)["dispatch"]["queued_now"], 3);
    assert_eq!(busy.finish().expect("the busy one").status, 200);
    for (i, p) in queued.into_iter().enumerate() {
        let r = p
            .finish()
            .unwrap_or_else(|e| panic!("queued client {i}: {e}"));
        assert_eq!(r.status, 200, "queued client {i}");
    }
    let s = status(&baton);
    assert_eq!(s["dispatch"]["dropped"], 0, "{s}");
    assert_eq!(s["upgrades"], 1, "{s}");
    stop_cleanly(baton);
}

/// A reload whose generation fails (the app cannot import) leaves the old
/// generation serving through baton, and a good reload after it moves the
/// connections on.
#[test]
fn a_failed_reload_keeps_dispatching_to_the_old_generation() {
    let test = "a_failed_reload_keeps_dispatching_to_the_old_generation";
    let Some(python) = baton_e2e::tools::which_or_skip(test, "python3", "python3") else {
        return;
    };
    let cmd = python_worker(&python, "pass");
    let broken = cmd.dir().join("broken");
    let baton = cmd
        .env("APP_FAIL_IF", &broken)
        .args(["--ready-timeout", "20s"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    std::fs::write(&broken, "").expect("break the release");
    let out = ctl::ctl(&baton, &["reload"]);
    assert_eq!(out.status.code(), Some(10), "a failed reload: {out:?}");
    for i in 0..4 {
        let r = http::get(baton.port(), "/").unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.generation(), Some(1), "request {i}");
    }
    std::fs::remove_file(&broken).expect("fix the release");
    let out = ctl::ctl(&baton, &["reload"]);
    assert!(out.status.success(), "a good reload: {out:?}");
    let r = http::get_ok(baton.port(), "/");
    assert_eq!(r.generation(), Some(3), "{r:?}");
    stop_cleanly(baton);
}

/// `ctl scale` under `--dispatch`: the new workers get channels and,
/// once they say `ready`, their share of the connections; scaling down
/// leaves the rest serving everything.
#[test]
fn scaled_up_workers_get_connections_and_scaling_down_loses_none() {
    let demo = baton_e2e::bin("demo-server");
    let baton = BatonCmd::new()
        .args(["--dispatch", "--workers", "2"])
        .command([demo.as_os_str(), "--credits".as_ref(), "1".as_ref()])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let out = ctl::ctl(&baton, &["scale", "4"]);
    assert!(out.status.success(), "ctl scale 4: {out:?}");
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status(&baton);
        let ready = s["generations"][0]["workers"].as_array().map_or(0, |ws| {
            ws.iter().filter(|w| w["dispatch"]["ready"] == true).count()
        });
        if ready == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "never 4 ready workers: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..40 {
        http::get_ok(baton.port(), "/");
    }
    let counts = per_worker(&status(&baton), 1);
    assert_eq!(counts.len(), 4, "{counts:?}");
    assert!(counts.values().all(|&n| n > 0), "{counts:?}");
    let out = ctl::ctl(&baton, &["scale", "1"]);
    assert!(out.status.success(), "ctl scale 1: {out:?}");
    for i in 0..10 {
        let r = http::get(baton.port(), "/").unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status, 200, "request {i}");
    }
    let s = status(&baton);
    assert_eq!(s["dispatch"]["dropped"], 0, "{s}");
    stop_cleanly(baton);
}
