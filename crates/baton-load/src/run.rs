//! The load loop: one thread per connection, each sending requests back to
//! back and recording every outcome.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::config::Config;
use crate::histogram::Histogram;
use crate::http::{Conn, Failure, get_request};
use crate::report::Report;
use crate::timeline::Sample;

/// What one thread has counted. Each thread locks only its own (so the lock
/// is uncontended except while a snapshot is taken).
#[derive(Debug, Default)]
struct Stats {
    requests: u64,
    ok: u64,
    failed: u64,
    errors: BTreeMap<String, u64>,
    generations: BTreeMap<String, u64>,
    latency: Histogram,
    /// Every request, with `timeline`.
    samples: Vec<Sample>,
}

#[derive(Debug)]
struct Shared {
    cfg: Config,
    request: Vec<u8>,
    started: Instant,
    /// The same moment by the wall clock, for the timeline.
    started_wall: SystemTime,
    stop: AtomicBool,
    /// Requests begun, to honour `max_requests` over all threads.
    issued: AtomicU64,
    per_thread: Vec<Mutex<Stats>>,
    /// Generation to the moment a response carrying it was first complete.
    first_seen: Mutex<BTreeMap<String, Instant>>,
    /// Signalled whenever `first_seen` gains an entry.
    seen_changed: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking load thread leaves counts that are still meaningful.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A load run in progress. Dropping it stops the threads (without waiting).
#[derive(Debug)]
pub struct Running {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// Starts `cfg.concurrency` threads (at least one), each with its own
/// connection, sending requests back to back.
///
/// # Panics
/// If the OS refuses to create a thread; see [`try_start`].
pub fn start(cfg: Config) -> Running {
    try_start(cfg).expect("cannot start load threads (the OS refused to create a thread)")
}

/// Like [`start`], but returns the error if a thread cannot be created (the
/// threads already started are stopped).
pub fn try_start(cfg: Config) -> std::io::Result<Running> {
    let n = cfg.concurrency.max(1);
    let request = get_request(&cfg.path, &cfg.host_header(), cfg.keep_alive);
    let shared = Arc::new(Shared {
        cfg,
        request,
        started: Instant::now(),
        started_wall: SystemTime::now(),
        stop: AtomicBool::new(false),
        issued: AtomicU64::new(0),
        per_thread: (0..n).map(|_| Mutex::default()).collect(),
        first_seen: Mutex::default(),
        seen_changed: Condvar::new(),
    });
    let mut running = Running {
        shared,
        threads: Vec::with_capacity(n),
    };
    for i in 0..n {
        let shared = Arc::clone(&running.shared);
        let handle = std::thread::Builder::new()
            .name(format!("baton-load-{i}"))
            .spawn(move || worker(&shared, i))?;
        running.threads.push(handle);
    }
    Ok(running)
}

/// The pause between two requests of one thread for `rate` requests per
/// second over `threads` threads.
fn interval(rate: f64, threads: usize) -> Option<Duration> {
    (rate > 0.0 && rate.is_finite()).then(|| Duration::from_secs_f64(threads.max(1) as f64 / rate))
}

/// Sleeps until `next` (in steps, to notice `stop`); false if stopped.
fn wait_until(shared: &Shared, next: Instant) -> bool {
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= next {
            return true;
        }
        // Pacing, not synchronisation: the step bounds how late a stop is
        // noticed.
        std::thread::sleep((next - now).min(Duration::from_millis(50)));
    }
}

fn worker(shared: &Shared, index: usize) {
    let cfg = &shared.cfg;
    let mut conn: Option<Conn> = None;
    let pace = cfg.rate.and_then(|r| interval(r, shared.per_thread.len()));
    // Threads start spread over one interval, not all at once.
    let mut next = shared.started
        + pace.map_or(Duration::ZERO, |p| {
            p.mul_f64(index as f64 / shared.per_thread.len().max(1) as f64)
        });
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(p) = pace {
            if !wait_until(shared, next) {
                break;
            }
            // A thread that fell behind skips the slots it missed.
            next = (next + p).max(Instant::now());
        }
        if let Some(max) = cfg.max_requests
            && shared.issued.fetch_add(1, Ordering::Relaxed) >= max
        {
            break;
        }
        let begun = Instant::now();
        let deadline = begun + cfg.request_timeout;
        let result = match conn.as_mut() {
            Some(c) => c.round_trip(&shared.request, deadline, false),
            None => Conn::connect(&cfg.target, deadline)
                .and_then(|c| conn.insert(c).round_trip(&shared.request, deadline, false)),
        };
        let done = Instant::now();
        let mut stats = lock(&shared.per_thread[index]);
        stats.requests += 1;
        let (failure, generation) = match result {
            Ok(resp) => {
                if !(cfg.keep_alive && resp.keep_alive)
                    && let Some(c) = conn.take()
                {
                    c.close();
                }
                if let Some(g) = resp.generation() {
                    if let Some(n) = stats.generations.get_mut(g) {
                        *n += 1;
                    } else {
                        stats.generations.insert(g.to_owned(), 1);
                        note_first_seen(shared, g, done);
                    }
                }
                let failure = if (200..300).contains(&resp.status) {
                    stats.ok += 1;
                    stats.latency.record(done - begun);
                    None
                } else {
                    stats.failed += 1;
                    let kind = Failure::Status(resp.status).kind();
                    *stats.errors.entry(kind.clone()).or_default() += 1;
                    Some(kind)
                };
                (failure, resp.generation().map(str::to_owned))
            }
            Err(failure) => {
                // Whatever state the connection is in, it is not trusted again.
                if let Some(c) = conn.take() {
                    c.close();
                }
                stats.failed += 1;
                let kind = failure.kind();
                *stats.errors.entry(kind.clone()).or_default() += 1;
                (Some(kind), None)
            }
        };
        if cfg.timeline {
            stats.samples.push(Sample {
                start: begun - shared.started,
                latency: done - begun,
                failure,
                generation,
            });
        }
    }
    if let Some(c) = conn.take() {
        c.close();
    }
}

fn note_first_seen(shared: &Shared, generation: &str, at: Instant) {
    let mut seen = lock(&shared.first_seen);
    match seen.get_mut(generation) {
        Some(t) if *t <= at => {}
        Some(t) => *t = at,
        None => {
            seen.insert(generation.to_owned(), at);
            shared.seen_changed.notify_all();
        }
    }
}

impl Running {
    /// When the run started.
    pub fn started_at(&self) -> Instant {
        self.shared.started
    }

    /// When the run started, by the wall clock.
    pub fn started_wall(&self) -> SystemTime {
        self.shared.started_wall
    }

    /// Every request so far, in order of start (empty unless the run was
    /// started with `timeline`).
    pub fn timeline(&self) -> Vec<Sample> {
        let mut all: Vec<Sample> = self
            .shared
            .per_thread
            .iter()
            .flat_map(|s| lock(s).samples.clone())
            .collect();
        all.sort_by_key(|s| s.start);
        all
    }

    /// When a response carrying `X-Generation: generation` was first
    /// complete, if one was.
    pub fn first_seen_instant(&self, generation: &str) -> Option<Instant> {
        lock(&self.shared.first_seen).get(generation).copied()
    }

    /// Waits until a response from `generation` has been seen, at most
    /// `timeout`; returns when it was first seen.
    pub fn wait_for_generation(&self, generation: &str, timeout: Duration) -> Option<Instant> {
        let seen = lock(&self.shared.first_seen);
        let (seen, _) = self
            .shared
            .seen_changed
            .wait_timeout_while(seen, timeout, |s| !s.contains_key(generation))
            .unwrap_or_else(PoisonError::into_inner);
        seen.get(generation).copied()
    }

    /// The counts so far; the run goes on.
    pub fn snapshot(&self) -> Report {
        let mut r = Report {
            requests: 0,
            ok: 0,
            failed: 0,
            errors: BTreeMap::new(),
            generations: BTreeMap::new(),
            first_seen: BTreeMap::new(),
            first_seen_at: BTreeMap::new(),
            latency: crate::Latency::default(),
            elapsed: self.shared.started.elapsed(),
            started_at: self.shared.started,
        };
        let mut hist = Histogram::default();
        for s in &self.shared.per_thread {
            let s = lock(s);
            r.requests += s.requests;
            r.ok += s.ok;
            r.failed += s.failed;
            for (k, v) in &s.errors {
                *r.errors.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &s.generations {
                *r.generations.entry(k.clone()).or_default() += v;
            }
            hist.merge(&s.latency);
        }
        r.latency = hist.latency();
        for (g, at) in lock(&self.shared.first_seen).iter() {
            r.first_seen.insert(g.clone(), *at - self.shared.started);
            r.first_seen_at.insert(g.clone(), *at);
        }
        r
    }

    /// Stops the run: each thread finishes the request it is in (bounded by
    /// the request timeout) and starts no other. Returns the final counts.
    pub fn stop(mut self) -> Report {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    /// Like [`Running::stop`], also returning every request
    /// ([`Running::timeline`]).
    pub fn stop_with_timeline(mut self) -> (Report, Vec<Sample>) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let report = self.join();
        (report, self.timeline())
    }

    /// Like [`Running::wait`], also returning every request.
    pub fn wait_with_timeline(mut self) -> (Report, Vec<Sample>) {
        if self.shared.cfg.max_requests.is_none() {
            self.shared.stop.store(true, Ordering::Relaxed);
        }
        let report = self.join();
        (report, self.timeline())
    }

    /// Waits for `max_requests` requests to finish and returns the final
    /// counts. Without `max_requests` the run has no end, so this is
    /// [`Running::stop`].
    pub fn wait(mut self) -> Report {
        if self.shared.cfg.max_requests.is_none() {
            return self.stop();
        }
        self.join()
    }

    fn join(&mut self) -> Report {
        for t in self.threads.drain(..) {
            // A panicked thread has still counted what it did.
            let _ = t.join();
        }
        self.snapshot()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}
