//! Users and groups by name or number: the passwd and group databases, as
//! the C library reads them (`/etc/passwd`, or LDAP and the like through
//! NSS), for `baton run --user`.
//!
//! Hand-written over the reentrant `getpwnam_r` family rather than taken
//! from a crate: the `nix` crate would be a second system-call crate beside
//! rustix (which has no user database), and these are five calls. Every
//! lookup happens in the supervisor, never between `fork` and `exec` (NSS
//! allocates, opens files and may talk to the network).

use std::ffi::{CStr, CString};
use std::io;
use std::path::PathBuf;

/// An entry of the passwd database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    /// Its primary group.
    pub gid: u32,
    pub home: PathBuf,
    pub shell: PathBuf,
}

/// An entry of the group database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
}

/// The first buffer size to try when `sysconf` gives no hint.
const FIRST_BUFFER: usize = 1024;
/// Past this, an entry is not believed (a database that keeps answering
/// `ERANGE`).
const MAX_BUFFER: usize = 1 << 20;

fn first_buffer(hint: libc::c_int) -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(hint) };
    usize::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or(FIRST_BUFFER)
}

fn nul_free(what: &str, s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the {what} {s:?} contains a NUL byte"),
        )
    })
}

/// # Safety
/// `p` is null or points to a NUL-terminated string.
unsafe fn text(p: *const libc::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: as the caller promises.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Runs a `get*_r` call with a buffer that grows on `ERANGE`; `call`
/// returns the call's result code and whether it found an entry.
fn with_buffer<T>(
    hint: libc::c_int,
    mut call: impl FnMut(&mut [libc::c_char]) -> (libc::c_int, Option<T>),
) -> io::Result<Option<T>> {
    let mut size = first_buffer(hint);
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        match call(&mut buf) {
            (0, found) => return Ok(found),
            // "Not found" comes back as 0 with no entry, or, from some NSS
            // modules, as one of these.
            (libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM, _) => return Ok(None),
            (libc::ERANGE, _) if size < MAX_BUFFER => size *= 2,
            (libc::EINTR, _) => {}
            (code, _) => return Err(io::Error::from_raw_os_error(code)),
        }
    }
}

fn passwd_lookup(
    by: impl Fn(*mut libc::passwd, &mut [libc::c_char], *mut *mut libc::passwd) -> libc::c_int,
) -> io::Result<Option<User>> {
    with_buffer(libc::_SC_GETPW_R_SIZE_MAX, |buf| {
        // SAFETY: passwd is plain data, filled in by the call.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = by(&raw mut pw, buf, &raw mut result);
        if rc != 0 || result.is_null() {
            return (rc, None);
        }
        // SAFETY: on success the strings point into `buf`, alive here.
        let user = unsafe {
            User {
                name: text(pw.pw_name),
                uid: pw.pw_uid,
                gid: pw.pw_gid,
                home: PathBuf::from(text(pw.pw_dir)),
                shell: PathBuf::from(text(pw.pw_shell)),
            }
        };
        (0, Some(user))
    })
}

fn group_lookup(
    by: impl Fn(*mut libc::group, &mut [libc::c_char], *mut *mut libc::group) -> libc::c_int,
) -> io::Result<Option<Group>> {
    with_buffer(libc::_SC_GETGR_R_SIZE_MAX, |buf| {
        // SAFETY: group is plain data, filled in by the call.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = by(&raw mut gr, buf, &raw mut result);
        if rc != 0 || result.is_null() {
            return (rc, None);
        }
        // SAFETY: on success the name points into `buf`, alive here.
        let name = unsafe { text(gr.gr_name) };
        (
            0,
            Some(Group {
                name,
                gid: gr.gr_gid,
            }),
        )
    })
}

/// The user called `name`, if there is one.
pub fn user_by_name(name: &str) -> io::Result<Option<User>> {
    let c = nul_free("user name", name)?;
    passwd_lookup(|pw, buf, result| {
        // SAFETY: every pointer is valid for the call; `buf` is writable
        // for its whole length, which is what is passed.
        unsafe { libc::getpwnam_r(c.as_ptr(), pw, buf.as_mut_ptr(), buf.len(), result) }
    })
}

/// The user whose id is `uid`, if the database has one.
pub fn user_by_uid(uid: u32) -> io::Result<Option<User>> {
    passwd_lookup(|pw, buf, result| {
        // SAFETY: as in user_by_name.
        unsafe { libc::getpwuid_r(uid, pw, buf.as_mut_ptr(), buf.len(), result) }
    })
}

/// The group called `name`, if there is one.
pub fn group_by_name(name: &str) -> io::Result<Option<Group>> {
    let c = nul_free("group name", name)?;
    group_lookup(|gr, buf, result| {
        // SAFETY: as in user_by_name.
        unsafe { libc::getgrnam_r(c.as_ptr(), gr, buf.as_mut_ptr(), buf.len(), result) }
    })
}

/// The group whose id is `gid`, if the database has one.
pub fn group_by_gid(gid: u32) -> io::Result<Option<Group>> {
    group_lookup(|gr, buf, result| {
        // SAFETY: as in user_by_name.
        unsafe { libc::getgrgid_r(gid, gr, buf.as_mut_ptr(), buf.len(), result) }
    })
}

/// Every group `user` belongs to, `gid` included (first), as the group
/// database lists its members: what `initgroups` would give a login.
pub fn groups_of(user: &str, gid: u32) -> io::Result<Vec<u32>> {
    let c = nul_free("user name", user)?;
    let mut want: libc::c_int = 32;
    loop {
        let mut groups: Vec<libc::gid_t> = vec![0; usize::try_from(want).unwrap_or(32)];
        let mut n = want;
        // SAFETY: `groups` has room for `n` entries; getgrouplist writes at
        // most that many and sets `n` to how many there are.
        let rc = unsafe { libc::getgrouplist(c.as_ptr(), gid, groups.as_mut_ptr(), &raw mut n) };
        if rc >= 0 {
            groups.truncate(usize::try_from(n).unwrap_or(0));
            return Ok(groups);
        }
        // -1: too small; `n` says how many are needed.
        if n <= want {
            want = want.saturating_mul(2);
        } else {
            want = n;
        }
        if want > 65_536 {
            return Err(io::Error::other(format!(
                "the group database lists more than 65,536 groups for {user}"
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_by_name_and_number() {
        let by_name = user_by_name("root").expect("lookup").expect("root exists");
        assert_eq!(by_name.uid, 0);
        assert_eq!(by_name.gid, 0);
        let by_uid = user_by_uid(0).expect("lookup").expect("uid 0 exists");
        assert_eq!(by_uid.name, "root");
        let group = group_by_gid(0).expect("lookup").expect("gid 0 exists");
        assert_eq!(group_by_name(&group.name).expect("lookup"), Some(group));
        let groups = groups_of("root", 0).expect("groups");
        assert_eq!(groups.first(), Some(&0), "{groups:?}");
    }

    #[test]
    fn unknown_names_are_none_not_errors() {
        assert_eq!(
            user_by_name("no-such-user-baton-test").expect("lookup"),
            None
        );
        assert_eq!(
            group_by_name("no-such-group-baton-test").expect("lookup"),
            None
        );
        assert_eq!(user_by_uid(3_999_999_999).expect("lookup"), None);
        assert!(user_by_name("a\0b").is_err());
    }
}
