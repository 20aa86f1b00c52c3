//! In-process hot modules: new code inside a running server, as disposable,
//! isolated WebAssembly component instances.
//!
//! ```ignore
//! use baton_hot::{Host, HostConfig};
//!
//! // `RouteWorld` adapts what `wasmtime::component::bindgen!` generated
//! // for the app's WIT world (see [`World`]).
//! let host: Host<RouteWorld> = Host::new(HostConfig::default())?;
//! let hello = host.load("routes/hello.wat")?;      // compiled, validated, current
//! let _watcher = host.watch(&["routes".into()])?;  // new content → new version
//! let answer = host.call(&hello, |route, store| route.call_handle(store, "GET", "/"))?;
//! println!("version {} said {:?}", answer.version, answer.value);
//! ```
//!
//! # Theory of operation
//!
//! A [`Host`] owns one wasmtime engine. A module is a file (a component,
//! binary or WAT text) identified by its canonical path. Each content
//! version (BLAKE3 fingerprint of the bytes) is compiled once (and kept in
//! wasmtime's on-disk cache when [`HostConfig::cache_dir`] is set), linked
//! into an `InstancePre` against the host's functions and the libraries it
//! imports from, and validated: its exports type-check against the world,
//! it instantiates within the limits, its optional `init` export returns
//! `ok`, the world's self-test passes. Only then does it become current, by
//! one atomic swap of the table of current versions. A call takes the
//! current version from that table and runs on an instance of it in a
//! store of its own ([`InstanceMode`]); nothing of one version's memory or
//! state can reach another, because they never share a store.
//!
//! A library's new version re-links every module that imports from it
//! (directly or not): all of them are validated with it, and they switch
//! in the same swap, or none does.
//!
//! # Invariants
//!
//! * At most two versions of a module are live: the current one and the
//!   one it replaced, while calls still run on it. A third version waits
//!   for the oldest one's calls to finish, up to that version's drain
//!   deadline, and then purges it (its calls still running are
//!   interrupted), as Erlang's code server does.
//! * A call runs wholly on the version that was current when it started;
//!   a call that starts after a swap gets the new version.
//! * A version that fails any step of validation never serves; the
//!   previous one goes on, and the rejection is logged with its stage,
//!   reason and fingerprint, and shown by [`Host::status`].
//! * A replaced version is freed when its last call returns; calls still
//!   running after [`HostConfig::drain_timeout`] are interrupted.
//! * A call that traps, runs past [`HostConfig::call_timeout`] or exceeds
//!   [`HostConfig::memory_limit`] fails alone; its instance is dropped.
//! * Every version change is logged with its fingerprint (and to
//!   [`HostConfig::log_file`]); a reload of identical bytes does nothing.

mod config;
mod current;
mod epoch;
mod error;
mod fingerprint;
mod host;
mod link;
mod swaplog;
mod version;
mod watch;
mod world;

pub use config::{HostConfig, InstanceMode};
pub use error::{
    CallError, HostError, Interrupt, LoadError, Outcome, Rejection, Stage, WatchError,
};
pub use fingerprint::Fingerprint;
pub use host::{Called, Host, Module, ModuleStatus, Status, VersionStatus};
pub use watch::Watcher;
pub use world::{Ctx, World};

/// The wasmtime this crate is built on, for `bindgen!` and host functions.
pub use wasmtime;
