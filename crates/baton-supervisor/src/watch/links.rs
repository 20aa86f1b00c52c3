//! How a watched path resolves through symlinks, link by link.
//!
//! A file reached through a symlink changes when a link on its way is
//! replaced, and that event names the link, not the file: the kubelet
//! updates a ConfigMap volume by renaming a new `..data` symlink over the
//! old one (`baton.toml -> ..data/baton.toml`, `..data ->
//! ..2024_05_01_10_00_00.123`), and a symlink deploy renames a new
//! `current` over the old one (`current -> releases/42`). To see either,
//! the watcher must know every link on the way and watch the directory
//! each one lives in.
//!
//! `std::fs::canonicalize` gives only the end of the walk, so the walk is
//! done here, the way the kernel does it: component by component, a
//! symlink's target spliced in front of what is left, at most
//! [`MAX_LINKS`] links (the kernel's own limit, `ELOOP` past it).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// Links followed before giving up, as Linux does (`MAXSYMLINKS`).
pub const MAX_LINKS: usize = 40;

/// Where a path leads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resolution {
    /// Every symlink met on the way, in order, each as the real directory
    /// it is in joined with its name (so a rename over it is reported by
    /// a watch of that directory under this very path).
    pub links: Vec<PathBuf>,
    /// The path with every link followed and `.`/`..` resolved; a part
    /// that does not exist is kept as written, and so is what follows it.
    pub target: PathBuf,
}

#[derive(Debug)]
enum Part {
    Root,
    Up,
    Name(OsString),
}

fn parts(path: &Path) -> impl Iterator<Item = Part> + '_ {
    path.components().filter_map(|c| match c {
        Component::RootDir | Component::Prefix(_) => Some(Part::Root),
        Component::CurDir => None,
        Component::ParentDir => Some(Part::Up),
        Component::Normal(n) => Some(Part::Name(n.to_owned())),
    })
}

/// Walks the absolute `path`, following symlinks.
pub fn resolve(path: &Path) -> Resolution {
    let mut pending: VecDeque<Part> = parts(path).collect();
    let mut cur = PathBuf::from("/");
    let mut links = Vec::new();
    // Once a part is missing nothing below it can be a link: the rest is
    // joined as written.
    let mut missing = false;
    while let Some(part) = pending.pop_front() {
        match part {
            Part::Root => cur = PathBuf::from("/"),
            Part::Up => {
                cur.pop();
            }
            Part::Name(name) => {
                let next = cur.join(&name);
                if missing || links.len() >= MAX_LINKS {
                    cur = next;
                    continue;
                }
                match std::fs::symlink_metadata(&next) {
                    Ok(m) if m.file_type().is_symlink() => match std::fs::read_link(&next) {
                        Ok(to) => {
                            links.push(next);
                            for p in parts(&to).collect::<Vec<_>>().into_iter().rev() {
                                pending.push_front(p);
                            }
                        }
                        Err(_) => cur = next,
                    },
                    Ok(_) => cur = next,
                    Err(_) => {
                        missing = true;
                        cur = next;
                    }
                }
            }
        }
    }
    Resolution { links, target: cur }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_plain_path_has_no_links_and_loses_its_dots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().canonicalize().expect("canonical");
        std::fs::create_dir(real.join("a")).expect("mkdir");
        std::fs::write(real.join("a/f"), "x").expect("write");
        let r = resolve(&real.join("a/./../a/f"));
        assert!(r.links.is_empty(), "{r:?}");
        assert_eq!(r.target, real.join("a/f"));
    }

    #[test]
    fn every_link_on_the_way_is_named_where_it_lives() {
        // The kubelet's layout: f -> ..data/f, ..data -> ..ts1.
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().canonicalize().expect("canonical");
        std::fs::create_dir(d.join("..ts1")).expect("mkdir");
        std::fs::write(d.join("..ts1/f"), "x").expect("write");
        symlink("..ts1", d.join("..data")).expect("link");
        symlink("..data/f", d.join("f")).expect("link");
        let r = resolve(&d.join("f"));
        assert_eq!(r.links, vec![d.join("f"), d.join("..data")]);
        assert_eq!(r.target, d.join("..ts1/f"));
        // A deploy's `current` in an ancestor, with an absolute target.
        std::fs::create_dir_all(d.join("releases/2")).expect("mkdir");
        symlink(d.join("releases/2"), d.join("current")).expect("link");
        let r = resolve(&d.join("current/app.toml"));
        assert_eq!(r.links, vec![d.join("current")]);
        assert_eq!(r.target, d.join("releases/2/app.toml"));
        // `..` after a link goes up from where the link led.
        let r = resolve(&d.join("current/../1"));
        assert_eq!(r.target, d.join("releases/1"));
    }

    #[test]
    fn a_loop_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().canonicalize().expect("canonical");
        symlink("b", d.join("a")).expect("link");
        symlink("a", d.join("b")).expect("link");
        let r = resolve(&d.join("a"));
        assert_eq!(r.links.len(), MAX_LINKS);
    }
}
