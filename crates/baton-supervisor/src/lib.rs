//! The baton supervisor as a library.
//!
//! `baton run` binds the listening sockets once and runs the application in
//! *generations*: on reload it starts generation N+1 beside N, waits until
//! N+1 says it is ready, then tells N to drain. Both share the same listening
//! sockets, so a connection waiting in the accept queue survives every
//! reload.
//!
//! # Theory of operation
//!
//! ```text
//!  signals ─┐                 ┌───────────────────────┐ actions  ┌──────────────────────────────┐
//!  notify  ─┤     events      │ lifecycle (pure)      │────────▶ │ runtime: spawn, signal,      │
//!  pidfds  ─┼───────────────▶ │ state + event → state,│          │ arm timer, log               │
//!  timers  ─┘                 │ actions               │          └──────────────────────────────┘
//!                             └───────────────────────┘
//! ```
//!
//! * [`lifecycle`] is a pure state machine: it decides which generation to
//!   start, whom to signal and when to roll back. Its invariants are listed
//!   in its module docs and tested transition by transition.
//! * [`runtime`] is a `mio` loop on one thread that gathers events
//!   (signals through a self-pipe, child exits through pidfds, readiness
//!   datagrams, output pipes, timers) and carries out the actions.
//! * [`accepting`] sees, in `/proc`, whether a worker waits for
//!   connections on its listeners (`--ready accepting`), from a thread of
//!   its own.
//! * [`events`] is what happened, as `baton ctl events` streams it, and
//!   [`metrics`] what the `--metrics` endpoint serves (OpenMetrics text,
//!   `/ready`, `/live`), answered by the loop itself.
//! * [`dispatch`] holds the settings of `--dispatch`, in which baton alone
//!   watches the listeners and hands each connection to an idle worker
//!   over a channel of its own (the runtime's `dispatch` does it).
//! * [`listen`] parses and binds listen specs; [`worker`] builds each
//!   worker's environment and spawns it through `baton-sys`, the only crate
//!   with `unsafe` code; [`environment`] (`--env-file`, `--clear-env`) and
//!   [`privileges`] (`--user`) say what it gets and whom it runs as.
#![deny(unsafe_code)]

pub mod accepting;
pub mod cgroup;
pub mod config;
pub mod config_file;
pub mod control;
pub mod dispatch;
pub mod environment;
pub mod events;
pub mod guard;
pub mod lifecycle;
pub mod listen;
pub mod metrics;
pub mod notify;
pub mod output;
pub mod privileges;
pub mod quiet;
pub mod runtime;
pub mod signals;
pub mod stamp;
pub mod watch;
pub mod worker;
