//! What happened, as `baton ctl events` streams it and the metrics count
//! it: reloads and their verdicts, generations, workers, scaling, upgrades
//! and the stop.
//!
//! The lifecycle decides most of these and says so with
//! [`Action::Notice`](crate::lifecycle::Action::Notice) at the moment it
//! decides; the runtime adds what only it knows (a reload refused by the
//! config file, an upgrade of baton itself, the exit). Each notice the
//! runtime publishes gets a sequence number and the wall-clock time, and
//! becomes one JSON line ([`EventLine`]) for every `ctl events` reader.
//!
//! The wire form is part of the contract (docs/contract.md): fields are
//! only ever added, and durations are milliseconds with microseconds as
//! decimals.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::lifecycle::{ExitStatus, GenId, Slot};

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Notice {
    /// A reload asked for while one was in flight (or during boot) waits.
    ReloadQueued {
        reason: String,
    },
    /// A reload started a new generation beside the serving one.
    ReloadStarted {
        generation: GenId,
        serving: GenId,
    },
    /// The reload's generation is ready and serves; `previous` drains.
    ReloadSucceeded {
        generation: GenId,
        previous: GenId,
        #[serde(rename = "took_ms", with = "ms")]
        took: Duration,
    },
    /// The reload's generation failed and was rolled back; `serving` keeps
    /// serving.
    ReloadFailed {
        generation: GenId,
        serving: GenId,
        reason: String,
        #[serde(rename = "took_ms", with = "ms")]
        took: Duration,
    },
    /// No generation was started: the config file has a mistake, or baton
    /// is stopping.
    ReloadRefused {
        reason: String,
    },
    GenerationStarting {
        generation: GenId,
        workers: usize,
    },
    GenerationReady {
        generation: GenId,
        #[serde(rename = "took_ms", with = "ms")]
        took: Duration,
    },
    /// Replaced by a newer one: told to stop, given its grace period.
    GenerationDraining {
        generation: GenId,
    },
    /// Failed to start (a worker exited, could not be spawned, or the
    /// readiness deadline passed): being killed.
    GenerationFailed {
        generation: GenId,
        reason: String,
    },
    /// Its last worker is gone. `drained_ms`: how long its drain took, for
    /// a generation that was draining; `killed`: whether some worker had
    /// to be sent `SIGKILL`.
    GenerationExited {
        generation: GenId,
        #[serde(rename = "drained_ms", with = "ms_opt", default)]
        drained: Option<Duration>,
        killed: bool,
    },
    WorkerStarted {
        generation: GenId,
        worker: Slot,
        pid: u32,
    },
    WorkerReady {
        generation: GenId,
        worker: Slot,
        pid: u32,
        /// From its start to baton seeing it ready.
        #[serde(rename = "after_ms", with = "ms")]
        after: Duration,
    },
    /// A worker process ended. `expected`: it was told to stop (its
    /// generation drains, failed or stops, or it was scaled away); `false`
    /// is a crash or an exit of a worker that should be running.
    WorkerExited {
        generation: GenId,
        worker: Slot,
        pid: u32,
        /// Its exit status, or `None` when a signal ended it.
        exit_code: Option<i32>,
        /// The signal that ended it (`SIGKILL`), if one did.
        signal: Option<String>,
        #[serde(rename = "uptime_ms", with = "ms")]
        uptime: Duration,
        expected: bool,
    },
    /// A worker of the serving generation will be started again after
    /// `delay`; `restarts`: how often this slot restarted in this
    /// generation.
    WorkerRestarting {
        generation: GenId,
        worker: Slot,
        #[serde(rename = "delay_ms", with = "ms")]
        delay: Duration,
        restarts: u32,
    },
    /// Workers per generation changed (`ctl scale`, `TTIN`/`TTOU`).
    Scaled {
        from: usize,
        to: usize,
    },
    /// `kind`: `graceful` or `immediate`.
    Stopping {
        kind: String,
    },
    /// baton upgrades itself in place: the new binary passed its check and
    /// is being executed.
    UpgradeStarted {
        binary: String,
    },
    /// The new image runs (same pid, every worker kept).
    Upgraded {
        from: String,
        to: String,
        #[serde(rename = "took_ms", with = "ms")]
        took: Duration,
    },
    /// The upgrade was refused before the exec, or the new image could not
    /// take over and the old one runs again (`rolled_back`).
    UpgradeFailed {
        reason: String,
        rolled_back: bool,
    },
    /// baton has stopped with this exit code: the last line of every
    /// stream.
    Stopped {
        exit_code: u8,
    },
}

impl Notice {
    /// A worker's exit, in the wire form.
    pub fn worker_exited(
        generation: GenId,
        worker: Slot,
        pid: u32,
        status: ExitStatus,
        uptime: Duration,
        expected: bool,
    ) -> Self {
        let (exit_code, signal) = match status {
            ExitStatus::Code(c) => (Some(c), None),
            ExitStatus::Signal(s) => (None, Some(baton_sys::spawn::signal_name(s))),
        };
        Notice::WorkerExited {
            generation,
            worker,
            pid,
            exit_code,
            signal,
            uptime,
            expected,
        }
    }
}

/// One line of `baton ctl events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventLine {
    /// Grows by one with every event over baton's whole life (carried
    /// across in-place upgrades), so a reader can tell that it missed none.
    pub seq: u64,
    /// When baton published it: RFC 3339, UTC, to the microsecond.
    pub time: String,
    #[serde(flatten)]
    pub notice: Notice,
}

impl EventLine {
    /// `notice` as event number `seq`, now.
    pub fn now(seq: u64, notice: Notice) -> Self {
        Self {
            seq,
            time: humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
            notice,
        }
    }
}

/// A duration as milliseconds, with microseconds as decimals.
mod ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn to_ms(d: Duration) -> f64 {
        // Rounded to the microsecond: more digits are noise.
        (d.as_micros() as f64) / 1000.0
    }

    pub(super) fn from_ms(ms: f64) -> Duration {
        Duration::from_secs_f64((ms / 1000.0).max(0.0))
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(to_ms(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        f64::deserialize(d).map(from_ms)
    }
}

mod ms_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[expect(
        clippy::ref_option,
        reason = "serde's `with` passes the field by reference"
    )]
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        d.map(super::ms::to_ms).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<f64>::deserialize(d).map(|o| o.map(super::ms::from_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_flat_json_object_with_durations_in_milliseconds() {
        let line = EventLine {
            seq: 7,
            time: "2026-01-01T00:00:00.000001Z".into(),
            notice: Notice::ReloadSucceeded {
                generation: 3,
                previous: 2,
                took: Duration::from_micros(41_250),
            },
        };
        let json = serde_json::to_string(&line).expect("encode");
        assert_eq!(
            json,
            r#"{"seq":7,"time":"2026-01-01T00:00:00.000001Z","event":"reload_succeeded","generation":3,"previous":2,"took_ms":41.25}"#
        );
        let back: EventLine = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, line);
        let exited = serde_json::to_value(Notice::GenerationExited {
            generation: 1,
            drained: None,
            killed: false,
        })
        .expect("encode");
        assert_eq!(exited["drained_ms"], serde_json::Value::Null);
        let crash = serde_json::to_value(Notice::worker_exited(
            2,
            0,
            42,
            ExitStatus::Signal(libc::SIGKILL),
            Duration::from_millis(5),
            false,
        ))
        .expect("encode");
        assert_eq!(crash["signal"], "SIGKILL");
        assert_eq!(crash["exit_code"], serde_json::Value::Null);
    }
}
