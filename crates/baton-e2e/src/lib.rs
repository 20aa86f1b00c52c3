//! The harness of baton's end-to-end tests: find the binaries, run
//! `baton run` under a guard that captures its output and kills everything it
//! started, talk HTTP to the probe, and watch processes by pid.
//!
//! ```no_run
//! use baton_e2e::{BatonCmd, WAIT, http};
//!
//! let baton = BatonCmd::new().probe(&["--drain-ms", "100"]).spawn();
//! baton.wait_for("generation 1 ready", WAIT);
//! let reply = http::get_ok(baton.port(), "/");
//! assert_eq!(reply.generation(), Some(1));
//! baton.reload(2, WAIT); // HUP, `generation 2 ready`, `generation 1 exited`
//! ```
//!
//! Every wait is bounded and waits on an event (a log line, a pidfd, a
//! socket); nothing sleeps to synchronise.

pub mod baton;
pub mod bins;
pub mod configmap;
pub mod ctl;
pub mod http;
pub mod inspect;
pub mod metrics;
pub mod netns;
pub mod procs;
pub mod tools;

pub use baton::{Baton, BatonCmd, WAIT, Worker};
pub use bins::bin;
pub use netns::NetNs;
pub use procs::Proc;
pub use rustix::process::Signal;
