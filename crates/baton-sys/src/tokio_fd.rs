//! An owned descriptor on tokio's reactor with the readiness interest the
//! caller needs, and no other.
//!
//! tokio's own socket types register for both reading and writing. For a
//! dispatch channel that only ever waits to read, the write interest is
//! not free: each time baton reads one of the worker's packets, the
//! worker's send buffer drains, the kernel reports the socket writable, and
//! the worker's `epoll_wait` wakes for nothing (and baton's `recv` pays for
//! waking it). `AsyncFd::register_with_interest` chooses the interest, but
//! is `unsafe` since tokio 1.54 (tokio#8587: it cannot know the descriptor
//! stays open); an `OwnedFd` moved into it does, which this wrapper says
//! once.

use std::io;
use std::os::fd::OwnedFd;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Registers `fd` with the current tokio runtime for `interest` only.
/// Call it inside a tokio runtime (like `AsyncFd::register`).
pub fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `OwnedFd` moves into the `AsyncFd` and is closed only
    // when the `AsyncFd` drops (or gives it back with `into_inner`), and its
    // `as_raw_fd` always returns the same descriptor: what
    // `register_with_interest` asks of its caller.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(io::Error::from)
}
