//! A log-linear latency histogram with bounded memory.
//!
//! Values are nanoseconds. Below 64 ns every value has its own bucket; above,
//! each power of two is split into 32 equal sub-buckets, so a recorded value
//! is known to within 1/32 (about 3 %) whatever its size. The whole range of
//! `u64` fits in 1,920 buckets (15 KiB), so a run of any length costs the
//! same memory — unlike keeping every sample.

use std::time::Duration;

/// Values below this are stored exactly.
const LINEAR: u64 = 64;
/// Sub-buckets per power of two above [`LINEAR`] (2^SUB_BITS).
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Powers of two from 2^6 up to 2^63.
const BUCKETS: usize = LINEAR as usize + (64 - 6) * SUB as usize;

/// Latency percentiles of the successful requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
    pub mean: Duration,
}

/// Counts of recorded values per bucket.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    sum_ns: u128,
    max_ns: u64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("total", &self.total)
            .field("max_ns", &self.max_ns)
            .finish_non_exhaustive()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            sum_ns: 0,
            max_ns: 0,
        }
    }
}

/// The bucket a value falls in.
fn index(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let msb = v.ilog2(); // >= 6
    let shift = msb - SUB_BITS;
    let sub = (v >> shift) - SUB; // 0..SUB
    LINEAR as usize + (msb as usize - 6) * SUB as usize + sub as usize
}

/// The largest value that falls in bucket `i`.
fn upper_edge(i: usize) -> u64 {
    if i < LINEAR as usize {
        return i as u64;
    }
    let j = i - LINEAR as usize;
    let msb = (j / SUB as usize) as u32 + 6;
    let sub = (j % SUB as usize) as u64;
    let shift = msb - SUB_BITS;
    let low = (SUB + sub) << shift;
    low + ((1u64 << shift) - 1)
}

impl Histogram {
    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[index(ns)] += 1;
        self.total += 1;
        self.sum_ns += u128::from(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Adds every value of `other` to `self`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += *b;
        }
        self.total += other.total;
        self.sum_ns += other.sum_ns;
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value below which a fraction `q` (0..=1) of the values lie, as
    /// the upper edge of its bucket (never above the true maximum).
    pub fn quantile(&self, q: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Duration::from_nanos(upper_edge(i).min(self.max_ns));
            }
        }
        Duration::from_nanos(self.max_ns)
    }

    pub fn latency(&self) -> Latency {
        let mean = if self.total == 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos(u64::try_from(self.sum_ns / u128::from(self.total)).unwrap_or(0))
        };
        Latency {
            p50: self.quantile(0.50),
            p90: self.quantile(0.90),
            p99: self.quantile(0.99),
            p999: self.quantile(0.999),
            max: Duration::from_nanos(self.max_ns),
            mean,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_range_in_order() {
        assert_eq!(index(0), 0);
        assert_eq!(index(63), 63);
        assert_eq!(index(64), 64);
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        // Every bucket's upper edge maps back to it, and the next value to the next bucket.
        for i in 0..BUCKETS - 1 {
            let e = upper_edge(i);
            assert_eq!(index(e), i, "edge of {i}");
            assert_eq!(index(e + 1), i + 1, "after edge of {i}");
        }
    }

    #[test]
    fn relative_error_is_small() {
        for v in [100u64, 1_000, 12_345, 987_654, 5_000_000_000] {
            let e = upper_edge(index(v));
            assert!(e >= v);
            assert!((e - v) as f64 / v as f64 <= 1.0 / 32.0, "{v} -> {e}");
        }
    }

    #[test]
    fn quantiles_and_merge() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        for us in 1..=50u64 {
            a.record(Duration::from_micros(us));
        }
        for us in 51..=100u64 {
            b.record(Duration::from_micros(us));
        }
        a.merge(&b);
        let l = a.latency();
        assert_eq!(a.count(), 100);
        assert_eq!(l.max, Duration::from_micros(100));
        let near = |d: Duration, us: u64| {
            let x = d.as_nanos() as f64 / 1000.0;
            (x - us as f64).abs() / us as f64 <= 0.04
        };
        assert!(near(l.p50, 50), "{l:?}");
        assert!(near(l.p90, 90), "{l:?}");
        assert!(near(l.p99, 99), "{l:?}");
        assert!(near(l.mean, 50), "{l:?}");
        assert_eq!(Histogram::default().latency(), Latency::default());
    }
}
