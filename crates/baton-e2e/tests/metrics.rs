//! `--metrics ADDR`: `/metrics` scraped and parsed by a real Prometheus
//! parser (the `prometheus_client` Python package), counters that survive
//! reloads and in-place upgrades, `/ready` and `/live` as Kubernetes probes
//! use them; `baton ctl status` (table and `--json`) and `baton ctl events`
//! (JSON lines, across an upgrade, to the last `stopped` line).

#![allow(
    clippy::float_cmp,
    reason = "the samples compared are counts and copied timestamps: exact in an f64"
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use baton_e2e::ctl::{control_path, ctl};
use baton_e2e::metrics::{self, get, port_after};
use baton_e2e::{Baton, BatonCmd, Proc, Signal, WAIT, bin, http};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn start(extra: &[&str], probe: &[&str]) -> Baton {
    BatonCmd::new()
        .args(["--metrics", "127.0.0.1:0"])
        .args(extra)
        .probe(probe)
        .spawn()
}

/// Reloads by outcome, rollbacks, both histograms, workers by state and the
/// serving generation, as the parser reads them; all kept by an in-place
/// upgrade, which keeps the endpoint's port too.
#[test]
fn metrics_count_reloads_and_rollbacks_and_survive_an_upgrade() {
    let Some(python) =
        metrics::python_or_skip("metrics_count_reloads_and_rollbacks_and_survive_an_upgrade")
    else {
        return;
    };
    let baton = start(&["--workers", "2"], &["--drain-ms", "50"]);
    let port = metrics::port(&baton);
    baton.wait_for("generation 1 ready", WAIT);
    let s = metrics::scrape(&python, port);
    assert_eq!(get(&s, "baton_ready", &[]), 1.0);
    assert_eq!(get(&s, "baton_serving_generation", &[]), 1.0);
    assert_eq!(
        get(
            &s,
            "baton_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(
        get(
            &s,
            "baton_workers",
            &[("generation_state", "serving"), ("state", "ready")]
        ),
        2.0
    );
    assert_eq!(
        get(&s, "baton_reloads_total", &[("outcome", "succeeded")]),
        0.0
    );

    // One reload that succeeds (generation 1 drains away), one that fails.
    let mark = baton.mark();
    baton.reload(2, WAIT);
    baton.wait_for_after(mark, "generation 1 exited", WAIT);
    baton.set_script("--exit-at-start 3");
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    baton.wait_for_after(mark, "reload failed", WAIT);
    baton.wait_for_after(mark, "generation 3 exited", WAIT);
    baton.clear_script();

    let check = |s: &[metrics::Sample], when: &str| {
        let v = |name: &str, labels: &[(&str, &str)]| get(s, name, labels);
        assert_eq!(
            v("baton_reloads_total", &[("outcome", "succeeded")]),
            1.0,
            "{when}"
        );
        assert_eq!(
            v("baton_reloads_total", &[("outcome", "failed")]),
            1.0,
            "{when}"
        );
        assert_eq!(v("baton_reload_attempts_total", &[]), 2.0, "{when}");
        assert_eq!(
            v("baton_rollbacks_total", &[("kind", "reload")]),
            1.0,
            "{when}"
        );
        assert_eq!(
            v(
                "baton_reload_duration_seconds_count",
                &[("outcome", "succeeded")]
            ),
            1.0,
            "{when}"
        );
        assert_eq!(
            v(
                "baton_reload_duration_seconds_count",
                &[("outcome", "failed")]
            ),
            1.0,
            "{when}"
        );
        assert!(
            v(
                "baton_reload_duration_seconds_sum",
                &[("outcome", "succeeded")]
            ) > 0.0,
            "{when}"
        );
        assert_eq!(
            v(
                "baton_drain_duration_seconds_count",
                &[("outcome", "clean")]
            ),
            1.0,
            "{when}: generation 1 drained on its own"
        );
        assert_eq!(v("baton_serving_generation", &[]), 2.0, "{when}");
        assert_eq!(v("baton_last_reload_success", &[]), 0.0, "{when}");
        assert_eq!(
            v(
                "baton_workers",
                &[("generation_state", "serving"), ("state", "ready")]
            ),
            2.0,
            "{when}"
        );
    };
    let before = metrics::scrape(&python, port);
    check(&before, "before the upgrade");

    let mark = baton.mark();
    let out = ctl(&baton, &["upgrade"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    baton.wait_for_after(mark, "upgraded in place", WAIT);
    // The new image reports the endpoint it inherited: the same port.
    assert_eq!(
        port_after(&baton, mark),
        port,
        "the endpoint keeps its port"
    );
    let after = metrics::scrape(&python, port);
    check(&after, "after the upgrade");
    assert_eq!(
        get(&after, "baton_upgrades_total", &[("outcome", "succeeded")]),
        1.0
    );
    assert_eq!(
        get(&after, "baton_start_time_seconds", &[]),
        get(&before, "baton_start_time_seconds", &[]),
        "an upgrade keeps baton's start time"
    );
    assert!(
        get(&after, "baton_events_total", &[]) > get(&before, "baton_events_total", &[]),
        "the event count goes on"
    );
}

/// `/ready` is 503 while the first generation is not ready yet, 200 once it
/// serves, 503 again while baton stops (its workers still draining);
/// `/live` is 200 throughout; anything else is 404.
#[test]
fn ready_is_503_before_the_first_generation_and_while_stopping() {
    let cmd = BatonCmd::new();
    let go = cmd.dir().join("go");
    let check = format!("exec:test -e {}", go.display());
    let mut baton = cmd
        .args(["--metrics", "127.0.0.1:0", "--ready", &check])
        .args(["--ready-timeout", "120s"])
        .probe(&["--ignore-term"])
        .args(["--grace", "60s"])
        .spawn();
    let port = metrics::port(&baton);
    let r = http::get(port, "/ready").expect("GET /ready");
    assert_eq!(r.status, 503, "no generation is ready yet: {r:?}");
    let r = http::get(port, "/live").expect("GET /live");
    assert_eq!(r.status, 200, "{r:?}");
    let r = http::get(port, "/nothing-here").expect("GET /nothing-here");
    assert_eq!(r.status, 404, "{r:?}");

    std::fs::write(&go, "").expect("let the readiness check pass");
    baton.wait_for("generation 1 ready", WAIT);
    let r = http::get(port, "/ready").expect("GET /ready");
    assert_eq!(r.status, 200, "generation 1 serves: {r:?}");

    // The probe ignores SIGTERM (from before it says "serving"; the exec
    // check can pass before that), so baton stays in its stop for the 60 s
    // grace: the endpoint answers meanwhile.
    baton.wait_until_after(0, "the probe serving", WAIT, |l| {
        l.contains("probe gen=1 worker=0") && l.ends_with(" serving")
    });
    let mark = baton.mark();
    baton.signal(Signal::TERM);
    baton.wait_for_after(mark, "stopping", WAIT);
    let r = http::get(port, "/ready").expect("GET /ready while stopping");
    assert_eq!(r.status, 503, "baton is stopping: {r:?}");
    let r = http::get(port, "/live").expect("GET /live while stopping");
    assert_eq!(r.status, 200, "the loop still turns: {r:?}");
    baton.stop(Signal::INT, WAIT);
}

/// `--metrics` mistakes are refused with a message that shows the form.
#[test]
fn a_bad_metrics_address_is_a_usage_error_that_shows_the_form() {
    for (value, says) in [
        ("127.0.0.1:91OO", "invalid metrics address"),
        ("unix:/tmp/m.sock", "needs a TCP address"),
        ("m=127.0.0.1:9100", "has no name"),
    ] {
        let mut cmd = Command::new(bin("baton"));
        cmd.args([
            "run",
            "--no-control",
            "-l",
            "127.0.0.1:0",
            "--metrics",
            value,
            "--",
            "true",
        ]);
        let out = baton_e2e::tools::run_bounded(cmd, WAIT);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{value}: {err}");
        assert!(err.contains(says), "{value}: {err}");
    }
}

/// An address already in use fails `baton run` with exit 3 before any
/// worker starts. (`--no-control`: the default control socket,
/// `/run/baton/baton.sock` as root, would be shared with other tests.)
#[test]
fn a_metrics_address_in_use_fails_the_start_with_exit_3() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let mut cmd = Command::new(bin("baton"));
    cmd.args([
        "run",
        "--no-control",
        "-l",
        "127.0.0.1:0",
        "--metrics",
        &addr,
        "--",
        "true",
    ]);
    let out = baton_e2e::tools::run_bounded(cmd, WAIT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains(&addr), "the message names the address: {err}");
}

/// `ctl status` prints a table with a row per worker, and `--json` the
/// documented fields.
#[test]
fn ctl_status_prints_a_table_and_json() {
    let baton = start(&["--workers", "2"], &["--drain-ms", "50"]);
    baton.wait_for("generation 1 ready", WAIT);
    baton.reload(2, WAIT);
    let out = ctl(&baton, &["status"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    let header = text
        .lines()
        .find(|l| l.starts_with("GEN"))
        .unwrap_or_else(|| panic!("no table header in:\n{text}"));
    for col in ["GEN", "STATE", "PID", "UPTIME", "RESTARTS"] {
        assert!(header.contains(col), "{col} missing from {header:?}");
    }
    assert!(text.contains("last reload"), "{text}");
    assert!(text.contains("metrics: http://127.0.0.1:"), "{text}");

    let out = ctl(&baton, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(v["ready"], true, "{v:#}");
    assert_eq!(v["serving"], 2, "{v:#}");
    assert_eq!(v["reloads"], 1, "{v:#}");
    assert!(
        v["metrics"]
            .as_str()
            .is_some_and(|m| m.starts_with("http://127.0.0.1:")),
        "{v:#}"
    );
    let gens = v["generations"].as_array().expect("generations");
    let serving = gens
        .iter()
        .find(|g| g["id"] == 2)
        .unwrap_or_else(|| panic!("no generation 2: {v:#}"));
    let workers = serving["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 2, "{v:#}");
    for w in workers {
        let pid = w["pid"].as_u64().unwrap_or_else(|| panic!("{w:#}"));
        assert!(w["uptime_ms"].as_u64().is_some(), "{w:#}");
        // The table has a row for each worker: its pid in the PID column.
        let row = text
            .lines()
            .find(|l| l.split_whitespace().any(|c| c == pid.to_string()))
            .unwrap_or_else(|| panic!("no row for pid {pid} in:\n{text}"));
        assert!(row.contains("ready"), "{row:?}");
    }
}

/// Lines of a `baton ctl events` child, read on a thread.
struct Events {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<serde_json::Value>,
}

impl Events {
    fn start(baton: &Baton) -> Self {
        let mut child = Command::new(bin("baton"))
            .arg("ctl")
            .arg("--control")
            .arg(control_path(baton))
            .arg("events")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start baton ctl events");
        let out = child.stdout.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut ev = Self {
            child,
            lines,
            seen: Vec::new(),
        };
        ev.wait(|e| e["event"] == "subscribed", "the subscribed line");
        ev
    }

    /// Reads until an event matches `pred`; returns it.
    fn wait(&mut self, pred: impl Fn(&serde_json::Value) -> bool, what: &str) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let v: serde_json::Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {what} within {WAIT:?}; seen: {:#?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the stream ended before {what}; seen: {:#?}", self.seen)
                }
            }
        }
    }

    /// Waits for the child to exit; its exit code.
    fn exit_code(mut self) -> Option<i32> {
        let p = Proc::find(self.child.id()).expect("ctl events runs");
        if !p.wait_exited(WAIT) {
            let _ = self.child.kill();
            panic!("baton ctl events did not exit within {WAIT:?}");
        }
        self.child.wait().expect("reap").code()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A reload, an upgrade of baton and the stop, as one stream of JSON lines
/// with consecutive sequence numbers, ending with `stopped` (exit 0).
#[test]
fn ctl_events_streams_a_reload_an_upgrade_and_the_stop() {
    let mut baton = start(&[], &["--drain-ms", "50"]);
    baton.wait_for("generation 1 ready", WAIT);
    let mut ev = Events::start(&baton);

    baton.signal(Signal::HUP);
    let started = ev.wait(|e| e["event"] == "reload_started", "reload_started");
    assert_eq!(started["generation"], 2, "{started}");
    assert_eq!(started["serving"], 1, "{started}");
    let ok = ev.wait(|e| e["event"] == "reload_succeeded", "reload_succeeded");
    assert_eq!(ok["previous"], 1, "{ok}");
    assert!(ok["took_ms"].as_f64().is_some_and(|t| t > 0.0), "{ok}");
    assert!(
        ok["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{ok}"
    );
    ev.wait(
        |e| e["event"] == "generation_draining" && e["generation"] == 1,
        "generation 1 draining",
    );
    let exited = ev.wait(
        |e| e["event"] == "generation_exited" && e["generation"] == 1,
        "generation 1 exited",
    );
    assert!(exited["drained_ms"].as_f64().is_some(), "{exited}");

    let out = ctl(&baton, &["upgrade"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    ev.wait(|e| e["event"] == "upgraded", "upgraded");

    // Events after the upgrade reach the same reader.
    baton.signal(Signal::HUP);
    ev.wait(
        |e| e["event"] == "reload_succeeded" && e["generation"] == 3,
        "the reload after the upgrade",
    );

    baton.stop(Signal::TERM, WAIT);
    let last = ev.wait(|e| e["event"] == "stopped", "stopped");
    assert_eq!(last["exit_code"], 0, "{last}");
    let seqs: Vec<u64> = ev
        .seen
        .iter()
        .filter(|e| e["event"] != "subscribed")
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "sequence numbers go up by one, across the upgrade: {seqs:?}"
    );
    assert_eq!(ev.exit_code(), Some(0));
}

/// A reader that does not keep up is dropped with a last `dropped` line
/// and exit 14, and baton goes on serving (and counts it).
#[test]
fn a_reader_that_falls_behind_is_dropped_and_counted() {
    let Some(python) = metrics::python_or_skip("a_reader_that_falls_behind_is_dropped_and_counted")
    else {
        return;
    };
    let baton = start(&["--workers", "4"], &["--drain-ms", "20"]);
    let port = metrics::port(&baton);
    baton.wait_for("generation 1 ready", WAIT);
    // A reader stopped with SIGSTOP reads nothing; it asks for the smallest
    // buffer.
    let mut child = Command::new(bin("baton"))
        .arg("ctl")
        .arg("--control")
        .arg(control_path(&baton))
        .args(["events", "--buffer", "1024"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start baton ctl events");
    let out = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(out).lines();
    let first = lines.next().expect("a line").expect("read");
    assert!(first.contains("\"subscribed\""), "{first}");
    let reader = Proc::find(child.id()).expect("ctl events runs");
    reader.signal(Signal::STOP);
    // Its bound is then 1 KiB in baton plus the few KiB of a socket buffer
    // sized to match: a few reloads of four workers pass it.
    let needle = "dropped a baton ctl events reader";
    for g in 2..=21 {
        baton.reload(g, WAIT);
        if baton.count(needle) > 0 {
            break;
        }
    }
    // An overflow in the last reload's final events may be logged after the
    // lines that reload waited for.
    baton.wait_for(needle, WAIT);
    assert_eq!(baton.count(needle), 1, "one reader, dropped once");
    reader.signal(Signal::CONT);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let last = rest.last().cloned().unwrap_or_default();
    assert!(last.contains("\"dropped\""), "{rest:#?}");
    let p = Proc::find(child.id());
    assert!(p.is_none_or(|p| p.wait_exited(WAIT)), "ctl events exits");
    let status = child.wait().expect("reap");
    assert_eq!(status.code(), Some(14), "{status:?}");
    let s = metrics::scrape(&python, port);
    assert_eq!(get(&s, "baton_event_readers_dropped_total", &[]), 1.0);
    assert_eq!(get(&s, "baton_ready", &[]), 1.0);
}

/// The config file's `metrics` key, read again at each reload: a new
/// address is bound (and the old one closed) with the counters kept; an
/// address in use refuses the reload and the old endpoint goes on
/// answering.
#[test]
fn a_reload_moves_the_metrics_endpoint_and_keeps_the_counts() {
    let cmd = BatonCmd::new().listeners_from_config();
    let file = cmd.dir().join("baton.toml");
    let script = cmd.script_path();
    let config = |metrics: &str| {
        format!(
            "command = [\"{}\", \"--script\", \"{}\", \"--drain-ms\", \"50\"]\n\
             metrics = \"{metrics}\"\n\
             [[listen]]\naddress = \"127.0.0.1:0\"\n",
            bin("baton-probe").display(),
            script.display()
        )
    };
    let write = |text: String| {
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write the config");
        std::fs::rename(&tmp, &file).expect("install the config");
    };
    write(config("127.0.0.1:0"));
    let baton = cmd.arg("--config").arg(&file).spawn();
    let old = metrics::port(&baton);
    baton.wait_for("generation 1 ready", WAIT);

    // A port that is free now (the kernel picks it; closed again at once).
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    write(config(&format!("127.0.0.1:{free}")));
    let mark = baton.mark();
    baton.reload(2, WAIT);
    assert_eq!(port_after(&baton, mark), free);
    assert!(baton.seen_after(
        mark,
        &format!("metrics endpoint http://127.0.0.1:{old} closed")
    ));
    let r = http::get(free, "/metrics").expect("the new endpoint");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body
            .contains("baton_reloads_total{outcome=\"succeeded\"} 1"),
        "the count goes on at the new address: {}",
        r.body
    );
    assert!(
        http::get(old, "/live").is_err(),
        "the old address is closed"
    );

    // An address in use: the reload is refused, the endpoint stays.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = taken.local_addr().expect("addr");
    write(config(&busy.to_string()));
    let out = ctl(&baton, &["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(12), "{err}");
    assert!(
        err.contains(&busy.to_string()),
        "the message names the address: {err}"
    );
    let r = http::get(free, "/ready").expect("the endpoint still answers");
    assert_eq!(r.status, 200, "{r:?}");
}

/// What a Kubernetes readinessProbe sees through reloads: `/ready` names
/// the generation that serves and moves to a new one exactly when it takes
/// over: not while it starts (it is not ready yet), as soon as baton says it
/// is ready, never back, never a 503 in between; a reload that fails does
/// not move it at all.
#[test]
fn ready_follows_the_serving_generation_exactly() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let cmd = BatonCmd::new();
    let dir = cmd.dir().to_path_buf();
    // Each generation is ready once its own file exists.
    let check = format!("exec:test -e {}/go-$BATON_GENERATION", dir.display());
    std::fs::write(dir.join("go-1"), "").expect("write go-1");
    let mut baton = cmd
        .args(["--metrics", "127.0.0.1:0", "--ready", &check])
        .args(["--ready-timeout", "120s"])
        .probe(&["--drain-ms", "50"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let port = metrics::port(&baton);
    let says = move || {
        let r = http::get(port, "/ready").expect("GET /ready");
        (r.status, r.body)
    };
    let serves = |g: u32| (200, format!("ready: generation {g} serves\n"));
    assert_eq!(says(), serves(1));

    // Every answer through the reloads, from a poller beside them.
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                seen.push(says());
                // Pacing only: the poller must not starve the reloads.
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            seen
        })
    };

    for next in 2..=3 {
        let mark = baton.mark();
        baton.signal(Signal::HUP);
        baton.wait_for_after(
            mark,
            &format!("worker 0 of generation {next} started"),
            WAIT,
        );
        // Started, not ready: the old generation still serves.
        for _ in 0..10 {
            assert_eq!(says(), serves(next - 1), "generation {next} is not ready");
        }
        std::fs::write(dir.join(format!("go-{next}")), "").expect("write go-N");
        baton.wait_for_after(mark, &format!("generation {next} ready"), WAIT);
        // baton logs it in the loop turn that makes it serve: /ready, which
        // the same loop answers, can only say so from then on.
        assert_eq!(says(), serves(next));
    }
    // A reload whose worker exits at start is rolled back: no move.
    baton.set_script("--exit-at-start 3");
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    baton.wait_for_after(mark, "reload failed", WAIT);
    baton.wait_for_after(mark, "generation 4 exited", WAIT);
    assert_eq!(says(), serves(3));
    baton.clear_script();

    stop.store(true, Ordering::Relaxed);
    let seen = poller.join().expect("the poller");
    assert!(seen.len() > 10, "the poller got {} answers", seen.len());
    let mut last = 1;
    for (status, body) in &seen {
        assert_eq!(*status, 200, "{body:?} in {seen:?}");
        let g: u32 = body
            .strip_prefix("ready: generation ")
            .and_then(|b| b.strip_suffix(" serves\n"))
            .and_then(|g| g.parse().ok())
            .unwrap_or_else(|| panic!("{body:?}"));
        assert!(g == last || g == last + 1, "generation {g} after {last}");
        last = g;
    }
    assert_eq!(last, 3, "the poller ends with generation 3 serving");
    baton.stop(Signal::TERM, WAIT);
}
