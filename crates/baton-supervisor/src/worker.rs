//! Starting one worker: its environment, descriptors and pipes.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use baton_sys::spawn::{Child, Command};
use rustix::pipe::PipeFlags;

use crate::lifecycle::{GenId, Slot};
use crate::listen::Bound;
use crate::output::{Pipe, Stream};

/// Variables baton sets for workers; inherited values are dropped so a
/// worker never sees baton's own `LISTEN_*` or `NOTIFY_SOCKET`.
const OWN_VARS: [&str; 7] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "BATON_READY_FD",
    "BATON_GENERATION",
    "BATON_WORKER",
];

/// baton's environment as read once at start, minus the variables it sets
/// itself for workers.
pub fn base_environment() -> Vec<OsString> {
    std::env::vars_os()
        .filter(|(k, _)| !OWN_VARS.iter().any(|v| OsStr::new(v) == k))
        .map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            kv
        })
        .collect()
}

fn var(key: &str, value: impl AsRef<OsStr>) -> OsString {
    let mut kv = OsString::from(key);
    kv.push("=");
    kv.push(value);
    kv
}

/// A running worker's handles.
#[derive(Debug)]
pub struct Started {
    pub child: Child,
    pub stdout: Pipe,
    pub stderr: Pipe,
    /// Read end of the readiness pipe (fd mode).
    pub ready: Option<OwnedFd>,
}

/// Everything needed to start one worker, owned, so that the spawner
/// thread can start it while the event loop goes on.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub generation: GenId,
    pub slot: Slot,
    /// The program, pinned when the generation started.
    pub program: PathBuf,
    /// `argv`, including `argv[0]` as the user wrote it.
    pub args: Arc<Vec<OsString>>,
    /// baton's environment without the variables it sets per worker.
    pub base_env: Arc<Vec<OsString>>,
    /// Give the worker a readiness pipe (`BATON_READY_FD`).
    pub ready_fd: bool,
    /// This generation's notify socket (notify mode).
    pub notify: Option<PathBuf>,
    /// This generation's working directory, resolved when it started.
    pub chdir: Option<PathBuf>,
    /// The open-files soft limit baton had before it raised its own.
    pub nofile_soft_limit: Option<u64>,
    /// The listeners, placed at fds 3.. in this order.
    pub listeners: Arc<Vec<Arc<Bound>>>,
    /// The worker's stdin (`/dev/null`).
    pub stdin: Arc<OwnedFd>,
    /// Start it at `SCHED_IDLE` (quiet boot).
    pub sched_idle: bool,
}

fn nonblocking_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
    rustix::io::ioctl_fionbio(&r, true)?;
    Ok((r, w))
}

/// Why a worker could not be started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpawnFailure {
    /// It could not join its generation's cgroup: start it without.
    Cgroup(String),
    /// Anything else, explained.
    Other(String),
}

/// Spawns one worker, born in the cgroup `cgroup` if given. `on_forked`
/// is called with the new pid as soon as the process exists, before it has
/// executed anything (see `baton_sys::spawn::fork_exec`).
pub fn spawn_worker(
    spec: &WorkerSpec,
    cgroup: Option<BorrowedFd<'_>>,
    on_forked: impl FnOnce(u32),
) -> Result<Started, SpawnFailure> {
    let pipe_error = |e: std::io::Error| SpawnFailure::Other(format!("cannot create a pipe: {e}"));
    let (out_r, out_w) = nonblocking_pipe().map_err(pipe_error)?;
    let (err_r, err_w) = nonblocking_pipe().map_err(pipe_error)?;
    let ready_pipe = if spec.ready_fd {
        Some(nonblocking_pipe().map_err(pipe_error)?)
    } else {
        None
    };

    let mut fds: Vec<BorrowedFd<'_>> = spec.listeners.iter().map(|l| l.fd.as_fd()).collect();
    let mut env: Vec<OsString> = spec.base_env.to_vec();
    env.push(var("LISTEN_FDS", spec.listeners.len().to_string()));
    let names: Vec<&str> = spec.listeners.iter().map(|l| l.name.as_str()).collect();
    env.push(var("LISTEN_FDNAMES", names.join(":")));
    env.push(var("BATON_GENERATION", spec.generation.to_string()));
    env.push(var("BATON_WORKER", spec.slot.to_string()));
    if let Some((_, w)) = &ready_pipe {
        env.push(var("BATON_READY_FD", (3 + fds.len()).to_string()));
        fds.push(w.as_fd());
    }
    if let Some(path) = &spec.notify {
        env.push(var("NOTIFY_SOCKET", path.as_os_str()));
    }

    let explain = |e: baton_sys::spawn::SpawnError| match e {
        baton_sys::spawn::SpawnError::Child {
            step: baton_sys::spawn::Step::Cgroup,
            source,
        } => SpawnFailure::Cgroup(source.to_string()),
        e => SpawnFailure::Other(explain_spawn_error(&e, spec)),
    };
    let forked = baton_sys::spawn::fork_exec(&Command {
        program: &spec.program,
        args: &spec.args,
        env: &env,
        listen_pid: true,
        fds: &fds,
        stdio: [
            Some(spec.stdin.as_fd()),
            Some(out_w.as_fd()),
            Some(err_w.as_fd()),
        ],
        chdir: spec.chdir.as_deref(),
        new_process_group: true,
        parent_death_signal: Some(libc::SIGKILL),
        nofile_soft_limit: spec.nofile_soft_limit,
        cgroup,
        program_fd: None,
        sched_idle: spec.sched_idle,
    })
    .map_err(explain)?;
    on_forked(forked.pid());
    drop((out_w, err_w));
    let child = forked.wait_exec().map_err(explain)?;
    Ok(Started {
        child,
        stdout: Pipe::new(out_r, Stream::Stdout),
        stderr: Pipe::new(err_r, Stream::Stderr),
        ready: ready_pipe.map(|(r, _w)| r),
    })
}

fn explain_spawn_error(e: &baton_sys::spawn::SpawnError, spec: &WorkerSpec) -> String {
    use baton_sys::spawn::{SpawnError, Step};
    match e {
        SpawnError::Child {
            step: Step::Exec,
            source,
        } => format!("cannot execute {}: {source}", spec.program.display()),
        SpawnError::Child {
            step: Step::Chdir,
            source,
        } => format!(
            "cannot change directory to {}: {source}",
            spec.chdir
                .as_deref()
                .map_or_else(String::new, |p| p.display().to_string())
        ),
        other => other.to_string(),
    }
}

/// Starts the `exec:` readiness probe for a generation: `sh -c CMD` with
/// `BATON_GENERATION` and `BATON_WORKER_PIDS` set.
pub fn spawn_probe(
    cmd: &str,
    base_env: &[OsString],
    generation: GenId,
    pids: &[u32],
    chdir: Option<&Path>,
    nofile_soft_limit: Option<u64>,
    on_forked: impl FnOnce(u32),
) -> Result<Child, String> {
    let args: Vec<OsString> = vec!["sh".into(), "-c".into(), cmd.into()];
    let mut env = base_env.to_vec();
    env.push(var("BATON_GENERATION", generation.to_string()));
    let pids: Vec<String> = pids.iter().map(ToString::to_string).collect();
    env.push(var("BATON_WORKER_PIDS", pids.join(" ")));
    let forked = baton_sys::spawn::fork_exec(&Command {
        program: Path::new("/bin/sh"),
        args: &args,
        env: &env,
        listen_pid: false,
        fds: &[],
        stdio: [None, None, None],
        chdir,
        new_process_group: true,
        parent_death_signal: Some(libc::SIGKILL),
        nofile_soft_limit,
        cgroup: None,
        program_fd: None,
        sched_idle: false,
    })
    .map_err(|e| format!("cannot run the readiness command: {e}"))?;
    on_forked(forked.pid());
    forked
        .wait_exec()
        .map_err(|e| format!("cannot run the readiness command: {e}"))
}

/// Whether `bytes` read from a readiness fd contain the ready newline.
pub fn says_ready(bytes: &[u8]) -> bool {
    bytes.contains(&b'\n')
}
