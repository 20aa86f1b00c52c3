//! The demo server, and the pieces its demo and benchmark share.
//!
//! * [`server`]: the HTTP server that the `demo-server` binary runs;
//! * [`harness`]: starting `baton run`, following its log, signalling it, and
//!   making sure every process started is stopped.

pub mod harness;
pub mod server;
