//! Errors: why a version was rejected, why a load failed, why a call failed.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::fingerprint::Fingerprint;

/// The step at which a new version failed its validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading the file.
    Read,
    /// Parsing (WAT text or binary) and compiling.
    Compile,
    /// Linking its imports: the host's functions and other modules'
    /// interfaces (a missing interface, a type that does not match, a
    /// cycle).
    Link,
    /// Type-checking its exports against the world.
    Exports,
    /// Instantiating it (a memory larger than the limit fails here).
    Instantiate,
    /// Its own `init` export trapped or returned an error.
    Init,
    /// The world's self-test failed.
    SelfTest,
    /// One of the modules that depend on it failed to re-link or validate
    /// with it: the whole set stays on the old versions.
    Dependent,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Read => "read",
            Stage::Compile => "compile",
            Stage::Link => "link",
            Stage::Exports => "exports",
            Stage::Instantiate => "instantiate",
            Stage::Init => "init",
            Stage::SelfTest => "self-test",
            Stage::Dependent => "dependent",
        })
    }
}

/// A version that did not become current, and why. The previous version
/// (if any) keeps serving.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: version with fingerprint {fingerprint} rejected at {stage}: {reason}", path = path.display())]
pub struct Rejection {
    /// The module's canonical path.
    pub path: PathBuf,
    /// Fingerprint of the rejected bytes.
    pub fingerprint: Fingerprint,
    /// Where validation failed.
    pub stage: Stage,
    /// What went wrong, with wasmtime's explanation.
    pub reason: String,
    /// The memory limit was the cause.
    pub memory_limit: bool,
}

/// Why `load`, `load_library` or `reload` did not make a version current.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The path cannot be resolved.
    #[error("cannot resolve module path {path}: {source}", path = path.display())]
    Path {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The version failed validation.
    #[error(transparent)]
    Rejected(Box<Rejection>),
    /// `reload` of a path that was never loaded.
    #[error("{path} is not a loaded module; load it first", path = path.display())]
    NotLoaded { path: PathBuf },
    /// Loaded before in the other role (entry module or library).
    #[error("{path} is already loaded as {loaded_as}; a module is either an entry module or a library", path = path.display())]
    Role {
        path: PathBuf,
        loaded_as: &'static str,
    },
}

/// Why a reload changed nothing although it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new version is current; this is its version number.
    Swapped(u64),
    /// The file has the fingerprint of the current version: nothing to do.
    Unchanged,
}

/// Why a running call was interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Interrupt {
    /// It ran past the per-call deadline.
    #[error("call ran past its deadline of {0:?}")]
    Deadline(Duration),
    /// Its version was replaced, and the call ran past the drain deadline.
    #[error("its version was replaced and the call ran past the drain deadline of {0:?}")]
    Drained(Duration),
    /// Its version was replaced twice (a third version was loaded): at most
    /// two versions are live.
    #[error("its version was purged: a third version was loaded while it still ran")]
    Purged,
}

/// Why a call failed. The server, the module and its other calls are
/// unaffected: the instance of a failed call is thrown away.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The module trapped (unreachable, out-of-bounds access, ...).
    #[error("version {version} trapped: {message}")]
    Trap { version: u64, message: String },
    /// The call was interrupted (epoch).
    #[error("version {version}: {why}")]
    Interrupted { version: u64, why: Interrupt },
    /// The module needed more memory than the limit allows.
    #[error("version {version} exceeded the memory limit of {limit} bytes: {message}")]
    MemoryLimit {
        version: u64,
        limit: usize,
        message: String,
    },
    /// Instantiation or a host function failed.
    #[error("version {version} failed: {message}")]
    Failed { version: u64, message: String },
    /// The module has no valid version yet.
    #[error("{path} has no valid version to call: {reason}", path = path.display())]
    NoVersion { path: PathBuf, reason: String },
    /// The module is a library (no world exports to call).
    #[error("{path} is a library module: it has no world exports to call", path = path.display())]
    Library { path: PathBuf },
}

impl CallError {
    /// The version the call ran on, if it ran.
    pub fn version(&self) -> Option<u64> {
        match self {
            CallError::Trap { version, .. }
            | CallError::Interrupted { version, .. }
            | CallError::MemoryLimit { version, .. }
            | CallError::Failed { version, .. } => Some(*version),
            CallError::Library { .. } | CallError::NoVersion { .. } => None,
        }
    }
}

/// Why the watcher cannot start.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path}: {reason}", path = path.display())]
pub struct WatchError {
    pub path: PathBuf,
    pub reason: String,
}

/// Why a host cannot be created.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// wasmtime refused the configuration.
    #[error("cannot configure wasmtime: {0}")]
    Engine(String),
    /// The cache directory cannot be used.
    #[error("cannot use {path} as the compiled-artifact cache: {reason}", path = path.display())]
    Cache { path: PathBuf, reason: String },
    /// The log file cannot be opened.
    #[error("cannot open the version log {path}: {source}", path = path.display())]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The world's host functions cannot be linked.
    #[error("cannot link the world's host functions: {0}")]
    Linker(String),
}

/// Formats a wasmtime error with its whole chain of causes on one line.
pub(crate) fn describe(e: &wasmtime::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out
}
