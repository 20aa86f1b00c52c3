//! How a [`Host`](crate::Host) runs its modules.

use std::path::PathBuf;
use std::time::Duration;

/// Where a call's instance comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceMode {
    /// A fresh `Store` and instance for every call, dropped when the call
    /// returns: nothing a call does (globals, memory) is seen by the next.
    /// The default: with the pooling allocator, instantiating a small
    /// pre-instantiated module and calling it costs about 8 µs more than a
    /// native call (bench/hot/RESULTS.md), and it makes every call as
    /// disposable as a version.
    PerCall,
    /// Up to `max_idle` instances per version are kept after a call that
    /// succeeded and reused by later calls of the same version: module
    /// state (a global counter) lives as long as the version, never longer.
    /// An instance whose call failed is dropped. For modules that are
    /// expensive to instantiate (a Python interpreter) or keep caches.
    Pooled {
        /// Idle instances kept per version.
        max_idle: usize,
    },
}

/// Settings of a [`Host`](crate::Host). `HostConfig::default()` suits
/// small modules; every field can be changed before `Host::new`.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Directory of wasmtime's on-disk cache of compiled artifacts, keyed by
    /// a hash of the module's bytes and the engine's settings: a version
    /// seen before (after a restart, or a revert) loads without compiling.
    /// `None`: compile every version.
    pub cache_dir: Option<PathBuf>,
    /// Largest linear memory an instance may have, in bytes (default
    /// 128 MiB). A version whose initial memory is larger is rejected; a
    /// call that grows past it sees `memory.grow` fail.
    pub memory_limit: usize,
    /// Largest table an instance may have, in elements (default 100 000).
    pub table_limit: usize,
    /// Bound on one call, self-tests included (default 5 s): a call still
    /// running then is interrupted and fails; the server goes on.
    pub call_timeout: Duration,
    /// How long calls in flight on a replaced version may go on (default
    /// 10 s); calls still running then are interrupted.
    pub drain_timeout: Duration,
    /// Quiet time after a file event before the watcher looks (default
    /// 20 ms).
    pub debounce: Duration,
    /// Granularity of deadlines: the epoch ticks this often while a call
    /// runs (default 5 ms), and not at all when none does.
    pub epoch_tick: Duration,
    /// Where a call's instance comes from (default [`InstanceMode::PerCall`]).
    pub instances: InstanceMode,
    /// Append every version change, rejection and free to this file, one
    /// line each, with fingerprints (a `hotswap.log`). Also
    /// logged with `tracing` in any case.
    pub log_file: Option<PathBuf>,
    /// Use wasmtime's pooling instance allocator (default): memories and
    /// tables are reserved once (address space only: 1000 slots of 4 GiB
    /// plus guards) and reused, instead of mapped and unmapped for every
    /// instance. It takes a fresh instance from about 24 µs to about 8 µs
    /// (bench/hot/RESULTS.md), which is what makes a fresh instance per
    /// call cheap. `false`: allocate on demand (for a process whose
    /// address space is limited, e.g. by `ulimit -v`).
    pub pooling: bool,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            memory_limit: 128 << 20,
            table_limit: 100_000,
            call_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
            debounce: Duration::from_millis(20),
            epoch_tick: Duration::from_millis(5),
            instances: InstanceMode::PerCall,
            log_file: None,
            pooling: true,
        }
    }
}
