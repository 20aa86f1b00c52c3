//! Replacing this process's program in place, for the supervisor's
//! upgrade: the same pid, the same children, the descriptors that are not
//! close-on-exec, the signal mask and the pending signals all carry over.
//!
//! * [`exec_fd`] executes the very file a descriptor names (`execveat` with
//!   `AT_EMPTY_PATH`), so the program that was checked is the one that
//!   runs, even if its path was swapped since.
//! * [`block_all`] / [`unblock_all`] hold signals across the exec: a signal
//!   that arrives meanwhile stays pending and reaches the new program once
//!   it has installed its handlers.
//! * [`arm_fatal_rollback`]: while the new program loads its state, a fatal
//!   signal (a crash) executes the old program instead of killing the
//!   process, and with it every worker.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering};

fn cstrings(items: &[OsString]) -> io::Result<Vec<CString>> {
    use std::os::unix::ffi::OsStrExt;
    items
        .iter()
        .map(|s| {
            CString::new(s.as_bytes()).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in argv or env")
            })
        })
        .collect()
}

fn pointers(items: &[CString]) -> Vec<*const libc::c_char> {
    let mut v: Vec<*const libc::c_char> = items.iter().map(|c| c.as_ptr()).collect();
    v.push(std::ptr::null());
    v
}

/// Executes the program `program` names (an open descriptor of it), with
/// `args` and `env`, in place of this process's. Returns only when that
/// failed, with the reason.
pub fn exec_fd(program: BorrowedFd<'_>, args: &[OsString], env: &[OsString]) -> io::Error {
    let (args, env) = match (cstrings(args), cstrings(env)) {
        (Ok(a), Ok(e)) => (a, e),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let argv = pointers(&args);
    let envp = pointers(&env);
    // SAFETY: argv and envp are NULL-terminated arrays of pointers to
    // NUL-terminated strings that live until this returns; the empty path
    // with AT_EMPTY_PATH names `program` itself. On success nothing of this
    // process's memory is used again.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            program.as_raw_fd(),
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
    }
    io::Error::last_os_error()
}

/// Blocks every signal for the calling thread (what an exec carries over:
/// the new program starts with this mask, and signals sent meanwhile stay
/// pending). Returns the mask it replaced.
pub fn block_all() -> io::Result<SignalMask> {
    // SAFETY: sigset_t is plain data; the calls only write into it.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&raw mut all);
        let rc = libc::pthread_sigmask(libc::SIG_SETMASK, &raw const all, &raw mut old);
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(SignalMask(old))
    }
}

/// Unblocks every signal for the calling thread.
pub fn unblock_all() -> io::Result<()> {
    // SAFETY: as in block_all.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut none);
        let rc = libc::pthread_sigmask(libc::SIG_SETMASK, &raw const none, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
    }
    Ok(())
}

/// A thread's signal mask, to restore.
pub struct SignalMask(libc::sigset_t);

impl std::fmt::Debug for SignalMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignalMask")
    }
}

impl SignalMask {
    /// Makes this the calling thread's mask again.
    pub fn restore(&self) {
        // SAFETY: a mask obtained from pthread_sigmask.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &raw const self.0, std::ptr::null_mut());
        }
    }
}

/// The program to execute on a fatal signal, prepared in advance (a signal
/// handler may not allocate): argv and envp arrays, and the descriptor.
static ROLLBACK_FD: AtomicI32 = AtomicI32::new(-1);
static ROLLBACK_ARGV: AtomicPtr<*const libc::c_char> = AtomicPtr::new(std::ptr::null_mut());
static ROLLBACK_ENVP: AtomicPtr<*const libc::c_char> = AtomicPtr::new(std::ptr::null_mut());

/// The signals a crash raises.
const FATAL: [i32; 6] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGABRT,
    libc::SIGSYS,
];

extern "C" fn exec_rollback(sig: libc::c_int) {
    let fd = ROLLBACK_FD.load(Ordering::Acquire);
    let argv = ROLLBACK_ARGV.load(Ordering::Acquire);
    let envp = ROLLBACK_ENVP.load(Ordering::Acquire);
    if fd >= 0 && !argv.is_null() && !envp.is_null() {
        // SAFETY: execveat is async-signal-safe (execve is, per
        // signal-safety(7); execveat is the same system call with a
        // descriptor); the arrays were built and leaked by
        // arm_fatal_rollback and are never freed. If it fails, fall through
        // to the default action.
        unsafe {
            libc::syscall(
                libc::SYS_execveat,
                fd,
                c"".as_ptr(),
                argv.cast_const(),
                envp.cast_const(),
                libc::AT_EMPTY_PATH,
            );
        }
    }
    // SAFETY: restoring the default action and re-raising is what the
    // signal would have done without this handler.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Until [`disarm_fatal_rollback`]: a crash (`SEGV`, `BUS`, `ILL`, `FPE`,
/// `ABRT`, `SYS`) executes `program` with `args` and `env` instead of
/// killing the process. For the moments a new image loads its state: the
/// old image it rolls back to takes the same state and goes on.
pub fn arm_fatal_rollback(program: RawFd, args: &[OsString], env: &[OsString]) -> io::Result<()> {
    // Leaked on purpose: a signal handler may run at any time and must find
    // them valid; this is done at most a few times in a process's life.
    let args: &'static [CString] = Box::leak(cstrings(args)?.into_boxed_slice());
    let env: &'static [CString] = Box::leak(cstrings(env)?.into_boxed_slice());
    let argv: &'static mut [*const libc::c_char] = Box::leak(pointers(args).into_boxed_slice());
    let envp: &'static mut [*const libc::c_char] = Box::leak(pointers(env).into_boxed_slice());
    ROLLBACK_ARGV.store(argv.as_mut_ptr(), Ordering::Release);
    ROLLBACK_ENVP.store(envp.as_mut_ptr(), Ordering::Release);
    ROLLBACK_FD.store(program, Ordering::Release);
    for sig in FATAL {
        // SAFETY: installs a handler that only makes async-signal-safe
        // calls (see exec_rollback).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = exec_rollback as *const () as usize;
            libc::sigemptyset(&raw mut sa.sa_mask);
            if libc::sigaction(sig, &raw const sa, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Crashes are crashes again (default actions).
pub fn disarm_fatal_rollback() {
    ROLLBACK_FD.store(-1, Ordering::Release);
    for sig in FATAL {
        // SAFETY: restores the default action.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
}

/// Makes the calling thread take `SIGSEGV` as a crash would (a fault is
/// delivered even while signals are blocked; a raised signal is not, so it
/// is unblocked first): for tests of what a crash does.
pub fn crash_like_a_fault() {
    // SAFETY: sigset_t is plain data; unblocking one signal for this thread
    // and raising it only delivers that signal here.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, libc::SIGSEGV);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &raw const set, std::ptr::null_mut());
        libc::raise(libc::SIGSEGV);
    }
}
