//! The app side of baton: what a server links to take part in zero-downtime
//! reloads.
//!
//! ```no_run
//! use baton_app::{Inherited, Notifier};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Read LISTEN_FDS / LISTEN_PID / LISTEN_FDNAMES once.
//! let mut inherited = Inherited::from_env()?;
//! let listener = match inherited.take_tcp("web")? {
//!     Some(l) => l,
//!     // Not started by baton or systemd: bind ourselves.
//!     None => std::net::TcpListener::bind("127.0.0.1:8080")?,
//! };
//! // ... set up the server, warm caches ...
//! let notifier = Notifier::from_env()?;
//! notifier.ready()?; // baton now drains the previous generation
//! # drop(listener);
//! # Ok(())
//! # }
//! ```
//!
//! Both halves speak the systemd protocols, so the same binary works under
//! `baton run`, under systemd socket activation and under `systemfd`.
//!
//! Invariants:
//! * the process environment is read once, by [`Inherited::from_env`] and
//!   [`Notifier::from_env`], and never modified;
//! * nothing is adopted unless `LISTEN_PID` equals this process's pid (so a
//!   child that merely inherited the variables does not steal the sockets);
//! * each inherited descriptor is validated (a socket, of the requested type
//!   and family, listening) before it is handed out, marked close-on-exec, and
//!   handed out at most once.

pub mod listeners;
pub mod notify;
pub mod upgrade;

pub use listeners::{InheritError, Inherited, Listener};
pub use notify::{Notifier, NotifyError};
