//! Fork and exec a worker with its sockets at fixed descriptor numbers.
//!
//! # Theory of operation
//!
//! Everything the child needs is prepared in the parent, before `fork`:
//! argument and environment arrays, the descriptor plan, and a buffer for
//! `LISTEN_PID=` whose digits are written after `fork`, when the child knows
//! its own pid. Between `fork` and `execve` the child only makes
//! async-signal-safe system calls and writes into memory that was allocated
//! before the fork; it never allocates or takes a lock.
//!
//! Races closed here:
//! * **Signal handlers in the child.** The supervisor's signal handlers write
//!   to a pipe that the forked child shares. All signals are blocked across
//!   `fork` (an RAII guard restores the mask in the parent), and the child
//!   resets every handled signal to its default before unblocking. (The same
//!   technique nextest uses around its double-spawn, `double_spawn.rs`.)
//! * **Orphaned workers.** `PR_SET_PDEATHSIG` makes the kernel kill the child
//!   when the supervisor dies; the child re-checks `getppid()` right after
//!   setting it, in case the parent died in between.
//! * **Reporting exec failures.** A close-on-exec pipe carries the failing
//!   step and `errno` back to the parent; end-of-file means `execve`
//!   succeeded (the technique `std::process::Command` uses).
//! * **PID reuse.** The parent opens a pidfd right after `fork`: the child
//!   cannot be reaped before the parent waits for it, so the pid is still
//!   ours.
//! * **Dropping privileges** ([`Credentials`]): the user, its groups and
//!   ids are looked up by the parent (see [`crate::user`]); the child only
//!   empties the capability bounding and ambient sets, calls `setgroups`,
//!   `setresgid`, `setresuid` (after which the kernel clears the permitted
//!   and effective capabilities of a process that leaves uid 0), clears the
//!   inheritable set, checks with `capget` that nothing is left, and sets
//!   `PR_SET_NO_NEW_PRIVS`. The parent-death signal is set only *after*
//!   the ids changed: the kernel clears it whenever a process's
//!   credentials change (`commit_creds`), so set before, it would be lost.

use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// A child process, tracked by a pidfd.
///
/// While a `Child` is not reaped, its pid stays reserved (as a zombie once it
/// has exited), so its pid, and the id of the process group it leads, cannot
/// name anybody else: [`Child::signal_group`] relies on that, and refuses
/// once the child was reaped.
#[derive(Debug)]
pub struct Child {
    pub pid: u32,
    pub pidfd: OwnedFd,
    reaped: std::sync::atomic::AtomicBool,
}

impl Child {
    /// A child known by its pid and an open pidfd, not reaped (one a
    /// re-executed supervisor takes over from its previous image).
    pub fn from_parts(pid: u32, pidfd: OwnedFd) -> Self {
        Self {
            pid,
            pidfd,
            reaped: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Sends `sig` to every process in the process group this child leads
    /// (it was spawned with `new_process_group`).
    ///
    /// Used for the final `SIGKILL` of a worker's group: the worker may
    /// have left grandchildren in it. Only while the child is not reaped:
    /// its pid is then still in use (by the child, or by its zombie), so the
    /// kernel cannot have handed the same number to a new group. After the
    /// reap the number may be reused, and this returns `ESRCH` instead of
    /// signalling whoever has it now. Peek at an exit with
    /// [`Child::exit_status`], signal the group, then [`try_reap`].
    pub fn signal_group(&self, sig: i32) -> io::Result<()> {
        if self.reaped.load(std::sync::atomic::Ordering::Acquire) {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        let pid = rustix::process::Pid::from_raw(self.pid as i32)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let sig = rustix::process::Signal::from_named_raw(sig)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        Ok(rustix::process::kill_process_group(pid, sig)?)
    }

    /// How the child ended, if it has, without reaping it
    /// (`waitid(P_PIDFD, WEXITED | WNOHANG | WNOWAIT)`): the zombie stays,
    /// and with it the pid and the process group id.
    pub fn exit_status(&self) -> io::Result<Option<ExitStatus>> {
        if self.reaped.load(std::sync::atomic::Ordering::Acquire) {
            return Err(io::Error::from_raw_os_error(libc::ECHILD));
        }
        let status = rustix::process::waitid(
            rustix::process::WaitId::PidFd(std::os::fd::AsFd::as_fd(&self.pidfd)),
            rustix::process::WaitIdOptions::EXITED
                | rustix::process::WaitIdOptions::NOHANG
                | rustix::process::WaitIdOptions::NOWAIT,
        )?;
        Ok(status.and_then(|s| decode(&s)))
    }

    /// Whether the child has been reaped.
    pub fn is_reaped(&self) -> bool {
        self.reaped.load(std::sync::atomic::Ordering::Acquire)
    }
}

fn decode(s: &rustix::process::WaitIdStatus) -> Option<ExitStatus> {
    if let Some(code) = s.exit_status() {
        Some(ExitStatus::Code(code))
    } else {
        s.terminating_signal().map(ExitStatus::Signal)
    }
}

/// What the child was doing when it failed, before `execve` replaced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    ParentDeath,
    ProcessGroup,
    Descriptors,
    Chdir,
    Limits,
    Cgroup,
    Exec,
    /// `setgroups`, `setresgid`, `setresuid`.
    Credentials,
    /// Emptying the capability sets, or finding one not empty after.
    Capabilities,
    /// `PR_SET_NO_NEW_PRIVS`.
    NoNewPrivileges,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::ParentDeath => "setting the parent-death signal",
            Step::ProcessGroup => "creating a process group",
            Step::Descriptors => "placing the inherited descriptors",
            Step::Chdir => "changing directory",
            Step::Limits => "restoring the open-files limit",
            Step::Cgroup => "joining its cgroup",
            Step::Exec => "executing the command",
            Step::Credentials => "switching to its user and groups",
            Step::Capabilities => "dropping its capabilities",
            Step::NoNewPrivileges => "setting no_new_privs",
        })
    }
}

/// Why a spawn failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{0} contains a NUL byte")]
    Nul(String),
    #[error("fork failed: {0}")]
    Fork(#[source] io::Error),
    #[error("the child failed while {step}: {source}")]
    Child {
        step: Step,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up the spawn: {0}")]
    Setup(#[source] io::Error),
}

/// Who a child runs as, resolved by the parent before `fork` (see
/// [`crate::user`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// The supplementary groups, exactly (empty: none).
    pub groups: Vec<u32>,
}

/// Everything a spawn needs.
#[derive(Debug)]
pub struct Command<'a> {
    /// The file to execute: an absolute or relative path (relative to
    /// `chdir`, if set), already resolved against `PATH` by the caller.
    pub program: &'a std::path::Path,
    /// `argv`, including `argv[0]`.
    pub args: &'a [OsString],
    /// The complete environment, `KEY=VALUE`, without `LISTEN_PID`.
    pub env: &'a [OsString],
    /// Add `LISTEN_PID=<child pid>` to the environment.
    pub listen_pid: bool,
    /// Descriptors placed at 3, 4, ... in this order.
    pub fds: &'a [BorrowedFd<'a>],
    /// Replacements for stdin, stdout, stderr (`None`: inherit).
    pub stdio: [Option<BorrowedFd<'a>>; 3],
    pub chdir: Option<&'a std::path::Path>,
    /// Put the child in a process group of its own.
    pub new_process_group: bool,
    /// Signal the kernel sends the child when this process dies.
    pub parent_death_signal: Option<i32>,
    /// The soft limit on open files to give the child, when this process
    /// raised its own (see [`raise_nofile_limit`]); the hard limit stays.
    pub nofile_soft_limit: Option<u64>,
    /// Execute the file this descriptor names (`execveat` with
    /// `AT_EMPTY_PATH`) instead of `program` (kept for messages): the very
    /// file that was opened runs, even if its path changed since.
    pub program_fd: Option<BorrowedFd<'a>>,
    /// A cgroup (v2) directory, opened: the child is born in it
    /// (`clone3` with `CLONE_INTO_CGROUP`), so nothing it starts is ever
    /// outside.
    pub cgroup: Option<BorrowedFd<'a>>,
    /// Run as this user and these groups, with no capability left
    /// (`None`: as this process).
    pub credentials: Option<&'a Credentials>,
    /// Set `PR_SET_NO_NEW_PRIVS`: nothing the child executes (a set-user-ID
    /// program, file capabilities) can gain privileges.
    pub no_new_privs: bool,
}

#[expect(
    clippy::unnecessary_debug_formatting,
    reason = "the escaped form shows where the NUL byte is"
)]
fn cstring(what: &str, s: &OsStr) -> Result<CString, SpawnError> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(s.as_bytes()).map_err(|_| SpawnError::Nul(format!("{what} {s:?}")))
}

fn path_cstring(what: &str, p: &std::path::Path) -> Result<CString, SpawnError> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| SpawnError::Nul(format!("{what} {}", p.display())))
}

/// The highest signal number (`SIGRTMAX` on Linux is 64).
const MAX_SIGNAL: i32 = 64;

/// Blocks every signal while alive; restores the previous mask on drop.
struct SignalBlock {
    old: libc::sigset_t,
}

impl SignalBlock {
    fn new() -> io::Result<Self> {
        // SAFETY: sigset_t is plain data; sigfillset/pthread_sigmask only
        // write into the sets we pass, which live on this stack frame.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&raw mut all);
            let rc = libc::pthread_sigmask(libc::SIG_SETMASK, &raw const all, &raw mut old);
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(Self { old })
        }
    }
}

impl Drop for SignalBlock {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `new`; the pointer is valid.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &raw const self.old, std::ptr::null_mut());
        }
    }
}

const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";

/// How long a forked child may take to reach `execve` before it is killed.
/// It only makes a few system calls, so this is far beyond what a healthy
/// machine needs; it bounds how long a stuck child can hold its parent.
pub const EXEC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Forks and executes `cmd`.
///
/// Returns once the child has successfully called `execve` (or failed to).
pub fn spawn(cmd: &Command<'_>) -> Result<Child, SpawnError> {
    fork_exec(cmd)?.wait_exec()
}

/// A child that was forked and is on its way to `execve`.
#[derive(Debug)]
pub struct Forked {
    pid: libc::pid_t,
    /// Read end of the close-on-exec pipe the child reports failures on.
    report: OwnedFd,
}

impl Forked {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Waits (at most [`EXEC_TIMEOUT`]) until the child has executed its
    /// program, or learns why it could not.
    pub fn wait_exec(self) -> Result<Child, SpawnError> {
        wait_exec(self.pid, &self.report)
    }
}

/// The first half of [`spawn`]: forks, and returns as soon as the child
/// exists, before it has executed anything. Finish with
/// [`Forked::wait_exec`]. Between the two a caller can record the new pid
/// (for instance so that an orphan reaper does not take it for an orphan).
pub fn fork_exec(cmd: &Command<'_>) -> Result<Forked, SpawnError> {
    // ---- Everything allocated before fork. ----
    let program = path_cstring("program", cmd.program)?;
    let args: Vec<CString> = cmd
        .args
        .iter()
        .map(|a| cstring("argument", a))
        .collect::<Result<_, _>>()?;
    let mut env: Vec<CString> = cmd
        .env
        .iter()
        .map(|e| cstring("environment entry", e))
        .collect::<Result<_, _>>()?;
    let chdir = cmd
        .chdir
        .map(|d| path_cstring("directory", d))
        .transpose()?;
    // `LISTEN_PID=` followed by room for the digits of any pid and a NUL;
    // the child writes its pid and terminator in place.
    let mut listen_pid_buf: Vec<u8> = Vec::new();
    if cmd.listen_pid {
        listen_pid_buf.extend_from_slice(LISTEN_PID_PREFIX);
        listen_pid_buf.resize(LISTEN_PID_PREFIX.len() + 24, 0);
    }
    env.retain(|e| !e.as_bytes().starts_with(LISTEN_PID_PREFIX));

    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    if cmd.listen_pid {
        envp.push(listen_pid_buf.as_ptr().cast());
    }
    envp.push(std::ptr::null());
    let listen_pid_ptr: *mut u8 = listen_pid_buf.as_mut_ptr();

    let src_fds: Vec<RawFd> = cmd.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let mut tmp_fds: Vec<RawFd> = vec![-1; src_fds.len()];
    let first_free: RawFd = 3 + RawFd::try_from(src_fds.len()).map_err(|_| {
        SpawnError::Setup(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors",
        ))
    })?;
    let stdio: [RawFd; 3] = [
        cmd.stdio[0].map_or(-1, |f| f.as_raw_fd()),
        cmd.stdio[1].map_or(-1, |f| f.as_raw_fd()),
        cmd.stdio[2].map_or(-1, |f| f.as_raw_fd()),
    ];

    let nofile = cmd.nofile_soft_limit.map(|soft| {
        let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
        libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard.unwrap_or(libc::RLIM_INFINITY),
        }
    });

    let groups: Vec<libc::gid_t> = cmd
        .credentials
        .map(|c| c.groups.clone())
        .unwrap_or_default();
    let last_cap = last_capability();

    let (err_read, err_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| SpawnError::Setup(e.into()))?;
    let err_write_raw = err_write.as_raw_fd();
    let parent_pid = std::process::id() as libc::pid_t;

    let block = SignalBlock::new().map_err(SpawnError::Setup)?;
    // SAFETY: fork is async-signal-safe, and clone3 without CLONE_VM is a
    // fork (see clone_into_cgroup). In the child, `child_after_fork` only
    // performs async-signal-safe calls on memory allocated above and never
    // returns.
    let pid = match cmd.cgroup {
        None => unsafe { libc::fork() },
        Some(dir) => unsafe { clone_into_cgroup(dir.as_raw_fd()) },
    };
    if pid < 0 && cmd.cgroup.is_some() {
        return Err(SpawnError::Child {
            step: Step::Cgroup,
            source: io::Error::last_os_error(),
        });
    }
    if pid == 0 {
        // SAFETY: we are the child of a fork; see child_after_fork's contract.
        unsafe {
            child_after_fork(&ChildPlan {
                program: program.as_ptr(),
                argv: argv.as_ptr(),
                envp: envp.as_ptr(),
                listen_pid: if cmd.listen_pid {
                    listen_pid_ptr
                } else {
                    std::ptr::null_mut()
                },
                src_fds: &src_fds,
                tmp_fds: tmp_fds.as_mut_ptr(),
                first_free,
                stdio,
                chdir: chdir.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
                new_process_group: cmd.new_process_group,
                parent_death_signal: cmd.parent_death_signal.unwrap_or(0),
                parent_pid,
                nofile: nofile.as_ref().map_or(std::ptr::null(), std::ptr::from_ref),
                program_fd: cmd.program_fd.map_or(-1, |f| f.as_raw_fd()),
                err_fd: err_write_raw,
                ids: cmd.credentials.map(|c| (c.uid, c.gid)),
                groups: &groups,
                last_cap,
                no_new_privs: cmd.no_new_privs,
            })
        }
    }
    if pid < 0 {
        return Err(SpawnError::Fork(io::Error::last_os_error()));
    }
    drop(block);
    drop(err_write);
    Ok(Forked {
        pid,
        report: err_read,
    })
}

fn wait_exec(pid: libc::pid_t, err_read: &OwnedFd) -> Result<Child, SpawnError> {
    let pid_u = pid as u32;
    // Learn whether exec succeeded: EOF means yes. Bounded: a child that
    // is stuck before exec (in the kernel) must not freeze the caller's
    // event loop; it is killed and reported instead.
    let mut report = [0u8; 8];
    let mut got = 0;
    let deadline = std::time::Instant::now() + EXEC_TIMEOUT;
    while got < report.len() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut fds = [rustix::event::PollFd::new(
            &err_read,
            rustix::event::PollFlags::IN,
        )];
        let ts = rustix::time::Timespec::try_from(left).unwrap_or(rustix::time::Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(0) => {
                let wchan =
                    std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
                // SAFETY: kill on our own unreaped child's pid, which cannot
                // have been reused because we have not waited for it. Not
                // reaped here: a child stuck in an uninterruptible wait dies
                // only when it leaves it, and waiting for that is what this
                // bound avoids (a subreaper's orphan reaping collects it).
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return Err(SpawnError::Setup(io::Error::other(format!(
                    "the new process did not reach exec within {} s (waiting in the kernel at {:?}); it was killed",
                    EXEC_TIMEOUT.as_secs(),
                    wchan.trim()
                ))));
            }
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                reap_blocking(pid);
                return Err(SpawnError::Setup(e.into()));
            }
        }
        match rustix::io::read(err_read, &mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                reap_blocking(pid);
                return Err(SpawnError::Setup(e.into()));
            }
        }
    }
    if got > 0 {
        reap_blocking(pid);
        let step = match report[0] {
            0 => Step::ParentDeath,
            1 => Step::ProcessGroup,
            2 => Step::Descriptors,
            3 => Step::Chdir,
            5 => Step::Limits,
            6 => Step::Credentials,
            7 => Step::Capabilities,
            8 => Step::NoNewPrivileges,
            _ => Step::Exec,
        };
        let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
        return Err(SpawnError::Child {
            step,
            source: io::Error::from_raw_os_error(errno),
        });
    }

    let pidfd = match rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| io::Error::other("fork returned pid 0 in the parent"))
        .and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
                .map_err(io::Error::from)
        }) {
        Ok(fd) => fd,
        Err(e) => {
            // SAFETY: kill on our own unreaped child's pid, which cannot
            // have been reused because we have not waited for it.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            reap_blocking(pid);
            return Err(SpawnError::Setup(e));
        }
    };
    Ok(Child {
        pid: pid_u,
        pidfd,
        reaped: std::sync::atomic::AtomicBool::new(false),
    })
}

/// `CLONE_INTO_CGROUP` (linux/sched.h; Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `fork()` with the child born in the cgroup `dir` (an open cgroup v2
/// directory): `clone3` with `CLONE_INTO_CGROUP` and no other flag, which
/// is exactly a fork but for the cgroup.
///
/// Moving a process afterwards (writing its pid to `cgroup.procs`) makes
/// the kernel wait for an RCU grace period on every move, which took more
/// than 10 s on a loaded machine here; a process born in place costs
/// nothing extra.
///
/// # Safety
/// As for `fork`: the child of a multi-threaded process may only make
/// async-signal-safe calls until it executes a program. The raw system
/// call skips the C library's fork handlers, which the child does not need
/// for that (it never allocates, locks or uses stdio).
unsafe fn clone_into_cgroup(dir: RawFd) -> libc::pid_t {
    // SAFETY: clone_args is plain data; zero means "unused" for every field.
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = CLONE_INTO_CGROUP;
    args.exit_signal = libc::SIGCHLD as u64;
    args.cgroup = dir as u64;
    // SAFETY: a valid clone_args of the size passed; without CLONE_VM (and
    // with no stack given) the child gets a copy of this address space and
    // returns here with 0, like fork.
    unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw mut args,
            std::mem::size_of::<libc::clone_args>(),
        ) as libc::pid_t
    }
}

fn reap_blocking(pid: libc::pid_t) {
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child; `status` is a valid out pointer.
        let rc = unsafe { libc::waitpid(pid, &raw mut status, 0) };
        if rc >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

struct ChildPlan<'a> {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    listen_pid: *mut u8,
    src_fds: &'a [RawFd],
    tmp_fds: *mut RawFd,
    first_free: RawFd,
    stdio: [RawFd; 3],
    chdir: *const libc::c_char,
    new_process_group: bool,
    parent_death_signal: i32,
    parent_pid: libc::pid_t,
    /// The open-files limit to set, or null.
    nofile: *const libc::rlimit,
    /// The program as a descriptor (execveat), or -1.
    program_fd: RawFd,
    err_fd: RawFd,
    /// The user and group to switch to.
    ids: Option<(u32, u32)>,
    /// The supplementary groups to set with `ids`.
    groups: &'a [libc::gid_t],
    /// The highest capability number the kernel knows.
    last_cap: i32,
    no_new_privs: bool,
}

/// The highest capability number this kernel knows
/// (`/proc/sys/kernel/cap_last_cap`; 40 on Linux 5.9 and later).
fn last_capability() -> i32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// `_LINUX_CAPABILITY_VERSION_3` (linux/capability.h): two 32-bit words
/// per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The child's switch to `ids` and `groups`, with every capability gone.
/// Returns the failing step's code, with `errno` set.
///
/// # Safety
/// Only in the child of a fork (async-signal-safe calls only), with
/// `groups` allocated before the fork.
unsafe fn drop_privileges(
    ids: (u32, u32),
    groups: &[libc::gid_t],
    last_cap: i32,
) -> Result<(), u8> {
    // SAFETY (whole body): prctl, setgroups, setresgid, setresuid and the
    // raw capget/capset system calls are async-signal-safe; the headers and
    // data live on this stack frame.
    unsafe {
        // The bounding set limits what any later exec could ever gain (a
        // set-user-ID-root program with no_new_privs off). Emptying it
        // needs CAP_SETPCAP, which root has; without it the set stays, and
        // no_new_privs (on by default) still stops every gain. So a refusal
        // here is not fatal; what the child holds is checked below.
        for cap in 0..=last_cap {
            libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
        }
        // Ambient capabilities would survive the exec of an ordinary
        // program (EINVAL before Linux 4.3, when there were none).
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
        // Groups first: they need CAP_SETGID, which the uid change takes.
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
            return Err(6);
        }
        if libc::setresgid(ids.1, ids.1, ids.1) != 0 {
            return Err(6);
        }
        // From uid 0 to another in all three ids (and no SECBIT_KEEP_CAPS),
        // the kernel clears the permitted, effective and ambient sets.
        if libc::setresuid(ids.0, ids.0, ids.0) != 0 {
            return Err(6);
        }
        // The inheritable set is not cleared by the switch; a program with
        // inheritable file capabilities could pick them up. Lowering is
        // always allowed.
        let mut header = CapHeader {
            version: CAPABILITY_VERSION_3,
            pid: 0,
        };
        let none = [CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        if ids.0 != 0 && libc::syscall(libc::SYS_capset, &raw mut header, none.as_ptr()) != 0 {
            return Err(7);
        }
        // Whatever baton inherited (securebits that keep capabilities
        // across a uid change, say), a worker that is not root must hold
        // none.
        if ids.0 != 0 {
            let mut held = none;
            header.version = CAPABILITY_VERSION_3;
            if libc::syscall(libc::SYS_capget, &raw mut header, held.as_mut_ptr()) != 0 {
                return Err(7);
            }
            if held
                .iter()
                .any(|d| d.effective != 0 || d.permitted != 0 || d.inheritable != 0)
            {
                *libc::__errno_location() = libc::EPERM;
                return Err(7);
            }
        }
        Ok(())
    }
}

/// Reports `step`/`errno` to the parent and exits. Async-signal-safe.
unsafe fn fail(err_fd: RawFd, step: u8) -> ! {
    // SAFETY: errno location is thread-local and always valid; write and
    // _exit are async-signal-safe.
    unsafe {
        let errno = *libc::__errno_location();
        let e = errno.to_ne_bytes();
        let msg = [step, 0, 0, 0, e[0], e[1], e[2], e[3]];
        libc::write(err_fd, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// The child's side of the fork.
///
/// # Safety
/// Must be called only in the child of `fork`, with pointers into memory
/// allocated before the fork. Performs only async-signal-safe calls.
unsafe fn child_after_fork(p: &ChildPlan<'_>) -> ! {
    // SAFETY (whole body): every call below is async-signal-safe per
    // signal-safety(7) (prctl, getppid, getpid, setpgid, setgroups,
    // setresgid, setresuid, capget/capset, fcntl, dup2,
    // close_range via syscall, chdir, sigaction, sigprocmask, execve, write,
    // _exit) or a plain system call that takes no lock in the C library
    // (sched_setscheduler, setrlimit); every pointer refers to memory allocated before the fork,
    // which this process has its own copy of.
    unsafe {
        // A process group of its own (needs no privilege).
        if p.new_process_group && libc::setpgid(0, 0) != 0 {
            fail(p.err_fd, 1);
        }
        if let Some(ids) = p.ids
            && let Err(step) = drop_privileges(ids, p.groups, p.last_cap)
        {
            fail(p.err_fd, step);
        }
        if p.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(p.err_fd, 8);
        }
        // After the credentials: changing them clears the parent-death
        // signal.
        if p.parent_death_signal != 0 {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::c_ulong::try_from(p.parent_death_signal).unwrap_or(9),
            ) != 0
            {
                fail(p.err_fd, 0);
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != p.parent_pid {
                libc::_exit(127);
            }
        }
        if !p.listen_pid.is_null() {
            write_pid_digits(p.listen_pid.add(LISTEN_PID_PREFIX.len()), libc::getpid());
        }
        // stdio replacements.
        for (target, &src) in p.stdio.iter().enumerate() {
            if src >= 0 && src != target as RawFd && libc::dup2(src, target as RawFd) < 0 {
                fail(p.err_fd, 2);
            }
        }
        // Move every source above the target range first, so placing one
        // cannot overwrite another that has not been placed yet.
        let min_tmp = p.first_free.max(p.err_fd + 1);
        // The program's descriptor too: placing the listeners must not
        // overwrite it.
        let mut program_fd = p.program_fd;
        if program_fd >= 0 {
            program_fd = libc::fcntl(program_fd, libc::F_DUPFD_CLOEXEC, min_tmp);
            if program_fd < 0 {
                fail(p.err_fd, 2);
            }
        }
        for (i, &src) in p.src_fds.iter().enumerate() {
            let t = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, min_tmp);
            if t < 0 {
                fail(p.err_fd, 2);
            }
            *p.tmp_fds.add(i) = t;
        }
        for i in 0..p.src_fds.len() {
            let target = 3 + i as RawFd;
            let tmp = *p.tmp_fds.add(i);
            // dup2 clears FD_CLOEXEC on the new descriptor: it is inherited.
            if libc::dup2(tmp, target) < 0 {
                fail(p.err_fd, 2);
            }
        }
        // Everything above the placed descriptors is close-on-exec already
        // (the supervisor opens everything with O_CLOEXEC); close_range makes
        // sure of it, sparing the error pipe which must survive until exec.
        if p.err_fd > p.first_free {
            libc::syscall(
                libc::SYS_close_range,
                p.first_free as libc::c_uint,
                (p.err_fd - 1) as libc::c_uint,
                libc::CLOSE_RANGE_CLOEXEC,
            );
        }
        libc::syscall(
            libc::SYS_close_range,
            (p.err_fd + 1).max(p.first_free) as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        if !p.chdir.is_null() && libc::chdir(p.chdir) != 0 {
            fail(p.err_fd, 3);
        }
        // Back to the limit the program would have had without baton: many
        // programs still use select(), which cannot handle fds >= 1024.
        if !p.nofile.is_null() && libc::setrlimit(libc::RLIMIT_NOFILE, p.nofile) != 0 {
            fail(p.err_fd, 5);
        }
        // Default dispositions and an empty mask for the new program. Caught
        // signals would be reset by execve anyway, but until then a signal
        // would run the supervisor's handler in this process (and write to
        // its signal pipes); ignored ones (Rust ignores SIGPIPE) are not
        // reset by execve at all. SIGKILL and SIGSTOP cannot be changed, and
        // sigaction on them just fails.
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = libc::SIG_DFL;
        for sig in 1..=MAX_SIGNAL {
            libc::sigaction(sig, &raw const sa, std::ptr::null_mut());
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &raw const empty, std::ptr::null_mut());

        if program_fd >= 0 {
            libc::syscall(
                libc::SYS_execveat,
                program_fd,
                c"".as_ptr(),
                p.argv,
                p.envp,
                libc::AT_EMPTY_PATH,
            );
        } else {
            libc::execve(p.program, p.argv, p.envp);
        }
        fail(p.err_fd, 4)
    }
}

/// Writes the decimal digits of `pid` and a NUL at `dst`. Needs 12 bytes.
unsafe fn write_pid_digits(dst: *mut u8, pid: libc::pid_t) {
    let mut digits = [0u8; 12];
    let mut n = pid.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        // SAFETY: the caller reserved 24 bytes after the prefix.
        unsafe { *dst.add(i) = digits[len - 1 - i] };
    }
    // SAFETY: as above; len <= 10 for any pid.
    unsafe { *dst.add(len) = 0 };
}

/// Opens `/dev/null` read-only, close-on-exec (a worker's stdin).
pub fn dev_null() -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?)
}

/// Reaps `child` without blocking. `Ok(None)` while it is still running.
/// Once it returned a status, [`Child::signal_group`] refuses: the pid may be
/// reused from then on.
pub fn try_reap(child: &Child) -> io::Result<Option<ExitStatus>> {
    if child.is_reaped() {
        return Err(io::Error::from_raw_os_error(libc::ECHILD));
    }
    let status = rustix::process::waitid(
        rustix::process::WaitId::PidFd(std::os::fd::AsFd::as_fd(&child.pidfd)),
        rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOHANG,
    )?;
    let status = status.and_then(|s| decode(&s));
    if status.is_some() {
        child
            .reaped
            .store(true, std::sync::atomic::Ordering::Release);
    }
    Ok(status)
}

/// The pid of a child that has exited and not been reaped yet, without
/// reaping it (`waitid(P_ALL, WEXITED | WNOHANG | WNOWAIT)`).
///
/// A supervisor that is a subreaper (or PID 1) inherits orphaned
/// grandchildren and must reap them, but must not steal the exit status of
/// its own workers, which it reaps through their pidfds. Peeking first lets
/// the caller reap only the children it does not track.
pub fn peek_exited_child() -> io::Result<Option<u32>> {
    // SAFETY: siginfo_t is plain data; waitid only writes into it. With
    // WNOHANG and no exited child, si_pid stays 0 (zeroed here, as POSIX
    // asks callers to do).
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(
            libc::P_ALL,
            0,
            &raw mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ECHILD) {
                return Ok(None);
            }
            return Err(e);
        }
        let pid = info.si_pid();
        Ok(u32::try_from(pid).ok().filter(|p| *p > 0))
    }
}

/// Reaps the exited child `pid` (found by [`peek_exited_child`]).
pub fn reap_pid(pid: u32) -> io::Result<Option<ExitStatus>> {
    let Some(p) = rustix::process::Pid::from_raw(pid as i32) else {
        return Ok(None);
    };
    match rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG) {
        Ok(Some((_, status))) => Ok(status
            .exit_status()
            .map(ExitStatus::Code)
            .or_else(|| status.terminating_signal().map(ExitStatus::Signal))),
        Ok(None) | Err(rustix::io::Errno::CHILD) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Raises this process's soft limit on open files to its hard limit, as
/// systemd advises services to do (systemd.exec(5), `LimitNOFILE=`): a
/// supervisor holds descriptors for every worker and client, and the usual
/// soft limit of 1,024 is soon reached. Returns the soft limit it had, to
/// give children (see [`Command::nofile_soft_limit`]), or `None` when
/// nothing changed.
pub fn raise_nofile_limit() -> io::Result<Option<u64>> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    let Some(soft) = before.current else {
        return Ok(None);
    };
    // Linux caps RLIMIT_NOFILE at fs.nr_open; an "unlimited" hard limit
    // cannot be set as the soft one, so stop at that cap.
    let hard = before.maximum.unwrap_or(u64::MAX).min(nr_open());
    if hard <= soft {
        return Ok(None);
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard),
            maximum: before.maximum,
        },
    )?;
    Ok(Some(soft))
}

/// The kernel's ceiling for the open-files limit (`fs.nr_open`).
fn nr_open() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20)
}

/// Sets each of `signals` to be ignored (`SIG_IGN`) in this process. For a
/// helper process that must not die of the signals sent to its whole
/// process group; `SIGKILL` and `SIGSTOP` cannot be ignored and are skipped.
pub fn ignore_signals(signals: &[i32]) {
    for &sig in signals {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_IGN installs no handler code; `signal` only changes
        // this process's disposition table, and an invalid number is EINVAL.
        unsafe {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
}

/// Gives `SIGPIPE` its default action back in this process (the Rust
/// runtime ignores it, so a write to a closed pipe fails with `EPIPE` and
/// `println!` panics). For a command-line client whose output may go to
/// `head` or `jq`: it then ends quietly when the reader goes, as `cat`
/// does.
pub fn default_sigpipe() {
    // SAFETY: SIG_DFL installs no handler code; `signal` only changes this
    // process's disposition table.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Makes this process the reaper of its orphaned descendants
/// (`PR_SET_CHILD_SUBREAPER`), as PID 1 is for the whole system.
pub fn become_subreaper() -> io::Result<()> {
    Ok(rustix::process::set_child_subreaper(Some(
        rustix::process::getpid(),
    ))?)
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "status {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {}", signal_name(*s)),
        }
    }
}

/// `SIGTERM` for 15, and so on; `signal N` for unknown numbers.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGTTIN => "SIGTTIN",
        libc::SIGTTOU => "SIGTTOU",
        libc::SIGWINCH => "SIGWINCH",
        libc::SIGSYS => "SIGSYS",
        libc::SIGPWR => "SIGPWR",
        libc::SIGVTALRM => "SIGVTALRM",
        libc::SIGPROF => "SIGPROF",
        libc::SIGIO => "SIGIO",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSTKFLT => "SIGSTKFLT",
        libc::SIGURG => "SIGURG",
        _ if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&sig) => {
            return format!("SIGRTMIN+{}", sig - libc::SIGRTMIN());
        }
        _ => return format!("{sig}"),
    };
    name.to_owned()
}

/// Sends `sig` to the child through its pidfd (no pid-reuse race).
pub fn signal(child: &Child, sig: i32) -> io::Result<()> {
    let sig = rustix::process::Signal::from_named_raw(sig)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok(rustix::process::pidfd_send_signal(&child.pidfd, sig)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;

    fn wait(child: &Child) -> ExitStatus {
        loop {
            let mut fds = [rustix::event::PollFd::new(
                &child.pidfd,
                rustix::event::PollFlags::IN,
            )];
            let _ = rustix::event::poll(&mut fds, None);
            if let Some(s) = try_reap(child).expect("waitid") {
                return s;
            }
        }
    }

    fn env_of_test() -> Vec<OsString> {
        vec!["PATH=/usr/bin:/bin".into()]
    }

    /// A plain command: no descriptors, inherited stdio.
    fn plain<'a>(program: &'a str, args: &'a [OsString], env: &'a [OsString]) -> Command<'a> {
        Command {
            program: std::path::Path::new(program),
            args,
            env,
            listen_pid: false,
            fds: &[],
            stdio: [None, None, None],
            chdir: None,
            new_process_group: false,
            parent_death_signal: None,
            nofile_soft_limit: None,
            cgroup: None,
            program_fd: None,
            credentials: None,
            no_new_privs: false,
        }
    }

    #[test]
    fn child_gets_fds_at_three_and_its_own_listen_pid() {
        let l1 = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let l2 = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe");
        let args: Vec<OsString> = [
            "sh",
            "-c",
            "echo \"$LISTEN_PID $$\"; ls /proc/self/fd | sort -n | tr '\\n' ' '",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let child = spawn(&Command {
            program: std::path::Path::new("/bin/sh"),
            args: &args,
            env: &env_of_test(),
            listen_pid: true,
            fds: &[l1.as_fd(), l2.as_fd()],
            stdio: [None, Some(w.as_fd()), None],
            chdir: None,
            new_process_group: true,
            parent_death_signal: Some(libc::SIGKILL),
            nofile_soft_limit: None,
            cgroup: None,
            program_fd: None,
            credentials: None,
            no_new_privs: false,
        })
        .expect("spawn");
        drop(w);
        let mut out = String::new();
        std::fs::File::from(r)
            .read_to_string(&mut out)
            .expect("read");
        assert_eq!(wait(&child), ExitStatus::Code(0));
        let mut lines = out.lines();
        let pids: Vec<&str> = lines.next().expect("pid line").split(' ').collect();
        assert_eq!(pids[0], pids[1], "LISTEN_PID must equal the child's pid");
        assert_eq!(pids[0], child.pid.to_string());
        // ls itself opens one directory fd (the highest); 0-4 are ours.
        let fds: Vec<&str> = lines.next().expect("fd line").split_whitespace().collect();
        assert_eq!(&fds[..5], &["0", "1", "2", "3", "4"], "{fds:?}");
        assert_eq!(
            fds.len(),
            6,
            "only ls's own directory fd beyond ours: {fds:?}"
        );
    }

    #[test]
    fn exec_failure_is_reported_with_errno() {
        let args = vec![OsString::from("nope")];
        let env = env_of_test();
        let err = spawn(&plain("/nonexistent/program", &args, &env)).expect_err("must fail");
        match err {
            SpawnError::Child { step, source } => {
                assert_eq!(step, Step::Exec);
                assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn chdir_failure_is_reported() {
        let args = vec![OsString::from("true")];
        let env = env_of_test();
        let err = spawn(&Command {
            chdir: Some(std::path::Path::new("/nonexistent/dir")),
            ..plain("/bin/true", &args, &env)
        })
        .expect_err("must fail");
        assert!(
            matches!(
                err,
                SpawnError::Child {
                    step: Step::Chdir,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn signals_reach_the_child_through_its_pidfd() {
        let args: Vec<OsString> = vec!["sleep".into(), "30".into()];
        let env = env_of_test();
        let child = spawn(&Command {
            new_process_group: true,
            parent_death_signal: Some(libc::SIGKILL),
            ..plain("/bin/sleep", &args, &env)
        })
        .expect("spawn");
        assert_eq!(try_reap(&child).expect("waitid"), None);
        signal(&child, libc::SIGTERM).expect("signal");
        assert_eq!(wait(&child), ExitStatus::Signal(libc::SIGTERM));
    }

    #[test]
    fn peek_sees_an_exited_child_without_reaping_it() {
        let args: Vec<OsString> = vec!["true".into()];
        let env = env_of_test();
        let child = spawn(&plain("/bin/true", &args, &env)).expect("spawn");
        // Wait for the exit without reaping.
        let mut fds = [rustix::event::PollFd::new(
            &child.pidfd,
            rustix::event::PollFlags::IN,
        )];
        rustix::event::poll(&mut fds, None).expect("poll");
        // Other tests in this process may have exited children too; look
        // for ours among what is peeked.
        let peeked = peek_exited_child().expect("peek");
        assert!(peeked.is_some());
        // Still reapable through the pidfd: peeking did not reap.
        assert_eq!(try_reap(&child).expect("reap"), Some(ExitStatus::Code(0)));
        assert_eq!(reap_pid(child.pid).expect("reap again"), None);
    }

    /// Regression: the group of an exited worker was signalled by number
    /// after the worker was reaped, when the number may name someone else.
    /// The group is signalled while the leader is a zombie, and refused
    /// once it is reaped.
    #[test]
    fn group_kill_after_reaping_is_refused_and_works_while_a_zombie() {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe");
        // The leader starts a grandchild in its own group, reports its pid
        // and exits.
        let args: Vec<OsString> = ["sh", "-c", "sleep 1000 >/dev/null & echo $!"]
            .iter()
            .map(OsString::from)
            .collect();
        let env = env_of_test();
        let child = spawn(&Command {
            stdio: [None, Some(w.as_fd()), None],
            new_process_group: true,
            ..plain("/bin/sh", &args, &env)
        })
        .expect("spawn");
        drop(w);
        let mut out = String::new();
        std::fs::File::from(r)
            .read_to_string(&mut out)
            .expect("read");
        let grandchild: u32 = out.trim().parse().expect("grandchild pid");
        let mut fds = [rustix::event::PollFd::new(
            &child.pidfd,
            rustix::event::PollFlags::IN,
        )];
        rustix::event::poll(&mut fds, None).expect("poll");
        assert_eq!(
            child.exit_status().expect("peek"),
            Some(ExitStatus::Code(0))
        );
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.pid)).expect("stat");
        assert!(stat.contains(") Z "), "peeking leaves a zombie: {stat}");
        assert!(std::path::Path::new(&format!("/proc/{grandchild}")).exists());
        child
            .signal_group(libc::SIGKILL)
            .expect("the group still exists");
        assert_eq!(try_reap(&child).expect("reap"), Some(ExitStatus::Code(0)));
        let refused = child.signal_group(libc::SIGKILL).expect_err("reaped");
        assert_eq!(refused.raw_os_error(), Some(libc::ESRCH));
        assert!(child.exit_status().is_err(), "no peeking after the reap");
        // The grandchild (a child of the shell, reparented to init or the
        // test's subreaper) was killed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let gone = std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
                .map_or(true, |s| s.contains(") Z "));
            if gone {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "grandchild {grandchild} survived"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn pid_digits() {
        let mut buf = [0xffu8; 24];
        // SAFETY: 24 bytes available.
        unsafe { write_pid_digits(buf.as_mut_ptr(), 4_194_304) };
        assert_eq!(&buf[..8], b"4194304\0");
        // SAFETY: as above.
        unsafe { write_pid_digits(buf.as_mut_ptr(), 7) };
        assert_eq!(&buf[..2], b"7\0");
    }
}
