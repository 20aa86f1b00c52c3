//! Upgrading baton in place: `SIGUSR2` or `baton ctl upgrade`.
//!
//! # Theory of operation
//!
//! 1. **Open** the new binary (the path baton was started from, or `ctl
//!    upgrade --binary PATH`) and keep the descriptor: what is checked is
//!    what runs, even if the path is swapped meanwhile. A script (`#!`) is
//!    refused: baton re-executes binaries.
//! 2. **Pre-flight**: run that very file (`execveat`) as a child, `baton
//!    upgrade-check`, which prints its version and the state schemas it
//!    reads. It must start, answer within [`PREFLIGHT_TIMEOUT`], and read
//!    this image's schema. `ENOENT`, `EACCES`, `ENOEXEC` (a foreign
//!    architecture, a file that is no program), a crash, a non-zero exit or
//!    an answer that is not a baton's are each refused with the reason; the
//!    old image keeps running.
//! 3. **Quiesce**: the spawner finishes what it was asked (a barrier); work
//!    the lifecycle asks for from then on is deferred and carried in the
//!    state.
//! 4. **The window**: every signal is blocked (on the loop thread; the main
//!    thread always has them blocked), the signal pipes are drained and
//!    what they said is handled, systemd hears `RELOADING=1`, the state is
//!    written to a sealed memfd, every descriptor in it loses its
//!    close-on-exec flag, and the main thread (which forked every worker,
//!    so none gets its parent-death signal: see `spawner`) executes the new
//!    binary in place. Signals sent meanwhile stay pending for the new
//!    image; a worker that exits meanwhile is still a child, and its pidfd
//!    reports it to the new image.
//! 5. **The new image** (`Runtime::resume`) reads the state, adopts every
//!    descriptor, answers the waiting client and says `READY=1`. If it
//!    cannot load the state (an error, a panic, or a crash: a fatal signal
//!    handler is armed for the purpose), it executes the old binary, still
//!    open, with the same state: an automatic rollback, and the verdict
//!    says so.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::Token;

use super::state::{STATE_SCHEMA, UpgradeState};
use super::{Runtime, Source};
use crate::control::Reply;
use crate::output::Tail;

/// How long the new binary's check may take.
pub const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(10);

/// The variables an upgrade passes to the new image (never to workers).
pub const RESUME_FD: &str = "BATON_RESUME_FD";
pub const ROLLBACK_FD: &str = "BATON_ROLLBACK_FD";
pub const ROLLBACK_REASON: &str = "BATON_ROLLBACK_REASON";
pub const FAILPOINT: &str = "BATON_FAILPOINT";

/// What `baton upgrade-check` prints: this binary's version and the state
/// schemas it reads.
pub fn check_answer() -> String {
    format!(
        "{{\"baton\":\"{}\",\"state_schemas\":[{},{}]}}",
        env!("CARGO_PKG_VERSION"),
        super::state::READS.start(),
        super::state::READS.end()
    )
}

/// An upgrade in progress.
#[derive(Debug)]
pub(super) struct Upgrade {
    /// Who waits for the verdict.
    pub(super) client: Option<u64>,
    pub(super) started: Instant,
    pub(super) path: PathBuf,
    /// The new binary, open.
    binary: OwnedFd,
    pub(super) failpoint: Option<String>,
    pub(super) stage: Stage,
}

#[derive(Debug)]
pub(super) enum Stage {
    /// `baton upgrade-check` runs.
    Preflight {
        child: baton_sys::spawn::Child,
        token: Token,
        out: Vec<(Token, OwnedFd)>,
        stdout: Vec<u8>,
        stderr: Tail,
        deadline: Instant,
    },
    /// Waiting for the spawner to finish its jobs.
    Quiescing,
}

fn explain_exec(path: &Path, e: &std::io::Error) -> String {
    let p = path.display();
    match e.raw_os_error() {
        Some(libc::ENOENT) => format!(
            "{p} cannot be executed (ENOENT): it, or the dynamic loader it names, does not exist"
        ),
        Some(libc::EACCES) => format!(
            "{p} is not executable (EACCES): check its mode (chmod +x) and that its filesystem is not mounted noexec"
        ),
        Some(libc::ENOEXEC) => format!(
            "{p} is not a program this machine can run (ENOEXEC): a binary for another architecture, or not a binary at all"
        ),
        _ => format!("{p} cannot be executed: {e}"),
    }
}

impl Runtime {
    /// An upgrade was asked for (`SIGUSR2`: `client` is `None`).
    pub(super) fn start_upgrade(
        &mut self,
        client: Option<u64>,
        binary: Option<PathBuf>,
        failpoint: Option<String>,
    ) {
        if self.upgrade.is_some() {
            self.refuse_upgrade(client, "an upgrade is already in progress".into());
            return;
        }
        if self.machine.is_stopping() {
            self.refuse_upgrade(client, "baton is stopping".into());
            return;
        }
        let path = binary.unwrap_or_else(|| self.exe.clone());
        tracing::info!("upgrade: checking {}", path.display());
        let binary = match open_binary(&path) {
            Ok(fd) => fd,
            Err(e) => {
                self.refuse_upgrade(client, e);
                return;
            }
        };
        let stage = match self.preflight(&path, &binary) {
            Ok(s) => s,
            Err(e) => {
                self.refuse_upgrade(client, e);
                return;
            }
        };
        self.upgrade = Some(Upgrade {
            client,
            started: Instant::now(),
            path,
            binary,
            failpoint,
            stage,
        });
    }

    fn refuse_upgrade(&mut self, client: Option<u64>, reason: String) {
        tracing::error!("upgrade refused: {reason}; this baton keeps running");
        self.publish(crate::events::Notice::UpgradeFailed {
            reason: reason.clone(),
            rolled_back: false,
        });
        if let Some(id) = client {
            self.reply_and_close(
                id,
                &Reply::UpgradeFailed {
                    reason,
                    rolled_back: false,
                },
            );
        }
    }

    /// Starts `baton upgrade-check` from the open binary.
    fn preflight(&mut self, path: &Path, binary: &OwnedFd) -> Result<Stage, String> {
        let pipe = || {
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .and_then(|(r, w)| rustix::io::ioctl_fionbio(&r, true).map(|()| (r, w)))
                .map_err(|e| format!("cannot create a pipe: {e}"))
        };
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let argv0 = self.argv.first().cloned().unwrap_or_else(|| "baton".into());
        let args = vec![argv0, OsString::from("upgrade-check")];
        let child = baton_sys::spawn::spawn(&baton_sys::spawn::Command {
            program: path,
            args: &args,
            env: &self.base_env,
            listen_pid: false,
            fds: &[],
            stdio: [
                Some(self.stdin.as_fd()),
                Some(out_w.as_fd()),
                Some(err_w.as_fd()),
            ],
            chdir: Some(Path::new("/")),
            new_process_group: true,
            parent_death_signal: Some(libc::SIGKILL),
            nofile_soft_limit: self.child_nofile,
            cgroup: None,
            program_fd: Some(binary.as_fd()),
            credentials: None,
            no_new_privs: false,
        })
        .map_err(|e| match e {
            baton_sys::spawn::SpawnError::Child { source, .. } => explain_exec(path, &source),
            other => format!("cannot run {}: {other}", path.display()),
        })?;
        drop((out_w, err_w));
        let token = self
            .register_fd(&child.pidfd, Source::Preflight)
            .map_err(|e| format!("cannot watch the check: {e}"))?;
        let mut out = Vec::new();
        for fd in [out_r, err_r] {
            let t = self
                .register_fd(&fd, Source::PreflightOut)
                .map_err(|e| format!("cannot watch the check: {e}"))?;
            out.push((t, fd));
        }
        Ok(Stage::Preflight {
            child,
            token,
            out,
            stdout: Vec::new(),
            stderr: Tail::default(),
            deadline: Instant::now() + PREFLIGHT_TIMEOUT,
        })
    }

    /// The check printed something.
    pub(super) fn on_preflight_output(&mut self) {
        let Some(Upgrade {
            stage:
                Stage::Preflight {
                    out,
                    stdout,
                    stderr,
                    ..
                },
            ..
        }) = self.upgrade.as_mut()
        else {
            return;
        };
        let mut buf = [0u8; 4096];
        for (i, (_, fd)) in out.iter().enumerate() {
            loop {
                match rustix::io::read(fd, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if i == 0 {
                            if stdout.len() < 64 * 1024 {
                                stdout.extend_from_slice(&buf[..n]);
                            }
                        } else {
                            for line in buf[..n].split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                                stderr.push(line);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The check ended: go on with the exec, or refuse.
    pub(super) fn on_preflight_exit(&mut self) {
        self.on_preflight_output();
        let Some(mut up) = self.upgrade.take() else {
            return;
        };
        let Stage::Preflight {
            child,
            token,
            out,
            stdout,
            stderr,
            ..
        } = std::mem::replace(&mut up.stage, Stage::Quiescing)
        else {
            self.upgrade = Some(up);
            return;
        };
        let status = match baton_sys::spawn::try_reap(&child) {
            Ok(Some(s)) => s,
            Ok(None) => {
                // Spurious wake-up: still running.
                up.stage = Stage::Preflight {
                    child,
                    token,
                    out,
                    stdout,
                    stderr,
                    deadline: Instant::now() + PREFLIGHT_TIMEOUT,
                };
                self.upgrade = Some(up);
                return;
            }
            Err(e) => {
                self.refuse_upgrade(up.client, format!("cannot reap the check: {e}"));
                return;
            }
        };
        self.deregister_fd(&child.pidfd, token);
        for (t, fd) in out {
            self.deregister_fd(&fd, t);
        }
        let said: Vec<&str> = stderr.lines().collect();
        let said = if said.is_empty() {
            String::new()
        } else {
            format!("; it printed: {}", said.join(" | "))
        };
        let path = up.path.display().to_string();
        let verdict = match status {
            baton_sys::spawn::ExitStatus::Code(0) => check_schema(&stdout, &path),
            baton_sys::spawn::ExitStatus::Code(c) => Err(format!(
                "{path} failed its check (`baton upgrade-check` exited with status {c}){said}"
            )),
            baton_sys::spawn::ExitStatus::Signal(s) => Err(format!(
                "{path} crashed during its check (signal {}){said}",
                baton_sys::spawn::signal_name(s)
            )),
        };
        match verdict {
            Ok(version) => {
                tracing::info!(
                    "upgrade: {path} (baton {version}) reads this state; re-executing in place"
                );
                self.publish(crate::events::Notice::UpgradeStarted {
                    binary: path.clone(),
                });
                if let Some(id) = up.client {
                    self.reply(
                        id,
                        &Reply::Progress {
                            message: format!("{path} (baton {version}) passed its check"),
                        },
                    );
                }
                self.upgrade = Some(up);
                self.spawner.send(super::spawner::Job::Barrier);
            }
            Err(reason) => self.refuse_upgrade(up.client, reason),
        }
    }

    /// The check did not answer in time.
    pub(super) fn preflight_deadline(&self) -> Option<Instant> {
        match &self.upgrade {
            Some(Upgrade {
                stage: Stage::Preflight { deadline, .. },
                ..
            }) => Some(*deadline),
            _ => None,
        }
    }

    pub(super) fn expire_preflight(&mut self, now: Instant) {
        if self.preflight_deadline().is_some_and(|d| d <= now)
            && let Some(up) = self.upgrade.take()
            && let Stage::Preflight {
                child, token, out, ..
            } = up.stage
        {
            let _ = baton_sys::spawn::signal(&child, libc::SIGKILL);
            super::workers::wait_briefly(&child);
            self.deregister_fd(&child.pidfd, token);
            for (t, fd) in out {
                self.deregister_fd(&fd, t);
            }
            self.refuse_upgrade(
                up.client,
                format!(
                    "{} did not answer its check within {} s",
                    up.path.display(),
                    PREFLIGHT_TIMEOUT.as_secs()
                ),
            );
        }
    }

    /// Whether work for the spawner must wait for the new image.
    pub(super) fn deferring(&self) -> bool {
        matches!(
            self.upgrade,
            Some(Upgrade {
                stage: Stage::Quiescing,
                ..
            })
        )
    }

    /// The spawner has done everything it was asked: the exec.
    pub(super) fn on_barrier(&mut self) {
        if !self.deferring() {
            return;
        }
        // The upgrade stays in place (so work is still deferred) until the
        // exec has failed, if it does.
        match self.exec_in_place() {
            // On success this never returns: the process runs the new image.
            Ok(never) => match never {},
            Err(reason) => {
                let client = self.upgrade.take().and_then(|u| u.client);
                self.notify_service_manager(&crate::lifecycle::Sd::Ready {
                    serving: self.machine.serving().unwrap_or(0),
                    note: Some("upgrade failed".into()),
                });
                self.refuse_upgrade(client, reason);
                // What was deferred is done now, by this image.
                self.run_deferred();
            }
        }
    }

    /// Steps 4 of the module docs. Returns only on failure.
    fn exec_in_place(&mut self) -> Result<std::convert::Infallible, String> {
        let Some(up) = self.upgrade.as_ref() else {
            return Err("no upgrade is in progress".into());
        };
        let (client, started, path, failpoint) =
            (up.client, up.started, up.path.clone(), up.failpoint.clone());
        let binary = up
            .binary
            .try_clone()
            .map_err(|e| format!("cannot hand the binary over: {e}"))?;
        let mask =
            baton_sys::reexec::block_all().map_err(|e| format!("cannot block signals: {e}"))?;
        // What the signal pipes already hold is handled here; what arrives
        // from now on stays pending for the new image.
        let sources: Vec<Source> = (0..self.signals.len())
            .map(Source::Signal)
            .chain(std::iter::once(Source::Ignored))
            .collect();
        for s in sources {
            self.dispatch(s);
        }
        self.settle();
        if self.machine.is_stopping() || self.exit.is_some() {
            mask.restore();
            return Err("baton began to stop".into());
        }
        self.notify_service_manager(&crate::lifecycle::Sd::Reloading {
            generation: self.machine.serving().unwrap_or(0),
        });
        let restore_mask = |e: String| {
            mask.restore();
            e
        };
        // The running image, for a rollback.
        let old = rustix::fs::open(
            "/proc/self/exe",
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| {
            restore_mask(format!(
                "cannot open the running binary for a rollback: {e}"
            ))
        })?;
        let (state, mut keep) = self.capture(UpgradeState {
            client,
            from: env!("CARGO_PKG_VERSION").to_owned(),
            requested_unix_us: unix_micros(std::time::SystemTime::now())
                .saturating_sub(u64::try_from(started.elapsed().as_micros()).unwrap_or(0)),
            old_binary: old.as_raw_fd(),
        });
        let bytes = serde_json::to_vec(&state)
            .map_err(|e| restore_mask(format!("cannot write the state: {e}")))?;
        let memfd = sealed_memfd(&bytes)
            .map_err(|e| restore_mask(format!("cannot write the state: {e}")))?;
        keep.push(memfd.as_raw_fd());
        let mut env: Vec<OsString> = self
            .environ
            .iter()
            .filter(|kv| {
                let b = std::os::unix::ffi::OsStrExt::as_bytes(kv.as_os_str());
                ![RESUME_FD, ROLLBACK_FD, ROLLBACK_REASON, FAILPOINT]
                    .iter()
                    .any(|k| b.starts_with(k.as_bytes()) && b.get(k.len()) == Some(&b'='))
            })
            .cloned()
            .collect();
        env.push(format!("{RESUME_FD}={}", memfd.as_raw_fd()).into());
        env.push(format!("{ROLLBACK_FD}={}", old.as_raw_fd()).into());
        if let Some(f) = &failpoint {
            env.push(format!("{FAILPOINT}={f}").into());
        }
        for fd in &keep {
            set_cloexec(*fd, false);
        }
        tracing::info!(
            "upgrade: executing {} in place (pid {})",
            path.display(),
            std::process::id()
        );
        // The lines still queued for baton's stdout and stderr (its own and
        // its workers') would die with this image.
        self.sinks.flush();
        let err = self.spawner.exec(binary, self.argv.clone(), env);
        // Still here: the exec failed. Put everything back.
        for fd in &keep {
            set_cloexec(*fd, true);
        }
        drop(memfd);
        drop(old);
        mask.restore();
        Err(format!("cannot execute {}: {err}", path.display()))
    }

    /// Spawns and probes the lifecycle asked for while the exec was being
    /// prepared.
    pub(super) fn run_deferred(&mut self) {
        for d in std::mem::take(&mut self.deferred) {
            match d {
                super::state::Deferred::Spawn(g, slot) => self.spawn(g, slot, false),
                super::state::Deferred::SpawnQuiet(g, slot) => self.spawn(g, slot, true),
                super::state::Deferred::Probe(g) => self.run_probe(g),
            }
        }
    }
}

/// Microseconds since the epoch.
pub(super) fn unix_micros(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Opens `path` for an upgrade: it must exist, be readable, and not be a
/// script.
fn open_binary(path: &Path) -> Result<OwnedFd, String> {
    let fd = rustix::fs::open(
        path,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::NOENT => format!("{} does not exist", path.display()),
        rustix::io::Errno::ACCESS => format!("cannot read {} (permission denied)", path.display()),
        e => format!("cannot open {}: {e}", path.display()),
    })?;
    let st = rustix::fs::fstat(&fd).map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let mut head = [0u8; 2];
    if rustix::io::pread(&fd, &mut head, 0).is_ok_and(|n| n == 2) && &head == b"#!" {
        return Err(format!(
            "{} is a script; baton re-executes only a binary (point --binary at baton itself)",
            path.display()
        ));
    }
    Ok(fd)
}

/// Reads the check's answer: the version, if it reads this state's schema.
fn check_schema(stdout: &[u8], path: &str) -> Result<String, String> {
    let text = String::from_utf8_lossy(stdout);
    let answer: serde_json::Value = serde_json::from_str(text.trim()).map_err(|_| {
        format!(
            "{path} is not a baton that can take over: its check printed {:?}",
            text.trim().chars().take(200).collect::<String>()
        )
    })?;
    let version = answer
        .get("baton")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| format!("{path} is not a baton that can take over: {answer}"))?
        .to_owned();
    let range = answer
        .get("state_schemas")
        .and_then(serde_json::Value::as_array)
        .and_then(|a| Some((a.first()?.as_u64()?, a.get(1)?.as_u64()?)))
        .ok_or_else(|| {
            format!("{path} (baton {version}) does not say which state schemas it reads")
        })?;
    let ours = u64::from(STATE_SCHEMA);
    if ours < range.0 || ours > range.1 {
        return Err(format!(
            "{path} (baton {version}) reads state schemas {}..={}; this baton writes schema {ours}: upgrade through a version that reads both",
            range.0, range.1
        ));
    }
    Ok(version)
}

/// The state, in an anonymous file that cannot change any more.
fn sealed_memfd(bytes: &[u8]) -> std::io::Result<OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(
        "baton-state",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut off = 0;
    while off < bytes.len() {
        off += rustix::io::write(&fd, &bytes[off..])?;
    }
    rustix::fs::fcntl_add_seals(
        &fd,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )?;
    Ok(fd)
}

/// The binary `USR2` and `ctl upgrade` run by default, "the binary baton
/// was started from, as it is on disk now": the path baton was started as
/// (`arg0` with a `/`, made absolute against `cwd`, or found on `PATH` as
/// the shell found it), not the kernel's `/proc/self/exe` (`kernel`), which
/// names the end of every symlink. With `/usr/local/bin/baton ->
/// /opt/baton-1.1/baton`, a deploy that swaps the link to 1.2 must upgrade
/// to 1.2, not execute 1.1 again and call that an upgrade. `arg0` is
/// whatever the parent chose, so it is taken only if it leads to this very
/// file now.
pub(super) fn started_as(
    arg0: Option<&std::ffi::OsStr>,
    cwd: Option<&Path>,
    path_var: Option<&std::ffi::OsStr>,
    kernel: &Path,
) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let same_file = |p: &Path| match (std::fs::metadata(p), std::fs::metadata(kernel)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    let Some(arg0) = arg0.map(Path::new).filter(|a| !a.as_os_str().is_empty()) else {
        return kernel.to_owned();
    };
    let found = if arg0.as_os_str().as_encoded_bytes().contains(&b'/') {
        Some(match cwd {
            Some(cwd) => cwd.join(arg0),
            None => arg0.to_owned(),
        })
    } else {
        path_var.and_then(|p| {
            std::env::split_paths(p)
                .map(|dir| match cwd {
                    Some(cwd) => cwd.join(dir).join(arg0),
                    None => dir.join(arg0),
                })
                .find(|c| c.is_file())
        })
    };
    match found {
        Some(p) if p.is_absolute() && same_file(&p) => p,
        _ => kernel.to_owned(),
    }
}

fn set_cloexec(fd: RawFd, on: bool) {
    if let Err(e) = baton_sys::fd::set_cloexec(fd, on) {
        tracing::warn!("cannot change the close-on-exec flag of fd {fd}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/usr/local/bin/baton -> /opt/baton-1.1/baton` swapped to 1.2 by a
    /// deploy: the upgrade ran 1.1 again (the kernel's exe is the link's
    /// end). The path baton was started as is kept, if it is the same file.
    #[test]
    fn regression_an_upgrade_ignored_a_swapped_symlink_to_baton() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().canonicalize().expect("canonical");
        let real = d.join("baton-1.1");
        std::fs::write(&real, b"binary").expect("write");
        let link = d.join("bin/baton");
        std::fs::create_dir(d.join("bin")).expect("mkdir");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let bin = d.join("bin");
        let other = d.join("other");
        std::fs::write(&other, b"another").expect("write");

        // By path, relative or absolute, and found on PATH.
        let rel = std::ffi::OsStr::new("bin/baton");
        assert_eq!(started_as(Some(rel), Some(&d), None, &real), link);
        assert_eq!(started_as(Some(link.as_os_str()), None, None, &real), link);
        let path = std::env::join_paths([d.join("nowhere"), bin]).expect("PATH");
        let bare = std::ffi::OsStr::new("baton");
        assert_eq!(started_as(Some(bare), Some(&d), Some(&path), &real), link);
        // argv[0] that is not this binary (exec -a), or none: the kernel's.
        assert_eq!(started_as(Some(other.as_os_str()), None, None, &real), real);
        assert_eq!(started_as(Some(bare), Some(&d), None, &real), real);
        assert_eq!(started_as(None, Some(&d), Some(&path), &real), real);
        let relative_path = std::ffi::OsString::from("bin");
        assert_eq!(
            started_as(Some(bare), None, Some(&relative_path), &real),
            real,
            "a relative PATH entry with no working directory gives no absolute path"
        );
    }

    #[test]
    fn the_check_answer_is_what_the_schema_check_reads() {
        assert_eq!(
            check_schema(check_answer().as_bytes(), "baton"),
            Ok(env!("CARGO_PKG_VERSION").to_owned())
        );
        let foreign = check_schema(br#"{"baton":"9.0","state_schemas":[7,9]}"#, "/x");
        assert!(
            foreign
                .as_ref()
                .is_err_and(|e| e.contains("reads state schemas 7..=9")),
            "{foreign:?}"
        );
        let junk = check_schema(b"hello", "/x");
        assert!(
            junk.as_ref().is_err_and(|e| e.contains("not a baton")),
            "{junk:?}"
        );
    }
}
