//! A cgroup (v2) of its own for each generation, where baton may make one.
//!
//! A worker's process group catches what it starts, unless a descendant
//! leaves the group (`setsid`, a daemonizing server, a shell script's job
//! control). A cgroup catches everything: a process cannot leave it without
//! the privilege to write elsewhere in the hierarchy. So when baton's own
//! cgroup is writable (root in a container, or a systemd unit with
//! `Delegate=yes`), baton makes `baton.<pid>/` beside itself and
//! `baton.<pid>/gen-<N>/` for each generation; each worker is born in its
//! generation's cgroup (`clone3` with `CLONE_INTO_CGROUP`, Linux 5.7), so
//! nothing it starts is ever outside. (Moving a process in afterwards costs
//! an RCU grace period per move, which took seconds on a loaded machine.) When a generation
//! is gone, `cgroup.kill` ends whatever its workers left behind, and the
//! guard (see [`crate::guard`]) kills the whole `baton.<pid>/` subtree if
//! baton itself is killed.
//!
//! No controller is enabled: these cgroups only group processes. Where
//! baton cannot write its cgroup (an unprivileged user without delegation,
//! cgroup v1 only, no `/proc`), it says so at debug level and relies on
//! process groups alone.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::CgroupMode;

/// baton's subtree of the cgroup hierarchy.
#[derive(Debug)]
pub struct Cgroups {
    /// `<baton's cgroup>/baton.<pid>`.
    root: PathBuf,
}

/// One generation's cgroup, for workers to be born in.
#[derive(Debug)]
pub struct GenCgroup {
    dir: PathBuf,
}

impl GenCgroup {
    /// The directory, opened, to start a worker in (`clone3` with
    /// `CLONE_INTO_CGROUP`). Opened per worker, so baton holds no
    /// descriptor for a generation between spawns.
    pub fn open(&self) -> std::io::Result<File> {
        File::open(&self.dir)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Why baton could not make cgroups (a debug-level explanation, not an
/// error: process groups still work).
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("no cgroup v2 hierarchy is mounted")]
    NoHierarchy,
    #[error("cannot tell baton's cgroup from /proc/self/cgroup: {0}")]
    OwnCgroup(String),
    #[error("--cgroups off")]
    Off,
    #[error(
        "{path} is not delegated to baton (systemd: Delegate=yes); --cgroups on uses it anyway"
    )]
    NotDelegated { path: String },
    #[error("cannot create {path}: {source}")]
    Create {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Makes `dir/base` (or `dir/base.2`, `.3`, ... when taken) for this baton
/// alone. A directory of that name left by an earlier baton with this pid
/// is empty and is removed and made again; one that is still populated
/// belongs to a live baton with the same pid in another pid namespace
/// (every container's baton is PID 1, and containers sharing the host's
/// cgroup tree, as `docker --cgroupns=host` or a test's `unshare --pid`,
/// see one another's): sharing it would let each one's stop and guard kill
/// the other's workers, so the next name is taken.
fn claim(dir: &Path, base: &str) -> Result<PathBuf, (PathBuf, std::io::Error)> {
    const TRIES: u32 = 64;
    for k in 1..=TRIES {
        let path = if k == 1 {
            dir.join(base)
        } else {
            dir.join(format!("{base}.{k}"))
        };
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if remove_if_empty(&path) && std::fs::create_dir(&path).is_ok() {
                    return Ok(path);
                }
            }
            Err(e) => return Err((path, e)),
        }
    }
    Err((
        dir.join(format!("{base}.{TRIES}")),
        std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{TRIES} cgroups named {base}* are all in use"),
        ),
    ))
}

/// Removes a cgroup subtree that holds no process (the kernel refuses to
/// remove a populated cgroup, so a live one is left alone); true if gone.
fn remove_if_empty(path: &Path) -> bool {
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                // A child's own children are never made (gen-N is a leaf).
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
    std::fs::remove_dir(path).is_ok()
}

impl Cgroups {
    /// Creates `baton.<pid>/` in baton's own cgroup, if `mode` allows it
    /// there and baton can.
    pub fn setup(mode: CgroupMode) -> Result<Self, Unavailable> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|_| Unavailable::NoHierarchy)?;
        let (mount_root, mount_point) =
            cgroup2_mount(&mountinfo).ok_or(Unavailable::NoHierarchy)?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| Unavailable::OwnCgroup(e.to_string()))?;
        let own = own_cgroup(&own)
            .ok_or_else(|| Unavailable::OwnCgroup("no cgroup v2 entry (\"0::PATH\")".into()))?;
        // The path is relative to the hierarchy's root; the mount may show
        // a subtree of it (a cgroup namespace, a bind mount).
        let rel = Path::new(own).strip_prefix(&mount_root).map_or_else(
            |_| own.trim_start_matches('/').to_owned(),
            |p| p.display().to_string(),
        );
        let mine = mount_point.join(&rel);
        match mode {
            CgroupMode::Off => return Err(Unavailable::Off),
            CgroupMode::On => {}
            CgroupMode::Auto => {
                if !rel.is_empty() && !delegated(&mine) {
                    return Err(Unavailable::NotDelegated {
                        path: mine.display().to_string(),
                    });
                }
            }
        }
        let root =
            claim(&mine, &format!("baton.{}", std::process::id())).map_err(|(path, source)| {
                Unavailable::Create {
                    path: path.display().to_string(),
                    source,
                }
            })?;
        Ok(Self { root })
    }

    /// The subtree a previous image of this baton made (same pid).
    pub fn adopt(root: PathBuf) -> Self {
        Self { root }
    }

    /// The subtree the guard kills if baton dies.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates generation `g`'s cgroup.
    pub fn generation(&self, g: u64) -> std::io::Result<GenCgroup> {
        let dir = self.root.join(format!("gen-{g}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        Ok(GenCgroup { dir })
    }

    /// Removes baton's subtree, killing anything still in it first (at the
    /// end of a stop, when every worker has exited).
    pub fn remove(&self) {
        kill_and_remove(&self.root);
    }
}

/// Ends a generation's cgroup without waiting: `cgroup.kill`, then an
/// attempt to remove it. `false` when processes are still on their way out
/// (the caller tries [`try_remove`] again later).
pub fn kill_and_try_remove(dir: &Path) -> bool {
    match kill(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
        Err(e) => tracing::debug!("cannot kill cgroup {}: {e}", dir.display()),
    }
    try_remove(dir)
}

/// Removes an empty cgroup; `false` while processes are still in it.
pub fn try_remove(dir: &Path) -> bool {
    match std::fs::remove_dir(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => false,
        Err(e) => {
            tracing::debug!("cannot remove cgroup {}: {e}", dir.display());
            true
        }
    }
}

/// `SIGKILL` for every process in `dir` and below (`cgroup.kill`), then
/// the directories themselves, deepest first, once they are empty (waiting
/// at most a second: killed processes take a moment to go). Blocks: only
/// for baton's last moments and the guard.
pub fn kill_and_remove(dir: &Path) {
    if let Err(e) = kill(dir) {
        if e.kind() == std::io::ErrorKind::NotFound {
            return;
        }
        tracing::debug!("cannot kill cgroup {}: {e}", dir.display());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while populated(dir) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    remove_tree(dir);
}

/// Writes `1` to `dir/cgroup.kill`: the kernel kills every process in the
/// subtree, including ones forked meanwhile (Linux 5.14 and later).
pub fn kill(dir: &Path) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.kill"))?;
    f.write_all(b"1")
}

/// Whether any process is left in `dir` or below (`cgroup.events`).
pub fn populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .is_ok_and(|s| s.lines().any(|l| l.trim() == "populated 1"))
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    if let Err(e) = std::fs::remove_dir(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::debug!("cannot remove cgroup {}: {e}", dir.display());
    }
}

/// Whether `dir` was delegated: systemd marks a delegated cgroup with the
/// extended attribute `trusted.delegate` (system manager) or
/// `user.delegate` (user manager), value `1` (systemd 251 and later).
fn delegated(dir: &Path) -> bool {
    ["trusted.delegate", "user.delegate"].iter().any(|name| {
        let mut buf = [0u8; 8];
        rustix::fs::getxattr(dir, *name, &mut buf).is_ok_and(|n| &buf[..n] == b"1")
    })
}

/// The root and mount point of the cgroup v2 mount in `mountinfo`
/// (proc(5): `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ... - FSTYPE SOURCE
/// SUPER`).
fn cgroup2_mount(mountinfo: &str) -> Option<(PathBuf, PathBuf)> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        if after.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut f = before.split_whitespace();
        let root = unescape(f.nth(3)?);
        let point = unescape(f.next()?);
        Some((PathBuf::from(root), PathBuf::from(point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4);
        match code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            Some(b) => {
                out.push(char::from(b));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The cgroup v2 path in `/proc/self/cgroup` (the `0::PATH` line).
fn own_cgroup(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_two_pid_1_batons_shared_one_cgroup() {
        // Plain directories stand in for cgroups: a file in one is what a
        // process in a cgroup is to the kernel (it cannot be removed).
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        // Nothing there: the plain name.
        assert_eq!(claim(d, "baton.1").expect("claim"), d.join("baton.1"));
        // Taken by a live baton (populated): the next name, the first left
        // alone.
        std::fs::create_dir(d.join("baton.1/gen-1")).expect("mkdir");
        std::fs::write(d.join("baton.1/gen-1/worker"), "").expect("write");
        assert_eq!(claim(d, "baton.1").expect("claim"), d.join("baton.1.2"));
        assert!(d.join("baton.1/gen-1/worker").exists());
        // An empty leftover (a baton of that pid that died): taken again.
        std::fs::create_dir(d.join("baton.7")).expect("mkdir");
        std::fs::create_dir(d.join("baton.7/gen-3")).expect("mkdir");
        assert_eq!(claim(d, "baton.7").expect("claim"), d.join("baton.7"));
        assert!(!d.join("baton.7/gen-3").exists());
    }

    #[test]
    fn finds_the_cgroup2_mount_in_hybrid_and_unified_layouts() {
        let hybrid = "\
30 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,name=systemd";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(("/".into(), "/sys/fs/cgroup/unified".into()))
        );
        let unified =
            "35 24 0:30 /a\\040b /sys/fs/cgroup rw shared:9 - cgroup2 cgroup2 rw,nsdelegate";
        assert_eq!(
            cgroup2_mount(unified),
            Some(("/a b".into(), "/sys/fs/cgroup".into()))
        );
        assert_eq!(cgroup2_mount("1 0 0:1 / / rw - ext4 /dev/vda rw"), None);
    }

    #[test]
    fn reads_the_v2_line_of_proc_self_cgroup() {
        assert_eq!(
            own_cgroup("4:memory:/x\n0::/system.slice/app.service\n"),
            Some("/system.slice/app.service")
        );
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
    }
}
