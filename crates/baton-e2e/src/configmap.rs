//! A ConfigMap volume as the kubelet writes it, for tests of what baton
//! sees when a ConfigMap is updated under a running pod.
//!
//! The kubelet's atomic writer (kubernetes `pkg/volume/util/atomic_writer.go`)
//! keeps each version of the data in a hidden timestamped directory, points
//! the symlink `..data` at the current one, and shows every key as a
//! symlink through it:
//!
//! ```text
//! /etc/baton/baton.toml -> ..data/baton.toml
//! /etc/baton/..data     -> ..2026_01_01_00_00_01.000000001
//! /etc/baton/..2026_01_01_00_00_01.000000001/baton.toml
//! ```
//!
//! An update writes a new timestamped directory, makes a symlink
//! `..data_tmp` to it and renames that over `..data` (the one atomic
//! step), adds the links of new keys, removes those of keys gone, and
//! removes the old directory. No event ever names `baton.toml` itself.
//! [`Volume::update`] does the same and leaves the removal of the old
//! directory to the caller, so a test can hold it back (a slow kubelet).

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

/// A ConfigMap volume in a directory of the test's.
#[derive(Debug)]
pub struct Volume {
    dir: PathBuf,
    version: u32,
}

impl Volume {
    /// Makes `dir` (it must not exist yet, or be empty) a volume holding
    /// `data` (key, content).
    ///
    /// # Panics
    /// When the files cannot be written.
    pub fn new(dir: &Path, data: &[(&str, &str)]) -> Self {
        std::fs::create_dir_all(dir).expect("create the volume's directory");
        let mut v = Self {
            dir: dir.to_path_buf(),
            version: 0,
        };
        let old = v.update(data);
        assert!(old.is_none(), "a new volume has no old version");
        v
    }

    /// The directory the volume is "mounted" at.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Replaces the data, as the kubelet does; returns the old version's
    /// directory, still there: remove it with [`Volume::remove_old`].
    ///
    /// # Panics
    /// When the files cannot be written.
    pub fn update(&mut self, data: &[(&str, &str)]) -> Option<PathBuf> {
        self.version += 1;
        let ts = format!("..2026_01_01_00_00_{:02}.{:09}", self.version, self.version);
        let new = self.dir.join(&ts);
        std::fs::create_dir(&new).expect("create a version directory");
        for (key, content) in data {
            std::fs::write(new.join(key), content).expect("write a key");
        }
        let link = self.dir.join("..data");
        let old = std::fs::read_link(&link).ok().map(|t| self.dir.join(t));
        let tmp = self.dir.join("..data_tmp");
        symlink(&ts, &tmp).expect("make ..data_tmp");
        std::fs::rename(&tmp, &link).expect("rename ..data_tmp over ..data");
        for (key, _) in data {
            let visible = self.dir.join(key);
            if std::fs::symlink_metadata(&visible).is_err() {
                symlink(Path::new("..data").join(key), &visible).expect("link a key");
            }
        }
        for entry in std::fs::read_dir(&self.dir)
            .expect("read the volume")
            .flatten()
        {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !name.starts_with("..") && !data.iter().any(|(k, _)| *k == name) {
                std::fs::remove_file(entry.path()).expect("remove a key gone");
            }
        }
        old
    }

    /// Removes an old version's directory (the writer's last step).
    ///
    /// # Panics
    /// When it cannot be removed.
    pub fn remove_old(&self, old: &Path) {
        std::fs::remove_dir_all(old)
            .unwrap_or_else(|e| panic!("cannot remove {}: {e}", old.display()));
    }
}
