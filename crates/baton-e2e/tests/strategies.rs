//! Reload strategies (`--strategy rolling|restart`, `--max-surge`),
//! `--max-draining` and quiet boot, against real processes.
//!
//! * rolling: the processes baton runs (sampled from /proc all along) never
//!   exceed workers + surge, and no request fails under load;
//! * a rolling reload that fails makes the old generation whole again;
//! * restart: the old generation is gone before the new one starts, no
//!   request fails (clients wait in the listen queue), and baton reports the
//!   longest time no worker served;
//! * back-to-back reloads do not wait for a generation that drains slowly;
//! * quiet boot: a booting worker runs at `SCHED_IDLE`, and gets its normal
//!   policy back, with its whole tree, once it is ready.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use baton_e2e::{Baton, BatonCmd, Signal, WAIT, procs};
use common::{Load, reloads_under_load};

/// Counts baton's children (its workers; not the guard) every few
/// milliseconds until told to stop; returns the most seen at once.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Sampler {
    fn start(baton_pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicUsize::new(0));
        let (s, p) = (Arc::clone(&stop), Arc::clone(&peak));
        let thread = std::thread::spawn(move || {
            let mut samples = 0;
            while !s.load(Ordering::Relaxed) {
                // Zombies are processes baton has not reaped yet: they
                // still count (their pid is not free).
                let n = procs::children_but_guard(baton_pid).len();
                p.fetch_max(n, Ordering::Relaxed);
                samples += 1;
                // Sampling, not synchronisation: a pause keeps the sampler
                // from taking a whole core of two.
                std::thread::sleep(Duration::from_millis(2));
            }
            samples
        });
        Self {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// (most processes seen at once, samples taken)
    fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self
            .thread
            .take()
            .expect("finished once")
            .join()
            .expect("the sampler thread");
        (self.peak.load(Ordering::Relaxed), samples)
    }
}

fn stop_cleanly(mut baton: Baton) {
    let status = baton.stop(Signal::TERM, WAIT);
    assert_eq!(status.code(), Some(0), "graceful stop");
}

#[test]
fn rolling_reloads_never_exceed_workers_plus_surge_and_fail_no_request() {
    let baton = BatonCmd::new()
        .args([
            "--workers",
            "3",
            "--strategy",
            "rolling",
            "--max-surge",
            "1",
        ])
        // Long enough that a load client stalled on a busy machine still
        // finds its idle keep-alive connection answered in band (a drain
        // ends as soon as its connections are closed, so it is short).
        .probe(&["--drain-ms", "2000"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let sampler = Sampler::start(baton.pid());
    let load = Load {
        reloads: 5,
        ..Load::default()
    };
    let report = reloads_under_load(
        &baton,
        baton.port(),
        &load,
        || baton.signal(Signal::HUP),
        |_| {},
    );
    let (peak, samples) = sampler.finish();
    eprintln!("[e2e] rolling: at most {peak} processes in {samples} samples; {report}");
    assert!(
        baton.count("at most 4 processes") >= 5,
        "every reload rolled"
    );
    assert!(peak <= 4, "{peak} processes, more than 3 workers + 1 surge");
    assert!(peak >= 3, "the sampler saw the workers ({peak})");
    assert_eq!(report.failed, 0, "{report}");
    stop_cleanly(baton);
}

#[test]
fn a_failed_rolling_reload_starts_the_replaced_old_workers_again() {
    let probe = baton_e2e::bin("baton-probe");
    let dir = tempfile::tempdir().expect("temp dir");
    let fail = dir.path().join("fail-generation-2-worker-1");
    // Worker 1 of generation 2 fails at start; every other worker is fine
    // (the old generation's too, when it starts again).
    let script = format!(
        "if [ \"$BATON_GENERATION\" = 2 ] && [ \"$BATON_WORKER\" = 1 ] && [ -e '{}' ]; then echo 'failing on purpose'; exit 3; fi; exec '{}' --drain-ms 100",
        fail.display(),
        probe.display()
    );
    let baton = BatonCmd::new()
        .args(["--workers", "2", "--strategy", "rolling"])
        .command(["sh", "-c", &script])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    std::fs::write(&fail, "").expect("the fail file");
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    baton.wait_for_after(mark, "worker 0 of generation 2 is ready", WAIT);
    baton.wait_for_after(mark, "draining: replaced", WAIT);
    let (_, verdict) = baton.wait_for_after(mark, "reload failed: generation 2", WAIT);
    assert!(
        verdict.contains(
            "the 1 worker of generation 1 it had replaced starts again from generation 1's own release"
        ),
        "{verdict}"
    );
    baton.wait_for_after(mark, "generation 2 exited", WAIT);
    baton.wait_for_after(mark, "worker 1 of generation 1 is ready again", WAIT);
    let alive = baton
        .workers_of(1)
        .into_iter()
        .filter(|w| w.proc.as_ref().is_some_and(baton_e2e::Proc::is_alive))
        .count();
    assert_eq!(alive, 2, "generation 1 is whole again");
    // The next reload works.
    std::fs::remove_file(&fail).expect("remove the fail file");
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    baton.wait_for_after(mark, "generation 3 ready", WAIT);
    baton.wait_for_after(mark, "generation 1 exited", WAIT);
    stop_cleanly(baton);
}

#[test]
fn restart_reloads_fail_no_request_and_report_the_queue_wait() {
    let baton = BatonCmd::new()
        .args(["--workers", "2", "--strategy", "restart"])
        .probe(&["--drain-ms", "50"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let sampler = Sampler::start(baton.pid());
    let load = Load {
        reloads: 4,
        keep_alive: false,
        ..Load::default()
    };
    let report = reloads_under_load(
        &baton,
        baton.port(),
        &load,
        || baton.signal(Signal::HUP),
        |_| {},
    );
    let (peak, _) = sampler.finish();
    let waits: Vec<u64> = baton
        .lines()
        .iter()
        .filter_map(|l| {
            let rest = l.split("restart: no worker served for ").nth(1)?;
            rest.split(' ').next()?.parse().ok()
        })
        .collect();
    eprintln!(
        "[e2e] restart: no worker for {waits:?} ms; client latency max {:?}; {report}",
        report.latency.max
    );
    assert_eq!(waits.len(), 4, "each restart reports its wait");
    assert!(peak <= 2, "the app never ran twice: {peak} processes");
    assert_eq!(report.failed, 0, "{report}");
    stop_cleanly(baton);
}

#[test]
fn back_to_back_reloads_do_not_wait_for_a_slow_drain() {
    // No generation ever drains by itself (it ignores SIGTERM, and the
    // grace is longer than the test may take): the second reload must not
    // wait for the first one's drain.
    let baton = BatonCmd::new()
        .args(["--workers", "1", "--grace", "120s", "--max-draining", "1"])
        .probe(&["--ignore-term"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    baton.wait_for_after(mark, "generation 1 draining", WAIT);
    baton.signal(Signal::HUP);
    baton.wait_for_after(mark, "generation 3 ready", WAIT);
    let (_, killed) = baton.wait_for_after(mark, "killed while draining", WAIT);
    assert!(
        killed.contains("generation 1 killed while draining"),
        "the oldest goes: {killed}"
    );
    baton.wait_for_after(mark, "generation 1 exited", WAIT);
    assert!(
        !baton.seen_after(mark, "generation 2 exited"),
        "generation 2 drains on"
    );
    let mut baton = baton;
    // Generation 2 still drains: a quit, not a graceful stop.
    let _ = baton.stop(Signal::QUIT, WAIT);
}

#[test]
fn quiet_boot_runs_a_booting_worker_idle_and_restores_its_whole_tree() {
    let baton = BatonCmd::new()
        .args(["--workers", "1", "--quiet-boot", "on"])
        .probe(&["--spawn-grandchild"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let first = baton.workers_of(1)[0].pid;
    let (_, first_child) = baton.wait_for_after(0, "probe: grandchild pid", WAIT);
    assert_eq!(
        procs::sched_policy(first),
        Some(0),
        "the first generation boots normally"
    );
    // The next generation boots slowly: look at it while it does.
    baton.set_script("--ready-after 3s");
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    baton.wait_for_after(mark, "worker 0 of generation 2 started", WAIT);
    let (_, line) = baton.wait_until_after(mark, "generation 2's grandchild", WAIT, |l| {
        l.contains("probe: grandchild pid") && l != first_child
    });
    let grandchild: u32 = line
        .rsplit(' ')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"));
    let worker = baton.workers_of(2)[0].pid;
    baton.assert_booting_quietly(mark, &[worker, grandchild]);
    assert_eq!(
        procs::sched_policy(first),
        Some(0),
        "the serving generation is untouched"
    );
    baton.wait_for_after(mark, "generation 2 ready", WAIT);
    assert_eq!(
        procs::sched_policy(worker),
        Some(0),
        "ready: normal priority again"
    );
    assert_eq!(
        procs::sched_policy(grandchild),
        Some(0),
        "for its whole tree"
    );
    baton.clear_script();
    stop_cleanly(baton);
}

#[test]
fn quiet_boot_off_boots_at_the_normal_priority() {
    let baton = BatonCmd::new()
        .args(["--workers", "1", "--quiet-boot", "off"])
        .probe(&[])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    baton.set_script("--ready-after 2s");
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    baton.wait_for_after(mark, "worker 0 of generation 2 started", WAIT);
    let worker = baton.workers_of(2)[0].pid;
    assert_eq!(procs::sched_policy(worker), Some(0));
    baton.wait_for_after(mark, "generation 2 ready", WAIT);
    baton.clear_script();
    stop_cleanly(baton);
}

/// `strategy` in the config file is read again at every reload: the very
/// reload that reads `strategy = "rolling"` rolls, and a bad combination
/// is refused with the file named, the serving generation untouched.
#[test]
fn the_config_file_strategy_applies_from_the_reload_that_reads_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("baton.toml");
    let probe = baton_e2e::bin("baton-probe");
    let command = format!(
        "command = [{:?}, \"--drain-ms\", \"50\"]\nworkers = 2\n",
        probe.display().to_string()
    );
    std::fs::write(&file, format!("{command}strategy = \"overlap\"\n")).expect("write");
    let baton = BatonCmd::new().arg("--config").arg(&file).spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let (code, json) = baton_e2e::ctl::ctl_text(&baton, &["status", "--json"]);
    assert_eq!(code, Some(0), "{json}");
    assert!(json.contains("\"strategy\": \"overlap\""), "{json}");
    std::fs::write(
        &file,
        format!("{command}strategy = \"rolling\"\nready = \"delay:1s\"\n"),
    )
    .expect("write");
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    baton.wait_for_after(mark, "needs to know when each one is ready", WAIT);
    assert!(!baton.seen_after(mark, "generation 2 starting"));
    std::fs::write(&file, format!("{command}strategy = \"rolling\"\n")).expect("write");
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    baton.wait_for_after(
        mark,
        "rolling reload: generation 2 replaces generation 1",
        WAIT,
    );
    baton.wait_for_after(mark, "generation 2 ready", WAIT);
    baton.wait_for_after(mark, "generation 1 exited", WAIT);
    // ctl status says how the next reload will go.
    let (_, json) = baton_e2e::ctl::ctl_text(&baton, &["status", "--json"]);
    for field in [
        "\"strategy\": \"rolling\"",
        "\"max_surge\": 1",
        "\"max_draining\": 1",
    ] {
        assert!(json.contains(field), "no {field} in {json}");
    }
    let (_, text) = baton_e2e::ctl::ctl_text(&baton, &["status"]);
    assert!(
        text.contains("strategy: rolling, max surge 1, max draining 1, quiet boot"),
        "{text}"
    );
    stop_cleanly(baton);
}
