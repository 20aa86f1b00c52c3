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
const OWN_VARS: [&str; 10] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "BATON_READY_FD",
    "BATON_GENERATION",
    "BATON_WORKER",
    baton_app::dispatch::proto::FD_VAR,
    baton_app::dispatch::proto::MODE_VAR,
    baton_app::dispatch::proto::BATCH_VAR,
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
    /// baton's end of the worker's dispatch channel (`--dispatch`),
    /// non-blocking.
    pub dispatch: Option<OwnedFd>,
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
    /// Whom it runs as (`--user`; `None`: as baton).
    pub run_as: Option<Arc<crate::privileges::RunAs>>,
    /// `PR_SET_NO_NEW_PRIVS` for it.
    pub no_new_privs: bool,
    /// `--dispatch`: the worker gets a channel (and, in pass mode, no
    /// listener: baton accepts).
    pub dispatch: Option<crate::dispatch::DispatchMode>,
    /// Put it at `SCHED_IDLE` once it has executed its program (quiet
    /// boot; see [`crate::quiet`]).
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
    let pipe_error = |e: std::io::Error| {
        SpawnFailure::Other(format!(
            "cannot create a pipe: {e}{}",
            out_of_descriptors(e.raw_os_error())
        ))
    };
    let (out_r, out_w) = nonblocking_pipe().map_err(pipe_error)?;
    let (err_r, err_w) = nonblocking_pipe().map_err(pipe_error)?;
    let ready_pipe = if spec.ready_fd {
        Some(nonblocking_pipe().map_err(pipe_error)?)
    } else {
        None
    };
    let channel = match spec.dispatch {
        Some(_) => Some(dispatch_channel().map_err(|e| {
            SpawnFailure::Other(format!(
                "cannot create the dispatch channel: {e}{}",
                out_of_descriptors(e.raw_os_error())
            ))
        })?),
        None => None,
    };
    // In pass mode baton alone accepts: the worker gets no listener, so it
    // cannot take connections around the dispatch by mistake.
    let listeners: &[Arc<Bound>] = match spec.dispatch {
        Some(crate::dispatch::DispatchMode::Pass) => &[],
        _ => &spec.listeners,
    };

    let mut fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|l| l.fd.as_fd()).collect();
    let mut env: Vec<OsString> = spec.base_env.to_vec();
    env.push(var("LISTEN_FDS", listeners.len().to_string()));
    let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
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
    if let (Some(mode), Some((_, theirs))) = (spec.dispatch, &channel) {
        env.push(var(
            baton_app::dispatch::proto::FD_VAR,
            (3 + fds.len()).to_string(),
        ));
        env.push(var(baton_app::dispatch::proto::MODE_VAR, mode.as_str()));
        if mode == crate::dispatch::DispatchMode::Pass {
            // This baton puts up to this many connections in one packet
            // for a worker that says `batch N`.
            env.push(var(
                baton_app::dispatch::proto::BATCH_VAR,
                baton_app::dispatch::proto::MAX_BATCH.to_string(),
            ));
        }
        fds.push(theirs.as_fd());
    }

    let explain = |e: baton_sys::spawn::SpawnError| match e {
        baton_sys::spawn::SpawnError::Child {
            step: baton_sys::spawn::Step::Cgroup,
            source,
        } => SpawnFailure::Cgroup(source.to_string()),
        e => SpawnFailure::Other(explain_spawn_error_with_limit(
            &e,
            &spec.program,
            spec.chdir.as_deref(),
            spec.run_as.as_deref(),
        )),
    };
    let credentials = spec
        .run_as
        .as_ref()
        .map(|r| crate::privileges::RunAs::credentials(r));
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
        credentials: credentials.as_ref(),
        no_new_privs: spec.no_new_privs,
    })
    .map_err(explain)?;
    let pid = forked.pid();
    on_forked(pid);
    drop((out_w, err_w));
    let child = forked.wait_exec().map_err(explain)?;
    // Quiet boot starts here, once the program runs, not in the child
    // between fork and exec (see `crate::quiet` for why). A worker that
    // cannot be lowered (it exited already) only boots at the normal
    // priority.
    if spec.sched_idle {
        let lowered = crate::quiet::lower_tree(pid);
        if !lowered.errors.is_empty() {
            tracing::debug!(
                "worker {} of generation {} boots at its normal priority: {}",
                spec.slot,
                spec.generation,
                lowered.errors.join("; ")
            );
        }
    }
    Ok(Started {
        child,
        stdout: Pipe::new(out_r, Stream::Stdout),
        stderr: Pipe::new(err_r, Stream::Stderr),
        ready: ready_pipe.map(|(r, _w)| r),
        dispatch: channel.map(|(ours, _theirs)| ours),
    })
}

/// A worker's dispatch channel: a `SOCK_SEQPACKET` pair (each message one
/// packet, and a descriptor travels with its message), baton's end
/// non-blocking. Both ends are close-on-exec; the worker's is placed at
/// its number by the spawn, which clears the flag there.
fn dispatch_channel() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::io::ioctl_fionbio(&ours, true)?;
    Ok((ours, theirs))
}

/// What to add to an error that says baton ran out of descriptors:
/// `EMFILE`, or `EINVAL` where the child moves a descriptor above those it
/// places and the next free number is past the limit.
fn out_of_descriptors(errno: Option<i32>) -> String {
    if errno != Some(libc::EMFILE) && errno != Some(libc::ENFILE) {
        return String::new();
    }
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    format!(
        " (baton is out of file descriptors: its open-files limit is {limit}; raise it with ulimit -n or LimitNOFILE=, or run fewer workers)"
    )
}

/// [`explain_spawn_error`], with the hint of [`out_of_descriptors`] when
/// that is why.
fn explain_spawn_error_with_limit(
    e: &baton_sys::spawn::SpawnError,
    program: &Path,
    chdir: Option<&Path>,
    run_as: Option<&crate::privileges::RunAs>,
) -> String {
    use baton_sys::spawn::{SpawnError, Step};
    let errno = match e {
        SpawnError::Child {
            step: Step::Descriptors,
            source,
        } if source.raw_os_error() == Some(libc::EINVAL) => Some(libc::EMFILE),
        SpawnError::Child { source, .. } | SpawnError::Setup(source) | SpawnError::Fork(source) => {
            source.raw_os_error()
        }
        SpawnError::Nul(_) => None,
    };
    format!(
        "{}{}",
        explain_spawn_error(e, program, chdir, run_as),
        out_of_descriptors(errno)
    )
}

fn explain_spawn_error(
    e: &baton_sys::spawn::SpawnError,
    program: &Path,
    chdir: Option<&Path>,
    run_as: Option<&crate::privileges::RunAs>,
) -> String {
    use baton_sys::spawn::{SpawnError, Step};
    // As another user, a file or directory root could use may be closed.
    let as_user = |source: &std::io::Error| match (run_as, source.raw_os_error()) {
        (Some(r), Some(libc::EACCES | libc::EPERM)) => format!(
            " (as {}: check that this user may read and execute it, and search every directory above it)",
            r.describe()
        ),
        _ => String::new(),
    };
    match e {
        SpawnError::Child {
            step: Step::Exec,
            source,
        } => format!(
            "cannot execute {}: {source}{}{}",
            program.display(),
            exec_hint(program, source),
            as_user(source)
        ),
        SpawnError::Child {
            step: Step::Chdir,
            source,
        } => format!(
            "cannot change directory to {}: {source}{}",
            chdir.map_or_else(String::new, |p| p.display().to_string()),
            as_user(source)
        ),
        SpawnError::Child {
            step: step @ (Step::Credentials | Step::Capabilities | Step::NoNewPrivileges),
            source,
        } => {
            let who = run_as.map_or_else(
                || "baton's user".to_owned(),
                crate::privileges::RunAs::describe,
            );
            let hint = match (step, source.raw_os_error()) {
                (Step::Credentials, Some(libc::EPERM)) => {
                    ": only root (or a baton holding CAP_SETUID and CAP_SETGID) can start processes as another user"
                }
                (Step::Capabilities, _) => {
                    ": the worker still held capabilities after the switch (securebits inherited by baton may keep them); baton refuses to start it so"
                }
                _ => "",
            };
            format!("cannot start it as {who} while {step}: {source}{hint}")
        }
        other => other.to_string(),
    }
}

/// What `execve` means when it fails on a file that is there: `ENOENT`
/// names the program, yet what is missing is its `#!` interpreter (or a
/// carriage return makes the interpreter's name another one), or the
/// dynamic loader of a binary built elsewhere; `ENOEXEC` is a script
/// without a `#!` line.
fn exec_hint(program: &Path, source: &std::io::Error) -> String {
    use std::io::Read;
    match source.raw_os_error() {
        Some(libc::ENOENT) if program.is_file() => {
            let mut head = [0u8; 512];
            let n = std::fs::File::open(program)
                .and_then(|mut f| f.read(&mut head))
                .unwrap_or(0);
            let Some(line) = head[..n].strip_prefix(b"#!") else {
                return " (the file is there, but the dynamic loader it asks for is not: built for another system or C library?)".into();
            };
            let line = line.split(|b| *b == b'\n').next().unwrap_or(line);
            if line.ends_with(b"\r") {
                return " (the file is there, but its #! line ends in a carriage return, so its interpreter is not found: Windows line endings; convert it, e.g. with dos2unix)".into();
            }
            let line = String::from_utf8_lossy(line);
            let interpreter = line.split_whitespace().next().unwrap_or_default();
            format!(
                " (the file is there, but the interpreter of its #! line, {interpreter}, is not)"
            )
        }
        Some(libc::ENOEXEC) => {
            let mut head = [0u8; 4];
            let n = std::fs::File::open(program)
                .and_then(|mut f| f.read(&mut head))
                .unwrap_or(0);
            if head[..n] == *b"\x7fELF" {
                " (a program built for another machine or system)".into()
            } else {
                " (not a program this system can run: a script needs a #! line, e.g. #!/bin/sh)"
                    .into()
            }
        }
        _ => String::new(),
    }
}

/// Starts the `exec:` readiness probe for a generation: `sh -c CMD` with
/// `BATON_GENERATION` and `BATON_WORKER_PIDS` set, as the generation's
/// user (`--user`), like its workers.
#[expect(
    clippy::too_many_arguments,
    reason = "each is a separate part of the probe's start, named by its one caller"
)]
pub fn spawn_probe(
    cmd: &str,
    base_env: &[OsString],
    generation: GenId,
    pids: &[u32],
    chdir: Option<&Path>,
    nofile_soft_limit: Option<u64>,
    run_as: Option<&crate::privileges::RunAs>,
    no_new_privs: bool,
    on_forked: impl FnOnce(u32),
) -> Result<Child, String> {
    let credentials = run_as.map(crate::privileges::RunAs::credentials);
    let explain = |e: baton_sys::spawn::SpawnError| {
        format!(
            "cannot run the readiness command: {}",
            explain_spawn_error(&e, Path::new("/bin/sh"), chdir, run_as)
        )
    };
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
        credentials: credentials.as_ref(),
        no_new_privs,
    })
    .map_err(explain)?;
    on_forked(forked.pid());
    forked.wait_exec().map_err(explain)
}

/// Whether `bytes` read from a readiness fd contain the ready newline.
pub fn says_ready(bytes: &[u8]) -> bool {
    bytes.contains(&b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A script whose `#!` interpreter is missing failed with "cannot
    /// execute /srv/app/server: No such file or directory" although the
    /// file is right there; one without a `#!` line with "Exec format
    /// error". Each must say what is wrong with the file.
    #[test]
    fn a_program_that_exists_but_cannot_be_executed_says_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hint = |text: &[u8], errno: i32| {
            let path = dir.path().join("server");
            std::fs::write(&path, text).expect("write");
            exec_hint(&path, &std::io::Error::from_raw_os_error(errno))
        };
        let h = hint(b"#!/nonexistent/python3 -u\nprint(1)\n", libc::ENOENT);
        assert!(
            h.contains("the interpreter of its #! line, /nonexistent/python3, is not"),
            "{h}"
        );
        let h = hint(b"#!/bin/sh\r\necho hi\r\n", libc::ENOENT);
        assert!(h.contains("carriage return"), "{h}");
        let h = hint(b"\x7fELF....", libc::ENOENT);
        assert!(h.contains("dynamic loader"), "{h}");
        let h = hint(b"\x7fELF....", libc::ENOEXEC);
        assert!(h.contains("built for another machine"), "{h}");
        let h = hint(b"echo hi\n", libc::ENOEXEC);
        assert!(h.contains("needs a #! line"), "{h}");
        // A program that is not there is said so already.
        let missing = dir.path().join("missing");
        assert_eq!(
            exec_hint(&missing, &std::io::Error::from_raw_os_error(libc::ENOENT)),
            ""
        );
    }
}
