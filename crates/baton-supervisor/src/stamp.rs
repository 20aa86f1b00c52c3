//! `Instant`s across an exec: an `Instant` means nothing outside the
//! process that took it (its clock's origin is unspecified), so the state a
//! re-executed baton takes over carries each one as "this many microseconds
//! ago", measured when the state is written, and turns it back into an
//! `Instant` of the new image when the state is read. The state also says
//! when it was written, on the system-wide monotonic clock
//! ([`monotonic_us`]); the reader passes the time since then (the exec and
//! the new image's start) to [`reading_after`], so that no age loses it.
//!
//! Use with `#[serde(with = "crate::stamp")]` (and `crate::stamp::option`).

use std::cell::Cell;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

thread_local! {
    /// Microseconds between the state's writing and its reading, added to
    /// every age read meanwhile. A thread-local because serde gives a
    /// `with` function no context to carry it in.
    static GAP_US: Cell<u64> = const { Cell::new(0) };
}

/// The system-wide monotonic clock (`CLOCK_MONOTONIC`: it counts from the
/// boot, the same in every process), in microseconds.
pub fn monotonic_us() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let us = i128::from(t.tv_sec) * 1_000_000 + i128::from(t.tv_nsec) / 1_000;
    u64::try_from(us).unwrap_or(0)
}

/// Runs `read` (a state's deserialization) with every age taken as `gap`
/// older: the time since the state was written.
pub fn reading_after<T>(gap: Duration, read: impl FnOnce() -> T) -> T {
    let gap = u64::try_from(gap.as_micros()).unwrap_or(u64::MAX);
    GAP_US.with(|g| g.set(gap));
    let out = read();
    GAP_US.with(|g| g.set(0));
    out
}

fn ago(t: Instant) -> u64 {
    u64::try_from(Instant::now().saturating_duration_since(t).as_micros()).unwrap_or(u64::MAX)
}

fn back(micros: u64) -> Instant {
    let now = Instant::now();
    let micros = micros.saturating_add(GAP_US.with(Cell::get));
    now.checked_sub(Duration::from_micros(micros))
        .unwrap_or(now)
}

pub fn serialize<S: Serializer>(t: &Instant, s: S) -> Result<S::Ok, S::Error> {
    ago(*t).serialize(s)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Instant, D::Error> {
    u64::deserialize(d).map(back)
}

pub mod option {
    use super::{Deserialize, Deserializer, Instant, Serialize, Serializer, ago, back};

    pub fn serialize<S: Serializer>(t: &Option<Instant>, s: S) -> Result<S::Ok, S::Error> {
        t.map(ago).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Instant>, D::Error> {
        Option::<u64>::deserialize(d).map(|o| o.map(back))
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct T {
        #[serde(with = "super")]
        at: std::time::Instant,
        #[serde(with = "super::option")]
        maybe: Option<std::time::Instant>,
    }

    #[test]
    fn ages_survive_a_round_trip() {
        let then = std::time::Instant::now()
            .checked_sub(std::time::Duration::from_secs(5))
            .expect("5 s ago");
        let json = serde_json::to_string(&T {
            at: then,
            maybe: None,
        })
        .expect("to json");
        let back: T = serde_json::from_str(&json).expect("from json");
        let age = back.at.elapsed();
        assert!(age >= std::time::Duration::from_secs(5), "{age:?}");
        assert!(age < std::time::Duration::from_secs(6), "{age:?}");
        assert!(back.maybe.is_none());
    }

    /// Read back after a gap (the exec), an age has grown by the gap; read
    /// outside `reading_after`, by nothing more.
    #[test]
    fn ages_read_after_a_gap_include_it() {
        let then = std::time::Instant::now();
        let json = serde_json::to_string(&T {
            at: then,
            maybe: Some(then),
        })
        .expect("to json");
        let gap = std::time::Duration::from_secs(3);
        let back: T = super::reading_after(gap, || serde_json::from_str(&json)).expect("from json");
        for age in [back.at.elapsed(), back.maybe.expect("some").elapsed()] {
            assert!(age >= gap, "{age:?}");
            assert!(age < gap * 2, "{age:?}");
        }
        let plain: T = serde_json::from_str(&json).expect("from json");
        assert!(
            plain.at.elapsed() < gap,
            "the gap is gone after reading_after"
        );
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let a = super::monotonic_us();
        let b = super::monotonic_us();
        assert!(a > 0 && b >= a, "{a} {b}");
    }
}
