//! What the tests share: the test world, WAT modules made to order, gates
//! that hold a call in flight, and hosts in temporary directories.
#![allow(dead_code)] // each test binary uses its own part
#![expect(
    clippy::unwrap_used,
    reason = "in tests a failed unwrap is a failed test, with its location"
)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, LazyLock, Mutex};
use std::time::{Duration, Instant};

use baton_hot::wasmtime::Store;
use baton_hot::wasmtime::component::{Instance, InstancePre, Linker};
use baton_hot::{CallError, Called, Ctx, Host, HostConfig, Module, World};

baton_hot::wasmtime::component::bindgen!({
    path: "tests/wit",
    world: "handler",
    wasmtime_crate: baton_hot::wasmtime,
});

/// The world of the tests: `handle(arg) -> string`, and the host's `wait`.
pub struct TestWorld;

impl World for TestWorld {
    type Indices = HandlerIndices;
    type Exports = Handler;

    fn add_to_linker(linker: &mut Linker<Ctx>) -> baton_hot::wasmtime::Result<()> {
        linker
            .root()
            .func_wrap("wait", |_store, (name,): (String,)| GATES.wait(&name))
    }

    fn indices(pre: &InstancePre<Ctx>) -> baton_hot::wasmtime::Result<HandlerIndices> {
        HandlerIndices::new(pre)
    }

    fn load(
        indices: &HandlerIndices,
        store: &mut Store<Ctx>,
        instance: &Instance,
    ) -> baton_hot::wasmtime::Result<Handler> {
        indices.load(store, instance)
    }

    /// A version whose answer starts with `fail` fails its self-test.
    fn self_test(exports: &Handler, store: &mut Store<Ctx>) -> baton_hot::wasmtime::Result<()> {
        let answer = exports.call_handle(store, "self-test")?;
        if answer.starts_with("fail") {
            baton_hot::wasmtime::bail!("self-test answered {answer:?}");
        }
        Ok(())
    }
}

/// Named gates a module's call can wait on (through the host's `wait`).
pub struct Gates {
    open: Mutex<HashSet<String>>,
    waiting: Mutex<HashSet<String>>,
    cv: Condvar,
}

pub static GATES: LazyLock<Gates> = LazyLock::new(|| Gates {
    open: Mutex::new(HashSet::new()),
    waiting: Mutex::new(HashSet::new()),
    cv: Condvar::new(),
});

impl Gates {
    fn wait(&self, name: &str) -> baton_hot::wasmtime::Result<()> {
        self.waiting.lock().unwrap().insert(name.to_owned());
        self.cv.notify_all();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut open = self.open.lock().unwrap();
        while !open.contains(name) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                baton_hot::wasmtime::bail!("gate {name} was never opened");
            }
            open = self.cv.wait_timeout(open, left).unwrap().0;
        }
        Ok(())
    }

    /// Waits (bounded) until a call waits at gate `name`.
    pub fn wait_for_waiter(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut waiting = self.waiting.lock().unwrap();
        while !waiting.contains(name) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no call reached gate {name} within 60 s");
            waiting = self.cv.wait_timeout(waiting, left).unwrap().0;
        }
    }

    pub fn open(&self, name: &str) {
        self.open.lock().unwrap().insert(name.to_owned());
        self.cv.notify_all();
    }
}

/// What a generated module does at `init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    None,
    Ok,
    Err,
    Trap,
}

/// A WAT component for the test world, made to order.
#[derive(Debug, Clone)]
pub struct Wat {
    /// What `handle` answers by default.
    pub marker: String,
    pub init: Init,
    /// Import `test:hot/text` and answer its greeting for `d...`.
    pub uses_text: bool,
    /// Initial memory in 64 KiB pages.
    pub min_pages: u32,
    /// Export `handle` with a wrong type.
    pub wrong_export: bool,
}

impl Wat {
    pub fn new(marker: &str) -> Self {
        Self {
            marker: marker.to_owned(),
            init: Init::None,
            uses_text: false,
            min_pages: 2,
            wrong_export: false,
        }
    }

    /// The component text. `handle(arg)` by the first letter of `arg`:
    /// `l` loops for ever, `t` traps, `g` grows memory by 1000 pages (64 MiB)
    /// and traps if refused, `w` waits at gate `arg`, `c` counts calls in a
    /// global and answers `MARKER COUNT`, `d` answers the greeting of the
    /// imported `test:hot/text`; anything else answers the marker.
    pub fn text(&self) -> String {
        let marker = &self.marker;
        let len = marker.len();
        let pages = self.min_pages;
        let (text_import, text_core_import, text_lower, text_with, text_branch) = if self.uses_text
        {
            (
                r#"(import "test:hot/text" (instance $text (export "greeting" (func (result string)))))
  (alias export $text "greeting" (func $greeting))"#,
                r#"(import "host" "greeting" (func $greeting (param i32)))"#,
                r"(core func $greeting_low (canon lower (func $greeting) (memory $memory) (realloc $realloc)))",
                r#"(export "greeting" (func $greeting_low))"#,
                r"(if (i32.eq (local.get $c) (i32.const 100)) (then
        (local.set $r (call $alloc (i32.const 8)))
        (call $greeting (local.get $r))
        (return (local.get $r))))",
            )
        } else {
            ("", "", "", "", "")
        };
        let (init_core, init_lift) = match self.init {
            Init::None => (String::new(), String::new()),
            Init::Ok | Init::Err | Init::Trap => {
                let body = match self.init {
                    Init::Ok => {
                        "(local.set $r (call $alloc (i32.const 12))) (i32.store (local.get $r) (i32.const 0)) (local.get $r)"
                    }
                    Init::Err => {
                        "(local.set $r (call $alloc (i32.const 12))) (i32.store (local.get $r) (i32.const 1)) (i32.store offset=4 (local.get $r) (i32.const 16)) (i32.store offset=8 (local.get $r) (i32.const 4)) (local.get $r)"
                    }
                    _ => "unreachable",
                };
                (
                    format!(r#"(func (export "init") (result i32) (local $r i32) {body})"#),
                    r#"(func $init (result (result (error string))) (canon lift (core func $main "init") (memory $memory) (realloc $realloc)))
  (export "init" (func $init))"#
                        .to_owned(),
                )
            }
        };
        let handle_type = if self.wrong_export {
            r#"(param "arg" string) (result u32)"#
        } else {
            r#"(param "arg" string) (result string)"#
        };
        format!(
            r#"(component
  (import "wait" (func $wait (param "name" string)))
  {text_import}
  (core module $Mem
    (memory (export "memory") {pages})
    (global $heap (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32) (local $end i32)
      ;; align the bump pointer, then grow memory when it runs out
      (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
      (local.set $end (i32.add (local.get $p) (local.get 3)))
      (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
        (then (if (i32.lt_s (memory.grow (i32.add (i32.shr_u (i32.sub (local.get $end) (i32.mul (memory.size) (i32.const 65536))) (i32.const 16)) (i32.const 1))) (i32.const 0))
          (then unreachable))))
      (global.set $heap (local.get $end))
      (local.get $p)))
  (core instance $mem (instantiate $Mem))
  (alias core export $mem "memory" (core memory $memory))
  (alias core export $mem "realloc" (core func $realloc))
  (core func $wait_low (canon lower (func $wait) (memory $memory)))
  {text_lower}
  (core module $Main
    (import "mem" "memory" (memory 1))
    (import "mem" "realloc" (func $realloc (param i32 i32 i32 i32) (result i32)))
    (import "host" "wait" (func $wait (param i32 i32)))
    {text_core_import}
    (global $count (mut i32) (i32.const 0))
    (data (i32.const 16) "{marker}")
    (func $alloc (param $n i32) (result i32)
      (call $realloc (i32.const 0) (i32.const 0) (i32.const 8) (local.get $n)))
    ;; the canonical ABI returns a string through an 8-byte (ptr, len) area
    (func $ret (param $ptr i32) (param $len i32) (result i32) (local $r i32)
      (local.set $r (call $alloc (i32.const 8)))
      (i32.store (local.get $r) (local.get $ptr))
      (i32.store offset=4 (local.get $r) (local.get $len))
      (local.get $r))
    ;; "MARKER N": the marker, a space and the decimal digits of n
    (func $counted (param $n i32) (result i32) (local $buf i32) (local $i i32)
      (local.set $buf (call $alloc (i32.const {len_plus})))
      (memory.copy (local.get $buf) (i32.const 16) (i32.const {len}))
      (i32.store8 (i32.add (local.get $buf) (i32.const {len})) (i32.const 32))
      (local.set $i (i32.const {len_plus}))
      (loop $digits
        (local.set $i (i32.sub (local.get $i) (i32.const 1)))
        (i32.store8 (i32.add (local.get $buf) (local.get $i))
          (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
        (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
        (br_if $digits (i32.ne (local.get $n) (i32.const 0))))
      ;; shift the digits down next to the space
      (memory.copy (i32.add (local.get $buf) (i32.const {len_sp}))
        (i32.add (local.get $buf) (local.get $i)) (i32.sub (i32.const {len_plus}) (local.get $i)))
      (call $ret (local.get $buf) (i32.add (i32.const {len_sp}) (i32.sub (i32.const {len_plus}) (local.get $i)))))
    (func (export "handle") (param $p i32) (param $n i32) (result i32) (local $c i32) (local $r i32)
      (if (i32.eqz (local.get $n)) (then (return (call $ret (i32.const 16) (i32.const {len})))))
      (local.set $c (i32.load8_u (local.get $p)))
      (if (i32.eq (local.get $c) (i32.const 108)) (then (loop $spin (br $spin))))
      (if (i32.eq (local.get $c) (i32.const 116)) (then unreachable))
      (if (i32.eq (local.get $c) (i32.const 103)) (then
        (if (i32.lt_s (memory.grow (i32.const 1000)) (i32.const 0)) (then unreachable))))
      (if (i32.eq (local.get $c) (i32.const 119)) (then (call $wait (local.get $p) (local.get $n))))
      (if (i32.eq (local.get $c) (i32.const 99)) (then
        (global.set $count (i32.add (global.get $count) (i32.const 1)))
        (return (call $counted (global.get $count)))))
      {text_branch}
      (call $ret (i32.const 16) (i32.const {len})))
    {init_core})
  (core instance $main (instantiate $Main
    (with "mem" (instance $mem))
    (with "host" (instance (export "wait" (func $wait_low)) {text_with}))))
  (func $handle {handle_type} (canon lift (core func $main "handle") (memory $memory) (realloc $realloc)))
  (export "handle" (func $handle))
  {init_lift})
"#,
            len_plus = len + 11,
            len_sp = len + 1,
        )
    }
}

/// A library component exporting `test:hot/text` whose greeting is
/// `greeting`.
pub fn library(greeting: &str) -> String {
    let len = greeting.len();
    format!(
        r#"(component
  (core module $Lib
    (memory (export "memory") 1)
    (global $heap (mut i32) (i32.const 1024))
    (data (i32.const 16) "{greeting}")
    (func $realloc (export "realloc") (param i32 i32 i32 i32) (result i32) (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
      (global.set $heap (i32.add (local.get $p) (local.get 3)))
      (local.get $p))
    (func (export "greeting") (result i32) (local $r i32)
      (local.set $r (call $realloc (i32.const 0) (i32.const 0) (i32.const 8) (i32.const 8)))
      (i32.store (local.get $r) (i32.const 16))
      (i32.store offset=4 (local.get $r) (i32.const {len}))
      (local.get $r)))
  (core instance $lib (instantiate $Lib))
  (alias core export $lib "memory" (core memory $memory))
  (alias core export $lib "realloc" (core func $realloc))
  (func $greeting (result string) (canon lift (core func $lib "greeting") (memory $memory) (realloc $realloc)))
  (instance $text (export "greeting" (func $greeting)))
  (export "test:hot/text" (instance $text)))
"#
    )
}

/// A host with test-sized limits, logging to `dir/hotswap.log`.
pub fn host(dir: &Path, f: impl FnOnce(&mut HostConfig)) -> Host<TestWorld> {
    let mut config = HostConfig {
        memory_limit: 16 << 20,
        call_timeout: Duration::from_secs(20),
        log_file: Some(dir.join("hotswap.log")),
        ..HostConfig::default()
    };
    f(&mut config);
    Host::new(config).expect("a host with the default engine settings")
}

/// Writes `text` to `path` through a temporary file and a rename, as
/// editors and compilers save.
pub fn save(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Calls `handle(arg)`.
pub fn handle(host: &Host<TestWorld>, m: &Module, arg: &str) -> Result<Called<String>, CallError> {
    host.call(m, |h, store| h.call_handle(store, arg))
}

/// Waits (bounded) until `cond` holds.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("hotswap.log")).unwrap_or_default()
}

pub fn module_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
