//! Every request of a run, one by one: when it began, how long it took,
//! how it ended and which generation answered. For plotting latency over
//! time through reloads (`bench/compare`), where a histogram cannot say
//! *when* the slow or failed requests happened.

use std::io::Write;
use std::time::{Duration, SystemTime};

/// One finished request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// When it began, from the start of the run.
    pub start: Duration,
    /// From its start to the end of the response (or the failure).
    pub latency: Duration,
    /// `None` for a 2xx response; else the failure's kind
    /// ([`crate::Failure::kind`]).
    pub failure: Option<String>,
    /// The `X-Generation` header of the response, if there was one.
    pub generation: Option<String>,
}

/// Writes `samples` as CSV: a comment line with the run's start as Unix
/// time in nanoseconds (to line the samples up with events timed
/// elsewhere), a header, then one line per request in order of start:
/// `start_us,latency_us,outcome,generation` (outcome `ok`, or the
/// failure's kind with any comma made a semicolon).
///
/// # Errors
/// When writing fails.
pub fn write_csv(
    out: &mut impl Write,
    started: SystemTime,
    samples: &[Sample],
) -> std::io::Result<()> {
    let unix_ns = started
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    writeln!(out, "# started_unix_ns={unix_ns}")?;
    writeln!(out, "start_us,latency_us,outcome,generation")?;
    for s in samples {
        let outcome = s
            .failure
            .as_deref()
            .map_or_else(|| "ok".to_owned(), |f| f.replace([',', '\n'], ";"));
        let generation = s
            .generation
            .as_deref()
            .unwrap_or("")
            .replace([',', '\n'], ";");
        writeln!(
            out,
            "{},{},{outcome},{generation}",
            s.start.as_micros(),
            s.latency.as_micros()
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_the_start_a_header_and_one_line_per_request() {
        let samples = [
            Sample {
                start: Duration::from_micros(10),
                latency: Duration::from_micros(250),
                failure: None,
                generation: Some("2".into()),
            },
            Sample {
                start: Duration::from_millis(1),
                latency: Duration::from_millis(3),
                failure: Some("read: reset, again".into()),
                generation: None,
            },
        ];
        let mut out = Vec::new();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(5);
        write_csv(&mut out, t, &samples).expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "# started_unix_ns=5000000000\nstart_us,latency_us,outcome,generation\n\
             10,250,ok,2\n1000,3000,read: reset; again,\n"
        );
    }
}
