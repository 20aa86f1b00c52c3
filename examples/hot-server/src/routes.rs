//! Routes: `GET /NAME/...` calls module `NAME` of the modules directory.
//!
//! At start-up every `*.wasm` and `*.wat` file of `DIR/lib/` is loaded as
//! a library (the interfaces it exports can be imported by routes), then
//! every `*.wasm` and `*.wat` file of `DIR` as a route. A route file that
//! appears later is loaded at its first request. The watcher swaps every
//! loaded module whose file changes in content.

use std::path::{Path, PathBuf};

use baton_hot::wasmtime::Store;
use baton_hot::wasmtime::component::{Instance, InstancePre};
use baton_hot::{CallError, Called, Ctx, Host, HostConfig, LoadError, Module, Watcher, World};

baton_hot::wasmtime::component::bindgen!({
    path: "wit",
    world: "route",
    wasmtime_crate: baton_hot::wasmtime,
});

/// The world of route modules (`wit/route.wit`).
#[derive(Debug)]
pub struct RouteWorld;

impl World for RouteWorld {
    type Indices = RouteIndices;
    type Exports = Route;

    fn indices(pre: &InstancePre<Ctx>) -> baton_hot::wasmtime::Result<RouteIndices> {
        RouteIndices::new(pre)
    }

    fn load(
        indices: &RouteIndices,
        store: &mut Store<Ctx>,
        instance: &Instance,
    ) -> baton_hot::wasmtime::Result<Route> {
        indices.load(store, instance)
    }
}

/// What a request to a route gets.
#[derive(Debug)]
pub enum Answer {
    /// The module answered (any status it chose).
    Module(Called<(u16, String)>),
    /// No such route: no `NAME.wasm` or `NAME.wat` in the directory.
    NotFound,
    /// The route's module has no valid version (its reason).
    Unavailable(String),
    /// The call failed (trap, deadline, memory limit).
    Failed(CallError),
}

/// The modules directory and the host that runs its modules.
#[derive(Debug, Clone)]
pub struct Routes {
    dir: PathBuf,
    host: Host<RouteWorld>,
}

/// A route name: letters, digits, `-` and `_` (so never a path).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn module_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("wasm" | "wat"))
        })
        .collect();
    files.sort();
    files
}

impl Routes {
    /// Creates the host and loads the libraries and routes of `dir`. A
    /// module that fails to load is logged and skipped (it is still
    /// watched: a fixed version loads).
    pub fn open(dir: &Path, config: HostConfig) -> anyhow::Result<Self> {
        let dir = std::fs::canonicalize(dir)
            .map_err(|e| anyhow::anyhow!("modules directory {}: {e}", dir.display()))?;
        let host = Host::new(config)?;
        // Libraries may import from each other: load in passes until no
        // more succeed, so the order of the files does not matter.
        let mut pending = module_files(&dir.join("lib"));
        loop {
            let before = pending.len();
            pending.retain(|p| host.load_library(p).is_err());
            if pending.len() == before || pending.is_empty() {
                break;
            }
        }
        for p in &pending {
            // Already logged with its reason by the host.
            tracing::warn!("library {} did not load", p.display());
        }
        for p in module_files(&dir) {
            // A rejection is logged by the host, with its reason.
            if let Err(e) = host.load(&p)
                && !matches!(e, LoadError::Rejected(_))
            {
                tracing::warn!("{e}");
            }
        }
        Ok(Self { dir, host })
    }

    /// Starts the watcher on the directory and its `lib/`.
    pub fn watch(&self) -> anyhow::Result<Watcher> {
        let mut dirs = vec![self.dir.clone()];
        let lib = self.dir.join("lib");
        if lib.is_dir() {
            dirs.push(lib);
        }
        Ok(self.host.watch(&dirs)?)
    }

    /// The host (for status and tests).
    pub fn host(&self) -> &Host<RouteWorld> {
        &self.host
    }

    /// The module of route `name`, loading it if its file appeared since.
    fn module(&self, name: &str) -> Result<Module, Answer> {
        if !valid_name(name) {
            return Err(Answer::NotFound);
        }
        for ext in ["wasm", "wat"] {
            let path = self.dir.join(format!("{name}.{ext}"));
            if let Some(m) = self.host.module(&path) {
                return Ok(m);
            }
            if path.is_file() {
                return match self.host.load(&path) {
                    Ok(m) => Ok(m),
                    Err(e) => Err(Answer::Unavailable(e.to_string())),
                };
            }
        }
        Err(Answer::NotFound)
    }

    /// Calls route `name` with `method` and `rest` (the path after
    /// `/NAME`, with its query). Blocks for the call: run it off the async
    /// threads.
    pub fn call(&self, name: &str, method: &str, rest: &str) -> Answer {
        let module = match self.module(name) {
            Ok(m) => m,
            Err(a) => return a,
        };
        match self.host.call(&module, |route, store| {
            route.call_handle(store, method, rest)
        }) {
            Ok(called) => Answer::Module(called),
            Err(CallError::NoVersion { reason, .. }) => Answer::Unavailable(reason),
            Err(e) => Answer::Failed(e),
        }
    }

    /// A text report of every module: versions, fingerprints, calls in
    /// flight, the last rejection.
    pub fn status_text(&self) -> String {
        use std::fmt::Write;
        let status = self.host.status();
        let mut out = String::new();
        for m in &status.modules {
            let kind = if m.library { "library" } else { "route" };
            let _ = write!(out, "{kind} {}", m.path.display());
            match &m.current {
                Some(c) => {
                    let _ = write!(
                        out,
                        ": version {} fingerprint {} ({} in flight)",
                        c.version, c.fingerprint, c.calls_in_flight
                    );
                }
                None => out.push_str(": no valid version"),
            }
            if let Some(d) = &m.draining {
                let _ = write!(
                    out,
                    "; draining version {} ({} in flight)",
                    d.version, d.calls_in_flight
                );
            }
            if let Some(r) = &m.last_rejected {
                let _ = write!(
                    out,
                    "; last rejected fingerprint {} at {}: {}",
                    r.fingerprint, r.stage, r.reason
                );
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "compiled-artifact cache: {} hit(s), {} miss(es)",
            status.cache_hits, status.cache_misses
        );
        out
    }
}
