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
//! Symlinks are followed, and swapping one is a change: a file reached
//! through links (a ConfigMap volume's `baton.toml -> ..data/baton.toml`,
//! a deploy's `current/app.toml`) is looked at again on every event, and
//! the directory of every link on its way is watched too, since the event
//! of a swap names the link, not the file (`links.rs`). A watched directory
//! behind a link that now leads elsewhere is watched and hashed anew. In a
//! watched directory, the kubelet's hidden `..`-prefixed entries are
//! skipped: the files the volume shows are what counts, so one update is
//! one change, under the file's own name.
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

mod links;
use links::{Resolution, resolve};

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
    /// What the user named, absolute (symlinks not resolved: a swap of a
    /// link is what is to be seen).
    roots: Vec<PathBuf>,
    ignore: GlobSet,
    files: BTreeMap<PathBuf, [u8; 32]>,
    /// Where each root leads now.
    resolved: BTreeMap<PathBuf, Resolution>,
    /// The files known that are reached through a symlink (a root behind
    /// a link, or a symlink inside a watched directory), with where they
    /// lead: looked at again on every event, since the event that changes
    /// them names a link on their way, not them.
    linked: BTreeMap<PathBuf, Resolution>,
}

/// Whether `name` is one of the hidden entries the kubelet's atomic writer
/// keeps in a ConfigMap, Secret or projected volume: the timestamped
/// directories (`..2024_05_01_10_00_00.123456789`), `..data` and
/// `..data_tmp`. The files the volume shows are symlinks through
/// `..data`, and are what is fingerprinted; counting the hidden copies as
/// well would report every update twice (the new directory, then the old
/// one's removal), and maybe as two reloads.
fn atomic_writer_internal(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().starts_with(b"..") && name != ".."
}

impl Fingerprints {
    fn new(roots: Vec<PathBuf>, ignore: GlobSet) -> Self {
        let resolved = roots.iter().map(|r| (r.clone(), resolve(r))).collect();
        Self {
            roots,
            ignore,
            files: BTreeMap::new(),
            resolved,
            linked: BTreeMap::new(),
        }
    }

    fn ignored(&self, path: &Path) -> bool {
        self.ignore.is_match(path)
            || path
                .file_name()
                .is_some_and(|n| self.ignore.is_match(Path::new(n)))
    }

    /// Whether the root `root` is a directory (through any link).
    fn is_dir_root(&self, root: &Path) -> bool {
        self.resolved.get(root).is_some_and(|r| r.target.is_dir())
    }

    /// The path to look at again for an event about `path`, if it is
    /// watched: itself under a directory root; the root itself when
    /// `path` is where a file root leads.
    fn watched(&self, path: &Path) -> Option<PathBuf> {
        for root in &self.roots {
            if self.is_dir_root(root) {
                if let Ok(below) = path.strip_prefix(root) {
                    let internal = below.components().any(|c| {
                        matches!(c, std::path::Component::Normal(n) if atomic_writer_internal(n))
                    });
                    if !internal && !self.ignored(path) {
                        return Some(path.to_path_buf());
                    }
                }
            } else if (path == root.as_path()
                || self.resolved.get(root).is_some_and(|r| r.target == path))
                && !self.ignored(root)
            {
                return Some(root.clone());
            }
        }
        None
    }

    /// Hashes every file under the roots.
    fn scan(&mut self) {
        let roots = self.roots.clone();
        for root in roots {
            self.scan_path(&root, true);
        }
    }

    /// Hashes `path`: a file, or every file under a directory. A root is
    /// followed if it is a symlink to a directory; below it, symlinks to
    /// files are followed and symlinks to directories are not descended.
    fn scan_path(&mut self, path: &Path, root: bool) {
        if self.ignored(path) {
            return;
        }
        let meta = if root {
            std::fs::metadata(path)
        } else {
            std::fs::symlink_metadata(path)
        };
        match meta {
            Ok(m) if m.is_dir() => {
                if let Ok(entries) = std::fs::read_dir(path) {
                    for e in entries.flatten() {
                        if !atomic_writer_internal(&e.file_name()) {
                            self.scan_path(&e.path(), false);
                        }
                    }
                }
            }
            Ok(m) => {
                let Some(h) = hash_file(path) else {
                    return;
                };
                self.files.insert(path.to_path_buf(), h);
                if root || m.file_type().is_symlink() {
                    let r = resolve(path);
                    if r.links.is_empty() {
                        self.linked.remove(path);
                    } else {
                        self.linked.insert(path.to_path_buf(), r);
                    }
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

    /// Re-hashes what the events about `candidates` may have changed (and,
    /// for directories, what is under them), and every file reached through
    /// a symlink; returns the files whose content changed.
    fn refresh(&mut self, candidates: &BTreeSet<PathBuf>) -> Vec<PathBuf> {
        let mut todo: BTreeSet<PathBuf> =
            candidates.iter().filter_map(|p| self.watched(p)).collect();
        todo.extend(self.linked.keys().cloned());
        // A root behind a link that now leads elsewhere (`current` swapped
        // to another release) is looked at whole.
        for root in self.roots.clone() {
            let now = resolve(&root);
            if self.resolved.get(&root) != Some(&now) {
                todo.insert(root.clone());
                self.resolved.insert(root, now);
            }
        }
        let mut changed = Vec::new();
        for path in &todo {
            // Files that were under a path that changed (a directory
            // renamed or removed) are looked at too.
            let known: Vec<PathBuf> = self
                .files
                .keys()
                .filter(|k| k.starts_with(path))
                .cloned()
                .collect();
            let mut scratch = Fingerprints::new(vec![path.clone()], self.ignore.clone());
            scratch.scan_path(path, self.roots.contains(path));
            for k in &known {
                if !scratch.files.contains_key(k) {
                    self.files.remove(k);
                    self.linked.remove(k);
                    changed.push(k.clone());
                }
            }
            for (k, h) in scratch.files {
                if self.files.insert(k.clone(), h) != Some(h) {
                    changed.push(k.clone());
                }
                match scratch.linked.remove(&k) {
                    Some(r) => {
                        self.linked.insert(k, r);
                    }
                    None => {
                        self.linked.remove(&k);
                    }
                }
            }
        }
        changed.sort();
        changed.dedup();
        changed
    }

    /// The directories to watch: each directory root recursively (by the
    /// path given, with the real directory it leads to now); the directory
    /// each file root's file is in; and the directory of every link on
    /// the way to a root or a linked file, and of where a linked file
    /// leads, unless a recursive watch already covers it.
    fn wanted(&self) -> BTreeMap<PathBuf, Wanted> {
        let mut out = BTreeMap::new();
        let mut covered = Vec::new();
        let mut dirs = BTreeSet::new();
        for root in &self.roots {
            let Some(r) = self.resolved.get(root) else {
                continue;
            };
            if r.target.is_dir() {
                out.insert(
                    root.clone(),
                    Wanted {
                        recursive: true,
                        leads_to: r.target.clone(),
                    },
                );
                covered.push(r.target.clone());
            } else if let Some(parent) = r.target.parent() {
                dirs.insert(parent.to_path_buf());
            }
            dirs.extend(
                r.links
                    .iter()
                    .filter_map(|l| l.parent().map(Path::to_path_buf)),
            );
        }
        for r in self.linked.values() {
            dirs.extend(
                r.links
                    .iter()
                    .filter_map(|l| l.parent().map(Path::to_path_buf)),
            );
            if let Some(parent) = r.target.parent() {
                dirs.insert(parent.to_path_buf());
            }
        }
        for d in dirs {
            if covered.iter().any(|c| d.starts_with(c)) || out.contains_key(&d) {
                continue;
            }
            out.insert(
                d.clone(),
                Wanted {
                    recursive: false,
                    leads_to: d,
                },
            );
        }
        out
    }
}

/// One watch the watcher should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wanted {
    recursive: bool,
    /// The real directory the watched path leads to: a recursive watch of a
    /// root whose link now leads elsewhere is made again.
    leads_to: PathBuf,
}

/// An event that cannot mean new content: an open, a read, a close after
/// reading (a close after writing follows the writes, and is kept).
fn is_read_only(kind: notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    matches!(kind, EventKind::Access(a) if a != AccessKind::Close(AccessMode::Write))
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

type Debouncer = notify_debouncer_full::Debouncer<
    notify::RecommendedWatcher,
    notify_debouncer_full::RecommendedCache,
>;

/// Watches paths; [`Watcher::wake`] is registered with the event loop and
/// [`Watcher::changes`] is called when it is readable.
pub struct Watcher {
    /// Readable when the debouncer has something.
    pub wake: mio::net::UnixStream,
    rx: mpsc::Receiver<BTreeSet<PathBuf>>,
    state: Fingerprints,
    // Dropping it stops the debouncer's thread.
    debouncer: Debouncer,
    /// The watches held, by the path given to the debouncer.
    watching: BTreeMap<PathBuf, Wanted>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("roots", &self.state.roots)
            .field("files", &self.state.files.len())
            .field("watching", &self.watching.keys().collect::<Vec<_>>())
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
        let debouncer = new_debouncer(debounce, None, move |result: DebounceEventResult| {
            let mut paths = BTreeSet::new();
            match result {
                Ok(events) => {
                    // Opening and reading a file changes nothing, and the
                    // watcher's own hashing of a linked file (re-read on
                    // every event) would otherwise wake it again, forever.
                    for ev in events.iter().filter(|ev| !is_read_only(ev.event.kind)) {
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
        let mut w = Self {
            wake: wake_read,
            rx,
            state: Fingerprints::new(roots, ignore),
            debouncer,
            watching: BTreeMap::new(),
        };
        // Watch before hashing, so that no change falls between the two;
        // the links found by the scan are watched after it.
        w.rewatch().map_err(|(path, e)| WatchError::Path {
            path: path.display().to_string(),
            problem: e.to_string(),
        })?;
        w.state.scan();
        if let Err((path, e)) = w.rewatch() {
            tracing::warn!("watch: cannot watch {}: {e}", path.display());
        }
        if w.state.files.is_empty() {
            tracing::warn!(
                "--watch: nothing to watch yet under {} (it holds no file); baton reloads once files appear there",
                w.state
                    .roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        tracing::info!(
            "watching {} file(s) under {} (fingerprint {})",
            w.state.files.len(),
            w.state
                .roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            w.state.summary()
        );
        tracing::debug!(
            "watch: watching {}",
            w.watching
                .iter()
                .map(|(p, how)| format!(
                    "{}{}",
                    p.display(),
                    if how.recursive { " (recursive)" } else { "" }
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(w)
    }

    /// Makes the watches held what the fingerprints want now: a link that
    /// leads elsewhere has its new directories watched and the old ones
    /// let go. Goes on past a failure and returns the first.
    fn rewatch(&mut self) -> Result<(), (PathBuf, notify::Error)> {
        let wanted = self.state.wanted();
        let stale: Vec<PathBuf> = self
            .watching
            .iter()
            .filter(|(p, how)| wanted.get(*p) != Some(how))
            .map(|(p, _)| p.clone())
            .collect();
        for p in stale {
            self.watching.remove(&p);
            // A directory that is gone took its watch with it.
            let _ = self.debouncer.unwatch(&p);
        }
        let mut first = None;
        for (p, how) in wanted {
            if self.watching.contains_key(&p) {
                continue;
            }
            let mode = if how.recursive {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            match self.debouncer.watch(&p, mode) {
                Ok(()) => {
                    self.watching.insert(p, how);
                }
                Err(e) => {
                    first.get_or_insert((p, e));
                }
            }
        }
        first.map_or(Ok(()), Err)
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
        if let Err((path, e)) = self.rewatch() {
            tracing::warn!("watch: cannot watch {}: {e}", path.display());
        }
        if files.is_empty() {
            let shown: Vec<String> = candidates
                .iter()
                .take(5)
                .map(|p| p.display().to_string())
                .collect();
            tracing::debug!(
                "watch: events without a content change ({} path(s): {}{})",
                candidates.len(),
                shown.join(", "),
                if candidates.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
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
        let mut f = Fingerprints::new(roots, b.build().expect("set"));
        f.scan();
        f
    }

    /// A ConfigMap volume as the kubelet's atomic writer lays it out and
    /// updates it (kubernetes `pkg/volume/util/atomic_writer.go`).
    struct Volume {
        dir: PathBuf,
        version: u32,
    }

    impl Volume {
        fn new(dir: &Path, files: &[(&str, &str)]) -> Self {
            let mut v = Self {
                dir: dir.to_path_buf(),
                version: 0,
            };
            let old = v.update(files);
            assert!(old.is_none());
            v
        }

        /// Writes a new timestamped directory, renames a new `..data` over
        /// the old one, adds the links of new names and removes those of
        /// names gone; returns the old directory, still there.
        fn update(&mut self, files: &[(&str, &str)]) -> Option<PathBuf> {
            use std::os::unix::fs::symlink;
            self.version += 1;
            let ts = format!("..2026_01_01_00_00_0{}.12345", self.version);
            let new = self.dir.join(&ts);
            std::fs::create_dir(&new).expect("mkdir");
            for (name, content) in files {
                std::fs::write(new.join(name), content).expect("write");
            }
            let data = self.dir.join("..data");
            let old = std::fs::read_link(&data).ok().map(|t| self.dir.join(t));
            let tmp = self.dir.join("..data_tmp");
            symlink(&ts, &tmp).expect("link");
            std::fs::rename(&tmp, &data).expect("rename");
            for (name, _) in files {
                let visible = self.dir.join(name);
                if std::fs::symlink_metadata(&visible).is_err() {
                    symlink(format!("..data/{name}"), &visible).expect("link");
                }
            }
            for e in std::fs::read_dir(&self.dir).expect("read_dir").flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if !name.starts_with("..") && !files.iter().any(|(n, _)| *n == name) {
                    std::fs::remove_file(e.path()).expect("rm");
                }
            }
            old
        }
    }

    /// Waits (bounded) for the watcher to report a change.
    fn wait_change(w: &mut Watcher, what: &str) -> Change {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "no change seen for {what}"
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
                return c;
            }
        }
    }

    /// The paths an update of `v` makes events for, as inotify names them.
    fn swap_events(v: &Volume) -> BTreeSet<PathBuf> {
        let ts = std::fs::read_link(v.dir.join("..data")).expect("..data");
        [
            v.dir.join(&ts),
            v.dir.join(&ts).join("baton.toml"),
            v.dir.join("..data_tmp"),
            v.dir.join("..data"),
        ]
        .into()
    }

    #[test]
    fn a_configmap_update_is_one_change_of_the_file_it_shows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().canonicalize().expect("canonical");
        let mut v = Volume::new(&d, &[("baton.toml", "workers = 1")]);
        let file = d.join("baton.toml");
        // Watched as a directory and as the file: the same.
        for (round, root) in [d.clone(), file.clone()].into_iter().enumerate() {
            let mut f = fp(vec![root.clone()], &[]);
            let next = format!("workers = {}", round + 2);
            assert_eq!(
                f.files.keys().collect::<Vec<_>>(),
                vec![&file],
                "only the file the volume shows, not its hidden copy ({root:?})"
            );
            let old = v.update(&[("baton.toml", &next)]).expect("old dir");
            assert_eq!(f.refresh(&swap_events(&v)), vec![file.clone()], "{root:?}");
            // The kubelet removes the old directory last; a slow one may do
            // it after the change was handled: no second change.
            std::fs::remove_dir_all(&old).expect("rm old");
            let gone: BTreeSet<PathBuf> = [old.clone(), old.join("baton.toml")].into();
            assert!(f.refresh(&gone).is_empty(), "{root:?}");
            // The same content again (a re-sync): nothing changed.
            let old = v.update(&[("baton.toml", &next)]).expect("old dir");
            std::fs::remove_dir_all(&old).expect("rm old");
            let mut events = swap_events(&v);
            events.insert(old);
            assert!(f.refresh(&events).is_empty(), "{root:?}");
        }
    }

    #[test]
    fn a_configmap_key_added_or_removed_is_a_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().canonicalize().expect("canonical");
        let mut v = Volume::new(&d, &[("baton.toml", "x")]);
        let mut f = fp(vec![d.clone()], &[]);
        v.update(&[("baton.toml", "x"), ("extra.toml", "y")]);
        let mut events = swap_events(&v);
        events.insert(d.join("extra.toml"));
        assert_eq!(f.refresh(&events), vec![d.join("extra.toml")]);
        v.update(&[("extra.toml", "y")]);
        let mut events = swap_events(&v);
        events.insert(d.join("baton.toml"));
        assert_eq!(f.refresh(&events), vec![d.join("baton.toml")]);
        assert_eq!(
            f.files.keys().collect::<Vec<_>>(),
            vec![&d.join("extra.toml")]
        );
    }

    #[test]
    fn regression_a_symlink_swap_beside_a_watched_file_reloaded_nothing() {
        // `--watch /etc/baton/baton.toml` on a ConfigMap volume: the update
        // renames `..data`, and no event names baton.toml. The watcher used
        // to look only at the paths the events named, and missed it.
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().canonicalize().expect("canonical");
        let mut v = Volume::new(&d, &[("baton.toml", "workers = 1")]);
        let file = d.join("baton.toml");
        let mut w = Watcher::new(std::slice::from_ref(&file), &[], Duration::from_millis(50))
            .expect("watch");
        for n in 2..=3 {
            let old = v.update(&[("baton.toml", &format!("workers = {n}"))]);
            if let Some(old) = old {
                std::fs::remove_dir_all(old).expect("rm old");
            }
            let change = wait_change(&mut w, &format!("update {n}"));
            assert_eq!(change.files, vec![file.clone()]);
        }
    }

    #[test]
    fn regression_hashing_a_linked_file_woke_the_watcher_forever() {
        // The watcher re-reads every linked file on each event, and that
        // read (an open and a close, as inotify reports them) was taken for
        // an event: a ConfigMap pod looked at its files every debounce
        // period, for ever.
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().canonicalize().expect("canonical");
        let mut v = Volume::new(&d, &[("baton.toml", "workers = 1")]);
        let file = d.join("baton.toml");
        let mut w = Watcher::new(std::slice::from_ref(&file), &[], Duration::from_millis(20))
            .expect("watch");
        v.update(&[("baton.toml", "workers = 2")]);
        wait_change(&mut w, "the update");
        // Nothing else happens over 50 debounce periods (a bounded window
        // is the only way to see that nothing comes): no change, and at most
        // a trailing wake-up or two from the update's own last events,
        // where the bug woke the watcher every period (about 50 times).
        let end = std::time::Instant::now() + Duration::from_secs(1);
        let mut wakes = 0;
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let mut fds = [rustix::event::PollFd::new(
                &w.wake,
                rustix::event::PollFlags::IN,
            )];
            let timeout = rustix::time::Timespec {
                tv_sec: i64::try_from(left.as_secs()).unwrap_or(1),
                tv_nsec: i64::from(left.subsec_nanos()),
            };
            if rustix::event::poll(&mut fds, Some(&timeout)).expect("poll") == 0 {
                break;
            }
            wakes += 1;
            let change = w.changes();
            assert!(
                change.is_none(),
                "a change with nothing changed: {change:?}"
            );
        }
        assert!(
            wakes <= 2,
            "woken {wakes} times in 1 s with nothing changed"
        );
    }

    #[test]
    fn a_watched_directory_behind_a_swapped_link_is_followed() {
        // A symlink deploy: `--watch current`, then `current` renamed to
        // lead to the next release, whose files are then edited in place.
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().canonicalize().expect("canonical");
        for r in ["1", "2"] {
            std::fs::create_dir_all(d.join("releases").join(r)).expect("mkdir");
            std::fs::write(d.join("releases").join(r).join("app.py"), r).expect("write");
        }
        symlink("releases/1", d.join("current")).expect("link");
        let current = d.join("current");
        let mut w = Watcher::new(
            std::slice::from_ref(&current),
            &[],
            Duration::from_millis(50),
        )
        .expect("watch");
        symlink("releases/2", d.join("current.new")).expect("link");
        std::fs::rename(d.join("current.new"), &current).expect("swap");
        let change = wait_change(&mut w, "the swap of current");
        assert_eq!(change.files, vec![current.join("app.py")]);
        // The new release is what is watched now, not the old one.
        std::fs::write(d.join("releases/1/app.py"), "old, edited").expect("write");
        std::fs::write(d.join("releases/2/app.py"), "2, edited").expect("write");
        let change = wait_change(&mut w, "an edit in the new release");
        assert_eq!(change.files, vec![current.join("app.py")]);
    }

    #[test]
    fn a_watched_symlink_sees_its_target_edited_in_another_directory() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().canonicalize().expect("canonical");
        std::fs::create_dir_all(d.join("etc")).expect("mkdir");
        std::fs::create_dir_all(d.join("shared")).expect("mkdir");
        std::fs::write(d.join("shared/app.toml"), "1").expect("write");
        symlink(d.join("shared/app.toml"), d.join("etc/app.toml")).expect("link");
        let file = d.join("etc/app.toml");
        let mut w = Watcher::new(std::slice::from_ref(&file), &[], Duration::from_millis(50))
            .expect("watch");
        std::fs::write(d.join("shared/app.toml"), "2").expect("write");
        let change = wait_change(&mut w, "an edit of the target");
        assert_eq!(change.files, vec![file]);
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
            let change = wait_change(&mut w, content);
            assert_eq!(change.files, vec![std::path::absolute(&bin).expect("abs")]);
            assert_ne!(change.before, change.after);
        }
    }
}
