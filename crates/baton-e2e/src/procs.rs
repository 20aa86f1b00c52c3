//! Watching processes the tests did not start directly (workers,
//! grandchildren): by pid, guarded against pid reuse by the start time.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{Pid, PidfdFlags, Signal};

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
    /// Start time in clock ticks since boot: with the pid, an identity.
    pub start: u64,
}

impl Stat {
    pub fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Reads `/proc/<pid>/stat`; `None` when there is no such process.
pub fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: the
    // fields we want come after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the name: state(3) ppid(4) pgrp(5) ... starttime(22).
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// A process seen at some point: its pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub start: u64,
}

impl Proc {
    /// Identifies the process now running as `pid`, if any.
    pub fn find(pid: u32) -> Option<Self> {
        stat(pid).map(|s| Self {
            pid,
            start: s.start,
        })
    }

    /// The current state of this very process (`None` once it is reaped,
    /// or when its pid now belongs to another process).
    pub fn stat(&self) -> Option<Stat> {
        stat(self.pid).filter(|s| s.start == self.start)
    }

    /// Running (not exited: a zombie does not count).
    pub fn is_alive(&self) -> bool {
        self.stat().is_some_and(|s| !s.is_zombie())
    }

    /// Sends `sig` if the process still runs. Used by guards to clean up
    /// only processes the test started (directly or through baton).
    pub fn signal(&self, sig: Signal) {
        if self.is_alive()
            && let Some(pid) = Pid::from_raw(self.pid as i32)
        {
            let _ = rustix::process::kill_process(pid, sig);
        }
    }

    /// Waits until the process has exited (a zombie counts as exited),
    /// woken by its pidfd. Returns whether it did within `timeout`.
    pub fn wait_exited(&self, timeout: Duration) -> bool {
        let Some(pid) = Pid::from_raw(self.pid as i32) else {
            return true;
        };
        let fd: OwnedFd = match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(_) => return true, // ESRCH: already reaped
        };
        // The pid may have been reused before the pidfd was opened.
        if !self.is_alive() {
            return true;
        }
        wait_readable(&fd, timeout)
    }

    /// Waits until the process is gone: exited, and reaped unless its
    /// parent is `not_reaped_by` (a zombie of someone else is gone for our
    /// purposes; a zombie of `not_reaped_by` is a leak). Polls `/proc`
    /// after the exit, as there is no event for "reaped by another process".
    pub fn wait_gone(&self, timeout: Duration, not_reaped_by: Option<u32>) -> bool {
        let deadline = Instant::now() + timeout;
        if !self.wait_exited(timeout) {
            return false;
        }
        loop {
            match self.stat() {
                None => return true,
                Some(s) if s.is_zombie() && Some(s.ppid) != not_reaped_by => return true,
                Some(_) if Instant::now() >= deadline => return false,
                Some(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

/// The scheduling policy of `pid` (field 41 of `/proc/PID/stat`:
/// 0 `SCHED_OTHER`, 5 `SCHED_IDLE`), or `None` once it is gone.
pub fn sched_policy(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(41 - 3)?.parse().ok()
}

/// `SCHED_IDLE`, as [`sched_policy`] gives it.
pub const SCHED_IDLE: u32 = 5;

/// Whether `pid` is baton's guard (`baton guard`, see
/// `baton_supervisor::guard`), which is a child of baton beside its workers.
pub fn is_guard(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|b| *b == 0).nth(1) == Some(b"guard".as_slice()))
}

/// baton's children other than its guard: its workers (and probes).
pub fn children_but_guard(baton: u32) -> Vec<u32> {
    children(baton)
        .into_iter()
        .filter(|p| !is_guard(*p))
        .collect()
}

/// The children of `pid` (all its threads'), from
/// `/proc/<pid>/task/*/children`; empty when there is no such process.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out: Vec<u32> = tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// What `pid`, its threads and its children are doing, for the message of
/// a test that timed out waiting for it: each one's command line, state,
/// wait channel and kernel stack (readable as root), so a hang can be
/// diagnosed from the test output alone.
pub fn diagnose(pid: u32) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let show = |out: &mut String, what: &str, dir: &str| {
        let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).unwrap_or_default();
        let cmd = read("cmdline").replace('\0', " ");
        let state = read("stat")
            .rsplit(") ")
            .next()
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or("?")
            .to_owned();
        let _ = writeln!(
            out,
            "  {what} [{state}] wchan={} {}",
            read("wchan").trim(),
            cmd.trim()
        );
        for line in read("stack").lines().take(12) {
            let _ = writeln!(out, "      {line}");
        }
    };
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.filter_map(Result::ok) {
            let tid = t.file_name().to_string_lossy().into_owned();
            show(
                &mut out,
                &format!("thread {tid} of {pid}"),
                &format!("/proc/{pid}/task/{tid}"),
            );
        }
    }
    for c in children(pid) {
        show(&mut out, &format!("child {c}"), &format!("/proc/{c}"));
    }
    out
}

/// Every descendant of `pid` (children first, then theirs).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut next = children(pid);
    while let Some(p) = next.pop() {
        next.extend(children(p));
        out.push(p);
    }
    out
}

/// The pid, as this process sees it, of the process that is `ns_pid` in
/// the pid namespace `/proc/<holder>/ns/pid_for_children` names (the
/// namespace `unshare --pid --fork` made). Scans `/proc`; `None` when no
/// such process runs.
pub fn host_pid(ns_pid: u32, holder: u32) -> Option<u32> {
    let ns = std::fs::read_link(format!("/proc/{holder}/ns/pid_for_children")).ok()?;
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|&pid| {
            let in_ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok() == Some(ns.clone());
            in_ns
                && std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|status| {
                        let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
                        line.split_whitespace().last()?.parse::<u32>().ok()
                    })
                    == Some(ns_pid)
        })
}

/// The pid a process has in its own (innermost) pid namespace, from the
/// `NSpid:` line of `/proc/<pid>/status`.
pub fn ns_pid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// Polls `fd` for readability up to `timeout`, retrying on `EINTR`.
pub fn wait_readable(fd: &OwnedFd, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ts = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => panic!("poll on a pidfd failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_of_self() {
        let me = stat(std::process::id()).expect("this process exists");
        assert!(!me.is_zombie());
        assert!(me.start > 0);
        assert!(stat(u32::MAX).is_none());
    }

    #[test]
    fn a_child_is_seen_exiting_and_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let p = Proc::find(child.id()).expect("child exists");
        assert!(p.is_alive());
        assert!(!p.wait_exited(Duration::from_millis(20)));
        p.signal(Signal::KILL);
        assert!(p.wait_exited(Duration::from_secs(10)));
        // A zombie of ours is not gone for a parent that must reap it.
        assert!(!p.wait_gone(Duration::from_millis(50), Some(std::process::id())));
        child.wait().expect("reap");
        assert!(p.wait_gone(Duration::from_secs(1), Some(std::process::id())));
    }
}
