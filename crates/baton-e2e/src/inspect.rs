//! What `/proc` says about a process beyond its state: its descriptors
//! and the sockets behind them, memory, threads, CPU time, environment,
//! and the zombies it has not reaped. For the reliability tests and the
//! soak benchmark, which assert that these stay put.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::process::Command;
use std::time::Duration;

use crate::procs;
use crate::tools::{output_text, run_bounded};

/// The socket inode behind descriptor `fd` of `pid` (`socket:[INODE]`);
/// `None` when it is not open or not a socket.
pub fn socket_inode(pid: u32, fd: i32) -> Option<u64> {
    let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let text = target.to_str()?;
    text.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Every open descriptor of `pid` with the socket inode behind it, for
/// those that are sockets.
pub fn socket_inodes(pid: u32) -> Vec<(i32, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut out: Vec<(i32, u64)> = dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter_map(|fd| Some((fd, socket_inode(pid, fd)?)))
        .collect();
    out.sort_unstable();
    out
}

/// How many descriptors `pid` has open; `None` when it is gone.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// How many threads `pid` has; `None` when it is gone.
pub fn thread_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.count())
}

/// `VmRSS` of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU time `pid` has used (user + system), from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ... utime(14) stime(15).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let hz = rustix::param::clock_ticks_per_second();
    Some(Duration::from_secs_f64((utime + stime) as f64 / hz as f64))
}

/// The processes whose parent is `pid` and that are zombies: exited,
/// not reaped. Scans `/proc`.
pub fn zombie_children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| procs::stat(p).is_some_and(|s| s.ppid == pid && s.is_zombie()))
        .collect()
}

/// The live (not zombie) children of `pid`, leaving out baton's guard
/// (`baton guard`, which is not a worker).
pub fn live_children(pid: u32) -> Vec<u32> {
    procs::children_but_guard(pid)
        .into_iter()
        .filter(|&p| procs::stat(p).is_some_and(|s| !s.is_zombie()))
        .collect()
}

/// The environment `pid` was started with (`/proc/PID/environ`), entry by
/// entry, duplicates and all; `None` when it cannot be read.
pub fn environ(pid: u32) -> Option<Vec<OsString>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|e| !e.is_empty())
            .map(|e| OsString::from_vec(e.to_vec()))
            .collect(),
    )
}

/// Every value of `key` in `pid`'s environment, in order (more than one
/// means the variable was passed twice).
pub fn environ_values(pid: u32, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    environ(pid)
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e.to_str()?.strip_prefix(&prefix).map(str::to_owned))
        .collect()
}

/// What a long-running supervisor must not accumulate, at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub rss_kib: u64,
    pub fds: usize,
    pub threads: usize,
    /// Children of the process that are zombies (exited, not reaped).
    pub zombies: usize,
}

/// `pid`'s [`Footprint`] now; `None` when it is gone.
pub fn footprint(pid: u32) -> Option<Footprint> {
    Some(Footprint {
        rss_kib: rss_kib(pid)?,
        fds: fd_count(pid)?,
        threads: thread_count(pid)?,
        zombies: zombie_children(pid).len(),
    })
}

/// The listening TCP sockets on `port`, as `ss -Hltn` lists them (in the
/// calling thread's network namespace): one line each.
pub fn tcp_listeners(port: u16) -> Vec<String> {
    let mut cmd = Command::new("ss");
    cmd.args(["-H", "-l", "-t", "-n", &format!("sport = :{port}")]);
    let out = run_bounded(cmd, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "`ss` failed (iproute2 is needed): {}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// The accept queue of the TCP listener on `port` (`Recv-Q` of `ss -ltn`):
/// connections the kernel completed that no process has accepted yet.
pub fn accept_queue(port: u16) -> Option<u64> {
    tcp_listeners(port)
        .first()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_visible() {
        let me = std::process::id();
        assert!(fd_count(me).is_some_and(|n| n >= 3));
        assert!(thread_count(me).is_some_and(|n| n >= 1));
        assert!(rss_kib(me).is_some_and(|k| k > 0));
        assert!(cpu_time(me).is_some());
        assert!(
            environ(me).is_some_and(|e| !e.is_empty()),
            "a test process has an environment"
        );
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&l);
        let ino = socket_inode(me, fd).expect("a socket");
        assert!(socket_inodes(me).contains(&(fd, ino)));
        assert_eq!(socket_inode(me, 0).filter(|_| false), None);
    }
}
