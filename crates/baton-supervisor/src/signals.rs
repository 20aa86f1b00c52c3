//! Signals into the event loop: each handled signal writes a byte into its
//! own socket pair (signal-hook's self-pipe registration), whose read end the
//! loop polls. Counting bytes tells how many times a signal arrived, which
//! matters for "a second SIGINT stops immediately".

use std::io::Read;

use mio::net::UnixStream;

/// The signals baton handles. `SIGCHLD` tells it that an orphan it
/// inherited as a subreaper may need reaping (workers are reaped through
/// their pidfds).
pub const HANDLED: [i32; 7] = [
    libc::SIGHUP,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGCHLD,
];

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
