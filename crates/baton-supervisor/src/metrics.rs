//! What `baton run --metrics ADDR` serves: Prometheus metrics in the
//! OpenMetrics text format at `/metrics`, and `/ready` and `/live` for
//! Kubernetes-style probes.
//!
//! [`Metrics`] holds what is counted over baton's whole life (reloads by
//! outcome, rollbacks, upgrades, reload and drain durations as histograms,
//! the event stream): it is fed by the [`Notice`]s the runtime publishes and
//! travels with the runtime's state across an in-place upgrade, so nothing
//! counted is lost or counted twice. What is true *now* (workers by state,
//! the serving generation, readiness) is read from the lifecycle at each
//! scrape ([`Scrape`]).
//!
//! The text is written by the `prometheus-client` crate (the Prometheus
//! project's Rust client: its escaping, number formatting and `# EOF` are
//! right by construction); baton's values are handed to it at each scrape
//! through a `Collector`, since they live in baton's own serialisable state
//! rather than in the crate's atomics. The HTTP side is in [`http`] (the
//! requests) and the runtime's `metrics` module (the sockets).

use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use serde::{Deserialize, Serialize};

use crate::events::Notice;
use crate::lifecycle::{Counters, GenId, GenerationInfo};

pub mod http;

/// The content type of `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the reload histogram, in seconds: from a fast app's few
/// milliseconds to the default readiness deadline (60 s) and beyond.
pub const RELOAD_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Upper bounds of the drain histogram, in seconds: up to the default grace
/// (30 s) and well past it.
pub const DRAIN_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// A histogram with fixed buckets, in a form that crosses an exec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Upper bounds, ascending; the `+Inf` bucket is implied. Carried with
    /// the counts, so a baton whose buckets differ keeps these until it
    /// restarts rather than misfiling what was counted.
    bounds: Vec<f64>,
    /// Observations per bucket (not cumulative), one more than `bounds`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &[f64]) -> Self {
        Self {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, d: Duration) {
        let v = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// `(upper bound, observations)` per bucket, `+Inf` as `f64::MAX` (how
    /// the encoder names it).
    fn buckets(&self) -> Vec<(f64, u64)> {
        self.bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(self.counts.iter().copied())
            .collect()
    }
}

/// What baton counts over its whole life, beyond the lifecycle's own
/// [`Counters`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Metrics {
    /// Reloads refused before anything started (a config file with a
    /// mistake, or baton stopping).
    pub reloads_refused: u64,
    /// From a reload's start to its verdict.
    pub reload_succeeded: Histogram,
    pub reload_failed: Histogram,
    /// From a replaced generation's stop signal to its last worker's exit;
    /// `killed`: the grace ran out and some worker got `SIGKILL`.
    pub drain_clean: Histogram,
    pub drain_killed: Histogram,
    pub upgrades_succeeded: u64,
    pub upgrades_refused: u64,
    pub upgrades_rolled_back: u64,
    /// Events published (the number of the last one, for `ctl events`).
    pub events: u64,
    /// `ctl events` readers dropped for falling behind.
    pub event_readers_dropped: u64,
    /// When baton started, in microseconds since the epoch (0: unknown, a
    /// state written before this field). Kept as a wall-clock time because
    /// an `Instant` crosses an upgrade as an age, which would move the
    /// start by the time the exec took.
    pub started_unix_us: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reloads_refused: 0,
            reload_succeeded: Histogram::new(RELOAD_BUCKETS),
            reload_failed: Histogram::new(RELOAD_BUCKETS),
            drain_clean: Histogram::new(DRAIN_BUCKETS),
            drain_killed: Histogram::new(DRAIN_BUCKETS),
            upgrades_succeeded: 0,
            upgrades_refused: 0,
            upgrades_rolled_back: 0,
            events: 0,
            event_readers_dropped: 0,
            started_unix_us: 0,
        }
    }
}

impl Metrics {
    /// Counts what `notice` says happened.
    pub fn observe(&mut self, notice: &Notice) {
        match notice {
            Notice::ReloadSucceeded { took, .. } => self.reload_succeeded.observe(*took),
            Notice::ReloadFailed { took, .. } => self.reload_failed.observe(*took),
            Notice::ReloadRefused { .. } => self.reloads_refused += 1,
            Notice::GenerationExited {
                drained: Some(d),
                killed,
                ..
            } => {
                if *killed {
                    self.drain_killed.observe(*d);
                } else {
                    self.drain_clean.observe(*d);
                }
            }
            Notice::Upgraded { .. } => self.upgrades_succeeded += 1,
            Notice::UpgradeFailed { rolled_back, .. } => {
                if *rolled_back {
                    self.upgrades_rolled_back += 1;
                } else {
                    self.upgrades_refused += 1;
                }
            }
            Notice::ReloadQueued { .. }
            | Notice::ReloadStarted { .. }
            | Notice::GenerationStarting { .. }
            | Notice::GenerationReady { .. }
            | Notice::GenerationDraining { .. }
            | Notice::GenerationFailed { .. }
            | Notice::GenerationExited { drained: None, .. }
            | Notice::WorkerStarted { .. }
            | Notice::WorkerReady { .. }
            | Notice::WorkerExited { .. }
            | Notice::WorkerRestarting { .. }
            | Notice::Scaled { .. }
            | Notice::Stopping { .. }
            | Notice::UpgradeStarted { .. }
            | Notice::Stopped { .. } => {}
        }
    }
}

/// What is true at the moment of a scrape.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub version: String,
    /// When baton started (the first image, across upgrades).
    pub started: SystemTime,
    pub ready: bool,
    pub serving: Option<GenId>,
    pub workers_per_generation: usize,
    pub counters: Counters,
    pub generations: Vec<GenerationInfo>,
    /// The last reload's verdict: whether it succeeded, and when.
    pub last_reload: Option<(bool, SystemTime)>,
    pub event_readers: usize,
    /// `--dispatch`: its counters and queue, once baton dispatched.
    pub dispatch: Option<crate::control::DispatchStatus>,
}

/// Generation states, as `baton_generations` and `baton_workers` label
/// them (the lifecycle's own names, also in `ctl status`).
const GENERATION_STATES: &[&str] = &["starting", "serving", "draining", "failed", "stopping"];
/// Worker states with a process or the promise of one (an exited slot is
/// not a worker; `pending` waits for its turn in a rolling or restart
/// reload, `replaced` was told to make room for a new one).
const WORKER_STATES: &[&str] = &[
    "pending",
    "spawning",
    "running",
    "ready",
    "restarting",
    "removing",
    "replaced",
];

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The whole `/metrics` body.
pub fn encode(metrics: &Metrics, scrape: &Scrape) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot {
        metrics: metrics.clone(),
        scrape: scrape.clone(),
    }));
    let mut out = String::with_capacity(8 * 1024);
    // Writing into a String cannot fail; an error would be the crate's.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::warn!("cannot encode the metrics: {e}");
    }
    out
}

/// One scrape's values, handed to the encoder.
#[derive(Debug)]
struct Snapshot {
    metrics: Metrics,
    scrape: Scrape,
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let m = ConstCounter::new(value);
    m.encode(enc.encode_descriptor(name, help, None, m.metric_type())?)
}

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: V,
) -> Result<(), std::fmt::Error> {
    let m = ConstGauge::new(value);
    m.encode(enc.encode_descriptor(name, help, unit, m.metric_type())?)
}

fn labelled_counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        ConstCounter::new(*n).encode(m.encode_family(&[(label, *value)])?)?;
    }
    Ok(())
}

/// `--dispatch`: what baton handed out and every overload event.
fn dispatch(
    enc: &mut DescriptorEncoder,
    d: &crate::control::DispatchStatus,
) -> Result<(), std::fmt::Error> {
    labelled_counter(
        enc,
        "baton_dispatch_connections",
        "Connections under --dispatch: handed to a worker, sent again after their worker died or did not answer, dropped (no worker could take them)",
        "outcome",
        &[
            ("dispatched", d.dispatched),
            ("redispatched", d.redispatched),
            ("dropped", d.dropped),
        ],
    )?;
    labelled_counter(
        enc,
        "baton_dispatch_overload",
        "Overload events under --dispatch: waits for a free worker, connections closed, answered 503, queued, expired in the queue, and failed accepts (out of descriptors)",
        "kind",
        &[
            ("wait", d.waits),
            ("closed", d.closed),
            ("503", d.rejected_503),
            ("queued", d.queued),
            ("queue_expired", d.queue_expired),
            ("accept_error", d.accept_errors),
        ],
    )?;
    counter(
        enc,
        "baton_dispatch_timeouts",
        "Workers killed for not answering a dispatch within --dispatch-timeout",
        d.timeouts,
    )?;
    let waited = ConstCounter::new(Duration::from_millis(d.waited_ms).as_secs_f64());
    waited.encode(enc.encode_descriptor(
        "baton_dispatch_wait",
        "Time connections waited for a free worker under --dispatch, in all",
        Some(&Unit::Seconds),
        waited.metric_type(),
    )?)?;
    gauge(
        enc,
        "baton_dispatch_slack",
        "How many connections above the least loaded other worker one packet may take a worker now under --dispatch=pass: 1 (exactly even) unless the recent connections were short-lived and the workers outnumber the CPUs",
        None,
        i64::from(d.slack),
    )?;
    gauge(
        enc,
        "baton_dispatch_queued",
        "Connections in baton's own queue now (--queue)",
        None,
        i64::try_from(d.queued_now).unwrap_or(i64::MAX),
    )
}

fn histograms(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    by: &[(&str, &Histogram)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for (outcome, h) in by {
        m.encode_family(&[("outcome", *outcome)])?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                h.sum,
                h.count,
                &h.buckets(),
                None,
            )?;
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (m, s) = (&self.metrics, &self.scrape);
        let info = Info::new([("version", s.version.as_str())]);
        info.encode(enc.encode_descriptor(
            "baton_build",
            "The baton that answers (its version)",
            None,
            info.metric_type(),
        )?)?;
        gauge(
            &mut enc,
            "baton_start_time",
            "When baton started, in seconds since the epoch (an in-place upgrade keeps it)",
            Some(&Unit::Seconds),
            unix_seconds(s.started),
        )?;
        gauge(
            &mut enc,
            "baton_ready",
            "1 while a generation serves and baton is not stopping (what /ready answers 200 for)",
            None,
            i64::from(s.ready),
        )?;
        gauge(
            &mut enc,
            "baton_serving_generation",
            "The number of the generation that serves (0: none)",
            None,
            s.serving.unwrap_or(0),
        )?;
        gauge(
            &mut enc,
            "baton_workers_per_generation",
            "Workers each generation is meant to have",
            None,
            s.workers_per_generation,
        )?;
        {
            let mut g = enc.encode_descriptor(
                "baton_generations",
                "Generations by state",
                None,
                MetricType::Gauge,
            )?;
            for state in GENERATION_STATES {
                let n = s.generations.iter().filter(|x| x.state == *state).count();
                ConstGauge::new(n).encode(g.encode_family(&[("state", *state)])?)?;
            }
        }
        {
            let mut g = enc.encode_descriptor(
                "baton_workers",
                "Workers by the state of their generation and their own",
                None,
                MetricType::Gauge,
            )?;
            for gstate in GENERATION_STATES {
                for wstate in WORKER_STATES {
                    let n = s
                        .generations
                        .iter()
                        .filter(|x| x.state == *gstate)
                        .flat_map(|x| x.workers.iter())
                        .filter(|w| w.state == *wstate)
                        .count();
                    ConstGauge::new(n).encode(
                        g.encode_family(&[("generation_state", *gstate), ("state", *wstate)])?,
                    )?;
                }
            }
        }
        counter(
            &mut enc,
            "baton_reload_attempts",
            "Reloads that started a new generation",
            s.counters.reloads_started,
        )?;
        labelled_counter(
            &mut enc,
            "baton_reloads",
            "Reloads by outcome: succeeded (the new generation serves), failed (rolled back: the old one keeps serving), refused (nothing started: a config file with a mistake, or baton stopping)",
            "outcome",
            &[
                ("succeeded", s.counters.reloads_succeeded),
                ("failed", s.counters.reloads_failed),
                ("refused", m.reloads_refused),
            ],
        )?;
        labelled_counter(
            &mut enc,
            "baton_rollbacks",
            "Automatic rollbacks: of a reload (the new generation failed and was killed), of an upgrade of baton itself (the new image could not take over)",
            "kind",
            &[
                ("reload", s.counters.reloads_failed),
                ("upgrade", m.upgrades_rolled_back),
            ],
        )?;
        histograms(
            &mut enc,
            "baton_reload_duration",
            "From a reload's start to its verdict",
            &[
                ("succeeded", &m.reload_succeeded),
                ("failed", &m.reload_failed),
            ],
        )?;
        histograms(
            &mut enc,
            "baton_drain_duration",
            "From a replaced generation's stop signal to its last worker's exit (killed: the grace ran out)",
            &[("clean", &m.drain_clean), ("killed", &m.drain_killed)],
        )?;
        counter(
            &mut enc,
            "baton_worker_restarts",
            "Workers of a serving generation restarted after they exited",
            s.counters.restarts,
        )?;
        labelled_counter(
            &mut enc,
            "baton_upgrades",
            "In-place upgrades of baton itself by outcome",
            "outcome",
            &[
                ("succeeded", m.upgrades_succeeded),
                ("refused", m.upgrades_refused),
                ("rolled_back", m.upgrades_rolled_back),
            ],
        )?;
        if let Some((ok, at)) = s.last_reload {
            gauge(
                &mut enc,
                "baton_last_reload_success",
                "1 if the last reload succeeded, 0 if it was rolled back",
                None,
                i64::from(ok),
            )?;
            gauge(
                &mut enc,
                "baton_last_reload_timestamp",
                "When the last reload got its verdict, in seconds since the epoch",
                Some(&Unit::Seconds),
                unix_seconds(at),
            )?;
        }
        counter(
            &mut enc,
            "baton_events",
            "Lifecycle events published (baton ctl events)",
            m.events,
        )?;
        gauge(
            &mut enc,
            "baton_event_readers",
            "baton ctl events readers connected",
            None,
            s.event_readers,
        )?;
        counter(
            &mut enc,
            "baton_event_readers_dropped",
            "baton ctl events readers dropped because they fell behind",
            m.event_readers_dropped,
        )?;
        if let Some(d) = &s.dispatch {
            dispatch(&mut enc, d)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_file_each_observation_in_its_bucket() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(100));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(5));
        assert_eq!(h.counts, vec![2, 1, 1]);
        assert_eq!(h.count(), 4);
        assert!((h.sum - 5.65).abs() < 1e-9);
        assert_eq!(h.buckets().last(), Some(&(f64::MAX, 1)));
    }

    #[test]
    fn notices_feed_the_counters_and_histograms() {
        let mut m = Metrics::default();
        m.observe(&Notice::ReloadSucceeded {
            generation: 2,
            previous: 1,
            took: Duration::from_millis(40),
        });
        m.observe(&Notice::ReloadFailed {
            generation: 3,
            serving: 2,
            reason: "x".into(),
            took: Duration::from_secs(2),
        });
        m.observe(&Notice::GenerationExited {
            generation: 1,
            drained: Some(Duration::from_millis(120)),
            killed: false,
        });
        m.observe(&Notice::GenerationExited {
            generation: 3,
            drained: None,
            killed: true,
        });
        m.observe(&Notice::UpgradeFailed {
            reason: "x".into(),
            rolled_back: true,
        });
        m.observe(&Notice::ReloadRefused { reason: "x".into() });
        assert_eq!(m.reload_succeeded.count(), 1);
        assert_eq!(m.reload_failed.count(), 1);
        assert_eq!(m.drain_clean.count(), 1);
        assert_eq!(m.drain_killed.count(), 0, "a failed generation is no drain");
        assert_eq!(m.upgrades_rolled_back, 1);
        assert_eq!(m.reloads_refused, 1);
    }

    #[test]
    fn the_text_is_openmetrics_and_names_every_family() {
        let mut m = Metrics::default();
        m.reload_succeeded.observe(Duration::from_millis(30));
        let text = encode(
            &m,
            &Scrape {
                version: "1.2.3".into(),
                started: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                ready: true,
                serving: Some(2),
                workers_per_generation: 2,
                counters: Counters {
                    reloads_started: 1,
                    reloads_succeeded: 1,
                    reloads_failed: 0,
                    restarts: 3,
                },
                generations: Vec::new(),
                last_reload: Some((true, SystemTime::UNIX_EPOCH)),
                event_readers: 0,
                dispatch: Some(crate::control::DispatchStatus {
                    mode: "pass".into(),
                    order: "fifo".into(),
                    overload: "503".into(),
                    queue_limit: 0,
                    queued_now: 0,
                    dispatched: 7,
                    redispatched: 0,
                    timeouts: 1,
                    waits: 0,
                    waited_ms: 0,
                    closed: 0,
                    rejected_503: 2,
                    queued: 0,
                    queue_expired: 0,
                    accept_errors: 0,
                    dropped: 0,
                    slack: 4,
                    short_lived: true,
                }),
            },
        );
        for line in [
            "baton_build_info{version=\"1.2.3\"} 1",
            "baton_ready 1",
            "baton_serving_generation 2",
            "baton_reloads_total{outcome=\"succeeded\"} 1",
            "baton_worker_restarts_total 3",
            "baton_reload_duration_seconds_bucket{le=\"0.05\",outcome=\"succeeded\"} 1",
            "baton_reload_duration_seconds_bucket{le=\"+Inf\",outcome=\"succeeded\"} 1",
            "baton_workers{generation_state=\"serving\",state=\"ready\"} 0",
            "# TYPE baton_drain_duration_seconds histogram",
            "# UNIT baton_start_time_seconds seconds",
            "baton_dispatch_connections_total{outcome=\"dispatched\"} 7",
            "baton_dispatch_overload_total{kind=\"503\"} 2",
            "baton_dispatch_timeouts_total 1",
            "baton_dispatch_slack 4",
            "baton_dispatch_wait_seconds_total 0.0",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
