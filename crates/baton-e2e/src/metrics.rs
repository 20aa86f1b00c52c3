//! baton's `--metrics` endpoint, as the tests see it: its port (from the
//! log), a scrape parsed by a real Prometheus parser (the
//! `prometheus_client` Python package, in the venv `./test` prepares), and
//! the samples it holds.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::Baton;
use crate::tools::{skip, venv};

/// One sample of a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub family: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The port in the last `metrics on http://HOST:PORT/metrics` line at
/// `mark` or later (waited for).
pub fn port_after(baton: &Baton, mark: usize) -> u16 {
    let (_, line) = baton.wait_for_after(mark, "metrics on http://", crate::WAIT);
    let addr = line
        .split("metrics on http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_default();
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
}

/// The endpoint's port (its first `metrics on` line).
pub fn port(baton: &Baton) -> u16 {
    port_after(baton, 0)
}

/// The venv's Python, if it can import `prometheus_client`; otherwise
/// [`skip`]s `test` (which fails it unless skips are allowed).
pub fn python_or_skip(test: &str) -> Option<PathBuf> {
    let python = venv().join("bin").join("python");
    let ok = python.is_file()
        && Command::new(&python)
            .args(["-c", "import prometheus_client"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        skip(
            test,
            &format!(
                "{} cannot import prometheus_client (PyPI package prometheus-client)",
                python.display()
            ),
        );
        return None;
    }
    Some(python)
}

/// The samples of `text` (an exposition), as `prometheus_client` parses it;
/// panics, with the text, if either of its parsers refuses it.
pub fn parse(python: &Path, text: &str) -> Vec<Sample> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/parse_metrics.py");
    let mut child = Command::new(python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let pid = child.id();
    {
        let mut stdin = child.stdin.take().expect("stdin was piped");
        stdin
            .write_all(text.as_bytes())
            .expect("write the exposition to the parser");
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(out) = rx.recv_timeout(Duration::from_secs(60)) else {
        if let Some(p) = crate::Proc::find(pid) {
            p.signal(rustix::process::Signal::KILL);
        }
        panic!("the metrics parser (pid {pid}) did not finish within 60 s");
    };
    let out = out.expect("the metrics parser ran");
    assert!(
        out.status.success(),
        "prometheus_client refused the exposition: {}\n--- the exposition ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
            Sample {
                family: v["family"].as_str().unwrap_or_default().to_owned(),
                name: v["name"].as_str().unwrap_or_default().to_owned(),
                labels: v["labels"]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default(),
                value: v["value"].as_f64().unwrap_or(f64::NAN),
            }
        })
        .collect()
}

/// `GET /metrics` on `port`, checked (200, the OpenMetrics content type)
/// and parsed.
pub fn scrape(python: &Path, port: u16) -> Vec<Sample> {
    let reply = crate::http::get(port, "/metrics").expect("GET /metrics");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.header("Content-Type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{reply:?}"
    );
    parse(python, &reply.body)
}

/// The value of the sample `name` whose labels include `labels`.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// Like [`value`], panicking with the samples of that family when there is
/// no such sample.
pub fn get(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    value(samples, name, labels).unwrap_or_else(|| {
        let near: Vec<&Sample> = samples
            .iter()
            .filter(|s| {
                s.name.starts_with(
                    name.split('_')
                        .take(2)
                        .collect::<Vec<_>>()
                        .join("_")
                        .as_str(),
                )
            })
            .collect();
        panic!("no sample {name}{labels:?}; near it: {near:#?}")
    })
}
