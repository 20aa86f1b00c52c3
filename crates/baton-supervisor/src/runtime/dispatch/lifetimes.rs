//! How long connections live, and what that allows a packet (`slack`).
//!
//! baton keeps a worker within one connection of the least loaded other
//! worker (`Dispatcher::per_packet`) so that a burst of long-lived
//! connections spreads exactly. For traffic of short requests that bound
//! costs throughput when there are more workers than CPUs: a burst of
//! connections then wakes as many workers as it has connections (one
//! packet each), where only as many as there are CPUs can run, and each
//! wake-up costs the switch and colder caches (bench/dispatch/CPU.md). So
//! once the connections of the last while all closed soon after they were
//! sent (the last [`SHORT_RUN`] within [`SHORT`]), a packet may take a
//! worker up to `workers / CPUs` (at most [`MAX_SLACK`]) above the least
//! loaded other worker: what it holds evens out again within milliseconds.
//! One connection that lives longer, and baton is exact again for the next
//! [`SHORT_RUN`]. A fresh baton, or one just upgraded in place, starts
//! exact: nothing is known yet.

use std::time::{Duration, Instant};

/// A connection whose `done` came within this long of its sending is
/// short-lived.
pub(super) const SHORT: Duration = Duration::from_millis(100);
/// How many short-lived connections in a row, and none longer, before a
/// packet may carry more than the exact share.
pub(super) const SHORT_RUN: u32 = 64;
/// The most a packet may take a worker above the least loaded other.
pub(super) const MAX_SLACK: u32 = 4;
/// How many connections' sending times are kept (by id, in a ring): a
/// `done` for an id older than that counts as long-lived.
const KEPT: usize = 4096;

#[derive(Debug, Default)]
pub(super) struct Lifetimes {
    /// When connection `id` was sent, at `id % KEPT`, for ids from `from`
    /// on (empty until the first).
    sent: Vec<Option<Instant>>,
    /// The first id this image sent (`done`s of older ones are unknown).
    from: Option<u64>,
    /// The highest id sent, plus one.
    next: u64,
    /// Short-lived connections in a row.
    short_run: u32,
}

impl Lifetimes {
    /// Connection `id` was sent at `at` (ids only grow).
    pub(super) fn sent(&mut self, id: u64, at: Instant) {
        if self.sent.is_empty() {
            self.sent = vec![None; KEPT];
        }
        self.from.get_or_insert(id);
        self.sent[(id % KEPT as u64) as usize] = Some(at);
        self.next = self.next.max(id + 1);
    }

    /// Connection `id` was closed (its `done` came) at `at`.
    pub(super) fn done(&mut self, id: u64, at: Instant) {
        let known = self
            .from
            .is_some_and(|from| id >= from && id < self.next && self.next - id <= KEPT as u64);
        let lived = known
            .then(|| self.sent[(id % KEPT as u64) as usize])
            .flatten()
            .map(|sent| at.saturating_duration_since(sent));
        match lived {
            Some(d) if d < SHORT => self.short_run = self.short_run.saturating_add(1),
            _ => self.short_run = 0,
        }
    }

    /// Whether the recent connections were all short-lived.
    pub(super) fn short_lived(&self) -> bool {
        self.short_run >= SHORT_RUN
    }

    /// How far above the least loaded other worker a packet may take a
    /// worker of a generation of `workers` on `cpus` CPUs: 1 (exact)
    /// unless the recent connections were short-lived and the workers are
    /// more than the CPUs.
    pub(super) fn slack(&self, workers: usize, cpus: usize) -> u32 {
        if !self.short_lived() {
            return 1;
        }
        let per_cpu = workers.div_ceil(cpus.max(1));
        u32::try_from(per_cpu)
            .unwrap_or(MAX_SLACK)
            .clamp(1, MAX_SLACK)
    }
}

/// The CPUs this process may run on (its affinity and cgroup quota), read
/// once.
pub(super) fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    /// `n` connections sent and closed `ms` later, ids from `first`.
    fn run(l: &mut Lifetimes, start: Instant, first: u64, n: u64, ms: u64) {
        for id in first..first + n {
            l.sent(id, start);
            l.done(id, after(start, ms));
        }
    }

    #[test]
    fn exact_until_a_run_of_short_connections() {
        let start = Instant::now();
        let mut l = Lifetimes::default();
        assert_eq!(l.slack(8, 2), 1, "nothing known yet");
        run(&mut l, start, 0, u64::from(SHORT_RUN) - 1, 1);
        assert_eq!(l.slack(8, 2), 1, "one short of the run");
        run(&mut l, start, 100, 1, 1);
        assert!(l.short_lived());
        assert_eq!(l.slack(8, 2), 4);
        assert_eq!(l.slack(4, 2), 2);
        assert_eq!(l.slack(3, 2), 2);
        assert_eq!(l.slack(64, 2), MAX_SLACK, "capped");
        assert_eq!(l.slack(2, 2), 1, "no more workers than CPUs: exact");
        assert_eq!(l.slack(8, 16), 1);
        assert_eq!(l.slack(8, 0), MAX_SLACK, "no CPU count: taken as one");
    }

    #[test]
    fn one_long_lived_connection_makes_it_exact_again() {
        let start = Instant::now();
        let mut l = Lifetimes::default();
        run(&mut l, start, 0, 100, 1);
        assert!(l.short_lived());
        let long = u64::try_from(SHORT.as_millis()).expect("SHORT is 100 ms");
        run(&mut l, start, 100, 1, long);
        assert!(!l.short_lived(), "a connection of exactly SHORT is long");
        assert_eq!(l.slack(8, 2), 1);
        run(&mut l, start, 101, u64::from(SHORT_RUN), 1);
        assert!(l.short_lived(), "a new run");
    }

    #[test]
    fn unknown_ids_count_as_long_lived() {
        let start = Instant::now();
        let mut l = Lifetimes::default();
        // A `done` before anything was sent (an upgraded baton's older
        // connections), or for an id never sent.
        l.done(5, start);
        assert_eq!(l.short_run, 0);
        run(&mut l, start, 1000, 10, 1);
        assert_eq!(l.short_run, 10);
        l.done(999, after(start, 1));
        assert_eq!(l.short_run, 0, "sent before this image's first");
        run(&mut l, start, 1010, 10, 1);
        l.done(5000, after(start, 1));
        assert_eq!(l.short_run, 0, "never sent");
        // An id so old its slot was reused since.
        run(&mut l, start, 1020, KEPT as u64 + 10, 1);
        assert!(l.short_lived());
        l.done(1020, after(start, 1));
        assert_eq!(l.short_run, 0, "older than what is kept");
    }

    #[test]
    fn the_cpu_count_is_at_least_one() {
        assert!(cpus() >= 1);
    }
}
