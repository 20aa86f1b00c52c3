//! Shared by the tests that reload under load (`reload_under_load.rs`,
//! `supervisord.rs`, `real_apps.rs`, `socket_activation.rs`), with strict
//! accounting.
#![allow(dead_code)] // each test binary uses its own part

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use baton_e2e::{Baton, WAIT};
use baton_load::{Config, Report, Target};

/// What [`reloads_under_load`] drives.
pub struct Load {
    pub reloads: u32,
    pub concurrency: usize,
    pub keep_alive: bool,
    pub path: &'static str,
}

impl Default for Load {
    fn default() -> Self {
        Self {
            reloads: 20,
            concurrency: 8,
            keep_alive: true,
            path: "/",
        }
    }
}

/// Runs `load.reloads` reloads of `baton` (whose generation 1 is ready)
/// under load on `127.0.0.1:port` (see [`reloads_under_load_at`]): each asked for by `trigger`, then waited for
/// (`generation N ready`, `generation N-1 exited`, a response from
/// generation N, the old workers gone), then `after_each(N)`. Fails on the
/// first reload after which a request had failed. The app must answer with
/// `X-Generation: $BATON_GENERATION`.
pub fn reloads_under_load(
    baton: &Baton,
    port: u16,
    load: &Load,
    trigger: impl Fn(),
    after_each: impl FnMut(u32),
) -> Report {
    let target = Target::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    reloads_under_load_at(baton, target, load, trigger, after_each)
}

/// [`reloads_under_load`] against any target (a Unix socket).
pub fn reloads_under_load_at(
    baton: &Baton,
    target: Target,
    load: &Load,
    trigger: impl Fn(),
    mut after_each: impl FnMut(u32),
) -> Report {
    let mut cfg = Config::new(target);
    cfg.concurrency = load.concurrency;
    cfg.keep_alive = load.keep_alive;
    load.path.clone_into(&mut cfg.path);
    cfg.request_timeout = Duration::from_secs(20);
    let run = baton_load::start(cfg);
    assert!(
        run.wait_for_generation("1", WAIT).is_some(),
        "no response from generation 1: {}",
        run.snapshot()
    );
    for g in 2..=load.reloads + 1 {
        baton.reload_by(g, WAIT, &trigger);
        assert!(
            run.wait_for_generation(&g.to_string(), WAIT).is_some(),
            "no response from generation {g} after it was ready: {}",
            run.snapshot()
        );
        let old = baton.workers_of(g - 1).into_iter().filter_map(|w| w.proc);
        baton.assert_gone(old, WAIT, &format!("a worker of generation {}", g - 1));
        let snap = run.snapshot();
        assert_eq!(
            snap.failed,
            0,
            "requests failed by reload {} (generation {g}): {snap}",
            g - 1
        );
        after_each(g);
    }
    let report = run.stop();
    assert_eq!(report.failed, 0, "{report}");
    assert!(report.ok > u64::from(load.reloads), "{report}");
    report
}
