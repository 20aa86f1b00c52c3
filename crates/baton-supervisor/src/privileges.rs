//! `--user USER[:GROUP]`, `--group GROUP`, `--no-new-privs`: who the
//! workers run as.
//!
//! baton binds every listener as the user it was started as (root, for
//! ports below 1024), then each worker switches, between `fork` and `exec`
//! (`baton_sys::spawn`), to the user: its supplementary groups from the
//! group database, its group, its uid, no capability left, and
//! `no_new_privs` (on by default with `--user`). Names are looked up here,
//! in baton, once per generation's settings (at start and at each reload),
//! never in the child.
//!
//! What a worker running as another user can reach of baton's: nothing
//! but its own notify socket. baton's private directory (0700) holds the
//! sockets of the generations that run as baton's own user; a generation
//! that runs as another user gets its socket in a second directory,
//! [`SHARED_PREFIX`]`*` in the temp dir, mode 0711 (anyone may pass
//! through, no one may list it), the socket itself owned by the worker's
//! user and group and of mode 0600: only that user (and root) can send to
//! it. The kernel still tells baton each sender's pid, so a message from
//! any other process is ignored as before. The control socket stays 0600
//! in a 0700 directory: a worker cannot use it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use baton_sys::spawn::Credentials;
use serde::{Deserialize, Serialize};

/// The name the second notify directory starts with.
pub const SHARED_PREFIX: &str = "baton-notify.";

/// The user and groups the workers run as, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAs {
    /// `--user` (and `--group`) as given, for messages.
    pub spec: String,
    /// The user's name, when the database knows the uid.
    pub name: Option<String>,
    pub uid: u32,
    pub gid: u32,
    /// The supplementary groups (the user's groups in the group database,
    /// the primary one first; none for a uid the database does not know).
    pub groups: Vec<u32>,
    /// The user's home directory, when the database knows the uid.
    pub home: Option<PathBuf>,
}

fn lookup_error(what: &str, e: &std::io::Error) -> String {
    format!("cannot look up {what} in the user database: {e}")
}

impl RunAs {
    /// Resolves `--user USER[:GROUP]` and `--group GROUP`: names or numbers.
    pub fn resolve(user: &str, group: Option<&str>) -> Result<Self, String> {
        let (user_part, inline_group) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user, None),
        };
        if user_part.is_empty() {
            return Err(format!(
                "--user {user:?}: give a user name or number before the ':', e.g. --user www-data or --user www-data:www-data"
            ));
        }
        if inline_group == Some("") {
            return Err(format!(
                "--user {user:?}: give a group after the ':' (or leave the ':' out for the user's own group)"
            ));
        }
        let group_text = match (inline_group, group) {
            (Some(_), Some(g)) => {
                return Err(format!(
                    "--user {user:?} names a group and --group {g:?} another: give the group once"
                ));
            }
            (g, None) | (None, g) => g,
        };
        let entry = if let Ok(uid) = user_part.parse::<u32>() {
            baton_sys::user::user_by_uid(uid)
                .map_err(|e| lookup_error(&format!("uid {uid}"), &e))?
                .ok_or(uid)
        } else {
            match baton_sys::user::user_by_name(user_part)
                .map_err(|e| lookup_error(&format!("user {user_part:?}"), &e))?
            {
                Some(u) => Ok(u),
                None => {
                    return Err(format!(
                        "--user {user_part:?}: no such user in the user database (check `getent passwd {user_part}`), or give a number such as --user 1000:1000"
                    ));
                }
            }
        };
        let gid = match group_text {
            Some(g) => Some(resolve_group(g)?),
            None => None,
        };
        let spec = match group {
            Some(g) => format!("{user} (group {g})"),
            None => user.to_owned(),
        };
        match entry {
            Ok(u) => {
                let gid = gid.unwrap_or(u.gid);
                let groups = baton_sys::user::groups_of(&u.name, gid)
                    .map_err(|e| lookup_error(&format!("the groups of {:?}", u.name), &e))?;
                Ok(Self {
                    spec,
                    name: Some(u.name),
                    uid: u.uid,
                    gid,
                    groups,
                    home: Some(u.home),
                })
            }
            Err(uid) => {
                let Some(gid) = gid else {
                    return Err(format!(
                        "--user {uid}: the user database has no entry for uid {uid}, so its group is unknown: give one, e.g. --user {uid}:{uid}"
                    ));
                };
                Ok(Self {
                    spec,
                    name: None,
                    uid,
                    gid,
                    groups: Vec::new(),
                    home: None,
                })
            }
        }
    }

    /// What `baton_sys::spawn` switches to.
    pub fn credentials(&self) -> Credentials {
        Credentials {
            uid: self.uid,
            gid: self.gid,
            groups: self.groups.clone(),
        }
    }

    /// `user nobody (uid 65534, gid 65534)`, for messages.
    pub fn describe(&self) -> String {
        let groups: Vec<String> = self.groups.iter().map(ToString::to_string).collect();
        let groups = if groups.is_empty() {
            "no supplementary groups".to_owned()
        } else {
            format!("groups {}", groups.join(","))
        };
        match &self.name {
            Some(n) => format!("user {n} (uid {}, gid {}, {groups})", self.uid, self.gid),
            None => format!("uid {} (gid {}, {groups})", self.uid, self.gid),
        }
    }

    /// `USER`, `LOGNAME` and `HOME` of the user, as a login (or systemd's
    /// `User=`) sets them; below `--env` and `--env-file`, which win.
    pub fn identity_env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if let Some(n) = &self.name {
            env.push(("USER".to_owned(), n.clone()));
            env.push(("LOGNAME".to_owned(), n.clone()));
        }
        if let Some(h) = &self.home {
            env.push(("HOME".to_owned(), h.to_string_lossy().into_owned()));
        }
        env
    }

    /// Whether this is who baton itself already is (uid, gid and groups):
    /// nothing to switch, which needs no privilege.
    pub fn is_baton_itself(&self) -> bool {
        let mut own_groups: Vec<u32> = rustix::process::getgroups()
            .map(|g| g.into_iter().map(rustix::process::Gid::as_raw).collect())
            .unwrap_or_default();
        let mut want = self.groups.clone();
        own_groups.sort_unstable();
        want.sort_unstable();
        // The kernel's list may or may not repeat the primary group.
        let own_gid = rustix::process::getegid().as_raw();
        own_groups.retain(|g| *g != own_gid);
        want.retain(|g| *g != self.gid);
        rustix::process::geteuid().as_raw() == self.uid
            && rustix::process::getuid().as_raw() == self.uid
            && own_gid == self.gid
            && own_groups == want
    }

    /// Whether baton may switch to this user: it is root, holds
    /// `CAP_SETUID` and `CAP_SETGID`, or is that user already. The message
    /// says why not.
    pub fn check_allowed(&self) -> Result<(), String> {
        if self.is_baton_itself() || rustix::process::geteuid().is_root() || holds_setid_caps() {
            return Ok(());
        }
        Err(format!(
            "cannot run the workers as {}: baton runs as uid {}, and only root (or a baton holding CAP_SETUID and CAP_SETGID) can start processes as another user; start baton as root (it binds the sockets, then each worker drops to --user), or leave --user out",
            self.describe(),
            rustix::process::geteuid().as_raw()
        ))
    }
}

fn resolve_group(g: &str) -> Result<u32, String> {
    if let Ok(gid) = g.parse::<u32>() {
        return Ok(gid);
    }
    match baton_sys::user::group_by_name(g)
        .map_err(|e| lookup_error(&format!("group {g:?}"), &e))?
    {
        Some(group) => Ok(group.gid),
        None => Err(format!(
            "--group {g:?}: no such group in the group database (check `getent group {g}`), or give a number"
        )),
    }
}

/// Whether baton's effective capabilities include `CAP_SETUID` (7) and
/// `CAP_SETGID` (6), as `/proc/self/status` shows them.
fn holds_setid_caps() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 6) != 0 && caps & (1 << 7) != 0)
}

/// Parses `--no-new-privs`' value: `true`/`false`, `on`/`off`, `yes`/`no`,
/// `1`/`0`.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" => Ok(true),
        "false" | "off" | "no" | "0" => Ok(false),
        _ => Err(format!("{s:?} is not true or false")),
    }
}

/// Whether `uid` (with primary group `gid` and `groups`) may pass through
/// every directory from `/` down to `dir`, and `dir` itself; the first that
/// stops it otherwise, with its owner and mode. (Permission bits only:
/// an ACL could only narrow what is allowed here further.)
pub fn reachable_by(dir: &Path, uid: u32, gid: u32, groups: &[u32]) -> Result<(), String> {
    if uid == 0 {
        return Ok(());
    }
    let mut at = PathBuf::new();
    for part in dir.components() {
        at.push(part);
        let meta = std::fs::metadata(&at).map_err(|e| format!("{}: {e}", at.display()))?;
        let mode = meta.permissions().mode();
        let bit = if meta.uid() == uid {
            0o100
        } else if meta.gid() == gid || groups.contains(&meta.gid()) {
            0o010
        } else {
            0o001
        };
        if mode & bit == 0 {
            return Err(format!(
                "{} (owner uid {}, group {}, mode {:o}) does not let uid {uid} through",
                at.display(),
                meta.uid(),
                meta.gid(),
                mode & 0o7777
            ));
        }
    }
    Ok(())
}

/// Makes the directory for the notify sockets of generations that run as
/// another user: in the temp dir, mode 0711 (see the module docs).
pub fn make_shared_dir() -> std::io::Result<PathBuf> {
    let dir = tempfile::Builder::new()
        .prefix(SHARED_PREFIX)
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(std::env::temp_dir())?;
    // Created private, then opened for passing through only: never wider
    // than asked, whatever the umask.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
    Ok(dir.keep())
}

/// Gives the notify socket at `path` (just bound by baton, in a directory
/// only baton can write to) to the worker's user and group, mode 0600.
pub fn hand_socket_to(path: &Path, run_as: &RunAs) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    std::os::unix::fs::chown(path, Some(run_as.uid), Some(run_as.gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_mistakes() {
        let root = RunAs::resolve("root", None).expect("root");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(root.name.as_deref(), Some("root"));
        assert_eq!(root.groups.first(), Some(&0));
        let numeric = RunAs::resolve("0:0", None).expect("0:0");
        assert_eq!(numeric.name.as_deref(), Some("root"));
        let with_group = RunAs::resolve("root", Some("0")).expect("--group");
        assert_eq!(with_group.gid, 0);
        // A uid with no entry needs a group, and then has no supplementary
        // groups.
        let e = RunAs::resolve("3999999999", None).expect_err("no entry");
        assert!(
            e.contains("give one, e.g. --user 3999999999:3999999999"),
            "{e}"
        );
        let bare = RunAs::resolve("3999999999:3999999998", None).expect("numbers");
        assert_eq!((bare.uid, bare.gid), (3_999_999_999, 3_999_999_998));
        assert!(bare.groups.is_empty() && bare.name.is_none());
        assert!(bare.identity_env().is_empty());
        for (user, group, want) in [
            ("no-such-user-baton", None, "no such user"),
            ("root:no-such-group-baton", None, "no such group"),
            ("root:0", Some("0"), "give the group once"),
            (":0", None, "before the ':'"),
            ("root:", None, "after the ':'"),
        ] {
            let e = RunAs::resolve(user, group).expect_err(user);
            assert!(e.contains(want), "{user}: {e}");
        }
    }

    #[test]
    fn identity_and_description() {
        let root = RunAs::resolve("root", None).expect("root");
        let env = root.identity_env();
        assert!(env.contains(&("USER".into(), "root".into())), "{env:?}");
        assert!(env.iter().any(|(k, _)| k == "HOME"), "{env:?}");
        assert!(
            root.describe().starts_with("user root (uid 0, gid 0"),
            "{}",
            root.describe()
        );
    }

    #[test]
    fn reachability_names_the_directory_that_stops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner = dir.path().join("a/b");
        std::fs::create_dir_all(&inner).expect("mkdir");
        std::fs::set_permissions(dir.path().join("a"), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let owner = std::fs::metadata(dir.path()).expect("stat").uid();
        let other = if owner == 4_000_000 {
            4_000_001
        } else {
            4_000_000
        };
        let e = reachable_by(&inner, other, other, &[]).expect_err("0700 on the way");
        assert!(e.contains("/a (owner uid") && e.contains("mode 700"), "{e}");
        std::fs::set_permissions(dir.path().join("a"), std::fs::Permissions::from_mode(0o711))
            .expect("chmod");
        // The temp dir itself may be private too (tempfile makes it 0700).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod");
        assert_eq!(reachable_by(&inner, other, other, &[]), Ok(()));
        assert_eq!(reachable_by(&inner, 0, 0, &[]), Ok(()));
    }

    #[test]
    fn booleans() {
        for t in ["true", "ON", "yes", "1"] {
            assert_eq!(parse_bool(t), Ok(true));
        }
        for f in ["false", "off", "No", "0"] {
            assert_eq!(parse_bool(f), Ok(false));
        }
        assert!(parse_bool("maybe").is_err());
    }
}
