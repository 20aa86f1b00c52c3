//! What the embedding app decides: the WIT world its modules implement
//! ([`World`]), and the per-store state every call runs with ([`Ctx`]).

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{Instance, InstancePre, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::version::Guard;

/// The WIT world that entry modules implement, as the app chose it.
///
/// Usually a thin adapter over what `wasmtime::component::bindgen!`
/// generates for the world: `Indices` is the generated `FooIndices`
/// (whose `new` type-checks every export against the world) and `Exports`
/// the generated `Foo`.
///
/// ```ignore
/// wasmtime::component::bindgen!({ path: "wit", world: "route" });
///
/// struct RouteWorld;
/// impl baton_hot::World for RouteWorld {
///     type Indices = RouteIndices;
///     type Exports = Route;
///     fn indices(pre: &InstancePre<Ctx>) -> wasmtime::Result<RouteIndices> {
///         RouteIndices::new(pre)
///     }
///     fn load(i: &RouteIndices, store: &mut Store<Ctx>, instance: &Instance) -> wasmtime::Result<Route> {
///         i.load(store, instance)
///     }
/// }
/// ```
pub trait World: Send + Sync + 'static {
    /// Export indices of a version, type-checked against the world.
    type Indices: Send + Sync + 'static;
    /// A version's exports bound to one instance, what calls use.
    type Exports: Send + 'static;

    /// Adds the host functions the world imports. WASI 0.2 is linked
    /// already (modules built by componentize-py need it); a module gets
    /// no file system, network or environment from it, only stderr, clocks
    /// and random numbers.
    fn add_to_linker(_linker: &mut Linker<Ctx>) -> wasmtime::Result<()> {
        Ok(())
    }

    /// Type-checks the exports of a version (an error rejects it).
    fn indices(pre: &InstancePre<Ctx>) -> wasmtime::Result<Self::Indices>;

    /// Binds the exports to a fresh instance.
    fn load(
        indices: &Self::Indices,
        store: &mut Store<Ctx>,
        instance: &Instance,
    ) -> wasmtime::Result<Self::Exports>;

    /// A self-test run on every new version before it becomes current (an
    /// error rejects it). The default does nothing; the module's own
    /// optional `init` export is run in any case.
    fn self_test(_exports: &Self::Exports, _store: &mut Store<Ctx>) -> wasmtime::Result<()> {
        Ok(())
    }
}

/// Per-store limits: the memory and table sizes of [`HostConfig`], and a
/// note of a growth that was refused (so a failure can name its cause).
///
/// [`HostConfig`]: crate::HostConfig
#[derive(Debug)]
pub(crate) struct Limits {
    pub memory: usize,
    pub table_elements: usize,
    /// The largest memory size refused, in bytes.
    pub refused: Option<usize>,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            self.refused = Some(self.refused.map_or(desired, |r| r.max(desired)));
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_elements)
    }
}

/// The state of one store: one call (or one pooled instance) of one
/// version, with the instances of its dependencies.
pub struct Ctx {
    pub(crate) limits: Limits,
    /// Built on first use: most modules never touch WASI.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    /// Instances of dependency versions in this store, by linked-version id.
    pub(crate) deps: HashMap<u64, Instance>,
    /// When the current call must end.
    pub(crate) deadline: Instant,
    /// The version this store belongs to: retired, purged, drain deadline.
    pub(crate) guard: Arc<Guard>,
    /// Whatever the app wants its host functions to see.
    pub app: Option<Box<dyn Any + Send>>,
}

impl Ctx {
    pub(crate) fn new(limits: Limits, guard: Arc<Guard>) -> Self {
        Self {
            limits,
            wasi: None,
            table: ResourceTable::new(),
            deps: HashMap::new(),
            deadline: Instant::now(),
            guard,
            app: None,
        }
    }
}

impl fmt::Debug for Ctx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx")
            .field("limits", &self.limits)
            .field("wasi", &self.wasi.is_some())
            .field("deps", &self.deps.len())
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let ctx = self
            .wasi
            .get_or_insert_with(|| WasiCtxBuilder::new().inherit_stderr().build());
        WasiCtxView {
            ctx,
            table: &mut self.table,
        }
    }
}
