//! `Instant`s across an exec: an `Instant` means nothing outside the
//! process that took it (its clock's origin is unspecified), so the state a
//! re-executed baton takes over carries each one as "this many microseconds
//! ago", measured when the state is written, and turns it back into an
//! `Instant` of the new image when the state is read. The few milliseconds
//! the exec takes are lost from every age, which no timer notices.
//!
//! Use with `#[serde(with = "crate::stamp")]` (and `crate::stamp::option`).

use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

fn ago(t: Instant) -> u64 {
    u64::try_from(Instant::now().saturating_duration_since(t).as_micros()).unwrap_or(u64::MAX)
}

fn back(micros: u64) -> Instant {
    let now = Instant::now();
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
}
