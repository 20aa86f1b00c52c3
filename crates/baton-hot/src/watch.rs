//! The watcher: reloads a module when its file changes in content.
//!
//! It watches directories, never single files: an editor's or compiler's
//! save by rename replaces the file, and a watch on the old file would die
//! with it. Events are debounced (`HostConfig::debounce`); then each loaded
//! module among the changed paths is reloaded, which compares fingerprints
//! first, so a `touch` or an identical save does nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};

use crate::error::{LoadError, Outcome, WatchError};
use crate::host::Host;
use crate::world::World;

/// Watches module directories while it lives; drop it to stop.
pub struct Watcher {
    debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
    dirs: BTreeSet<PathBuf>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("dirs", &self.dirs)
            .finish_non_exhaustive()
    }
}

impl Watcher {
    /// Watches one more directory (its loaded modules are reloaded on
    /// change).
    pub fn add_dir(&mut self, dir: impl AsRef<Path>) -> Result<(), WatchError> {
        let dir = std::fs::canonicalize(dir.as_ref()).map_err(|e| WatchError {
            path: dir.as_ref().to_owned(),
            reason: e.to_string(),
        })?;
        if self.dirs.contains(&dir) {
            return Ok(());
        }
        self.debouncer
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|e| WatchError {
                path: dir.clone(),
                reason: e.to_string(),
            })?;
        self.dirs.insert(dir);
        Ok(())
    }

    /// The directories watched.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.dirs.iter().map(PathBuf::as_path)
    }
}

impl<W: World> Host<W> {
    /// Starts watching `dirs` and the directories of the modules loaded so
    /// far. A loaded module whose file changes in content is reloaded (see
    /// [`Host::reload`]); other files are ignored.
    pub fn watch(&self, dirs: &[PathBuf]) -> Result<Watcher, WatchError> {
        // The callback holds the host weakly: the watcher must not keep
        // the host alive, and the host may be dropped while it runs.
        let weak = Arc::downgrade(&self.inner);
        let debouncer = new_debouncer(
            self.config().debounce,
            None,
            move |result: DebounceEventResult| {
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let host = Host { inner };
                let mut paths = BTreeSet::new();
                match result {
                    Ok(events) => {
                        for ev in events {
                            paths.extend(ev.event.paths.iter().cloned());
                        }
                    }
                    Err(errors) => {
                        for e in errors {
                            tracing::warn!("hot modules: watch error: {e}");
                            paths.extend(e.paths.iter().cloned());
                        }
                    }
                }
                for path in paths {
                    if host.module(&path).is_none() {
                        if !path.exists() && known(&host, &path) {
                            tracing::warn!(
                                "hot modules: {} was removed; its current version keeps serving",
                                path.display()
                            );
                        }
                        continue;
                    }
                    match host.reload_path(&path) {
                        Ok(Outcome::Swapped(_) | Outcome::Unchanged)
                        | Err(LoadError::Rejected(_)) => {} // logged by the host
                        Err(e) => tracing::warn!("hot modules: {e}"),
                    }
                }
            },
        )
        .map_err(|e| WatchError {
            path: PathBuf::new(),
            reason: e.to_string(),
        })?;
        let mut watcher = Watcher {
            debouncer,
            dirs: BTreeSet::new(),
        };
        let mut all: Vec<PathBuf> = dirs.to_vec();
        for m in self.status().modules {
            if let Some(parent) = m.path.parent() {
                all.push(parent.to_owned());
            }
        }
        for d in all {
            watcher.add_dir(d)?;
        }
        Ok(watcher)
    }
}

/// Whether `path` (which no longer exists, so cannot be canonicalized) is
/// the path of a loaded module.
fn known<W: World>(host: &Host<W>, path: &Path) -> bool {
    host.status().modules.iter().any(|m| m.path == path)
}
