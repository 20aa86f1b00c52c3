//! The guard: a small process that outlives baton by a moment, to end what
//! baton started if baton itself is killed with `SIGKILL`.
//!
//! The kernel kills baton's workers when baton dies (`PR_SET_PDEATHSIG`),
//! but not what the workers started: their children would be reparented and
//! live on, holding ports and files. No code of baton's runs after a
//! `SIGKILL`, so a second process must act. baton starts it first thing
//! (its own binary again, `baton guard`) with the read end of a pipe at
//! fd 3, and tells it, one line per change, which process groups and which
//! cgroup subtree are baton's:
//!
//! ```text
//! c /sys/fs/cgroup/…/baton.4242   baton's cgroup subtree (see crate::cgroup)
//! g 4250                          a worker's process group appeared
//! u 4250                          ...and is gone (its worker was reaped)
//! ```
//!
//! When the pipe reaches end-of-file, baton is gone, however it ended. The
//! guard then kills every process group still listed and the whole cgroup
//! subtree, removes the cgroups, and exits. After a clean stop nothing is
//! listed and it only tidies up. It ignores the signals a terminal or a
//! supervisor sends a whole process group (`INT`, `TERM`, `HUP`, …): baton
//! decides what they mean, and the guard goes as soon as baton does.
//!
//! A process group is killed by number after its leader died, which is a
//! pid-reuse window, but a short one: the guard acts within milliseconds,
//! and Linux hands out pids in sequence, so the number comes round again
//! only after the whole pid space (`/proc/sys/kernel/pid_max`) was used.
//! While any grandchild of the group lives, the number cannot be reused at
//! all.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

/// The descriptor the guard reads its instructions from.
pub const GUARD_FD: i32 = 3;

/// What the guard knows about baton's descendants.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ward {
    pub groups: BTreeSet<u32>,
    pub cgroup: Option<PathBuf>,
}

impl Ward {
    /// Applies one instruction line; unknown lines are ignored (a newer
    /// baton may say more than this guard understands).
    pub fn apply(&mut self, line: &str) {
        let Some((op, arg)) = line.split_once(' ') else {
            return;
        };
        match op {
            "g" => {
                if let Ok(pgid) = arg.trim().parse::<u32>() {
                    self.groups.insert(pgid);
                }
            }
            "u" => {
                if let Ok(pgid) = arg.trim().parse::<u32>() {
                    self.groups.remove(&pgid);
                }
            }
            "c" => self.cgroup = Some(PathBuf::from(arg)),
            _ => {}
        }
    }
}

/// The guard's main: reads instructions until baton is gone, then ends
/// what is left. Returns the process exit code.
pub fn run() -> i32 {
    baton_sys::spawn::ignore_signals(&[
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGPWR,
        libc::SIGTTIN,
        libc::SIGTTOU,
        libc::SIGALRM,
        libc::SIGPIPE,
    ]);
    let fd = match baton_sys::fd::claim_fd(GUARD_FD) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!(
                "baton guard: no instructions on fd {GUARD_FD} ({e}); it is started by `baton run`, not by hand"
            );
            return 2;
        }
    };
    let ward = read_all(fd);
    end(&ward);
    0
}

fn read_all(fd: OwnedFd) -> Ward {
    let mut ward = Ward::default();
    let mut reader = BufReader::new(std::fs::File::from(fd));
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            // End of file: baton is gone. A read error means the same.
            Ok(0) | Err(_) => return ward,
            Ok(_) => ward.apply(line.trim_end_matches('\n')),
        }
    }
}

/// Kills what baton left and removes its cgroups.
fn end(ward: &Ward) {
    for pgid in &ward.groups {
        if let Some(pid) = rustix::process::Pid::from_raw(*pgid as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
    if let Some(dir) = &ward.cgroup {
        crate::cgroup::kill_and_remove(dir);
    }
}

/// baton's side: the running guard and the pipe to it.
#[derive(Debug)]
pub struct Guard {
    pub child: baton_sys::spawn::Child,
    /// The write end of the instruction pipe; closing it tells the guard
    /// that baton is gone.
    pub tx: OwnedFd,
}

impl Guard {
    /// Starts `program args` (baton's own binary, `guard`) with the read
    /// end of a new pipe at fd 3.
    pub fn start(
        program: &std::path::Path,
        args: &[std::ffi::OsString],
        env: &[std::ffi::OsString],
        stdin: std::os::fd::BorrowedFd<'_>,
    ) -> Result<Self, String> {
        let (rx, tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| format!("cannot create a pipe: {e}"))?;
        let child = baton_sys::spawn::spawn(&baton_sys::spawn::Command {
            program,
            args,
            env,
            listen_pid: false,
            fds: &[rx.as_fd()],
            stdio: [Some(stdin), None, None],
            chdir: Some(std::path::Path::new("/")),
            // In baton's process group: a supervisor that kills the group
            // kills the guard with baton (and then has the cgroup anyway).
            new_process_group: false,
            // It must outlive baton: that is its whole point.
            parent_death_signal: None,
            nofile_soft_limit: None,
            cgroup: None,
            program_fd: None,
            credentials: None,
            no_new_privs: false,
        })
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        drop(rx);
        // Never block the loop on the guard: lines are tiny and it reads at
        // once; if it stalls, a lost line only weakens the clean-up.
        rustix::io::ioctl_fionbio(&tx, true).map_err(|e| format!("cannot set up the pipe: {e}"))?;
        Ok(Self { child, tx })
    }

    /// Sends one instruction line.
    pub fn say(&self, line: &str) {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        match rustix::io::write(&self.tx, &buf) {
            Ok(n) if n == buf.len() => {}
            Ok(_) | Err(_) => {
                tracing::debug!("the guard did not take {line:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_add_and_remove_groups_and_name_the_cgroup() {
        let mut w = Ward::default();
        for l in [
            "g 10",
            "g 11",
            "u 10",
            "c /sys/fs/cgroup/baton.1",
            "x whatever",
            "g",
            "g nope",
        ] {
            w.apply(l);
        }
        assert_eq!(w.groups.into_iter().collect::<Vec<_>>(), vec![11]);
        assert_eq!(w.cgroup, Some(PathBuf::from("/sys/fs/cgroup/baton.1")));
    }
}
