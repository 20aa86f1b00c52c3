//! The soak, in the suite: 300 reloads under light load leave baton as
//! they found it. The 5,000-reload version is a benchmark
//! (`bench/soak/run`, figures in `bench/soak/RESULTS.md`).

mod common;

use baton_e2e::inspect::{self, Footprint};
use baton_e2e::{BatonCmd, NetNs, Signal, WAIT};
use common::{Load, reloads_under_load};

const RELOADS: u32 = 300;
/// Reloads before the reference sample: allocator arenas, log buffers and
/// the like settle first.
const WARM_UP: u32 = 50;

/// baton's footprint, sampled again (bounded, 2 s) until its descriptor
/// and thread counts are `want`: the spawner thread opens a descriptor for
/// a moment when it ends an old generation's cgroup (its `cgroup.kill`),
/// just after the generation is gone. A leak does not go away and shows.
/// Without `want` (the reference sample), until two samples in a row agree.
fn settled_footprint(pid: u32, want: Option<(usize, usize)>) -> Footprint {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut last = inspect::footprint(pid).expect("baton runs");
    loop {
        let counts = (last.fds, last.threads);
        if want.is_some_and(|w| w == counts) || std::time::Instant::now() >= deadline {
            return last;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        let now = inspect::footprint(pid).expect("baton runs");
        if want.is_none() && (now.fds, now.threads) == counts {
            return now;
        }
        last = now;
    }
}

/// 300 reloads under light keep-alive load (2 connections): 0 failed
/// requests; after the warm-up, baton's RSS grows by less than 1 MiB, and
/// its descriptor and thread counts are exactly what they were, with no
/// zombie ever left, at every quiet moment (each old generation gone).
#[test]
fn soak_300_reloads_under_light_load_keeps_baton_flat() {
    let _ns = NetNs::enter();
    let mut baton = BatonCmd::new()
        .args(["--workers", "2"])
        .probe(&["--drain-ms", "2000"])
        // Info is enough here, and keeps 300 reloads' worth of lines small.
        .env("BATON_LOG", "info")
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let me = baton.pid();
    let port = baton.port();
    let mut samples: Vec<(u32, Footprint)> = Vec::new();
    let mut reference: Option<Footprint> = None;
    let load = Load {
        reloads: RELOADS,
        concurrency: 2,
        keep_alive: true,
        ..Load::default()
    };
    let report = reloads_under_load(
        &baton,
        port,
        &load,
        || baton.signal(Signal::HUP),
        |g| {
            let want = reference.map(|r: Footprint| (r.fds, r.threads));
            let sample = settled_footprint(me, want);
            if g == WARM_UP + 1 {
                reference = Some(sample);
            }
            samples.push((g, sample));
        },
    );
    eprintln!("[e2e] load report: {report}");
    assert_eq!(report.failed, 0, "{report}");

    let (_, warm) = samples
        .iter()
        .find(|(g, _)| *g == WARM_UP + 1)
        .copied()
        .expect("a sample after the warm-up");
    let (_, last) = *samples.last().expect("samples");
    eprintln!("[e2e] baton after {WARM_UP} reloads: {warm:?}; after {RELOADS}: {last:?}");
    for (g, s) in &samples {
        assert_eq!(
            s.zombies, 0,
            "zombies of baton after reload to generation {g}: {s:?}"
        );
        if *g > WARM_UP {
            assert_eq!(
                (s.fds, s.threads),
                (warm.fds, warm.threads),
                "baton's descriptors or threads changed by generation {g}: {s:?}, after the warm-up {warm:?}"
            );
        }
    }
    let growth = last.rss_kib.saturating_sub(warm.rss_kib);
    assert!(
        growth < 1024,
        "baton's RSS grew by {growth} KiB over {} reloads after the warm-up ({warm:?} -> {last:?})",
        RELOADS - WARM_UP
    );
    let status = baton.stop(Signal::TERM, WAIT);
    assert_eq!(status.code(), Some(0));
}
