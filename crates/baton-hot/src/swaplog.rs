//! The version log: every change of version, rejection and free, one line
//! each with fingerprints, to `tracing` and optionally to a file (a
//! `hotswap.log`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::error::{HostError, Rejection};
use crate::fingerprint::Fingerprint;

/// Where version events go.
#[derive(Debug)]
pub(crate) struct SwapLog {
    file: Option<Mutex<File>>,
}

impl SwapLog {
    pub fn open(path: Option<&PathBuf>) -> Result<Self, HostError> {
        let file = match path {
            None => None,
            Some(p) => Some(Mutex::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| HostError::Log {
                        path: p.clone(),
                        source,
                    })?,
            )),
        };
        Ok(Self { file })
    }

    fn line(&self, text: &str) {
        if let Some(f) = &self.file {
            let now = humantime::format_rfc3339_millis(SystemTime::now());
            // A log that cannot be written must not stop a swap.
            if let Ok(mut f) = f.lock() {
                let _ = writeln!(f, "{now} {text}");
            }
        }
    }

    pub fn current(
        &self,
        path: &Path,
        version: u64,
        fingerprint: Fingerprint,
        was: Option<(u64, Fingerprint)>,
        why: &str,
        took: Duration,
    ) {
        let was = match was {
            Some((v, f)) => format!(", was version {v} fingerprint {f}"),
            None => String::new(),
        };
        let text = format!(
            "{}: version {version} current, fingerprint {fingerprint} ({why}{was}; {} ms)",
            path.display(),
            took.as_millis()
        );
        tracing::info!("{text}");
        self.line(&text);
    }

    pub fn rejected(&self, rejection: &Rejection, serving: Option<(u64, Fingerprint)>) {
        let serving = match serving {
            Some((v, f)) => format!("; version {v} (fingerprint {f}) keeps serving"),
            None => "; nothing to serve yet".to_owned(),
        };
        let text = format!(
            "{}: fingerprint {} rejected at {}: {}{serving}",
            rejection.path.display(),
            rejection.fingerprint,
            rejection.stage,
            rejection.reason
        );
        tracing::warn!("{text}");
        self.line(&text);
    }

    pub fn freed(&self, path: &Path, version: u64, fingerprint: Fingerprint) {
        let text = format!(
            "{}: version {version} (fingerprint {fingerprint}) freed",
            path.display()
        );
        tracing::info!("{text}");
        self.line(&text);
    }

    pub fn note(&self, path: &Path, text: &str) {
        let text = format!("{}: {text}", path.display());
        tracing::info!("{text}");
        self.line(&text);
    }
}
