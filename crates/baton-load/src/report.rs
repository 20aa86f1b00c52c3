//! What a load run measured, and how it is printed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::histogram::Latency;

/// Counts and latencies of a run, at one moment ([`crate::Running::snapshot`])
/// or at its end.
#[derive(Debug, Clone)]
pub struct Report {
    /// Requests finished, well or not (`ok + failed`).
    pub requests: u64,
    /// Complete responses with a 2xx status.
    pub ok: u64,
    pub failed: u64,
    /// Failure kind ([`crate::Failure::kind`]) to count.
    pub errors: BTreeMap<String, u64>,
    /// Value of the `X-Generation` header to the number of complete
    /// responses (any status) that carried it.
    pub generations: BTreeMap<String, u64>,
    /// Generation to the time, from the start of the run, at which a
    /// response carrying it was first complete.
    pub first_seen: BTreeMap<String, Duration>,
    /// The same moments as [`Instant`]s, to compare with events measured
    /// elsewhere (e.g. "SIGHUP sent" to "first response from the new
    /// generation").
    pub first_seen_at: BTreeMap<String, Instant>,
    /// Latency of the successful requests, from the start of the request
    /// (including the connect, when a new connection was needed) to the end
    /// of the response body.
    pub latency: Latency,
    /// Time from the start of the run to this report.
    pub elapsed: Duration,
    pub started_at: Instant,
}

impl Report {
    /// Requests (of any outcome) per second.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.requests as f64 / secs
        } else {
            0.0
        }
    }

    /// The generations seen that are numbers, in numeric order.
    pub fn generation_numbers(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .generations
            .keys()
            .filter_map(|g| g.parse().ok())
            .collect();
        v.sort_unstable();
        v
    }

    /// The report as one JSON object (durations in microseconds or seconds,
    /// as the field names say).
    pub fn to_json(&self) -> String {
        let mut s = String::new();
        let us = |d: Duration| d.as_micros();
        let _ = write!(
            s,
            "{{\"requests\":{},\"ok\":{},\"failed\":{},\"elapsed_s\":{:.6},\"throughput\":{:.1},",
            self.requests,
            self.ok,
            self.failed,
            self.elapsed.as_secs_f64(),
            self.throughput()
        );
        let l = &self.latency;
        let _ = write!(
            s,
            "\"latency_us\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{},\"mean\":{}}},",
            us(l.p50),
            us(l.p90),
            us(l.p99),
            us(l.p999),
            us(l.max),
            us(l.mean)
        );
        s.push_str("\"errors\":");
        json_map(&mut s, self.errors.iter().map(|(k, v)| (k, v.to_string())));
        s.push_str(",\"generations\":");
        json_map(
            &mut s,
            self.generations.iter().map(|(k, v)| (k, v.to_string())),
        );
        s.push_str(",\"first_seen_s\":");
        json_map(
            &mut s,
            self.first_seen
                .iter()
                .map(|(k, v)| (k, format!("{:.6}", v.as_secs_f64()))),
        );
        s.push('}');
        s
    }
}

fn json_map<'a>(out: &mut String, entries: impl Iterator<Item = (&'a String, String)>) {
    out.push('{');
    for (i, (k, v)) in entries.enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(out, k);
        out.push(':');
        out.push_str(&v);
    }
    out.push('}');
}

/// Appends `s` as a JSON string literal.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A duration in the unit that reads best.
pub fn human(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0}µs")
    } else if us < 1e6 {
        format!("{:.2}ms", us / 1000.0)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "requests     {} in {:.2}s ({:.0}/s)",
            self.requests,
            self.elapsed.as_secs_f64(),
            self.throughput()
        )?;
        writeln!(f, "ok           {}", self.ok)?;
        writeln!(f, "failed       {}", self.failed)?;
        let l = &self.latency;
        writeln!(
            f,
            "latency      p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            human(l.p50),
            human(l.p90),
            human(l.p99),
            human(l.p999),
            human(l.max)
        )?;
        if self.generations.is_empty() {
            writeln!(f, "generations  (no X-Generation header seen)")?;
        } else {
            let mut gens: Vec<(&String, &u64)> = self.generations.iter().collect();
            // Numeric generations in numeric order, others after.
            gens.sort_by_key(|(g, _)| (g.parse::<u64>().unwrap_or(u64::MAX), (*g).clone()));
            for (i, (g, n)) in gens.into_iter().enumerate() {
                let label = if i == 0 { "generations" } else { "" };
                let first = self.first_seen.get(g).map_or_else(String::new, |d| {
                    format!(", first at {:.3}s", d.as_secs_f64())
                });
                writeln!(f, "{label:<12} {g}: {n} responses{first}")?;
            }
        }
        if self.errors.is_empty() {
            write!(f, "errors       none")?;
        } else {
            for (i, (k, n)) in self.errors.iter().enumerate() {
                let label = if i == 0 { "errors" } else { "" };
                if i > 0 {
                    writeln!(f)?;
                }
                write!(f, "{label:<12} {n} × {k}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_well_formed() {
        let mut r = Report {
            requests: 3,
            ok: 2,
            failed: 1,
            errors: BTreeMap::new(),
            generations: BTreeMap::new(),
            first_seen: BTreeMap::new(),
            first_seen_at: BTreeMap::new(),
            latency: Latency::default(),
            elapsed: Duration::from_secs(1),
            started_at: Instant::now(),
        };
        r.errors.insert("status \"5\"\n".into(), 1);
        r.generations.insert("10".into(), 1);
        r.generations.insert("9".into(), 1);
        r.first_seen.insert("9".into(), Duration::from_millis(5));
        let j = r.to_json();
        assert!(
            j.starts_with("{\"requests\":3,\"ok\":2,\"failed\":1,"),
            "{j}"
        );
        assert!(j.contains("\"errors\":{\"status \\\"5\\\"\\n\":1}"), "{j}");
        assert!(j.contains("\"generations\":{\"10\":1,\"9\":1}"), "{j}");
        assert!(j.contains("\"first_seen_s\":{\"9\":0.005000}"), "{j}");
        assert_eq!(r.generation_numbers(), vec![9, 10]);
        assert!((r.throughput() - 3.0).abs() < 1e-9);
        let text = r.to_string();
        assert!(
            text.contains("generations  9: 1 responses, first at 0.005s"),
            "{text}"
        );
    }
}
