//! Signals into the event loop.
//!
//! Every signal a person or a process supervisor may send baton has a
//! meaning, and none of them takes the service down by accident (the kernel's
//! default action for `USR1`, `USR2`, `ALRM`, `PWR` and the real-time signals
//! is to terminate the process, which would take every worker with it):
//!
//! | signal | meaning |
//! | --- | --- |
//! | `HUP` | reload |
//! | `TERM`, `INT` | graceful stop; a second one stops at once |
//! | `QUIT` | immediate stop |
//! | `PWR` | graceful stop (what LXC sends an init to shut it down) |
//! | `TTIN`, `TTOU` | one worker more, one fewer, per generation |
//! | `USR1` | forwarded to the serving generation's workers (log reopening) |
//! | `USR2` | upgrade baton in place (see `runtime::upgrade`) |
//! | `CHLD` | an orphan baton adopted may need reaping |
//! | [`IGNORED`] | logged and otherwise ignored |
//!
//! `WINCH` (a terminal resize) and `PIPE` are ignored by default anyway.
//! Faults the kernel raises (`SEGV`, `BUS`, `ILL`, `FPE`, `ABRT`, `TRAP`,
//! `SYS`) keep their default action, and `TSTP`/`STOP` suspend baton as they
//! suspend any program (the workers keep serving meanwhile; `CONT` resumes).
//!
//! Each signal with a meaning writes a byte into its own socket pair
//! (signal-hook's self-pipe registration), whose read end the loop polls.
//! Counting bytes tells how many times a signal arrived, which matters for
//! "a second SIGINT stops immediately". The ignored ones share one socket
//! pair (signal-hook's `SignalDelivery`, which records which signal came),
//! so they cost two descriptors in all, not two each.

use std::io::Read;

use mio::net::UnixStream;
use signal_hook::iterator::backend::SignalDelivery;
use signal_hook::iterator::exfiltrator::SignalOnly;

/// The signals with a meaning. `SIGCHLD` tells baton that an orphan it
/// inherited as a subreaper may need reaping (workers are reaped through
/// their pidfds).
pub const HANDLED: [i32; 10] = [
    libc::SIGHUP,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGPWR,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGCHLD,
];

/// Signals whose default action would kill baton but that mean nothing to
/// it: logged when they arrive, otherwise ignored. The real-time signals
/// (`SIGRTMIN`..=`SIGRTMAX`) are ignored too; see [`ignored`].
pub const IGNORED: [i32; 7] = [
    libc::SIGALRM,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGIO,
    libc::SIGXCPU,
    libc::SIGXFSZ,
    libc::SIGSTKFLT,
];

/// Every signal that is logged and ignored: [`IGNORED`] and the real-time
/// signals the C library leaves to programs.
pub fn ignored() -> Vec<i32> {
    let mut all = IGNORED.to_vec();
    all.extend(libc::SIGRTMIN()..=libc::SIGRTMAX());
    all
}

/// One registered signal.
#[derive(Debug)]
pub struct SignalPipe {
    pub signal: i32,
    pub read: UnixStream,
    id: signal_hook::SigId,
}

impl SignalPipe {
    /// Registers a handler for `signal` that writes to a new socket pair.
    pub fn register(signal: i32) -> std::io::Result<Self> {
        let (read, write) = UnixStream::pair()?;
        let id = signal_hook::low_level::pipe::register(signal, write)?;
        Ok(Self { signal, read, id })
    }

    /// How many deliveries are waiting (0 when none).
    pub fn drain(&mut self) -> usize {
        let mut buf = [0u8; 64];
        let mut n = 0;
        loop {
            match self.read.read(&mut buf) {
                Ok(0) => return n,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return n,
            }
        }
    }
}

impl Drop for SignalPipe {
    fn drop(&mut self) {
        signal_hook::low_level::unregister(self.id);
    }
}

/// The signals that are logged and ignored, delivered through one socket
/// pair.
pub struct Ignored {
    delivery: SignalDelivery<UnixStream, SignalOnly>,
}

impl std::fmt::Debug for Ignored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ignored").finish_non_exhaustive()
    }
}

impl Ignored {
    /// Installs handlers for every signal of [`ignored`].
    pub fn register() -> std::io::Result<Self> {
        let (read, write) = UnixStream::pair()?;
        let delivery = SignalDelivery::with_pipe(read, write, SignalOnly, ignored())?;
        Ok(Self { delivery })
    }

    /// The read end, to register with the loop.
    pub fn read_mut(&mut self) -> &mut UnixStream {
        self.delivery.get_read_mut()
    }

    /// The signals that arrived since the last call (each once).
    pub fn pending(&mut self) -> Vec<i32> {
        let mut v: Vec<i32> = self.delivery.pending().collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_signal_is_both_handled_and_ignored_and_none_is_forbidden() {
        let ignored = ignored();
        for s in &HANDLED {
            assert!(!ignored.contains(s), "signal {s} is in both lists");
        }
        for s in HANDLED.iter().chain(&ignored) {
            assert!(
                !signal_hook::consts::FORBIDDEN.contains(s),
                "signal {s} cannot be caught"
            );
        }
        assert!(ignored.contains(&libc::SIGRTMIN()));
        assert!(ignored.contains(&libc::SIGRTMAX()));
    }
}
