//! `hot-server`: an HTTP server whose routes are WebAssembly modules in a
//! directory, swapped in place while it serves (with `baton-hot`), and
//! which reloads as a whole process under `baton run` (with `baton-app`).
//!
//! See [`routes`] for how a request finds its module and [`server`] for
//! the HTTP side.

pub mod routes;
pub mod server;
