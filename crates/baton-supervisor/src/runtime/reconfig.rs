//! Reloading the config file: re-read before every reload, refused (with
//! the line and column) when it does not parse or validate, listeners
//! diffed by name.
//!
//! A listener with the same name and the same address as before is kept
//! (the very socket, so its accept queue and inode stay); a new one is bound
//! before the reload goes on (a bind error refuses the reload, naming it);
//! one the file no longer has stays open for the generations that have it
//! and is closed (its socket file removed) when the last of them is gone:
//! each generation holds its listeners ([`GenSpec`]), and a listener goes
//! when its last holder does.

use std::ffi::OsString;
use std::sync::Arc;

use mio::Interest;

use super::{Runtime, Source};
use crate::config::Settings;
use crate::lifecycle::{Event, ReadyMode};
use crate::listen::Bound;

/// What a generation runs, fixed when it starts.
#[derive(Debug)]
pub(super) struct GenSpec {
    pub(super) args: Arc<Vec<OsString>>,
    /// baton's environment with the settings' `[env]`/`--env` applied.
    pub(super) env: Arc<Vec<OsString>>,
    pub(super) listeners: Arc<Vec<Arc<Bound>>>,
    pub(super) ready_fd: bool,
    /// How it says it is ready (the `exec:` command runs from here).
    pub(super) ready: ReadyMode,
    pub(super) fingerprint: String,
    /// Whom its workers (and its `exec:` probe) run as, when not baton's
    /// own user (`--user`).
    pub(super) run_as: Option<Arc<crate::privileges::RunAs>>,
    pub(super) no_new_privs: bool,
    /// `--dispatch`, as this generation runs it.
    pub(super) dispatch: Option<crate::dispatch::DispatchSettings>,
}

/// `base` (baton's environment, `KEY=VALUE`) with `set` applied: each of
/// those keys replaced or added.
pub(super) fn merged_env(base: &[OsString], set: &[(String, String)]) -> Vec<OsString> {
    let mut env: Vec<OsString> = base
        .iter()
        .filter(|kv| {
            let bytes = std::os::unix::ffi::OsStrExt::as_bytes(kv.as_os_str());
            !set.iter().any(|(k, _)| {
                bytes.len() > k.len() && bytes.starts_with(k.as_bytes()) && bytes[k.len()] == b'='
            })
        })
        .cloned()
        .collect();
    for (k, v) in set {
        env.push(format!("{k}={v}").into());
    }
    env
}

impl Runtime {
    /// What the next generation runs, from the settings in force.
    pub(super) fn gen_spec(&self) -> GenSpec {
        GenSpec {
            args: Arc::new(self.settings.args.clone()),
            env: Arc::new(self.worker_env()),
            listeners: Arc::new(self.listeners.clone()),
            ready_fd: self.settings.policy.ready == ReadyMode::Fd,
            ready: self.settings.policy.ready.clone(),
            fingerprint: crate::config_file::fingerprint(&self.settings),
            run_as: self.settings.drops_privileges().cloned().map(Arc::new),
            no_new_privs: self.settings.no_new_privs(),
            dispatch: self.settings.dispatch,
        }
    }

    /// The next generation's environment (before the variables baton sets
    /// per worker): see `crate::environment` for the layers.
    fn worker_env(&self) -> Vec<OsString> {
        let s = &self.settings;
        let base = crate::environment::base_for(&self.base_env, s.clear_env, &s.keep_env);
        let mut set: Vec<(String, String)> = s
            .run_as
            .as_ref()
            .map(crate::privileges::RunAs::identity_env)
            .unwrap_or_default();
        for (k, v) in &s.env {
            crate::environment::set(&mut set, k, v);
        }
        merged_env(&base, &set)
    }

    /// A reload was asked for (`SIGHUP`, `--watch`, `ctl reload` by client
    /// `client`): with a config file, read it again first; a file that
    /// cannot be used refuses the reload and changes nothing.
    pub(super) fn request_reload(&mut self, client: Option<u64>) {
        if (self.settings.config_file.is_some() || !self.settings.env_files.is_empty())
            && let Err(message) = self.reread_config()
        {
            let message = format!("reload refused: {message}; nothing changed");
            tracing::error!("{message}");
            self.publish(crate::events::Notice::ReloadRefused {
                reason: message.clone(),
            });
            if let Some(id) = client {
                self.reply_and_close(id, &crate::control::Reply::Error { message });
            }
            return;
        }
        self.queue.push_back(match client {
            Some(id) => Event::ReloadRequest(id),
            None => Event::Reload,
        });
    }

    /// Reads the config file (and the env files) again and makes it the
    /// settings in force for the next generation. On error, nothing
    /// changes.
    fn reread_config(&mut self) -> Result<(), String> {
        let file = self.settings.config_file.clone();
        let path = file.clone().unwrap_or_else(|| "--env-file".into());
        let mut new = crate::config_file::load(file.as_deref(), &self.settings.overrides)
            .map_err(|e| e.message)?;
        new.guard.clone_from(&self.settings.guard);
        // What baton set up once, for its whole life.
        if new.control != self.settings.control || new.cgroups != self.settings.cgroups {
            tracing::warn!(
                "{}: a new control socket or cgroup mode takes effect only when baton restarts; the rest applies from the next generation",
                path.display()
            );
            new.control.clone_from(&self.settings.control);
            new.cgroups = self.settings.cgroups;
        }
        let listeners = self.diff_listeners(&new)?;
        self.reconfigure_metrics(new.metrics.as_ref())?;
        let watch_changed = (&new.watch, &new.watch_ignore, new.watch_debounce)
            != (
                &self.settings.watch,
                &self.settings.watch_ignore,
                self.settings.watch_debounce,
            );
        let changed = crate::config_file::fingerprint(&new)
            != crate::config_file::fingerprint(&self.settings);
        if changed {
            tracing::info!(
                "{}: new settings (fingerprint {}) for the next generation",
                path.display(),
                crate::config_file::fingerprint(&new)
            );
        }
        self.listeners = listeners;
        // A count set with `ctl scale` (or TTIN/TTOU) holds across a reload
        // that leaves `workers` as the last load had it (the file or the
        // flags, else the default): only a new value replaces it. The
        // settings keep what was loaded, for the next comparison.
        let mut policy = new.policy.clone();
        let scaled = self.machine.policy().workers;
        if new.policy.workers == self.settings.policy.workers && scaled != new.policy.workers {
            tracing::info!(
                "{}: keeping {scaled} workers per generation, as scaled (`workers` is unchanged at {})",
                path.display(),
                new.policy.workers
            );
            policy.workers = scaled;
        }
        self.queue.push_back(Event::Configure(policy));
        self.settings = new;
        if watch_changed {
            self.rewatch();
        }
        Ok(())
    }

    /// The listeners of `new`: those baton has already (same name, same
    /// address) kept, the others bound now. Binds nothing for good unless
    /// all succeed.
    fn diff_listeners(&self, new: &Settings) -> Result<Vec<Arc<Bound>>, String> {
        let mut out = Vec::with_capacity(new.listeners.len());
        for (i, spec) in new.listeners.iter().enumerate() {
            let name = spec.name.clone().unwrap_or_else(|| format!("listen{i}"));
            let kept = self.listeners.iter().find(|b| {
                b.name == name
                    && (b.adopted
                        || b.spec
                            .as_ref()
                            .is_some_and(|s| s.addr.same_socket(&spec.addr)))
            });
            if let Some(b) = kept {
                out.push(Arc::clone(b));
                continue;
            }
            let b = Bound::bind(spec, i).map_err(|e| format!("listener {name:?}: {e}"))?;
            tracing::info!("listening on {} (name {}, new)", b.display, b.name);
            out.push(Arc::new(b));
        }
        for old in &self.listeners {
            if !out.iter().any(|b| Arc::ptr_eq(b, old)) {
                tracing::info!(
                    "listener {} ({}) is no longer configured: it closes once the generations that have it are gone",
                    old.name,
                    old.display
                );
            }
        }
        Ok(out)
    }

    /// Watches what the settings say now.
    fn rewatch(&mut self) {
        if let Some(mut w) = self.watcher.take() {
            let _ = self.poll.registry().deregister(&mut w.wake);
        }
        if let Some(token) = self.watch_token.take() {
            self.tokens.remove(&token);
        }
        if self.settings.watch.is_empty() {
            return;
        }
        match crate::watch::Watcher::new(
            &self.settings.watch,
            &self.settings.watch_ignore,
            self.settings.watch_debounce,
        ) {
            Ok(mut w) => {
                let token = self.token(Source::Watch);
                match self
                    .poll
                    .registry()
                    .register(&mut w.wake, token, Interest::READABLE)
                {
                    Ok(()) => {
                        self.watch_token = Some(token);
                        self.watcher = Some(w);
                    }
                    Err(e) => tracing::warn!("cannot watch the new paths: {e}"),
                }
            }
            Err(e) => tracing::warn!("cannot watch the new paths: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_is_replaced_by_key_and_added() {
        let base: Vec<OsString> = ["PATH=/bin", "RUST_LOG=warn", "RUST_LOGGING=x"]
            .iter()
            .map(OsString::from)
            .collect();
        let env = merged_env(
            &base,
            &[
                ("RUST_LOG".into(), "info".into()),
                ("NEW".into(), "1".into()),
            ],
        );
        let env: Vec<&str> = env.iter().filter_map(|e| e.to_str()).collect();
        assert_eq!(
            env,
            ["PATH=/bin", "RUST_LOGGING=x", "RUST_LOG=info", "NEW=1"]
        );
    }
}
