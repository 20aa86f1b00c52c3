//! Quiet boot: a starting generation runs at the lowest CPU priority until
//! it is ready, so that on a busy machine its boot (a Python app importing
//! its modules, a JIT warming up) takes CPU time only when the generation
//! that serves does not want it.
//!
//! How, chosen once at start (see [`mechanism`]): **`SCHED_IDLE` per
//! worker**, where baton may take it back. As soon as the worker has
//! executed its program, baton puts it at `SCHED_IDLE` ([`lower_tree`]: the
//! process, and any thread or child it started in the microseconds before),
//! so every thread and process it starts after inherits it. Not between
//! fork and exec: an idle child runs only when nothing else wants the CPU,
//! so on a saturated machine its exec could wait for seconds, with baton's
//! spawner (which waits for each exec to know it worked) holding every other
//! start back. Once the worker is ready, baton walks its tree
//! ([`raise_tree`]: every thread of the worker and of its descendants, found
//! through `/proc/PID/task/TID/children`) and puts each thread back at
//! `SCHED_OTHER`, keeping its nice value. Leaving `SCHED_IDLE` needs
//! `CAP_SYS_NICE` (root has it), or an `RLIMIT_NICE` of 20 (sched(7));
//! without either a worker would stay idle for good, so baton then starts
//! workers at their normal priority and says so once. (A cgroup's
//! `cpu.weight` would need no privilege but baton does not use it yet: it
//! is per generation, where a rolling reload wants it per worker.)
//!
//! A walk races with the processes it walks: a thread or a child created
//! while baton walks may have copied the idle policy from its creator just
//! before baton raised that creator. So the walk is repeated until a pass
//! finds nothing left to raise (at most [`PASSES`] passes). A descendant that
//! left the tree (a daemon re-parented to baton) is not found.

use std::path::Path;

/// How a starting worker is kept quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mechanism {
    /// `SCHED_IDLE` from its start, `SCHED_OTHER` for its tree when ready.
    SchedIdle,
    /// baton could not take a worker out of `SCHED_IDLE`: workers start at
    /// their normal priority.
    Unavailable,
}

/// How this baton keeps starting workers quiet (decided on first use; the
/// privileges it depends on do not change while baton runs).
pub fn mechanism() -> Mechanism {
    static ONCE: std::sync::OnceLock<Mechanism> = std::sync::OnceLock::new();
    *ONCE.get_or_init(|| {
        if can_leave_idle() {
            Mechanism::SchedIdle
        } else {
            Mechanism::Unavailable
        }
    })
}

/// Whether baton may take a worker out of `SCHED_IDLE` again: it has
/// `CAP_SYS_NICE`, or the soft `RLIMIT_NICE` its workers inherit allows
/// nice 0.
pub fn can_leave_idle() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    has_cap_sys_nice(&status)
        || rustix::process::getrlimit(rustix::process::Resource::Nice)
            .current
            .is_some_and(|n| n >= 20)
}

/// `CAP_SYS_NICE` (capability 23) in the `CapEff:` line of
/// `/proc/self/status`.
fn has_cap_sys_nice(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 23) != 0)
}

/// How many times a tree is walked at most.
pub const PASSES: usize = 4;
/// A tree is cut at this many processes (as the `--ready accepting` looks
/// are).
pub const MAX_PROCESSES: usize = 256;

/// What [`raise_tree`] or [`lower_tree`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Raised {
    /// Processes seen in the tree (in the last pass).
    pub processes: usize,
    /// Threads whose policy was changed, over every pass.
    pub threads: usize,
    /// Threads whose policy could not be changed (the first few reasons).
    pub errors: Vec<String>,
}

/// Which way a walk moves the threads of a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Move {
    /// `SCHED_IDLE` to `SCHED_OTHER`.
    Raise,
    /// Anything but `SCHED_IDLE` to `SCHED_IDLE`.
    Lower,
}

/// Puts every thread of `root` and of its descendants that runs at
/// `SCHED_IDLE` back at `SCHED_OTHER`.
pub fn raise_tree(root: u32) -> Raised {
    walk_tree(Path::new("/proc"), root, Move::Raise)
}

/// [`raise_tree`] with `/proc` at `proc` (tests).
pub fn raise_tree_in(proc: &Path, root: u32) -> Raised {
    walk_tree(proc, root, Move::Raise)
}

/// Puts every thread of `root` and of its descendants at `SCHED_IDLE`: a
/// worker that has just executed its program (it may have started a thread
/// or a child before baton got there).
pub fn lower_tree(root: u32) -> Raised {
    walk_tree(Path::new("/proc"), root, Move::Lower)
}

fn walk_tree(proc: &Path, root: u32, way: Move) -> Raised {
    let mut out = Raised::default();
    for _ in 0..PASSES {
        let (processes, moved) = walk_pass(proc, root, way, &mut out.errors);
        out.processes = processes;
        out.threads += moved;
        if moved == 0 {
            break;
        }
    }
    out
}

/// One walk: returns the processes seen and the threads moved.
fn walk_pass(proc: &Path, root: u32, way: Move, errors: &mut Vec<String>) -> (usize, usize) {
    let mut todo = vec![root];
    let mut seen = 0;
    let mut moved = 0;
    while let Some(pid) = todo.pop() {
        if seen == MAX_PROCESSES {
            break;
        }
        seen += 1;
        let Ok(tasks) = std::fs::read_dir(proc.join(pid.to_string()).join("task")) else {
            // Gone meanwhile.
            continue;
        };
        for task in tasks.flatten() {
            let Some(tid) = task
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<u32>().ok())
            else {
                continue;
            };
            // Move first, then read its children: a child forked after
            // the move inherits the new policy, one forked before is in
            // the list.
            // (A thread whose policy cannot be read is gone.)
            let set = match (way, baton_sys::sched::is_idle(tid)) {
                (Move::Raise, Ok(true)) => Some(baton_sys::sched::set_normal(tid)),
                (Move::Lower, Ok(false)) => Some(baton_sys::sched::set_idle(tid)),
                _ => None,
            };
            match set {
                Some(Ok(())) => moved += 1,
                // Gone meanwhile (ESRCH), or enough reasons kept already.
                Some(Err(e)) if e.raw_os_error() != Some(libc::ESRCH) && errors.len() < 3 => {
                    errors.push(format!("thread {tid} of pid {pid}: {e}"));
                }
                None | Some(Err(_)) => {}
            }
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                todo.extend(crate::accepting::parse_children(&text));
            }
        }
    }
    (seen, moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cap_sys_nice_from_the_status_file() {
        assert!(has_cap_sys_nice("Name:\tx\nCapEff:\t000001fffeffffff\n"));
        assert!(!has_cap_sys_nice("CapEff:\t0000000000000000\n"));
        assert!(has_cap_sys_nice("CapEff:\t0000000000800000\n"));
        assert!(!has_cap_sys_nice("CapPrm:\t0000000000800000\n"));
    }

    /// A process with two children is lowered whole, then raised whole
    /// (when this test may leave SCHED_IDLE at all).
    #[test]
    fn a_tree_that_went_idle_is_raised_whole() {
        if !can_leave_idle() {
            eprintln!("this test needs CAP_SYS_NICE or RLIMIT_NICE 20: nothing to check");
            return;
        }
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30; wait"])
            .spawn()
            .expect("sh");
        let pid = child.id();
        // Idle the whole tree by hand: the shell and the sleeps it started.
        let mut tree = vec![pid];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while tree.len() < 3 && std::time::Instant::now() < deadline {
            tree = vec![pid];
            if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
                tree.extend(crate::accepting::parse_children(&text));
            }
            std::thread::yield_now();
        }
        assert_eq!(tree.len(), 3, "the shell started its two sleeps");
        let lowered = lower_tree(pid);
        assert_eq!(lowered.threads, 3, "{lowered:?}");
        for p in &tree {
            assert!(baton_sys::sched::is_idle(*p).expect("policy"), "pid {p}");
        }
        assert_eq!(
            lower_tree(pid).threads,
            0,
            "a second walk finds nothing to do"
        );
        let raised = raise_tree(pid);
        assert_eq!(raised.threads, 3, "{raised:?}");
        assert!(raised.errors.is_empty(), "{raised:?}");
        for p in &tree {
            assert!(!baton_sys::sched::is_idle(*p).expect("policy"), "pid {p}");
        }
        let _ = child.kill();
        let _ = child.wait();
        for p in &tree[1..] {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(i32::try_from(*p).expect("pid")).expect("pid"),
                rustix::process::Signal::KILL,
            );
        }
    }
}
