//! Claiming file descriptors inherited from a parent process.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

/// The first descriptor of systemd's `LISTEN_FDS` protocol.
pub const LISTEN_FDS_START: RawFd = 3;

/// What this process has claimed of its inherited descriptors: the
/// `LISTEN_FDS` range (once) and the readiness fd (once). Keeping both in one
/// place lets each claim refuse a number the other already owns.
#[derive(Debug)]
struct Claims {
    listen: Option<usize>,
    /// Single descriptors claimed by number (readiness fd, state fd).
    single: Vec<RawFd>,
}

static CLAIMS: Mutex<Claims> = Mutex::new(Claims {
    listen: None,
    single: Vec::new(),
});

fn in_listen_range(fd: RawFd, count: usize) -> bool {
    fd >= LISTEN_FDS_START && ((fd - LISTEN_FDS_START) as usize) < count
}

/// Claims descriptors `3 .. 3 + count`, passed by the `LISTEN_FDS` protocol.
///
/// This is safe to call because it succeeds at most once per process: the
/// first caller owns the inherited descriptors, and a second call returns
/// `Ok(None)` without touching any descriptor. Each element of the result is
/// the claimed descriptor or the error for that number (not open).
pub fn claim_listen_fds(count: usize) -> Option<Vec<io::Result<OwnedFd>>> {
    let mut claims = CLAIMS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if claims.listen.is_some() {
        return None;
    }
    claims.listen = Some(count);
    let single = claims.single.clone();
    drop(claims);
    Some(
        (0..count)
            .map(|i| {
                let raw = LISTEN_FDS_START + RawFd::try_from(i).unwrap_or(RawFd::MAX - 3);
                if single.contains(&raw) {
                    return Err(io::Error::from_raw_os_error(libc::EBUSY));
                }
                // SAFETY: the record above makes this the only claim of the
                // LISTEN_FDS range in this process; by the protocol these
                // numbers were passed to us and nothing else owns them.
                unsafe { claim_inherited(raw) }
            })
            .collect(),
    )
}

/// Claims one inherited descriptor passed by number in an environment
/// variable (the readiness fd `BATON_READY_FD`, the state fd
/// `BATON_STATE_FD`).
///
/// Safe for the same reason as [`claim_listen_fds`]: each number is claimed
/// at most once per process (a second claim is `EBUSY`), never inside the
/// claimed `LISTEN_FDS` range (`EBUSY`), and never below 3 (`EBADF`).
pub fn claim_fd(fd: RawFd) -> io::Result<OwnedFd> {
    let mut claims = CLAIMS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if fd < LISTEN_FDS_START {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    if claims.single.contains(&fd) || claims.listen.is_some_and(|n| in_listen_range(fd, n)) {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    // SAFETY: recorded below under the lock, so this number is claimed once;
    // it lies outside the claimed LISTEN_FDS range (checked above).
    let owned = unsafe { claim_inherited(fd) }?;
    claims.single.push(fd);
    Ok(owned)
}

/// Sets or clears the close-on-exec flag of descriptor `fd` (for the
/// descriptors a supervisor keeps open across an exec of itself).
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    let flags = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD only changes the descriptor flags of `fd`; a number
    // that is not open yields EBADF, never undefined behaviour.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, flags) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads everything from an inherited descriptor, from offset 0 (`pread`),
/// without taking ownership of it: a state a re-executed supervisor may
/// have to pass on again, unchanged, to a rollback.
pub fn read_all_at_zero(fd: RawFd) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: pread only writes into `buf`, within its length; a number
        // that is not open yields EBADF.
        let n = unsafe {
            libc::pread(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::off_t::try_from(out.len()).unwrap_or(libc::off_t::MAX),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
}

/// Closes an inherited descriptor nothing in this process owns (one that
/// was only passed along).
pub fn close_unowned(fd: RawFd) {
    // SAFETY: the caller passes a number that no OwnedFd of this process
    // holds (it was inherited and never claimed); closing it affects no
    // owner.
    unsafe {
        libc::close(fd);
    }
}

/// Whether descriptor `fd` is open (`fcntl(F_GETFD)`).
pub fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor flags.
    fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0
}

/// Like [`claim_fd`], but the descriptor keeps its close-on-exec flag as it
/// is (cleared, for a state handed over by an exec): if what is being
/// restored fails, the descriptors are still open for a rollback.
pub fn claim_fd_keep_flags(fd: RawFd) -> io::Result<OwnedFd> {
    let mut claims = CLAIMS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if fd < LISTEN_FDS_START {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    if claims.single.contains(&fd) || claims.listen.is_some_and(|n| in_listen_range(fd, n)) {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    if !is_open(fd) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: open (checked), recorded below under the lock so claimed
    // once, outside the LISTEN_FDS range (checked above).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    claims.single.push(fd);
    Ok(owned)
}

/// Takes ownership of an inherited file descriptor number.
///
/// The descriptor must be open (checked with `fcntl(F_GETFD)`); it is marked
/// close-on-exec so it does not leak into processes this one starts.
///
/// # Errors
/// `EBADF` if nothing is open at `fd`.
///
/// # Safety
/// The caller promises that nothing else in the process owns `fd`: it was
/// inherited, and this is the only place that claims it. Callers in baton
/// guarantee this by reading `LISTEN_FDS` once per process and handing each
/// number out at most once.
pub unsafe fn claim_inherited(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: F_GETFD only reads the descriptor flags; an invalid number
    // yields EBADF rather than undefined behaviour.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open (checked above) and the caller promises
    // exclusive ownership (see this function's contract).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)?;
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, IntoRawFd};

    #[test]
    fn claiming_a_closed_fd_is_ebadf() {
        // A descriptor number far above anything this test process opened.
        // SAFETY: nothing owns fd 100_000; the call must fail before claiming.
        let err = unsafe { claim_inherited(100_000) }.expect_err("fd 100000 is not open");
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        // SAFETY: negative numbers are rejected before any syscall.
        let err = unsafe { claim_inherited(-1) }.expect_err("negative fd");
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    }

    #[test]
    fn claimed_fd_is_cloexec() {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::empty()).expect("pipe");
        drop(w);
        let raw = r.into_raw_fd();
        // SAFETY: `raw` came from into_raw_fd just above; nothing else owns it.
        let owned = unsafe { claim_inherited(raw) }.expect("claim");
        assert_eq!(owned.as_raw_fd(), raw);
        let flags = rustix::io::fcntl_getfd(&owned).expect("getfd");
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
    }
}
