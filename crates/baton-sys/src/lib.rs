//! The one small place for `unsafe` code in baton.
//!
//! Everything else in the workspace is `#![deny(unsafe_code)]`. This crate
//! holds the few operations that cannot be written safely:
//!
//! * [`fd::claim_inherited`]: turning a file descriptor number that a parent
//!   passed us (systemd's `LISTEN_FDS` protocol) into an owned handle;
//! * [`spawn::spawn`]: fork and exec by hand, because the child needs its
//!   sockets at fixed numbers (3, 4, ...) and `LISTEN_PID` equal to its *own*
//!   pid, which `std::process::Command` cannot express (it installs the
//!   environment after `pre_exec` closures run, and `setenv` allocates, which
//!   is not allowed between fork and exec); it also drops a worker's
//!   privileges (`--user`) between the two;
//! * [`sched`]: a thread's CPU scheduling policy (quiet boot);
//! * [`user`]: looking users and groups up by name or number;
//! * `tokio_fd` (feature `tokio`): an owned descriptor on tokio's reactor
//!   with only the readiness interest it needs.
//!
//! Each `unsafe` block carries a `// SAFETY:` comment saying why it is sound.
#![allow(unsafe_code)]

pub mod fd;
pub mod reexec;
pub mod sched;
pub mod spawn;
#[cfg(feature = "tokio")]
pub mod tokio_fd;
pub mod user;
