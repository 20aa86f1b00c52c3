//! The host: one engine, the modules it loaded, their versions, and calls.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Instance, Linker};
use wasmtime::{Cache, CacheConfig, Engine, Store, UpdateDeadline};

use crate::config::{HostConfig, InstanceMode};
use crate::current::Current;
use crate::epoch::Ticker;
use crate::error::{
    CallError, HostError, Interrupt, LoadError, Outcome, Rejection, Stage, describe,
};
use crate::fingerprint::Fingerprint;
use crate::link;
use crate::swaplog::SwapLog;
use crate::version::{Compiled, Freed, Guard, Linked, Pooled};
use crate::world::{Ctx, Limits, World};

/// A loaded module: identified by its canonical absolute path, so the same
/// file name in two directories is two modules.
#[derive(Debug, Clone)]
pub struct Module {
    index: usize,
    path: Arc<PathBuf>,
}

impl Module {
    /// The canonical path that identifies the module.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The result of a call, with the version that produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Called<R> {
    pub value: R,
    /// The module's version number (1, 2, ...; one more at every switch,
    /// re-links included).
    pub version: u64,
    pub fingerprint: Fingerprint,
}

/// One live version of a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionStatus {
    pub version: u64,
    pub fingerprint: Fingerprint,
    pub calls_in_flight: usize,
    /// How long compiling it took (near zero when it came from the cache,
    /// or is a re-link of content compiled before).
    pub compile_time: Duration,
}

/// What `Host::status` reports about one module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleStatus {
    pub path: PathBuf,
    /// A library: it provides interfaces to other modules.
    pub library: bool,
    /// The version new calls get (none if no version was ever valid).
    pub current: Option<VersionStatus>,
    /// The replaced version, while calls still run on it.
    pub draining: Option<VersionStatus>,
    /// The last version that was refused, if the current one is older.
    pub last_rejected: Option<Rejection>,
    /// Modules whose interfaces the current version imports.
    pub dependencies: Vec<PathBuf>,
    /// Modules whose current versions import this one's interfaces.
    pub dependents: Vec<PathBuf>,
    /// How many times the file was read and fingerprinted (by `load`,
    /// `reload` or the watcher), changed or not.
    pub checks: u64,
}

/// What `Host::status` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub modules: Vec<ModuleStatus>,
    /// Compilations answered from the on-disk cache, and compiled afresh.
    pub cache_hits: usize,
    pub cache_misses: usize,
}

/// The current linked version of every module, by module index: swapped
/// as a whole, so a dependency and its dependents switch together.
struct Table<W: World> {
    linked: Vec<Option<Arc<Linked<W>>>>,
}

impl<W: World> Clone for Table<W> {
    fn clone(&self) -> Self {
        Self {
            linked: self.linked.clone(),
        }
    }
}

struct Entry<W: World> {
    path: Arc<PathBuf>,
    library: bool,
    /// The last version number given out.
    version: u64,
    /// The replaced version, while anything still holds it.
    draining: Option<Weak<Linked<W>>>,
    /// Set when a version is refused, cleared when one becomes current.
    last_rejected: Option<Rejection>,
    checks: u64,
}

pub(crate) struct Inner<W: World> {
    engine: Engine,
    config: HostConfig,
    base: Linker<Ctx>,
    table: Current<Table<W>>,
    entries: Mutex<Vec<Entry<W>>>,
    by_path: Mutex<HashMap<PathBuf, usize>>,
    /// Serialises loads and reloads (compiling happens under it, never
    /// under `entries`, so status and calls are never held up).
    load_lock: Mutex<()>,
    log: Arc<SwapLog>,
    ticker: Ticker,
    next_id: AtomicU64,
    cache: Option<Cache>,
    freed: Arc<Freed>,
}

/// Runs modules that implement the world `W`: one wasmtime engine, the
/// modules loaded into it, and at most two live versions of each.
///
/// Cheap to clone (a reference to shared state); every method may be
/// called from any thread.
pub struct Host<W: World> {
    pub(crate) inner: Arc<Inner<W>>,
}

impl<W: World> Clone for Host<W> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<W: World> std::fmt::Debug for Host<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data
    // behind (every update is a single assignment), so poisoning is
    // ignored rather than spread to every later call.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How one version failed to link or validate.
struct Failure {
    stage: Stage,
    reason: String,
    memory_limit: bool,
}

impl Failure {
    fn new(stage: Stage, reason: impl Into<String>) -> Self {
        Self {
            stage,
            reason: reason.into(),
            memory_limit: false,
        }
    }
}

impl<W: World> Host<W> {
    /// Creates the engine (Cranelift, component model, epoch interruption)
    /// and links WASI and the world's host functions.
    pub fn new(config: HostConfig) -> Result<Self, HostError> {
        let mut wc = wasmtime::Config::new();
        wc.wasm_component_model(true);
        wc.epoch_interruption(true);
        wc.parallel_compilation(true);
        let cache = match &config.cache_dir {
            None => None,
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| HostError::Cache {
                    path: dir.clone(),
                    reason: e.to_string(),
                })?;
                let mut cc = CacheConfig::new();
                cc.with_directory(dir.clone());
                let cache = Cache::new(cc).map_err(|e| HostError::Cache {
                    path: dir.clone(),
                    reason: describe(&e),
                })?;
                wc.cache(Some(cache.clone()));
                Some(cache)
            }
        };
        if config.pooling {
            // Slots as large as a 32-bit memory can grow (wasmtime's
            // default), so that `memory_limit` is enforced by the store's
            // limiter, which notes what it refused, never by the slot size.
            let pool = wasmtime::PoolingAllocationConfig::new();
            wc.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&wc).map_err(|e| HostError::Engine(describe(&e)))?;
        let mut base = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut base)
            .map_err(|e| HostError::Linker(format!("WASI: {}", describe(&e))))?;
        W::add_to_linker(&mut base).map_err(|e| HostError::Linker(describe(&e)))?;
        let log = Arc::new(SwapLog::open(config.log_file.as_ref())?);
        let ticker = Ticker::start(engine.clone(), config.epoch_tick);
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                config,
                base,
                table: Current::new(Table { linked: Vec::new() }),
                entries: Mutex::new(Vec::new()),
                by_path: Mutex::new(HashMap::new()),
                load_lock: Mutex::new(()),
                log,
                ticker,
                next_id: AtomicU64::new(1),
                cache,
                freed: Arc::new(Freed::default()),
            }),
        })
    }

    /// The engine (to compile something of your own with the same
    /// settings).
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The configuration the host was created with.
    pub fn config(&self) -> &HostConfig {
        &self.inner.config
    }

    /// Loads the entry module at `path` (a component, binary or WAT text):
    /// compiles, links and validates it (its exports must type-check
    /// against the world) and makes it current. Loading a path again
    /// returns the same module and does nothing else (use `reload`).
    ///
    /// A module whose first version is refused is still registered, so
    /// `status` shows why and the watcher or `reload` can bring a good
    /// version; calls on it fail until then.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<Module, LoadError> {
        self.load_as(path.as_ref(), false)
    }

    /// Loads a library module: it need not implement the world; the
    /// interfaces it exports become importable by other modules. Load a
    /// library before the modules that import from it.
    pub fn load_library(&self, path: impl AsRef<Path>) -> Result<Module, LoadError> {
        self.load_as(path.as_ref(), true)
    }

    /// The module loaded from `path`, if any.
    pub fn module(&self, path: impl AsRef<Path>) -> Option<Module> {
        let path = std::fs::canonicalize(path.as_ref()).ok()?;
        let index = *lock(&self.inner.by_path).get(&path)?;
        Some(Module {
            index,
            path: Arc::clone(&lock(&self.inner.entries)[index].path),
        })
    }

    fn load_as(&self, path: &Path, library: bool) -> Result<Module, LoadError> {
        let canonical = std::fs::canonicalize(path).map_err(|source| LoadError::Path {
            path: path.to_owned(),
            source,
        })?;
        let _serial = lock(&self.inner.load_lock);
        if let Some(&index) = lock(&self.inner.by_path).get(&canonical) {
            let entries = lock(&self.inner.entries);
            let entry = &entries[index];
            if entry.library != library {
                return Err(LoadError::Role {
                    path: canonical,
                    loaded_as: if entry.library {
                        "a library"
                    } else {
                        "an entry module"
                    },
                });
            }
            return Ok(Module {
                index,
                path: Arc::clone(&entry.path),
            });
        }
        let path = Arc::new(canonical.clone());
        let index = {
            let mut entries = lock(&self.inner.entries);
            entries.push(Entry {
                path: Arc::clone(&path),
                library,
                version: 0,
                draining: None,
                last_rejected: None,
                checks: 0,
            });
            entries.len() - 1
        };
        lock(&self.inner.by_path).insert(canonical, index);
        self.inner.table.update(|t| {
            let mut t = Table::clone(t);
            t.linked.push(None);
            t
        });
        let module = Module { index, path };
        self.update(&module, true)?;
        Ok(module)
    }

    /// Reads the module's file again; if its fingerprint changed, compiles,
    /// links and validates the new version (and re-links every module that
    /// depends on it) and makes them current together. A refused version
    /// changes nothing: the current one keeps serving.
    pub fn reload(&self, module: &Module) -> Result<Outcome, LoadError> {
        let _serial = lock(&self.inner.load_lock);
        self.update(module, false)
    }

    /// `reload` by path (what the watcher calls).
    pub fn reload_path(&self, path: impl AsRef<Path>) -> Result<Outcome, LoadError> {
        let path = path.as_ref();
        match self.module(path) {
            Some(m) => self.reload(&m),
            None => Err(LoadError::NotLoaded {
                path: path.to_owned(),
            }),
        }
    }

    /// Under `load_lock`.
    fn update(&self, module: &Module, first: bool) -> Result<Outcome, LoadError> {
        let inner = &self.inner;
        let started = Instant::now();
        let current = inner.table.load().linked[module.index].clone();
        let reject = |fingerprint: Fingerprint, f: Failure| {
            let rejection = Rejection {
                path: module.path.to_path_buf(),
                fingerprint,
                stage: f.stage,
                reason: f.reason,
                memory_limit: f.memory_limit,
            };
            inner.log.rejected(
                &rejection,
                current
                    .as_ref()
                    .map(|c| (c.version, c.compiled.fingerprint)),
            );
            lock(&inner.entries)[module.index].last_rejected = Some(rejection.clone());
            LoadError::Rejected(Box::new(rejection))
        };
        let bytes = match std::fs::read(module.path.as_path()) {
            Ok(b) => b,
            Err(e) => {
                return Err(reject(
                    Fingerprint::of(b""),
                    Failure::new(Stage::Read, e.to_string()),
                ));
            }
        };
        let fingerprint = Fingerprint::of(&bytes);
        lock(&inner.entries)[module.index].checks += 1;
        if !first
            && let Some(c) = &current
            && c.compiled.fingerprint == fingerprint
        {
            tracing::debug!(
                "{}: fingerprint {fingerprint} unchanged; nothing to do",
                module.path.display()
            );
            return Ok(Outcome::Unchanged);
        }
        let t = Instant::now();
        let component = Component::new(&inner.engine, &bytes)
            .map_err(|e| reject(fingerprint, Failure::new(Stage::Compile, describe(&e))))?;
        let compiled = Arc::new(Compiled {
            fingerprint,
            component,
            compile_time: t.elapsed(),
        });
        let installed = self
            .install(module.index, compiled)
            .map_err(|f| reject(fingerprint, f))?;
        let version = installed
            .iter()
            .find(|l| l.module == module.index)
            .map_or(0, |l| l.version);
        let took = started.elapsed();
        let mut entries = lock(&inner.entries);
        for l in &installed {
            let entry = &mut entries[l.module];
            let was = replaced(entry.draining.as_ref());
            let why = if l.module == module.index {
                if first {
                    "loaded".to_owned()
                } else {
                    "new content".to_owned()
                }
            } else {
                format!(
                    "re-linked: dependency {} is now version {version}",
                    module.path.display()
                )
            };
            inner
                .log
                .current(&l.path, l.version, l.compiled.fingerprint, was, &why, took);
            entry.last_rejected = None;
        }
        Ok(Outcome::Swapped(version))
    }

    /// Builds new linked versions of module `index` (with `compiled`) and
    /// of every module that depends on it, validates them all, then makes
    /// them current in one swap and retires the versions they replace.
    /// Returns the installed versions (the changed module first).
    fn install(
        &self,
        index: usize,
        compiled: Arc<Compiled>,
    ) -> Result<Vec<Arc<Linked<W>>>, Failure> {
        let inner = &self.inner;
        let table = inner.table.load();
        let order = dependents_in_order(&table, index);
        let mut fresh: HashMap<usize, Arc<Linked<W>>> = HashMap::new();
        let first = self.link(index, compiled, &table, &fresh, &order)?;
        fresh.insert(index, first);
        for &d in &order[1..] {
            let Some(old) = &table.linked[d] else {
                continue;
            };
            match self.link(d, Arc::clone(&old.compiled), &table, &fresh, &order) {
                Ok(l) => {
                    fresh.insert(d, l);
                }
                Err(f) => {
                    return Err(Failure {
                        stage: Stage::Dependent,
                        reason: format!(
                            "dependent {} fails with it ({}: {}); no module switches",
                            old.path.display(),
                            f.stage,
                            f.reason
                        ),
                        memory_limit: f.memory_limit,
                    });
                }
            }
        }
        // Two versions at most: a module whose previous version still runs
        // calls waits for them (up to that version's drain deadline, when
        // they are interrupted anyway) before a third version goes live.
        // Without the wait, two swaps in quick succession would fail the
        // calls still running on the oldest version.
        let oldest: Vec<Weak<Linked<W>>> = {
            let entries = lock(&inner.entries);
            fresh
                .keys()
                .filter_map(|&i| entries[i].draining.clone())
                .collect()
        };
        for older in &oldest {
            self.wait_until_freed(older);
        }
        // The switch: one store of the whole table.
        let mut next = Table::clone(&table);
        for (&i, l) in &fresh {
            next.linked[i] = Some(Arc::clone(l));
        }
        inner.table.store(Arc::new(next));
        // Retire what was replaced: calls in flight finish on it, until the
        // drain deadline; a version older still is purged (two at most).
        let mut entries = lock(&inner.entries);
        for &i in fresh.keys() {
            let entry = &mut entries[i];
            entry.version += 1;
            if let Some(old) = &table.linked[i] {
                old.guard.retire(inner.config.drain_timeout);
                lock(&old.pool).clear();
                if let Some(older) = entry.draining.as_ref().and_then(Weak::upgrade) {
                    let calls = older.guard.calls.load(Ordering::SeqCst);
                    older.guard.purge();
                    inner.log.note(
                        &older.path,
                        &format!(
                            "version {} purged: a third version arrived and {calls} call(s) still ran on it past the drain deadline",
                            older.version
                        ),
                    );
                }
                entry.draining = Some(Arc::downgrade(old));
            }
        }
        drop(entries);
        let mut installed: Vec<_> = order
            .iter()
            .filter_map(|i| fresh.get(i).map(Arc::clone))
            .collect();
        installed.dedup_by_key(|l| l.id);
        Ok(installed)
    }

    /// Waits until `older` is freed or its drain deadline has passed.
    fn wait_until_freed(&self, older: &Weak<Linked<W>>) {
        let Some(deadline) = older.upgrade().and_then(|o| {
            self.inner.log.note(
                &o.path,
                &format!(
                    "the next version waits for {} call(s) still running on version {} (at most until its drain deadline)",
                    o.guard.calls.load(Ordering::SeqCst),
                    o.version
                ),
            );
            o.guard.drain_deadline()
        }) else {
            return;
        };
        let freed = &self.inner.freed;
        let mut count = lock(&freed.count);
        // The count is read and waited on under the lock that every free
        // takes to signal, so a free cannot slip between check and wait.
        while older.strong_count() > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            count = freed
                .cv
                .wait_timeout(count, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Links one version of module `index` against the current versions of
    /// its providers (or their `fresh` versions), and validates it.
    fn link(
        &self,
        index: usize,
        compiled: Arc<Compiled>,
        table: &Table<W>,
        fresh: &HashMap<usize, Arc<Linked<W>>>,
        closure: &[usize],
    ) -> Result<Arc<Linked<W>>, Failure> {
        let inner = &self.inner;
        let (path, library, version) = {
            let entries = lock(&inner.entries);
            let e = &entries[index];
            (e.path.to_path_buf(), e.library, e.version + 1)
        };
        let engine = &inner.engine;
        let mut linker = inner.base.clone();
        let mut deps = Vec::new();
        for (iface, ty) in link::imported_instances(engine, &compiled.component) {
            let Some(provider) = Self::provider(&iface, table, fresh, index)? else {
                // Left to the host's linker (WASI, the world's imports);
                // instantiate_pre names it if nobody provides it.
                continue;
            };
            if closure.contains(&provider.module) && !fresh.contains_key(&provider.module) {
                return Err(Failure::new(
                    Stage::Link,
                    format!(
                        "dependency cycle: `{iface}` comes from {}, which depends on this module",
                        provider.path.display()
                    ),
                ));
            }
            link::forward(
                &mut linker,
                engine,
                &iface,
                &ty,
                &provider.compiled.component,
                provider.id,
            )
            .map_err(|r| Failure::new(Stage::Link, r))?;
            if !deps.iter().any(|d: &Arc<Linked<W>>| d.id == provider.id) {
                deps.push(provider);
            }
        }
        let pre = linker.instantiate_pre(&compiled.component).map_err(|e| {
            Failure::new(
                Stage::Link,
                format!(
                    "{} (neither the host nor a loaded library provides it)",
                    describe(&e)
                ),
            )
        })?;
        let indices = if library {
            None
        } else {
            Some(W::indices(&pre).map_err(|e| Failure::new(Stage::Exports, describe(&e)))?)
        };
        let init = compiled.component.get_export(None, "init").is_some();
        let exports = if library {
            link::exported_instances(engine, &compiled.component)
        } else {
            Vec::new()
        };
        let linked = Arc::new(Linked {
            id: inner.next_id.fetch_add(1, Ordering::Relaxed),
            module: index,
            path,
            version,
            compiled,
            pre,
            indices,
            init,
            deps,
            exports,
            guard: Arc::new(Guard::default()),
            pool: Mutex::new(Vec::new()),
            log: Arc::clone(&inner.log),
            freed: Arc::clone(&inner.freed),
        });
        self.validate(&linked)?;
        Ok(linked)
    }

    /// The library that exports `iface`: its fresh version if it is being
    /// re-linked, else its current one.
    fn provider(
        iface: &str,
        table: &Table<W>,
        fresh: &HashMap<usize, Arc<Linked<W>>>,
        importer: usize,
    ) -> Result<Option<Arc<Linked<W>>>, Failure> {
        let found = fresh
            .values()
            .chain(table.linked.iter().flatten())
            .find(|l| l.exports.iter().any(|e| e == iface));
        match found {
            Some(l) if l.module == importer => Err(Failure::new(
                Stage::Link,
                format!("the module imports `{iface}`, which it exports itself"),
            )),
            Some(l) => Ok(Some(fresh.get(&l.module).map_or_else(
                || {
                    table.linked[l.module]
                        .clone()
                        .unwrap_or_else(|| Arc::clone(l))
                },
                Arc::clone,
            ))),
            None => Ok(None),
        }
    }

    /// Instantiates the version in a fresh store and runs its `init`
    /// export and the world's self-test.
    fn validate(&self, linked: &Arc<Linked<W>>) -> Result<(), Failure> {
        let _ticking = self.inner.ticker.enter();
        let mut store = self.store(linked);
        let instance = instantiate(&mut store, linked).map_err(|e| {
            let mut f = Failure::new(Stage::Instantiate, describe(&e));
            if let Some(size) = store.data().limits.refused {
                f.memory_limit = true;
                f.reason = format!(
                    "needs a memory of {size} bytes, above the limit of {} bytes ({})",
                    self.inner.config.memory_limit, f.reason
                );
            }
            f
        })?;
        if linked.init {
            let init = instance
                .get_typed_func::<(), (Result<(), String>,)>(&mut store, "init")
                .map_err(|e| {
                    Failure::new(
                        Stage::Exports,
                        format!(
                            "export `init` must be `func() -> result<_, string>`: {}",
                            describe(&e)
                        ),
                    )
                })?;
            match init.call(&mut store, ()) {
                Ok((Ok(()),)) => {}
                Ok((Err(msg),)) => {
                    return Err(Failure::new(
                        Stage::Init,
                        format!("init returned an error: {msg}"),
                    ));
                }
                Err(e) => return Err(self.call_failure(Stage::Init, &store, &e)),
            }
        }
        if let Some(indices) = &linked.indices {
            let exports = W::load(indices, &mut store, &instance)
                .map_err(|e| Failure::new(Stage::Exports, describe(&e)))?;
            W::self_test(&exports, &mut store)
                .map_err(|e| self.call_failure(Stage::SelfTest, &store, &e))?;
        }
        Ok(())
    }

    fn call_failure(&self, stage: Stage, store: &Store<Ctx>, e: &wasmtime::Error) -> Failure {
        let mut f = Failure::new(stage, describe(e));
        if store.data().limits.refused.is_some() {
            f.memory_limit = true;
            f.reason = format!(
                "exceeded the memory limit of {} bytes ({})",
                self.inner.config.memory_limit, f.reason
            );
        }
        f
    }

    /// A store for one call (or one pooled instance) of `linked`: limits,
    /// and the epoch callback that enforces the call deadline and the drain.
    fn store(&self, linked: &Linked<W>) -> Store<Ctx> {
        let cfg = &self.inner.config;
        let limits = Limits {
            memory: cfg.memory_limit,
            table_elements: cfg.table_limit,
            refused: None,
        };
        let mut store = Store::new(
            &self.inner.engine,
            Ctx::new(limits, Arc::clone(&linked.guard)),
        );
        store.limiter(|c| &mut c.limits);
        let timeout = cfg.call_timeout;
        store.epoch_deadline_callback(move |ctx| {
            let now = Instant::now();
            let data = ctx.data();
            if let Some(why) = data.guard.interrupt(now) {
                return Err(wasmtime::Error::new(why));
            }
            if now >= data.deadline {
                return Err(wasmtime::Error::new(Interrupt::Deadline(timeout)));
            }
            Ok(UpdateDeadline::Continue(1))
        });
        store.data_mut().deadline = Instant::now() + timeout;
        store.set_epoch_deadline(1);
        store
    }

    /// Calls module `module`: `f` gets the exports of an instance of the
    /// current version (fresh, or pooled) and its store. The call ends in
    /// error if it traps, runs past `call_timeout`, exceeds the memory
    /// limit, or its version is replaced and it runs past `drain_timeout`.
    pub fn call<R>(
        &self,
        module: &Module,
        f: impl FnOnce(&W::Exports, &mut Store<Ctx>) -> wasmtime::Result<R>,
    ) -> Result<Called<R>, CallError> {
        let inner = &self.inner;
        let Some(linked) = inner.table.load().linked[module.index].clone() else {
            let entries = lock(&inner.entries);
            return Err(CallError::NoVersion {
                path: module.path.to_path_buf(),
                reason: entries[module.index]
                    .last_rejected
                    .as_ref()
                    .map_or_else(|| "not loaded".to_owned(), ToString::to_string),
            });
        };
        if linked.indices.is_none() {
            return Err(CallError::Library {
                path: module.path.to_path_buf(),
            });
        }
        let _ticking = inner.ticker.enter();
        let _in_flight = InFlight::new(&linked.guard);
        let version = linked.version;
        let pooled = match inner.config.instances {
            InstanceMode::Pooled { .. } => lock(&linked.pool).pop(),
            InstanceMode::PerCall => None,
        };
        let Pooled { mut store, exports } = match pooled {
            Some(p) => p,
            None => {
                let mut store = self.store(&linked);
                let exports = instantiate(&mut store, &linked)
                    .and_then(|instance| {
                        let indices = linked
                            .indices
                            .as_ref()
                            .expect("checked above: entry modules have indices");
                        W::load(indices, &mut store, &instance)
                    })
                    .map_err(|e| self.classify(version, &store, &e))?;
                Pooled { store, exports }
            }
        };
        store.data_mut().deadline = Instant::now() + inner.config.call_timeout;
        store.data_mut().limits.refused = None;
        store.set_epoch_deadline(1);
        match f(&exports, &mut store) {
            Ok(value) => {
                if let InstanceMode::Pooled { max_idle } = inner.config.instances
                    && !linked.guard.retired()
                {
                    let mut pool = lock(&linked.pool);
                    if pool.len() < max_idle {
                        pool.push(Pooled { store, exports });
                    }
                }
                Ok(Called {
                    value,
                    version,
                    fingerprint: linked.compiled.fingerprint,
                })
            }
            Err(e) => {
                let err = self.classify(version, &store, &e);
                if let CallError::Interrupted {
                    why: why @ (Interrupt::Drained(_) | Interrupt::Purged),
                    ..
                } = &err
                {
                    inner.log.note(
                        &linked.path,
                        &format!("a call on version {version} was interrupted: {why}"),
                    );
                }
                Err(err)
            }
        }
    }

    fn classify(&self, version: u64, store: &Store<Ctx>, e: &wasmtime::Error) -> CallError {
        if let Some(&why) = e.downcast_ref::<Interrupt>() {
            return CallError::Interrupted { version, why };
        }
        let message = describe(e);
        if store.data().limits.refused.is_some() {
            return CallError::MemoryLimit {
                version,
                limit: self.inner.config.memory_limit,
                message,
            };
        }
        if e.downcast_ref::<wasmtime::Trap>().is_some() {
            return CallError::Trap { version, message };
        }
        CallError::Failed { version, message }
    }

    /// Every module, its live versions, the last refused version, and its
    /// dependencies.
    pub fn status(&self) -> Status {
        let table = self.inner.table.load();
        let entries = lock(&self.inner.entries);
        let mut modules = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            // A module being registered right now may not be in this table yet.
            let current = table.linked.get(i).and_then(Option::as_ref);
            let draining = e
                .draining
                .as_ref()
                .and_then(Weak::upgrade)
                .filter(|d| current.is_none_or(|c| c.id != d.id));
            let dependents = table
                .linked
                .iter()
                .flatten()
                .filter(|l| l.deps.iter().any(|d| d.module == i))
                .map(|l| l.path.clone())
                .collect();
            modules.push(ModuleStatus {
                path: e.path.to_path_buf(),
                library: e.library,
                current: current.map(|l| version_status(l)),
                draining: draining.as_deref().map(version_status),
                last_rejected: e.last_rejected.clone(),
                dependencies: current
                    .map(|l| l.deps.iter().map(|d| d.path.clone()).collect())
                    .unwrap_or_default(),
                dependents,
                checks: e.checks,
            });
        }
        Status {
            modules,
            cache_hits: self.inner.cache.as_ref().map_or(0, Cache::cache_hits),
            cache_misses: self.inner.cache.as_ref().map_or(0, Cache::cache_misses),
        }
    }

    /// The status of one module.
    pub fn module_status(&self, module: &Module) -> ModuleStatus {
        self.status().modules.swap_remove(module.index)
    }
}

fn version_status<W: World>(l: &Linked<W>) -> VersionStatus {
    VersionStatus {
        version: l.version,
        fingerprint: l.compiled.fingerprint,
        calls_in_flight: l.guard.calls.load(Ordering::SeqCst),
        compile_time: l.compiled.compile_time,
    }
}

/// The version and fingerprint of the version just replaced.
fn replaced<W: World>(draining: Option<&Weak<Linked<W>>>) -> Option<(u64, Fingerprint)> {
    draining
        .and_then(Weak::upgrade)
        .map(|l| (l.version, l.compiled.fingerprint))
}

/// Counts a call in flight on a version for as long as it lives.
struct InFlight<'a>(&'a Guard);

impl<'a> InFlight<'a> {
    fn new(guard: &'a Guard) -> Self {
        guard.calls.fetch_add(1, Ordering::SeqCst);
        Self(guard)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.calls.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Instantiates `linked` in `store`, after the versions it depends on
/// (each once per store, even when several modules import it).
fn instantiate<W: World>(store: &mut Store<Ctx>, linked: &Linked<W>) -> wasmtime::Result<Instance> {
    for dep in &linked.deps {
        if !store.data().deps.contains_key(&dep.id) {
            let instance = instantiate(store, dep)?;
            store.data_mut().deps.insert(dep.id, instance);
        }
    }
    linked.pre.instantiate(store)
}

/// Module `index` followed by every module whose current version depends
/// on it, directly or not, each after all of its own dependencies in the
/// set.
fn dependents_in_order<W: World>(table: &Table<W>, index: usize) -> Vec<usize> {
    let depends_on = |l: &Linked<W>, m: usize| l.deps.iter().any(|d| d.module == m);
    let mut set = BTreeSet::from([index]);
    let mut queue = VecDeque::from([index]);
    while let Some(m) = queue.pop_front() {
        for (i, l) in table.linked.iter().enumerate() {
            if let Some(l) = l
                && depends_on(l, m)
                && set.insert(i)
            {
                queue.push_back(i);
            }
        }
    }
    // Kahn's algorithm inside the set; the changed module comes first.
    let mut order = vec![index];
    let mut placed = BTreeSet::from([index]);
    while placed.len() < set.len() {
        let before = placed.len();
        for &i in &set {
            if placed.contains(&i) {
                continue;
            }
            let Some(l) = &table.linked[i] else {
                placed.insert(i);
                continue;
            };
            if l.deps
                .iter()
                .all(|d| !set.contains(&d.module) || placed.contains(&d.module))
            {
                order.push(i);
                placed.insert(i);
            }
        }
        if placed.len() == before {
            // A cycle cannot be built by loading (a module's providers are
            // loaded before it); stop rather than spin if one ever is.
            order.extend(set.iter().filter(|i| !placed.contains(i)));
            break;
        }
    }
    order
}
