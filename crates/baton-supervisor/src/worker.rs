//! Starting one worker: its environment, descriptors and pipes.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use baton_sys::spawn::{Child, Command};
use rustix::pipe::PipeFlags;

use crate::config::Settings;
use crate::lifecycle::{GenId, ReadyMode, Slot};
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

/// What differs between workers and generations.
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    pub generation: GenId,
    pub slot: Slot,
    /// The program, pinned when the generation started.
    pub program: &'a Path,
    /// This generation's notify socket (notify mode).
    pub notify: Option<&'a Path>,
    /// This generation's working directory, resolved when it started.
    pub chdir: Option<&'a Path>,
    /// The open-files soft limit baton had before it raised its own.
    pub nofile_soft_limit: Option<u64>,
    /// The generation's cgroup directory, to be born in.
    pub cgroup: Option<BorrowedFd<'a>>,
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

/// Spawns one worker.
pub fn spawn_worker(
    settings: &Settings,
    listeners: &[Bound],
    base_env: &[OsString],
    stdin: BorrowedFd<'_>,
    at: Placement<'_>,
) -> Result<Started, SpawnFailure> {
    let pipe_error = |e: std::io::Error| SpawnFailure::Other(format!("cannot create a pipe: {e}"));
    let (out_r, out_w) = nonblocking_pipe().map_err(pipe_error)?;
    let (err_r, err_w) = nonblocking_pipe().map_err(pipe_error)?;
    let ready_pipe = match settings.policy.ready {
        ReadyMode::Fd => Some(nonblocking_pipe().map_err(pipe_error)?),
        ReadyMode::Notify | ReadyMode::Delay(_) | ReadyMode::Exec(_) => None,
    };

    let mut fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|l| l.fd.as_fd()).collect();
    let mut env: Vec<OsString> = base_env.to_vec();
    env.push(var("LISTEN_FDS", listeners.len().to_string()));
    let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
    env.push(var("LISTEN_FDNAMES", names.join(":")));
    env.push(var("BATON_GENERATION", at.generation.to_string()));
    env.push(var("BATON_WORKER", at.slot.to_string()));
    if let Some((_, w)) = &ready_pipe {
        env.push(var("BATON_READY_FD", (3 + fds.len()).to_string()));
        fds.push(w.as_fd());
    }
    if let Some(path) = at.notify {
        env.push(var("NOTIFY_SOCKET", path.as_os_str()));
    }

    let child = baton_sys::spawn::spawn(&Command {
        program: at.program,
        args: &settings.args,
        env: &env,
        listen_pid: true,
        fds: &fds,
        stdio: [Some(stdin), Some(out_w.as_fd()), Some(err_w.as_fd())],
        chdir: at.chdir.or(settings.chdir.as_deref()),
        new_process_group: true,
        parent_death_signal: Some(libc::SIGKILL),
        nofile_soft_limit: at.nofile_soft_limit,
        cgroup: at.cgroup,
    })
    .map_err(|e| match e {
        baton_sys::spawn::SpawnError::Child {
            step: baton_sys::spawn::Step::Cgroup,
            source,
        } => SpawnFailure::Cgroup(source.to_string()),
        e => SpawnFailure::Other(explain_spawn_error(&e, settings, at)),
    })?;
    drop((out_w, err_w));
    Ok(Started {
        child,
        stdout: Pipe::new(out_r, Stream::Stdout),
        stderr: Pipe::new(err_r, Stream::Stderr),
        ready: ready_pipe.map(|(r, _w)| r),
    })
}

fn explain_spawn_error(
    e: &baton_sys::spawn::SpawnError,
    settings: &Settings,
    at: Placement<'_>,
) -> String {
    use baton_sys::spawn::{SpawnError, Step};
    match e {
        SpawnError::Child {
            step: Step::Exec,
            source,
        } => format!("cannot execute {}: {source}", at.program.display()),
        SpawnError::Child {
            step: Step::Chdir,
            source,
        } => format!(
            "cannot change directory to {}: {source}",
            at.chdir
                .or(settings.chdir.as_deref())
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
) -> Result<Child, String> {
    let args: Vec<OsString> = vec!["sh".into(), "-c".into(), cmd.into()];
    let mut env = base_env.to_vec();
    env.push(var("BATON_GENERATION", generation.to_string()));
    let pids: Vec<String> = pids.iter().map(ToString::to_string).collect();
    env.push(var("BATON_WORKER_PIDS", pids.join(" ")));
    baton_sys::spawn::spawn(&Command {
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
    })
    .map_err(|e| format!("cannot run the readiness command: {e}"))
}

/// Whether `bytes` read from a readiness fd contain the ready newline.
pub fn says_ready(bytes: &[u8]) -> bool {
    bytes.contains(&b'\n')
}
