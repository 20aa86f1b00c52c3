//! A handle on one upgrade-server and every process it turns into.
//!
//! Each test gets its own temp dir (pid file, misbehave file, gates) and
//! the server binds port 0. The test process makes itself a child
//! subreaper, so every process of the chain (whose parents exit as they
//! hand over) stays its child until it reaps it: a pid the guard kills can
//! never have been reused. Nothing here sleeps to synchronise: waits poll
//! the event itself (a log line, the pid file, `/proc`) against a deadline.

#![allow(dead_code, clippy::missing_panics_doc)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How often bounded waits look again.
const POLL: Duration = Duration::from_millis(2);

#[derive(Debug, Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

#[derive(Debug)]
pub struct Server {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    log: Arc<Log>,
    /// Every pid this server has been (or tried to become).
    pids: Mutex<BTreeSet<u32>>,
}

/// A process's state letter from `/proc/PID/stat`, or `None` if it is gone.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.trim_start().chars().next()
}

/// Whether `pid` has exited (gone, or a zombie: exited but not yet reaped).
pub fn exited(pid: u32) -> bool {
    matches!(proc_state(pid), None | Some('Z'))
}

fn reap(pid: u32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG);
    }
}

fn send(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Waits until `cond` holds, at most `timeout`; panics with `what` if not.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(POLL);
    }
}

impl Server {
    /// Starts the server with `extra` arguments and waits for its first
    /// `listening on` line.
    pub fn start(extra: &[&str]) -> Server {
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .expect("become a child subreaper");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_upgrade-server"));
        cmd.arg("--bind")
            .arg("127.0.0.1:0")
            .arg("--pid-file")
            .arg(dir.path().join("pid"))
            .arg("--misbehave-file")
            .arg(dir.path().join("misbehave"))
            .args(extra)
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("BATON_GENERATION")
            .env_remove("BATON_READY_FD")
            .env_remove("BATON_UPGRADED_FROM")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn upgrade-server");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Log::default());
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if std::env::var_os("UPGRADE_TEST_VERBOSE").is_some() {
                        eprintln!("server: {line}");
                    }
                    log.lines
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(line);
                    log.grew.notify_all();
                }
            });
        }
        let first_pid = child.id();
        // The guard below owns the process from here on, by pid.
        drop(child);
        let mut server = Server {
            dir,
            addr: "127.0.0.1:1".parse().expect("placeholder"),
            log,
            pids: Mutex::new(BTreeSet::from([first_pid])),
        };
        let line = server.wait_line("listening on", 0, Duration::from_secs(20));
        let addr = line
            .split_whitespace()
            .nth(2)
            .expect("an address after `listening on`");
        server.addr = addr.parse().expect("a socket address");
        server
    }

    pub fn target(&self) -> baton_load::Target {
        baton_load::Target::Tcp(self.addr)
    }

    /// Lines logged so far.
    pub fn lines(&self) -> Vec<String> {
        self.log
            .lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// How many lines so far contain `needle`.
    pub fn count_lines(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits until more than `seen` lines contain `needle`; returns the
    /// newest such line.
    pub fn wait_line(&self, needle: &str, seen: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut lines = self
            .log
            .lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            let matching: Vec<&String> = lines.iter().filter(|l| l.contains(needle)).collect();
            if matching.len() > seen {
                return matching[matching.len() - 1].clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out after {timeout:?} waiting for {needle:?}; log:\n{}",
                lines.join("\n")
            );
            lines = self
                .log
                .grew
                .wait_timeout(lines, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    pub fn pid_file(&self) -> PathBuf {
        self.dir.path().join("pid")
    }

    /// The pid the pid file names now.
    pub fn serving_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn remember(&self, pid: u32) {
        self.pids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(pid);
    }

    /// Sends `sig` to the serving process.
    pub fn signal_serving(&self, sig: rustix::process::Signal) -> u32 {
        let pid = self.serving_pid().expect("a pid file");
        self.remember(pid);
        send(pid, sig);
        pid
    }

    /// Waits until the pid file names a process other than `old`; returns it.
    pub fn wait_new_pid(&self, old: u32, timeout: Duration) -> u32 {
        let mut new = old;
        wait_until(
            &format!("the pid file to name a successor of {old}"),
            timeout,
            || {
                new = self.serving_pid().unwrap_or(old);
                new != old
            },
        );
        self.remember(new);
        new
    }

    /// Waits until `pid` has exited, reaping it.
    pub fn wait_gone(&self, pid: u32, timeout: Duration) {
        self.remember(pid);
        wait_until(&format!("pid {pid} to exit"), timeout, || {
            reap(pid);
            exited(pid)
        });
        reap(pid);
    }

    /// One upgrade by `SIGHUP`: waits for the new process to serve and the
    /// old one to exit. Returns the new pid.
    pub fn upgrade(&self) -> u32 {
        let old = self.signal_serving(rustix::process::Signal::HUP);
        let new = self.wait_new_pid(old, Duration::from_secs(15));
        self.wait_gone(old, Duration::from_secs(15));
        new
    }

    /// Makes the next upgraded process misbehave (`exit`, `crash`, `hang`,
    /// `gate:PATH`), or behave again (`None`).
    pub fn misbehave(&self, mode: Option<&str>) {
        let path = self.dir.path().join("misbehave");
        match mode {
            Some(m) => std::fs::write(path, m).expect("write misbehave file"),
            None => {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// One GET; panics on failure.
    pub fn get(&self, path: &str) -> baton_load::Response {
        baton_load::fetch(&self.target(), path, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("GET {path}: {e:?}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pids = self
            .pids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut all = pids;
        if let Some(p) = self.serving_pid() {
            all.insert(p);
        }
        for &pid in &all {
            // Our children (the subreaper makes every one of them ours), so
            // an unreaped pid cannot have been reused.
            if !exited(pid) {
                send(pid, rustix::process::Signal::KILL);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for &pid in &all {
            while !exited(pid) && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
            reap(pid);
        }
    }
}
