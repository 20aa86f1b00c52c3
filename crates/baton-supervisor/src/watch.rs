//! `--watch`: reload when watched files change *in content*.
//!
//! File-system events are debounced (`notify-debouncer-full`), then every
//! file they name is fingerprinted with BLAKE3 and compared with what it was:
//! a `touch`, or an editor saving identical bytes, changes nothing and
//! reloads nothing. Each real change is logged with the files that changed
//! and the old and new fingerprints of the whole watched set.
//!
//! A watched *file* is watched through its parent directory, because
//! editors and build tools replace files by renaming a new one over them,
//! which ends a watch on the file itself (notify#164).
//!
//! The debouncer runs on its own thread and wakes the supervisor's event
//! loop through a socket pair; everything else happens on the loop.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, new_debouncer};

/// Default quiet period before a burst of events is looked at.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(300);

/// Why watching cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("--watch {path}: {problem}")]
    Path { path: String, problem: String },
    #[error("--watch-ignore {glob:?}: {problem}")]
    Glob { glob: String, problem: String },
    #[error("cannot start watching: {0}")]
    Notify(String),
}

/// A content change of the watched set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Files whose content changed, appeared or disappeared.
    pub files: Vec<PathBuf>,
    pub before: String,
    pub after: String,
}

/// What is watched and how it looked.
#[derive(Debug)]
struct Fingerprints {
    roots: Vec<PathBuf>,
    ignore: GlobSet,
    files: BTreeMap<PathBuf, [u8; 32]>,
}

impl Fingerprints {
    fn ignored(&self, path: &Path) -> bool {
        self.ignore.is_match(path)
            || path
                .file_name()
                .is_some_and(|n| self.ignore.is_match(Path::new(n)))
    }

    fn watched(&self, path: &Path) -> bool {
        self.roots.iter().any(|r| path.starts_with(r)) && !self.ignored(path)
    }

    /// Hashes every file under the roots.
    fn scan(&mut self) {
        let roots = self.roots.clone();
        for root in roots {
            self.scan_path(&root);
        }
    }

    fn scan_path(&mut self, path: &Path) {
        if self.ignored(path) {
            return;
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => {
                if let Ok(entries) = std::fs::read_dir(path) {
                    for e in entries.flatten() {
                        self.scan_path(&e.path());
                    }
                }
            }
            Ok(_) => {
                if let Some(h) = hash_file(path) {
                    self.files.insert(path.to_path_buf(), h);
                }
            }
            Err(_) => {}
        }
    }

    /// The fingerprint of the whole set: a hash of the sorted (path, hash)
    /// pairs, shortened for logs.
    fn summary(&self) -> String {
        let mut h = blake3::Hasher::new();
        for (p, digest) in &self.files {
            h.update(p.as_os_str().as_encoded_bytes());
            h.update(&[0]);
            h.update(digest);
        }
        h.finalize().to_hex()[..12].to_owned()
    }

    /// Re-hashes the candidates (and, for directories, what is under them);
    /// returns the files whose content changed.
    fn refresh(&mut self, candidates: &BTreeSet<PathBuf>) -> Vec<PathBuf> {
        let mut changed = Vec::new();
        for path in candidates {
            if !self.watched(path) {
                continue;
            }
            // Files that were under a path that changed (a directory
            // renamed or removed) are looked at too.
            let known: Vec<PathBuf> = self
                .files
                .keys()
                .filter(|k| k.starts_with(path))
                .cloned()
                .collect();
            let mut now: BTreeMap<PathBuf, [u8; 32]> = BTreeMap::new();
            let mut scratch = Fingerprints {
                roots: vec![path.clone()],
                ignore: self.ignore.clone(),
                files: BTreeMap::new(),
            };
            scratch.scan_path(path);
            now.append(&mut scratch.files);
            for k in &known {
                if !now.contains_key(k) {
                    self.files.remove(k);
                    changed.push(k.clone());
                }
            }
            for (k, h) in now {
                if self.files.insert(k.clone(), h) != Some(h) {
                    changed.push(k);
                }
            }
        }
        changed.sort();
        changed.dedup();
        changed
    }
}

fn hash_file(path: &Path) -> Option<[u8; 32]> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Some(*h.finalize().as_bytes()),
            Ok(n) => {
                h.update(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

fn build_ignore(ignore: &[String]) -> Result<GlobSet, WatchError> {
    let mut globs = GlobSetBuilder::new();
    for g in ignore {
        let glob = Glob::new(g).map_err(|e| WatchError::Glob {
            glob: g.clone(),
            problem: e.to_string(),
        })?;
        globs.add(glob);
    }
    globs.build().map_err(|e| WatchError::Glob {
        glob: ignore.join(" "),
        problem: e.to_string(),
    })
}

fn resolve_roots(paths: &[PathBuf]) -> Result<Vec<PathBuf>, WatchError> {
    let mut roots = Vec::new();
    for p in paths {
        let abs = std::path::absolute(p).map_err(|e| WatchError::Path {
            path: p.display().to_string(),
            problem: e.to_string(),
        })?;
        if !abs.exists() && !abs.parent().is_some_and(Path::is_dir) {
            return Err(WatchError::Path {
                path: p.display().to_string(),
                problem: "neither it nor its directory exists".into(),
            });
        }
        roots.push(abs);
    }
    Ok(roots)
}

/// Checks `--watch` paths and `--watch-ignore` globs without watching.
pub fn check(paths: &[PathBuf], ignore: &[String]) -> Result<(), WatchError> {
    build_ignore(ignore)?;
    resolve_roots(paths).map(drop)
}

/// Watches paths; [`Watcher::wake`] is registered with the event loop and
/// [`Watcher::changes`] is called when it is readable.
pub struct Watcher {
    /// Readable when the debouncer has something.
    pub wake: mio::net::UnixStream,
    rx: mpsc::Receiver<BTreeSet<PathBuf>>,
    state: Fingerprints,
    // Kept alive for as long as the watcher: dropping it stops the thread.
    _debouncer: Box<dyn std::any::Any + Send>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("roots", &self.state.roots)
            .field("files", &self.state.files.len())
            .finish_non_exhaustive()
    }
}

impl Watcher {
    /// Starts watching `paths` (files or directories, recursively),
    /// skipping paths that match any of `ignore` (globs matched against the
    /// whole path and against the file name).
    pub fn new(
        paths: &[PathBuf],
        ignore: &[String],
        debounce: Duration,
    ) -> Result<Self, WatchError> {
        let ignore = build_ignore(ignore)?;
        let roots = resolve_roots(paths)?;
        let (wake_read, mut wake_write) =
            mio::net::UnixStream::pair().map_err(|e| WatchError::Notify(e.to_string()))?;
        let (tx, rx) = mpsc::channel();
        let mut debouncer = new_debouncer(debounce, None, move |result: DebounceEventResult| {
            let mut paths = BTreeSet::new();
            match result {
                Ok(events) => {
                    for ev in events {
                        paths.extend(ev.event.paths.iter().cloned());
                    }
                }
                Err(errors) => {
                    for e in errors {
                        tracing::warn!("watch: {e}");
                        paths.extend(e.paths.iter().cloned());
                    }
                }
            }
            if !paths.is_empty() && tx.send(paths).is_ok() {
                // A full socket buffer already means "wake up".
                let _ = wake_write.write(&[1]);
            }
        })
        .map_err(|e| WatchError::Notify(e.to_string()))?;
        for root in &roots {
            // Directories recursively; files through their directory.
            let (target, mode) = if root.is_dir() {
                (root.clone(), RecursiveMode::Recursive)
            } else {
                (
                    root.parent()
                        .map_or_else(|| root.clone(), Path::to_path_buf),
                    RecursiveMode::NonRecursive,
                )
            };
            debouncer
                .watch(&target, mode)
                .map_err(|e| WatchError::Path {
                    path: root.display().to_string(),
                    problem: e.to_string(),
                })?;
        }
        let mut state = Fingerprints {
            roots,
            ignore,
            files: BTreeMap::new(),
        };
        state.scan();
        tracing::info!(
            "watching {} file(s) under {} (fingerprint {})",
            state.files.len(),
            state
                .roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            state.summary()
        );
        Ok(Self {
            wake: wake_read,
            rx,
            state,
            _debouncer: Box::new(debouncer),
        })
    }

    /// Takes what the debouncer reported; `Some` if content changed.
    pub fn changes(&mut self) -> Option<Change> {
        let mut buf = [0u8; 256];
        while matches!(self.wake.read(&mut buf), Ok(n) if n > 0) {}
        let mut candidates = BTreeSet::new();
        while let Ok(paths) = self.rx.try_recv() {
            candidates.extend(paths);
        }
        if candidates.is_empty() {
            return None;
        }
        let before = self.state.summary();
        let files = self.state.refresh(&candidates);
        if files.is_empty() {
            tracing::debug!(
                "watch: events without a content change ({} path(s))",
                candidates.len()
            );
            return None;
        }
        Some(Change {
            files,
            before,
            after: self.state.summary(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(roots: Vec<PathBuf>, ignore: &[&str]) -> Fingerprints {
        let mut b = GlobSetBuilder::new();
        for g in ignore {
            b.add(Glob::new(g).expect("glob"));
        }
        let mut f = Fingerprints {
            roots,
            ignore: b.build().expect("set"),
            files: BTreeMap::new(),
        };
        f.scan();
        f
    }

    #[test]
    fn only_content_changes_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.txt");
        let b = dir.path().join("sub").join("b.txt");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(&a, "one").expect("write");
        std::fs::write(&b, "two").expect("write");
        let mut f = fp(vec![dir.path().to_path_buf()], &[]);
        assert_eq!(f.files.len(), 2);
        let s0 = f.summary();
        // Same bytes again (a touch, an identical save): nothing changed.
        std::fs::write(&a, "one").expect("write");
        let cands: BTreeSet<PathBuf> = [a.clone()].into();
        assert!(f.refresh(&cands).is_empty());
        assert_eq!(f.summary(), s0);
        // New content.
        std::fs::write(&a, "uno").expect("write");
        assert_eq!(f.refresh(&cands), vec![a.clone()]);
        assert_ne!(f.summary(), s0);
        // A directory removed: its files count as changed.
        std::fs::remove_dir_all(dir.path().join("sub")).expect("rm");
        let cands: BTreeSet<PathBuf> = [dir.path().join("sub")].into();
        assert_eq!(f.refresh(&cands), vec![b]);
    }

    #[test]
    fn ignored_paths_never_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keep = dir.path().join("app.py");
        let skip = dir.path().join("app.pyc");
        std::fs::write(&keep, "x").expect("write");
        std::fs::write(&skip, "x").expect("write");
        let mut f = fp(vec![dir.path().to_path_buf()], &["*.pyc"]);
        assert_eq!(f.files.keys().collect::<Vec<_>>(), vec![&keep]);
        std::fs::write(&skip, "y").expect("write");
        assert!(f.refresh(&[skip].into()).is_empty());
        // Paths outside the roots are not ours either.
        assert!(
            f.refresh(&[PathBuf::from("/etc/hostname")].into())
                .is_empty()
        );
    }

    #[test]
    fn a_watched_file_survives_being_replaced_by_rename() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("app");
        std::fs::write(&bin, "v1").expect("write");
        let mut w = Watcher::new(std::slice::from_ref(&bin), &[], Duration::from_millis(50))
            .expect("watch");
        for (i, content) in ["v2", "v3"].iter().enumerate() {
            let tmp = dir.path().join(format!(".app.tmp{i}"));
            std::fs::write(&tmp, content).expect("write");
            std::fs::rename(&tmp, &bin).expect("rename");
            // Wait (bounded) for the debounced event to arrive.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let change = loop {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no change seen for {content}"
                );
                let mut fds = [rustix::event::PollFd::new(
                    &w.wake,
                    rustix::event::PollFlags::IN,
                )];
                let _ = rustix::event::poll(
                    &mut fds,
                    Some(&rustix::time::Timespec {
                        tv_sec: 1,
                        tv_nsec: 0,
                    }),
                );
                if let Some(c) = w.changes() {
                    break c;
                }
            };
            assert_eq!(change.files, vec![std::path::absolute(&bin).expect("abs")]);
            assert_ne!(change.before, change.after);
        }
    }
}
