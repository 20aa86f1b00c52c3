//! Threads' CPU scheduling policy: quiet boot starts a worker at
//! `SCHED_IDLE` (the lowest priority there is: it runs only on CPU time no
//! other thread wants, and any other thread that wakes up preempts it) and
//! gives each thread of its tree `SCHED_OTHER` back once it is ready.
//!
//! The C library has no wrapper that takes a thread id other than by the
//! process-wide `sched_setscheduler(2)`, which on Linux acts on exactly the
//! thread whose id it is given: that is what is used here, one thread at a
//! time.

use std::io;

/// Whether thread `tid` (a process's main thread has the process's id)
/// runs at `SCHED_IDLE`.
pub fn is_idle(tid: u32) -> io::Result<bool> {
    let tid = libc::pid_t::try_from(tid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: sched_getscheduler takes a thread id and returns a policy or
    // -1; it touches no memory of ours.
    let policy = unsafe { libc::sched_getscheduler(tid) };
    if policy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SCHED_RESET_ON_FORK may be or-ed in.
    Ok(policy & !libc::SCHED_RESET_ON_FORK == libc::SCHED_IDLE)
}

/// Puts thread `tid` back at `SCHED_OTHER`, keeping its nice value (the
/// legacy call leaves it alone). Leaving `SCHED_IDLE` takes `CAP_SYS_NICE`
/// unless the thread's `RLIMIT_NICE` allows nice 0 (sched(7)).
pub fn set_normal(tid: u32) -> io::Result<()> {
    let tid = libc::pid_t::try_from(tid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call, which
    // only reads it.
    let rc = unsafe { libc::sched_setscheduler(tid, libc::SCHED_OTHER, &raw const param) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Puts thread `tid` at `SCHED_IDLE` (quiet boot: a worker's main thread,
/// once it has executed its program). Going down needs no privilege for a
/// thread of the same user; baton runs its workers as itself or, with
/// `--user`, as root, which may change any thread.
pub fn set_idle(tid: u32) -> io::Result<()> {
    let tid = libc::pid_t::try_from(tid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    set_idle_raw(tid)
}

/// Puts the calling thread at `SCHED_IDLE` (tests).
pub fn set_idle_self() -> io::Result<()> {
    // 0 is the calling thread.
    set_idle_raw(0)
}

fn set_idle_raw(tid: libc::pid_t) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: as in `set_normal`.
    let rc = unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &raw const param) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_goes_idle_and_back() {
        std::thread::spawn(|| {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() }.unsigned_abs();
            assert!(!is_idle(tid).expect("policy"));
            set_idle_self().expect("going idle needs no privilege");
            assert!(is_idle(tid).expect("policy"));
            // Coming back needs CAP_SYS_NICE (or RLIMIT_NICE): both answers
            // are right, but an error must be EPERM.
            match set_normal(tid) {
                Ok(()) => assert!(!is_idle(tid).expect("policy")),
                Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
            }
        })
        .join()
        .expect("the thread ran");
    }
}
