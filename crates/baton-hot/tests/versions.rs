//! Versions: swaps under load, calls in flight, bad versions, the two
//! versions rule, drains, the disposable state of a version.

#![expect(
    clippy::unwrap_used,
    reason = "in tests a failed unwrap is a failed test, with its location"
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use baton_hot::{CallError, InstanceMode, Interrupt, LoadError, Outcome, Stage};
use common::{GATES, Init, Wat, eventually, handle, host, read_log, save};

#[test]
fn a_wat_module_loads_and_answers_as_version_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hello.wat");
    save(&path, &Wat::new("v1").text());
    let host = host(dir.path(), |_| {});
    let m = host.load(&path).unwrap();
    assert_eq!(m.path(), std::fs::canonicalize(&path).unwrap());
    let answer = handle(&host, &m, "").unwrap();
    assert_eq!((answer.value.as_str(), answer.version), ("v1", 1));
    // Loading the same path again is the same module, not a new version.
    let again = host.load(dir.path().join(".").join("hello.wat")).unwrap();
    assert_eq!(handle(&host, &again, "x").unwrap().version, 1);
    let log = read_log(dir.path());
    assert!(
        log.contains(&format!(
            "version 1 current, fingerprint {}",
            answer.fingerprint
        )),
        "{log}"
    );
}

#[test]
fn twenty_swaps_under_load_fail_no_call_and_never_go_back_in_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hello.wat");
    save(&path, &Wat::new("v1").text());
    let host = host(dir.path(), |_| {});
    let m = host.load(&path).unwrap();
    // The newest version known to be current: a call that starts later
    // must be answered by it or a newer one.
    let current = Arc::new(AtomicU64::new(1));
    let done = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (host, m, current, done, calls) = (
                host.clone(),
                m.clone(),
                Arc::clone(&current),
                Arc::clone(&done),
                Arc::clone(&calls),
            );
            std::thread::spawn(move || {
                let mut last = 0;
                while !done.load(Ordering::SeqCst) {
                    let floor = current.load(Ordering::SeqCst);
                    let answer = handle(&host, &m, "hello").expect("no call may fail");
                    assert!(
                        answer.version >= floor,
                        "answered by version {} after version {floor} was current",
                        answer.version
                    );
                    assert!(answer.version >= last, "a later call went back in version");
                    assert_eq!(answer.value, format!("v{}", answer.version));
                    last = answer.version;
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for v in 2..=21 {
        save(&path, &Wat::new(&format!("v{v}")).text());
        assert_eq!(host.reload(&m).unwrap(), Outcome::Swapped(v));
        current.store(v, Ordering::SeqCst);
        let s = host.module_status(&m);
        assert_eq!(s.current.unwrap().version, v);
        // Two versions at most: the current one and the one replaced.
        if let Some(d) = s.draining {
            assert_eq!(d.version, v - 1);
        }
    }
    done.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().expect("a worker failed");
    }
    assert!(calls.load(Ordering::Relaxed) > 0);
    eventually("the replaced versions to be freed", || {
        host.module_status(&m).draining.is_none()
    });
    let log = read_log(dir.path());
    for v in 2..=21 {
        assert!(log.contains(&format!("version {v} current")), "{log}");
    }
    assert!(log.contains("version 20 (fingerprint"), "{log}");
}

#[test]
fn a_slow_call_finishes_on_the_old_version_while_new_calls_get_the_new() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slow.wat");
    save(&path, &Wat::new("old").text());
    let host = host(dir.path(), |_| {});
    let m = host.load(&path).unwrap();
    let slow = {
        let (host, m) = (host.clone(), m.clone());
        std::thread::spawn(move || handle(&host, &m, "wait-slow-1"))
    };
    GATES.wait_for_waiter("wait-slow-1");
    save(&path, &Wat::new("new").text());
    assert_eq!(host.reload(&m).unwrap(), Outcome::Swapped(2));
    let fresh = handle(&host, &m, "").unwrap();
    assert_eq!((fresh.value.as_str(), fresh.version), ("new", 2));
    let s = host.module_status(&m);
    let draining = s.draining.expect("version 1 still runs a call");
    assert_eq!((draining.version, draining.calls_in_flight), (1, 1));
    GATES.open("wait-slow-1");
    let old = slow.join().unwrap().unwrap();
    assert_eq!((old.value.as_str(), old.version), ("old", 1));
    // Freed with its last call.
    assert!(host.module_status(&m).draining.is_none());
    assert!(read_log(dir.path()).contains("version 1 (fingerprint"));
}

#[test]
fn every_kind_of_bad_version_is_rejected_with_its_reason_and_the_old_one_serves() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.wat");
    save(&path, &Wat::new("good").text());
    let host = host(dir.path(), |_| {});
    let m = host.load(&path).unwrap();
    let mut text_import = Wat::new("needs-text");
    text_import.uses_text = true;
    let mut wrong = Wat::new("wrong");
    wrong.wrong_export = true;
    let with_init = |init| {
        let mut w = Wat::new("init");
        w.init = init;
        w.text()
    };
    let mut huge = Wat::new("huge");
    huge.min_pages = 512; // 32 MiB, above the 16 MiB limit
    let cases: Vec<(&str, String, Stage, &str)> = vec![
        (
            "does not parse",
            "(component (oops".to_owned(),
            Stage::Compile,
            "expected",
        ),
        (
            "a core module, not a component",
            "(module (func (export \"handle\")))".to_owned(),
            Stage::Compile,
            "component",
        ),
        (
            "no exports",
            "(component)".to_owned(),
            Stage::Exports,
            "no export `handle`",
        ),
        ("wrong export type", wrong.text(), Stage::Exports, "handle"),
        (
            "an import nobody provides",
            text_import.text(),
            Stage::Link,
            "test:hot/text",
        ),
        (
            "init traps",
            with_init(Init::Trap),
            Stage::Init,
            "unreachable",
        ),
        (
            "init returns an error",
            with_init(Init::Err),
            Stage::Init,
            "init",
        ),
        (
            "self-test fails",
            Wat::new("fail-self-test").text(),
            Stage::SelfTest,
            "fail-self-test",
        ),
        (
            "memory above the limit",
            huge.text(),
            Stage::Instantiate,
            "limit",
        ),
    ];
    for (what, text, stage, needle) in cases {
        save(&path, &text);
        let err = host.reload(&m).expect_err(what);
        let LoadError::Rejected(r) = err else {
            panic!("{what}: {err}");
        };
        assert_eq!(r.stage, stage, "{what}: {r}");
        assert!(r.reason.contains(needle), "{what}: {r}");
        assert_eq!(
            r.memory_limit,
            what == "memory above the limit",
            "{what}: {r}"
        );
        let answer = handle(&host, &m, "").unwrap();
        assert_eq!(
            (answer.value.as_str(), answer.version),
            ("good", 1),
            "{what}"
        );
        let s = host.module_status(&m);
        assert_eq!(s.last_rejected.as_deref_stage(), Some(stage), "{what}");
        assert!(
            read_log(dir.path()).contains(&format!(
                "fingerprint {} rejected at {stage}",
                r.fingerprint
            )),
            "{what}"
        );
    }
    // A good version after all that.
    save(&path, &with_init(Init::Ok));
    assert_eq!(host.reload(&m).unwrap(), Outcome::Swapped(2));
    assert!(host.module_status(&m).last_rejected.is_none());
}

trait StageOf {
    fn as_deref_stage(&self) -> Option<Stage>;
}
impl StageOf for Option<baton_hot::Rejection> {
    fn as_deref_stage(&self) -> Option<Stage> {
        self.as_ref().map(|r| r.stage)
    }
}

#[test]
fn a_first_version_that_is_bad_is_registered_and_a_good_one_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("late.wat");
    save(&path, "(component (nope");
    let host = host(dir.path(), |_| {});
    assert!(matches!(host.load(&path), Err(LoadError::Rejected(_))));
    let m = host.module(&path).expect("registered though refused");
    assert!(matches!(
        handle(&host, &m, ""),
        Err(CallError::NoVersion { .. })
    ));
    save(&path, &Wat::new("fixed").text());
    assert_eq!(host.reload(&m).unwrap(), Outcome::Swapped(1));
    assert_eq!(handle(&host, &m, "").unwrap().value, "fixed");
}

#[test]
fn a_runaway_loop_is_interrupted_and_the_next_call_works() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loop.wat");
    save(&path, &Wat::new("v1").text());
    let host = host(dir.path(), |c| c.call_timeout = Duration::from_millis(300));
    let m = host.load(&path).unwrap();
    match handle(&host, &m, "loop") {
        Err(CallError::Interrupted {
            version: 1,
            why: Interrupt::Deadline(_),
        }) => {}
        other => panic!("expected an interrupted call, got {other:?}"),
    }
    assert_eq!(handle(&host, &m, "").unwrap().value, "v1");
}

#[test]
fn the_memory_limit_holds_and_a_trap_fails_only_its_call() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grow.wat");
    save(&path, &Wat::new("v1").text());
    let host = host(dir.path(), |_| {});
    let m = host.load(&path).unwrap();
    match handle(&host, &m, "grow") {
        Err(CallError::MemoryLimit { limit, .. }) => assert_eq!(limit, 16 << 20),
        other => panic!("expected the memory limit, got {other:?}"),
    }
    match handle(&host, &m, "trap") {
        Err(CallError::Trap { message, .. }) => {
            assert!(message.contains("unreachable"), "{message}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_eq!(handle(&host, &m, "").unwrap().value, "v1");
    // With a higher limit the same growth succeeds: the limit is what
    // refused it.
    let roomy = common::host(dir.path(), |c| c.memory_limit = 128 << 20);
    let m2 = roomy.load(&path).unwrap();
    assert_eq!(handle(&roomy, &m2, "grow").unwrap().value, "v1");
    // The same with memories allocated on demand instead of from the pool.
    let on_demand = common::host(dir.path(), |c| c.pooling = false);
    let m3 = on_demand.load(&path).unwrap();
    assert!(matches!(
        handle(&on_demand, &m3, "grow"),
        Err(CallError::MemoryLimit { .. })
    ));
    let mut huge = Wat::new("huge");
    huge.min_pages = 512;
    let big = dir.path().join("big.wat");
    save(&big, &huge.text());
    let Err(LoadError::Rejected(r)) = on_demand.load(&big) else {
        panic!("a 32 MiB initial memory must be refused with a 16 MiB limit");
    };
    assert!(r.memory_limit, "{r}");
}

#[test]
fn a_third_version_purges_the_oldest_past_its_drain_deadline_while_the_second_drains_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("three.wat");
    save(&path, &Wat::new("v1").text());
    // The third version waits for version 1's call up to the drain
    // deadline, then purges it.
    let host = host(dir.path(), |c| c.drain_timeout = Duration::from_secs(2));
    let m = host.load(&path).unwrap();
    let call = |gate: &'static str| {
        let (host, m) = (host.clone(), m.clone());
        let t = std::thread::spawn(move || handle(&host, &m, gate));
        GATES.wait_for_waiter(gate);
        t
    };
    let first = call("wait-three-1");
    save(&path, &Wat::new("v2").text());
    host.reload(&m).unwrap();
    let second = call("wait-three-2");
    save(&path, &Wat::new("v3").text());
    host.reload(&m).unwrap();
    GATES.open("wait-three-1");
    GATES.open("wait-three-2");
    match first.join().unwrap() {
        Err(CallError::Interrupted {
            version: 1,
            why: Interrupt::Purged,
        }) => {}
        other => panic!("version 1 should have been purged, got {other:?}"),
    }
    let second = second.join().unwrap().unwrap();
    assert_eq!((second.value.as_str(), second.version), ("v2", 2));
    assert!(read_log(dir.path()).contains("version 1 purged"));
}

#[test]
fn the_drain_deadline_interrupts_a_call_still_running_on_a_replaced_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drain.wat");
    save(&path, &Wat::new("v1").text());
    let host = host(dir.path(), |c| {
        c.call_timeout = Duration::from_secs(120);
        c.drain_timeout = Duration::from_millis(200);
    });
    let m = host.load(&path).unwrap();
    let looping = {
        let (host, m) = (host.clone(), m.clone());
        std::thread::spawn(move || handle(&host, &m, "loop"))
    };
    eventually("the loop to run", || {
        host.module_status(&m)
            .current
            .is_some_and(|c| c.calls_in_flight == 1)
    });
    save(&path, &Wat::new("v2").text());
    host.reload(&m).unwrap();
    match looping.join().unwrap() {
        Err(CallError::Interrupted {
            version: 1,
            why: Interrupt::Drained(d),
        }) => assert_eq!(d, Duration::from_millis(200)),
        other => panic!("expected a drained call, got {other:?}"),
    }
    assert_eq!(handle(&host, &m, "").unwrap().value, "v2");
}

#[test]
fn a_global_counter_starts_afresh_in_a_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("count.wat");
    save(&path, &Wat::new("v1").text());
    // Pooled: the instance (and its counter) lives as long as its version.
    let host = host(dir.path(), |c| {
        c.instances = InstanceMode::Pooled { max_idle: 1 }
    });
    let m = host.load(&path).unwrap();
    let counts: Vec<_> = (0..3)
        .map(|_| handle(&host, &m, "count").unwrap().value)
        .collect();
    assert_eq!(counts, ["v1 1", "v1 2", "v1 3"]);
    save(&path, &Wat::new("v2").text());
    host.reload(&m).unwrap();
    assert_eq!(handle(&host, &m, "count").unwrap().value, "v2 1");
    assert_eq!(handle(&host, &m, "count").unwrap().value, "v2 2");
    // A failed call's instance is thrown away, its state with it.
    assert!(handle(&host, &m, "trap").is_err());
    assert_eq!(handle(&host, &m, "count").unwrap().value, "v2 1");
    // Per call (the default): every call starts afresh.
    let per_call = common::host(dir.path(), |_| {});
    let m = per_call.load(&path).unwrap();
    assert_eq!(handle(&per_call, &m, "count").unwrap().value, "v2 1");
    assert_eq!(handle(&per_call, &m, "count").unwrap().value, "v2 1");
}

#[test]
fn the_same_module_name_in_two_directories_is_two_modules() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    save(&a.join("hello.wat"), &Wat::new("from a").text());
    save(&b.join("hello.wat"), &Wat::new("from b").text());
    let host = host(dir.path(), |_| {});
    let ma = host.load(a.join("hello.wat")).unwrap();
    let mb = host.load(b.join("hello.wat")).unwrap();
    assert_ne!(ma.path(), mb.path());
    assert_eq!(handle(&host, &ma, "").unwrap().value, "from a");
    assert_eq!(handle(&host, &mb, "").unwrap().value, "from b");
    save(&a.join("hello.wat"), &Wat::new("from a, v2").text());
    host.reload(&ma).unwrap();
    assert_eq!(handle(&host, &ma, "").unwrap().value, "from a, v2");
    let b_answer = handle(&host, &mb, "").unwrap();
    assert_eq!((b_answer.value.as_str(), b_answer.version), ("from b", 1));
}

#[test]
fn an_identical_save_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("same.wat");
    save(&path, &Wat::new("v1").text());
    let host = host(dir.path(), |_| {});
    let m = host.load(&path).unwrap();
    save(&path, &Wat::new("v1").text());
    assert_eq!(host.reload(&m).unwrap(), Outcome::Unchanged);
    assert_eq!(handle(&host, &m, "").unwrap().version, 1);
}

#[test]
fn a_version_seen_before_loads_from_the_compiled_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cached.wat");
    save(&path, &Wat::new("v1").text());
    let cache = dir.path().join("cache");
    let first = host(dir.path(), |c| c.cache_dir = Some(cache.clone()));
    first.load(&path).unwrap();
    assert_eq!(
        (first.status().cache_hits, first.status().cache_misses),
        (0, 1)
    );
    drop(first);
    let second = host(dir.path(), |c| c.cache_dir = Some(cache.clone()));
    let m = second.load(&path).unwrap();
    assert_eq!(
        (second.status().cache_hits, second.status().cache_misses),
        (1, 0)
    );
    assert_eq!(handle(&second, &m, "").unwrap().value, "v1");
}

/// Found as a failed call in the 20-swaps test: two swaps in quick
/// succession purged the oldest version while a call still ran on it.
#[test]
fn regression_a_third_version_waits_for_calls_still_running_on_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("quick.wat");
    save(&path, &Wat::new("v1").text());
    let host = host(dir.path(), |c| c.drain_timeout = Duration::from_secs(60));
    let m = host.load(&path).unwrap();
    let slow = {
        let (host, m) = (host.clone(), m.clone());
        std::thread::spawn(move || handle(&host, &m, "wait-quick-1"))
    };
    GATES.wait_for_waiter("wait-quick-1");
    save(&path, &Wat::new("v2").text());
    host.reload(&m).unwrap();
    save(&path, &Wat::new("v3").text());
    let third = {
        let (host, m) = (host.clone(), m.clone());
        std::thread::spawn(move || host.reload(&m))
    };
    // Version 2 serves while the third version waits for version 1 (or,
    // were it not to wait, the third reload ends).
    eventually("the third reload to wait or end", || {
        read_log(dir.path()).contains("waits for 1 call(s) still running on version 1")
            || third.is_finished()
    });
    assert_eq!(handle(&host, &m, "").unwrap().value, "v2");
    GATES.open("wait-quick-1");
    let old = slow.join().unwrap().unwrap();
    assert_eq!((old.value.as_str(), old.version), ("v1", 1));
    assert_eq!(third.join().unwrap().unwrap(), Outcome::Swapped(3));
    assert_eq!(handle(&host, &m, "").unwrap().value, "v3");
    assert!(!read_log(dir.path()).contains("purged"));
}
