//! A private network namespace for one test: its own loopback, its own
//! ports and its own kernel counters.
//!
//! `/proc/net/netstat` counters such as `TcpExt: ListenOverflows` are
//! machine-wide in the host namespace, and other tests (of this suite or of
//! anyone else on the machine) move them. Inside a fresh network namespace
//! they count only what happens there, so a test can assert "unchanged"
//! exactly.
//!
//! [`NetNs::enter`] moves the *calling thread* into a new namespace
//! (`setns(2)` affects one thread). Every thread and process that thread
//! creates afterwards is in it too: baton (and so its workers), the load
//! client's threads, `ss`. Other threads of the test process are not.
//! Needs root (`unshare --net`), as the machine this suite runs on allows.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::procs::Proc;
use crate::tools::{output_text, run_bounded};

/// The network namespace the calling thread was moved into.
#[derive(Debug)]
pub struct NetNs {
    /// `net:[INODE]`, the namespace's identity.
    pub id: PathBuf,
}

/// The link that names the calling thread's network namespace.
fn own_netns() -> PathBuf {
    std::fs::read_link("/proc/thread-self/ns/net")
        .expect("/proc/thread-self/ns/net names this thread's network namespace")
}

impl NetNs {
    /// Moves the calling thread into a new network namespace with the
    /// loopback interface up (127.0.0.1 and ::1 work, nothing else).
    ///
    /// # Panics
    /// When `unshare`, `setns` or `ip link set lo up` fail (not root, or
    /// util-linux / iproute2 missing), with what to install.
    pub fn enter() -> Self {
        // The binaries under test are built (if needed) before leaving the
        // host's network: cargo may want it.
        let _ = crate::bins::bin_dir();
        let before = own_netns();
        // A process that makes the namespace and holds it until this thread
        // has joined it; then it is killed (the namespace lives on while
        // this thread is in it).
        let mut holder = Command::new("unshare")
            .args(["--net", "--", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `unshare --net` (util-linux, needs root): {e}"));
        let link = format!("/proc/{}/ns/net", holder.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::fs::read_link(&link) {
                Ok(ns) if ns != before => break,
                _ => {}
            }
            if let Ok(Some(status)) = holder.try_wait() {
                panic!("`unshare --net` exited with {status}: this test needs root");
            }
            assert!(
                Instant::now() < deadline,
                "`unshare --net` (pid {}) made no network namespace within 10 s",
                holder.id()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let ns = std::fs::File::open(&link).unwrap_or_else(|e| panic!("cannot open {link}: {e}"));
        let joined = rustix::thread::move_into_link_name_space(
            ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        );
        if let Some(p) = Proc::find(holder.id()) {
            p.signal(rustix::process::Signal::KILL);
        }
        let _ = holder.wait();
        joined.unwrap_or_else(|e| panic!("setns into {link} failed: {e} (needs root)"));
        let id = own_netns();
        assert_ne!(id, before, "still in the host's network namespace");

        let mut up = Command::new("ip");
        up.args(["link", "set", "lo", "up"]);
        let out = run_bounded(up, Duration::from_secs(30));
        assert!(
            out.status.success(),
            "`ip link set lo up` failed (iproute2 is needed): {}",
            output_text(&out)
        );
        eprintln!("[e2e] this test runs in network namespace {}", id.display());
        Self { id }
    }

    /// The `TcpExt:` counters of this namespace (`/proc/net/netstat` as
    /// the calling thread sees it).
    pub fn tcp_ext(&self) -> BTreeMap<String, u64> {
        assert_eq!(
            own_netns(),
            self.id,
            "tcp_ext must be read from the thread that entered the namespace"
        );
        let text = std::fs::read_to_string("/proc/thread-self/net/netstat")
            .expect("/proc/thread-self/net/netstat is readable");
        parse_netstat(&text, "TcpExt")
    }

    /// `(ListenOverflows, ListenDrops)`: connections the kernel dropped
    /// because an accept queue was full, or for any reason before accept.
    pub fn listen_counters(&self) -> (u64, u64) {
        let ext = self.tcp_ext();
        let get = |k: &str| {
            *ext.get(k)
                .unwrap_or_else(|| panic!("no TcpExt {k} in /proc/net/netstat"))
        };
        (get("ListenOverflows"), get("ListenDrops"))
    }
}

/// The counters of section `section` in `/proc/net/netstat` text: a line
/// of names, then a line of values, both starting with `SECTION:`.
pub fn parse_netstat(text: &str, section: &str) -> BTreeMap<String, u64> {
    let prefix = format!("{section}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return BTreeMap::new();
    };
    names
        .split_whitespace()
        .skip(1)
        .zip(values.split_whitespace().skip(1))
        .filter_map(|(n, v)| Some((n.to_owned(), v.parse().ok()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netstat_sections_pair_names_with_values() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\n\
                    TcpExt: 1 2 3\n\
                    IpExt: InNoRoutes\n\
                    IpExt: 9\n";
        let ext = parse_netstat(text, "TcpExt");
        assert_eq!(ext.get("ListenOverflows"), Some(&2));
        assert_eq!(ext.get("ListenDrops"), Some(&3));
        assert_eq!(parse_netstat(text, "IpExt").get("InNoRoutes"), Some(&9));
        assert!(parse_netstat(text, "Nope").is_empty());
    }
}
