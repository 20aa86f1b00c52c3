//! Driving a `baton run` process from the demo and the benchmark: start it,
//! follow its log, signal it, and make sure it (and its workers) are gone
//! when we are.
//!
//! Every wait here is for an event (a log line, the process's exit, an
//! interrupt) with a deadline; nothing sleeps to synchronise.
//!
//! Processes are signalled by PID. baton is not reaped until its exit is
//! observed by a waiter thread, so until then its PID cannot be reused and
//! signalling it is safe. baton is started in its own process group, so a
//! Ctrl-C in the terminal reaches only us, and we stop baton gracefully.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::process::{Pid, Signal};

/// A line of baton's stderr (which also carries its workers' output).
pub type LineHook = Box<dyn Fn(&str) + Send + Sync>;

#[derive(Debug, Default)]
struct Log {
    lines: Vec<String>,
    /// baton's exit status, once reaped.
    exited: Option<ExitStatus>,
    /// The stderr pipe reached EOF (baton and every worker closed it).
    eof: bool,
    /// Set by [`Baton::interrupt`] (e.g. on Ctrl-C) to end every wait.
    interrupted: bool,
    /// Worker pids by generation, from `worker K of generation G started,
    /// pid P`, removed at `generation G exited`.
    workers: BTreeMap<u64, Vec<u32>>,
}

#[derive(Debug, Default)]
struct Shared {
    log: Mutex<Log>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why a wait ended without its event.
#[derive(Debug)]
pub enum WaitError {
    Timeout(String),
    Exited(String),
    Interrupted,
}

impl std::error::Error for WaitError {}

impl std::fmt::Display for WaitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitError::Timeout(what) => write!(f, "timed out waiting for {what:?}"),
            WaitError::Exited(what) => write!(f, "baton exited while waiting for {what:?}"),
            WaitError::Interrupted => f.write_str("interrupted"),
        }
    }
}

/// How to start baton.
#[derive(Debug, Clone)]
pub struct Spec {
    pub baton: PathBuf,
    /// Arguments between `run` and `--`.
    pub run_args: Vec<String>,
    /// The server command and its arguments.
    pub command: Vec<String>,
}

/// A running `baton run`; stopped (and, failing that, killed) on drop.
pub struct Baton {
    pid: Pid,
    /// The server command as given, to recognise its workers in /proc.
    program: String,
    shared: Arc<Shared>,
    /// The first listening address baton reported.
    pub addr: SocketAddr,
    started: Instant,
}

impl std::fmt::Debug for Baton {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Baton")
            .field("pid", &self.pid)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Whether `line` is the supervisor's own `needle` line rather than a
/// worker's (`worker 0 of generation 2 exited` must not count as
/// `generation 2 exited`).
pub fn line_matches(line: &str, needle: &str) -> bool {
    line.match_indices(needle)
        .any(|(i, _)| !line[..i].ends_with("of "))
}

fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on tcp://")? + "listening on tcp://".len()..];
    let addr = rest.split_whitespace().next()?;
    addr.parse().ok()
}

fn note_worker(log: &mut Log, line: &str) {
    // "worker 0 of generation 2 started, pid 12345"
    if let Some(i) = line.find(" of generation ") {
        let rest = &line[i + " of generation ".len()..];
        if let Some((gen_text, tail)) = rest.split_once(" started, pid ")
            && let (Ok(g), Some(pid)) = (
                gen_text.trim().parse::<u64>(),
                tail.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|p| p.parse::<u32>().ok()),
            )
        {
            log.workers.entry(g).or_default().push(pid);
        }
    }
    // "generation 2 exited" (the supervisor's line, not a worker's)
    for (i, _) in line.match_indices("generation ") {
        if line[..i].ends_with("of ") {
            continue;
        }
        let rest = &line[i + "generation ".len()..];
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if let Ok(g) = rest[..digits].parse::<u64>()
            && rest[digits..].starts_with(" exited")
        {
            log.workers.remove(&g);
        }
    }
}

impl Baton {
    /// Starts baton and waits (at most `timeout`) for its listening address.
    /// `hook` sees every stderr line as it arrives (to echo or filter it).
    pub fn start(spec: &Spec, hook: Option<LineHook>, timeout: Duration) -> anyhow::Result<Self> {
        let mut cmd = Command::new(&spec.baton);
        cmd.arg("run")
            .args(&spec.run_args)
            .arg("--")
            .args(&spec.command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C meant for us must not also
            // reach baton (two signals would make it stop immediately).
            .process_group(0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run {}", spec.baton.display()))?;
        let pid = Pid::from_raw(child.id() as i32)
            .context("the OS gave baton a pid that is not positive")?;
        let stderr = child
            .stderr
            .take()
            .context("baton's stderr is piped, so it is present")?;
        let shared = Arc::new(Shared::default());

        let s = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("baton-log".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(h) = &hook {
                        h(&line);
                    }
                    let mut log = s.lock();
                    note_worker(&mut log, &line);
                    log.lines.push(line);
                    drop(log);
                    s.changed.notify_all();
                }
                s.lock().eof = true;
                s.changed.notify_all();
            })
            .context("cannot start the log reader thread")?;

        let s = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("baton-wait".into())
            .spawn(move || {
                let status = child.wait();
                let mut log = s.lock();
                // A failed wait means the child is gone in some way we cannot
                // observe; report it as a plain failure exit.
                log.exited =
                    Some(status.unwrap_or_else(|_| {
                        std::os::unix::process::ExitStatusExt::from_raw(1 << 8)
                    }));
                drop(log);
                s.changed.notify_all();
            })
            .context("cannot start the waiter thread")?;

        let mut baton = Self {
            pid,
            program: spec.command.first().cloned().unwrap_or_default(),
            shared,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            started: Instant::now(),
        };
        let line = baton.wait_for_line("listening on tcp://", timeout)?;
        baton.addr = parse_listening(&line)
            .with_context(|| format!("cannot read the address in baton's line {line:?}"))?;
        Ok(baton)
    }

    pub fn pid(&self) -> u32 {
        self.pid.as_raw_nonzero().get() as u32
    }

    /// The pids of the workers baton reported and has not yet said are gone.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.shared
            .lock()
            .workers
            .values()
            .flatten()
            .copied()
            .collect()
    }

    /// When baton was started.
    pub fn started_at(&self) -> Instant {
        self.started
    }

    /// Sends `sig` to baton.
    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        if self.shared.lock().exited.is_some() {
            bail!("baton has exited; cannot send it {sig:?}");
        }
        rustix::process::kill_process(self.pid, sig)
            .with_context(|| format!("cannot signal baton (pid {})", self.pid()))
    }

    /// Makes every current and future wait return [`WaitError::Interrupted`].
    pub fn interrupt(&self) {
        self.shared.lock().interrupted = true;
        self.shared.changed.notify_all();
    }

    /// A handle that can interrupt waits from another thread.
    pub fn interrupter(&self) -> impl Fn() + Send + Sync + 'static {
        let s = Arc::clone(&self.shared);
        move || {
            s.lock().interrupted = true;
            s.changed.notify_all();
        }
    }

    /// Waits until `pred` returns a value, an interrupt (if `interruptible`),
    /// or `timeout` (`Duration::MAX`: no limit).
    fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        interruptible: bool,
        pred: impl Fn(&Log) -> Option<Result<T, WaitError>>,
    ) -> Result<T, WaitError> {
        let deadline = Instant::now().checked_add(timeout);
        let mut log = self.shared.lock();
        loop {
            if let Some(r) = pred(&log) {
                return r;
            }
            if interruptible && log.interrupted {
                return Err(WaitError::Interrupted);
            }
            log = match deadline {
                None => self
                    .shared
                    .changed
                    .wait(log)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(WaitError::Timeout(what.to_owned()));
                    }
                    self.shared
                        .changed
                        .wait_timeout(log, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// Waits for a log line matching `needle` (see [`line_matches`]); lines
    /// already received count. Returns the line.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> Result<String, WaitError> {
        self.wait_until(needle, timeout, true, |log| {
            if let Some(l) = log.lines.iter().find(|l| line_matches(l, needle)) {
                Some(Ok(l.clone()))
            } else if log.exited.is_some() && log.eof {
                Some(Err(WaitError::Exited(needle.to_owned())))
            } else {
                None
            }
        })
    }

    /// Waits for baton to exit (or an interrupt), at most `timeout`
    /// (`Duration::MAX`: no limit).
    pub fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus, WaitError> {
        self.wait_until("baton to exit", timeout, true, |log| log.exited.map(Ok))
    }

    /// The last `n` lines of baton's stderr.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let log = self.shared.lock();
        log.lines[log.lines.len().saturating_sub(n)..].to_vec()
    }

    /// Stops baton with SIGTERM and waits for it, at most `timeout`, whatever
    /// interrupts arrive meanwhile (the stop is the answer to them). On
    /// timeout baton and its workers are killed, and the timeout reported.
    pub fn stop(&self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(st) = self.shared.lock().exited {
            return Ok(st);
        }
        self.signal(Signal::TERM)?;
        match self.wait_until("baton to exit", timeout, false, |log| log.exited.map(Ok)) {
            Ok(st) => Ok(st),
            Err(e) => {
                self.kill_everything();
                bail!("baton did not stop within {timeout:?} ({e}); killed it");
            }
        }
    }

    /// SIGKILL to baton and every worker it reported and has not reaped.
    fn kill_everything(&self) {
        let (alive, workers): (bool, Vec<u32>) = {
            let log = self.shared.lock();
            (
                log.exited.is_none(),
                log.workers.values().flatten().copied().collect(),
            )
        };
        if alive {
            let _ = rustix::process::kill_process(self.pid, Signal::KILL);
        }
        for w in workers {
            // The worker may be gone and its pid reused: only a process still
            // running the server command is signalled.
            let cmdline = std::fs::read(format!("/proc/{w}/cmdline")).unwrap_or_default();
            let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
            if self.program.is_empty() || argv0 != self.program.as_bytes() {
                continue;
            }
            if let Some(pid) = Pid::from_raw(w as i32) {
                // Each worker leads its own process group: take its children too.
                let _ = rustix::process::kill_process_group(pid, Signal::KILL);
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
        }
        let _ = self.wait_until("baton to exit", Duration::from_secs(5), false, |log| {
            log.exited.map(Ok)
        });
    }
}

impl Drop for Baton {
    fn drop(&mut self) {
        let clean = {
            let log = self.shared.lock();
            log.exited.is_some() && log.workers.is_empty()
        };
        if clean {
            return;
        }
        if self.stop(Duration::from_secs(10)).is_err() {
            // stop() already killed what was left.
            return;
        }
        if !self.shared.lock().workers.is_empty() {
            self.kill_everything();
        }
    }
}

/// The directory holding this executable (where cargo put its siblings).
pub fn exe_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this program's own path")?;
    exe.parent()
        .map(Path::to_path_buf)
        .context("this program's path has no parent directory")
}

/// `path` relative to the current directory when it is inside it, for
/// commands shown to a person.
pub fn display_path(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(&cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supervisor_lines_are_told_from_worker_lines() {
        assert!(line_matches("generation 2 exited", "generation 2 exited"));
        assert!(line_matches(
            "2026-01-01T00:00:00Z INFO generation 2 ready in 4 ms",
            "generation 2 ready"
        ));
        assert!(!line_matches(
            "worker 0 of generation 2 exited (status 0)",
            "generation 2 exited"
        ));
        assert!(!line_matches(
            "generation 12 ready in 3 ms",
            "generation 1 ready"
        ));
    }

    #[test]
    fn addresses_and_workers_are_read_from_the_log() {
        assert_eq!(
            parse_listening("INFO listening on tcp://127.0.0.1:43121 (name web)"),
            Some("127.0.0.1:43121".parse().expect("addr"))
        );
        assert_eq!(parse_listening("listening on unix:/x"), None);
        let mut log = Log::default();
        note_worker(&mut log, "worker 0 of generation 2 started, pid 12345");
        note_worker(&mut log, "worker 1 of generation 2 started, pid 12346");
        assert_eq!(log.workers.get(&2), Some(&vec![12345, 12346]));
        note_worker(&mut log, "worker 1 of generation 2 exited (status 0)");
        assert!(log.workers.contains_key(&2));
        note_worker(&mut log, "INFO generation 2 exited");
        assert!(log.workers.is_empty());
    }
}
