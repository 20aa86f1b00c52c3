//! The new image's side of an in-place upgrade: take over the state the
//! old image wrote (see `upgrade` and `state`), or roll back to the old
//! binary when that fails.

use std::ffi::OsString;
use std::time::Duration;

use std::os::fd::AsRawFd;

use mio::Interest;

use super::state::{self, Restored, UpgradeState};
use super::upgrade::{FAILPOINT, RESUME_FD, ROLLBACK_FD, ROLLBACK_REASON};
use super::{RunDir, Runtime, RuntimeError, Skeleton, Source};
use crate::control::Reply;

/// What to tell whoever asked for the upgrade, once the loop runs.
#[derive(Debug)]
pub(super) struct Resumed {
    upgrade: Option<UpgradeState>,
    /// Set when this is the old image again: why the new one failed.
    rolled_back: Option<String>,
}

fn env_value(env: &[OsString], key: &str) -> Option<String> {
    env.iter().find_map(|kv| {
        let s = kv.to_str()?;
        s.strip_prefix(key)?.strip_prefix('=').map(str::to_owned)
    })
}

/// The environment for executing the old binary again, with `reason`.
fn rollback_env(env: &[OsString], reason: &str) -> Vec<OsString> {
    let mut out: Vec<OsString> = env
        .iter()
        .filter(|kv| {
            let b = std::os::unix::ffi::OsStrExt::as_bytes(kv.as_os_str());
            ![ROLLBACK_FD, ROLLBACK_REASON, FAILPOINT]
                .iter()
                .any(|k| b.starts_with(k.as_bytes()) && b.get(k.len()) == Some(&b'='))
        })
        .cloned()
        .collect();
    out.push(format!("{ROLLBACK_REASON}={reason}").into());
    out
}

/// A test's fault, injected while the state is loaded (`baton ctl upgrade
/// --failpoint`, never set otherwise): proves the rollback.
fn failpoint(name: Option<&str>, bytes: &[u8]) -> Result<(), String> {
    match name {
        None => Ok(()),
        Some("resume-error") => Err("failpoint resume-error".into()),
        Some("resume-panic") => panic!("failpoint resume-panic"),
        Some("resume-abort") => std::process::abort(),
        Some("resume-segv") => {
            baton_sys::reexec::crash_like_a_fault();
            Ok(())
        }
        Some(p) if p.starts_with("resume-dump:") => {
            // Writes the state where a test can keep it (the fixture of
            // the compatibility test), then fails: the old image goes on.
            let path = &p["resume-dump:".len()..];
            std::fs::write(path, bytes).map_err(|e| format!("cannot dump the state: {e}"))?;
            Err(format!("failpoint resume-dump: the state is in {path}"))
        }
        Some(p) => {
            if let Some(ms) = p
                .strip_prefix("resume-pause:")
                .and_then(|m| m.parse::<u64>().ok())
            {
                // Signals are still blocked here: this holds the window
                // open, for the tests of what happens inside it.
                tracing::info!("upgrade: resume paused for {ms} ms (failpoint)");
                std::thread::sleep(Duration::from_millis(ms));
                Ok(())
            } else {
                Err(format!("unknown failpoint {p:?}"))
            }
        }
    }
}

impl Runtime {
    /// Whether this process was started as the new image of an upgrade.
    pub fn is_resuming() -> bool {
        std::env::var_os(RESUME_FD).is_some()
    }

    /// Takes over from the previous image (the state in `BATON_RESUME_FD`).
    /// If that fails and the old binary is at hand (`BATON_ROLLBACK_FD`),
    /// executes it again with the same state and does not return.
    pub fn resume(sinks: crate::output::Sinks) -> Result<Self, RuntimeError> {
        let env: Vec<OsString> = std::env::vars_os()
            .map(|(k, v)| {
                let mut kv = k;
                kv.push("=");
                kv.push(v);
                kv
            })
            .collect();
        let argv: Vec<OsString> = std::env::args_os().collect();
        let rollback_reason = env_value(&env, ROLLBACK_REASON);
        let rollback_fd = env_value(&env, ROLLBACK_FD).and_then(|v| v.parse::<i32>().ok());
        let failpoint_name = if rollback_reason.is_none() {
            env_value(&env, FAILPOINT)
        } else {
            None
        };
        if let Some(fd) = rollback_fd
            && let Err(e) = baton_sys::reexec::arm_fatal_rollback(
                fd,
                &argv,
                &rollback_env(&env, "the new image crashed while loading the state"),
            )
        {
            tracing::warn!("cannot arm the rollback for a crash: {e}");
        }
        let loaded = std::panic::catch_unwind(|| -> Result<Restored, String> {
            let fd = env_value(&env, RESUME_FD)
                .and_then(|v| v.parse::<i32>().ok())
                .ok_or("BATON_RESUME_FD is not a descriptor number")?;
            // Read, not taken: it stays open, unchanged, for a rollback.
            let bytes = baton_sys::fd::read_all_at_zero(fd)
                .map_err(|e| format!("cannot read the state (fd {fd}): {e}"))?;
            failpoint(failpoint_name.as_deref(), &bytes)?;
            state::restore(&bytes)
        });
        let restored = match loaded {
            Ok(Ok(r)) => r,
            Ok(Err(reason)) => return Err(Self::roll_back(rollback_fd, &argv, &env, &reason)),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                return Err(Self::roll_back(
                    rollback_fd,
                    &argv,
                    &env,
                    &format!("the new image panicked while loading the state: {what}"),
                ));
            }
        };
        baton_sys::reexec::disarm_fatal_rollback();
        state::seal_claimed();
        // The state file and the old binary are done with.
        if let Some(fd) = env_value(&env, RESUME_FD).and_then(|v| v.parse::<i32>().ok()) {
            baton_sys::fd::close_unowned(fd);
        }
        if let Some(fd) = rollback_fd {
            baton_sys::fd::close_unowned(fd);
        }
        Self::assemble(restored, sinks, rollback_reason)
    }

    /// Executes the old binary again with the same state; returns only if
    /// that is impossible.
    fn roll_back(
        fd: Option<i32>,
        argv: &[OsString],
        env: &[OsString],
        reason: &str,
    ) -> RuntimeError {
        tracing::error!("upgrade: {reason}; rolling back to the old binary");
        let Some(fd) = fd else {
            return RuntimeError::Resume(format!(
                "{reason}; and the old binary cannot take over again either"
            ));
        };
        match baton_sys::fd::claim_fd_keep_flags(fd) {
            Ok(old) => {
                let err = baton_sys::reexec::exec_fd(
                    std::os::fd::AsFd::as_fd(&old),
                    argv,
                    &rollback_env(env, reason),
                );
                RuntimeError::Resume(format!("{reason}; the rollback failed too: {err}"))
            }
            Err(e) => RuntimeError::Resume(format!("{reason}; the old binary is gone too: {e}")),
        }
    }

    /// Builds the runtime from what the state held, and registers it all.
    fn assemble(
        r: Restored,
        sinks: crate::output::Sinks,
        rollback_reason: Option<String>,
    ) -> Result<Self, RuntimeError> {
        let mut rt = Self::skeleton(Skeleton {
            settings: r.settings,
            machine: r.machine,
            listeners: r.listeners,
            base_env: r.base_env,
            stdin: r.stdin,
            rundir: RunDir::adopt(r.rundir, r.rundir_shared),
            sinks,
            // Made by the previous image: adopted below, not set up again.
            cgroups: crate::config::CgroupMode::Off,
            child_nofile: r.child_nofile,
            started: r.started,
            exe: r.exe,
            argv: r.argv,
            environ: r.environ,
        })?;
        rt.next_client = r.next_client;
        rt.upgrades = r.upgrades;
        rt.metrics = r.metrics;
        if let Some(e) = r.endpoint {
            rt.adopt_metrics(e.spec, e.listener, e.local, e.clients, e.next_client)
                .map_err(RuntimeError::Poll)?;
        }
        rt.deferred = r.deferred;
        for (key, at) in r.timers {
            rt.timers.insert(key, at);
        }
        if let Some(root) = r.cgroup_root {
            let generations: Vec<crate::lifecycle::GenId> =
                r.generations.iter().map(|(g, _)| *g).collect();
            rt.spawner.send(super::spawner::Job::AdoptCgroups {
                root: root.clone(),
                generations,
            });
            rt.cgroup_root = Some(root);
        }
        for (g, mut rg) in r.generations {
            if let Some((_, sock)) = rg.notify.take() {
                let token = rt
                    .register_fd(&sock.sock, Source::Notify(g))
                    .map_err(RuntimeError::Poll)?;
                rg.notify = Some((token, sock));
            }
            if let Some((_, child)) = rg.probe.take() {
                let token = rt
                    .register_fd(&child.pidfd, Source::Probe(g))
                    .map_err(RuntimeError::Poll)?;
                rg.probe = Some((token, child));
            }
            rt.generations.insert(g, rg);
        }
        for ((g, slot), mut w) in r.workers {
            if let Some((_, child)) = w.child.take() {
                let token = rt
                    .register_fd(&child.pidfd, Source::Exit(g, slot))
                    .map_err(RuntimeError::Poll)?;
                w.child = Some((token, child));
            }
            let pipes = std::mem::take(&mut w.pipes);
            for (_, pipe) in pipes {
                let token = rt
                    .register_fd(&pipe.fd, Source::Output(g, slot, pipe.stream))
                    .map_err(RuntimeError::Poll)?;
                w.pipes.push((token, pipe));
            }
            if let Some((_, fd)) = w.ready.take() {
                let token = rt
                    .register_fd(&fd, Source::Ready(g, slot))
                    .map_err(RuntimeError::Poll)?;
                w.ready = Some((token, fd));
            }
            rt.workers.insert((g, slot), w);
        }
        // Dispatch channels (the watched listeners are watched again when
        // the loop follows the serving generation).
        rt.dispatch = r.dispatch;
        let keys: Vec<_> = rt.dispatch.chans.keys().copied().collect();
        for (g, slot) in keys {
            let raw = rt.dispatch.chans[&(g, slot)].fd.as_raw_fd();
            let token = rt
                .register_fd(&raw, Source::Channel(g, slot))
                .map_err(RuntimeError::Poll)?;
            if let Some(c) = rt.dispatch.chans.get_mut(&(g, slot)) {
                c.token = token;
            }
        }
        if let Some(sock) = r.control {
            rt.adopt_control(sock)?;
        }
        for (id, mut c) in r.clients {
            let token = rt.token(Source::Client(id));
            rt.poll
                .registry()
                .register(&mut c.stream, token, Interest::READABLE)
                .map_err(RuntimeError::Poll)?;
            c.token = token;
            rt.clients.insert(id, c);
        }
        if let Some(guard) = r.guard {
            match rt.register_fd(&guard.child.pidfd, Source::Guard) {
                Ok(token) => rt.guard_token = Some(token),
                Err(e) => tracing::warn!("cannot watch the guard process: {e}"),
            }
            rt.guard = Some(guard);
        } else {
            rt.start_guard();
        }
        rt.install_sources()?;
        rt.resumed = Some(Resumed {
            upgrade: r.upgrade,
            rolled_back: rollback_reason,
        });
        Ok(rt)
    }

    /// First thing the resumed loop does: tell whoever asked, and systemd,
    /// and do what was deferred.
    pub(super) fn after_resume(&mut self) {
        let Some(resumed) = self.resumed.take() else {
            return;
        };
        let pid = std::process::id();
        let took = resumed.upgrade.as_ref().map_or(Duration::ZERO, |u| {
            Duration::from_micros(
                super::upgrade::unix_micros(std::time::SystemTime::now())
                    .saturating_sub(u.requested_unix_us),
            )
        });
        let from = resumed
            .upgrade
            .as_ref()
            .map_or_else(|| "?".to_owned(), |u| u.from.clone());
        let client = resumed.upgrade.as_ref().and_then(|u| u.client);
        let to = env!("CARGO_PKG_VERSION");
        match &resumed.rolled_back {
            None => {
                self.upgrades += 1;
                self.publish(crate::events::Notice::Upgraded {
                    from: from.clone(),
                    to: to.to_owned(),
                    took,
                });
                tracing::info!(
                    "upgraded in place: baton {from} -> {to}, same pid {pid}, in {} ms; every worker kept",
                    took.as_millis()
                );
                if let Some(id) = client {
                    self.reply_and_close(
                        id,
                        &Reply::Upgraded {
                            pid,
                            from,
                            to: to.to_owned(),
                            took_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                        },
                    );
                }
            }
            Some(reason) => {
                tracing::error!(
                    "upgrade failed and was rolled back: {reason}; baton {to} (pid {pid}) runs on with every worker"
                );
                self.publish(crate::events::Notice::UpgradeFailed {
                    reason: reason.clone(),
                    rolled_back: true,
                });
                if let Some(id) = client {
                    self.reply_and_close(
                        id,
                        &Reply::UpgradeFailed {
                            reason: reason.clone(),
                            rolled_back: true,
                        },
                    );
                }
            }
        }
        if let Some(serving) = self.machine.serving() {
            self.notify_service_manager(&crate::lifecycle::Sd::Ready {
                serving,
                note: resumed
                    .rolled_back
                    .as_ref()
                    .map(|_| "upgrade rolled back".to_owned()),
            });
        }
        // (A worker that exited during the exec reports through its
        // pidfd; clients mid-request went on with their deadlines.)
        self.run_deferred();
        let looks = self.machine.resume_accept_checks();
        self.execute(looks);
    }
}
