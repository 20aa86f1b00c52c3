//! `hot-bench`: the figures of bench/hot (run by `bench/hot/run`, which
//! builds the guests first). Prints a Markdown report on stdout.
//!
//! ```text
//! hot-bench --guests DIR [--swaps 20] [--calls 20000]
//! ```
//! DIR holds `python.wasm` and `c.wat` (from `guests/build DIR`).

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use baton_app::serve::DrainConfig;
use baton_app::shutdown::{Shutdown, StopReason};
use baton_hot::{Host, HostConfig, InstanceMode, Module};
use baton_load::{Config, Target};
use clap::Parser;
use hot_server::routes::{RouteWorld, Routes};

#[derive(Debug, Parser)]
struct Args {
    /// Directory with python.wasm and c.wat (guests/build DIR).
    #[arg(long)]
    guests: PathBuf,
    /// Swaps under load for the swap-latency figures.
    #[arg(long, default_value_t = 20)]
    swaps: u32,
    /// Calls per per-call-overhead figure.
    #[arg(long, default_value_t = 20_000)]
    calls: u32,
}

const HELLO: &str = include_str!("../../modules/hello.wat");

/// The shipped hello route with a 16-byte greeting.
fn hello(marker: &str) -> String {
    HELLO.replace("hello from WAT: ", marker)
}

fn save(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// An in-process hot server with its watcher, on an ephemeral port.
struct Server {
    target: Target,
    stop: Shutdown,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    fn start(dir: &Path, config: HostConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let routes = Routes::open(dir, config)?;
        // Watching from here on: a change saved as soon as `start`
        // returns is seen.
        let watcher = routes.watch()?;
        let stop = Shutdown::new();
        let shutdown = stop.clone();
        let thread = std::thread::spawn(move || {
            let _watcher = watcher;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let drain = DrainConfig {
                    grace: Duration::from_millis(100),
                    deadline: Duration::from_secs(5),
                };
                hot_server::server::serve(
                    routes,
                    listener,
                    &baton_app::Notifier::default(),
                    &shutdown,
                    drain,
                )
                .await
            })
        });
        Ok(Self {
            target: Target::Tcp(addr),
            stop,
            thread: Some(thread),
        })
    }

    fn load(&self, path: &str) -> baton_load::Running {
        let mut cfg = Config::new(self.target.clone());
        path.clone_into(&mut cfg.path);
        cfg.concurrency = 2;
        cfg.request_timeout = Duration::from_secs(60);
        baton_load::start(cfg)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.stop(StopReason::Requested);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes `versions` one after the other under load and measures, for
/// each, the time from the rename that installs it to the first response
/// it answers. Returns the latencies and the load report.
fn swaps_under_load(
    server: &Server,
    route: &str,
    file: &Path,
    versions: &[Vec<u8>],
    first_generation: u64,
) -> anyhow::Result<(Vec<Duration>, baton_load::Report)> {
    let load = server.load(route);
    if load
        .wait_for_generation(&first_generation.to_string(), Duration::from_secs(120))
        .is_none()
    {
        bail!("{route}: no response from the first version");
    }
    let mut latencies = Vec::new();
    for (i, bytes) in versions.iter().enumerate() {
        let generation = first_generation + 1 + i as u64;
        save(file, bytes)?;
        let written = Instant::now();
        let Some(seen) =
            load.wait_for_generation(&generation.to_string(), Duration::from_secs(300))
        else {
            bail!("{route}: version {generation} never answered");
        };
        latencies.push(seen.saturating_duration_since(written));
    }
    Ok((latencies, load.stop()))
}

fn dist(v: &mut [Duration]) -> (Duration, Duration, Duration) {
    v.sort_unstable();
    (
        percentile(v, 0.5),
        percentile(v, 0.99),
        v.last().copied().unwrap_or_default(),
    )
}

/// Per-call latencies of `f`, after a warm-up.
fn per_call(calls: u32, mut f: impl FnMut()) -> Vec<Duration> {
    for _ in 0..calls / 10 {
        f();
    }
    let mut v = Vec::with_capacity(calls as usize);
    for _ in 0..calls {
        let t = Instant::now();
        f();
        v.push(t.elapsed());
    }
    v.sort_unstable();
    v
}

/// What the hello route computes, natively.
#[inline(never)]
fn native_hello(method: &str, path: &str) -> (u16, String) {
    let _ = method;
    let mut body = String::with_capacity(path.len() + 17);
    body.push_str("hello from WAT: ");
    body.push_str(path);
    body.push('\n');
    (200, body)
}

fn call(host: &Host<RouteWorld>, m: &Module, path: &str) -> anyhow::Result<(u16, String)> {
    Ok(host.call(m, |r, s| r.call_handle(s, "GET", path))?.value)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let guests = std::fs::canonicalize(&args.guests)
        .with_context(|| format!("guests directory {}", args.guests.display()))?;
    let python = std::fs::read(guests.join("python.wasm")).context("python.wasm")?;
    let python_v2 = std::fs::read(guests.join("python-v2.wasm")).context("python-v2.wasm")?;
    let work = tempfile::tempdir()?;
    let mut out = String::new();

    // --- Swap latency, small WAT module, watcher (debounce 20 ms) -------
    let wat_dir = work.path().join("wat");
    std::fs::create_dir_all(&wat_dir)?;
    let wat_file = wat_dir.join("hello.wat");
    save(&wat_file, hello("version 00 says ").as_bytes())?;
    let config = HostConfig::default();
    let debounce = config.debounce;
    let server = Server::start(&wat_dir, config)?;
    let versions: Vec<Vec<u8>> = (1..=args.swaps)
        .map(|v| hello(&format!("version {:02} says ", v % 100)).into_bytes())
        .collect();
    let (mut wat_swaps, wat_report) =
        swaps_under_load(&server, "/hello/x", &wat_file, &versions, 1)?;
    drop(server);
    let (wat_p50, wat_p99, wat_max) = dist(&mut wat_swaps);
    eprintln!("WAT swaps: p50 {} p99 {}", ms(wat_p50), ms(wat_p99));

    // --- Python: compile, load from the cache, swap under load ----------
    let cache = work.path().join("cache");
    let py_dir = work.path().join("py");
    std::fs::create_dir_all(&py_dir)?;
    let py_file = py_dir.join("python.wasm");
    save(&py_file, &python)?;
    let host: Host<RouteWorld> = Host::new(HostConfig {
        cache_dir: Some(cache.clone()),
        memory_limit: 256 << 20,
        ..HostConfig::default()
    })?;
    let t = Instant::now();
    host.load(&py_file)?;
    let py_compile = t.elapsed();
    drop(host);
    let host: Host<RouteWorld> = Host::new(HostConfig {
        cache_dir: Some(cache.clone()),
        memory_limit: 256 << 20,
        ..HostConfig::default()
    })?;
    // Loaded from the cache, so the growth is the live version (code,
    // pre-instance), not the compiler's scratch memory.
    let rss0 = rss_kib();
    let t = Instant::now();
    host.load(&py_file)?;
    let py_cached = t.elapsed();
    let rss_py = rss_kib().saturating_sub(rss0);
    let hits = host.status().cache_hits;
    drop(host);
    eprintln!(
        "python: compile {} cached {}",
        ms(py_compile),
        ms(py_cached)
    );
    let server = Server::start(
        &py_dir,
        HostConfig {
            cache_dir: Some(cache.clone()),
            memory_limit: 256 << 20,
            ..HostConfig::default()
        },
    )?;
    // v2 is new (compiled during the swap); v1 again comes from the cache.
    let (py_swaps, py_report) = swaps_under_load(
        &server,
        "/python/x",
        &py_file,
        &[python_v2.clone(), python.clone()],
        1,
    )?;
    drop(server);

    // --- Per-call overhead --------------------------------------------
    let calls = args.calls;
    let native = per_call(calls, || {
        std::hint::black_box(native_hello(
            std::hint::black_box("GET"),
            std::hint::black_box("/x"),
        ));
    });
    let mut rows = Vec::new();
    let c_file = guests.join("c.wat");
    let fresh = InstanceMode::PerCall;
    let pooled = InstanceMode::Pooled { max_idle: 4 };
    for (label, file, mode, pooling, n) in [
        (
            "WAT (hello.wat), fresh instance per call (default)",
            &wat_file,
            fresh,
            true,
            calls,
        ),
        (
            "WAT (hello.wat), fresh instance per call, on-demand allocator",
            &wat_file,
            fresh,
            false,
            calls,
        ),
        (
            "WAT (hello.wat), pooled instance",
            &wat_file,
            pooled,
            true,
            calls,
        ),
        (
            "C (clang + wasi-libc), fresh instance per call (default)",
            &c_file,
            fresh,
            true,
            calls,
        ),
        (
            "C (clang + wasi-libc), fresh instance per call, on-demand allocator",
            &c_file,
            fresh,
            false,
            calls,
        ),
        (
            "Python (componentize-py), fresh instance per call (default)",
            &py_file,
            fresh,
            true,
            calls / 20,
        ),
        (
            "Python (componentize-py), fresh instance per call, on-demand allocator",
            &py_file,
            fresh,
            false,
            calls / 20,
        ),
        (
            "Python (componentize-py), pooled instance",
            &py_file,
            pooled,
            true,
            calls,
        ),
    ] {
        let host: Host<RouteWorld> = Host::new(HostConfig {
            cache_dir: Some(cache.clone()),
            memory_limit: 256 << 20,
            instances: mode,
            pooling,
            ..HostConfig::default()
        })?;
        let m = match host.load(file) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("{label}: {e}");
                rows.push((label, Vec::new(), 0));
                continue;
            }
        };
        let v = per_call(n, || {
            call(&host, &m, "/x").expect("module call");
        });
        rows.push((label, v, n));
    }

    // --- Memory per live version (compiled code + pre-instance) -------
    let many = 50;
    let host: Host<RouteWorld> = Host::new(HostConfig::default())?;
    let mem_dir = work.path().join("mem");
    std::fs::create_dir_all(&mem_dir)?;
    let mut files = Vec::new();
    for i in 0..many {
        let f = mem_dir.join(format!("m{i}.wat"));
        save(&f, hello(&format!("module {i:04} say ")).as_bytes())?;
        files.push(f);
    }
    // One load first, so the engine's own allocations are not counted.
    host.load(&files[0])?;
    let before = rss_kib();
    for f in &files[1..] {
        host.load(f)?;
    }
    let per_wat = (rss_kib().saturating_sub(before)) as f64 / f64::from(many - 1);
    drop(host);

    // --- Report ---------------------------------------------------------
    let native_p50 = percentile(&native, 0.5);
    let fresh_wat_p50 = percentile(&rows[0].1, 0.5);
    let fresh_wat_ondemand_p50 = percentile(&rows[1].1, 0.5);
    let _ = writeln!(out, "## Against the goals\n");
    let _ = writeln!(out, "| goal | measured | |");
    let _ = writeln!(out, "| --- | --- | --- |");
    let _ = writeln!(
        out,
        "| swap latency, small WAT module, file written → first response of the new version ≤ 50 ms (debounce {} ms included) | p50 {}, p99 {}, max {} over {} swaps under load; {} failed of {} requests | {} |",
        debounce.as_millis(),
        ms(wat_p50),
        ms(wat_p99),
        ms(wat_max),
        args.swaps,
        wat_report.failed,
        wat_report.requests,
        if wat_p99 <= Duration::from_millis(50) {
            "met"
        } else if wat_p50 <= Duration::from_millis(50) {
            "met at p50, **missed** at p99"
        } else {
            "**missed**"
        }
    );
    let overhead = fresh_wat_p50.saturating_sub(native_p50);
    let overhead_ondemand = fresh_wat_ondemand_p50.saturating_sub(native_p50);
    let verdict = if overhead <= Duration::from_micros(20) {
        "met"
    } else {
        "**missed**"
    };
    let _ = writeln!(
        out,
        "| per-call overhead against a native Rust handler ≤ 20 µs p50, fresh instance per call | {} with the pooling allocator, the default ({} allocating on demand); WAT call p50 {} ({}) − native p50 {} | {verdict} |",
        us(overhead),
        us(overhead_ondemand),
        us(fresh_wat_p50),
        us(fresh_wat_ondemand_p50),
        us(native_p50),
    );
    let _ = writeln!(
        out,
        "| Python component: compile time, and load time from the cache | compile {}; load from the cache {} ({} cache hit(s)); swap to a new version under load {}, back to a cached one {} | reported |",
        ms(py_compile),
        ms(py_cached),
        hits,
        py_swaps.first().map_or_else(|| "-".into(), |d| ms(*d)),
        py_swaps.get(1).map_or_else(|| "-".into(), |d| ms(*d)),
    );
    let _ = writeln!(
        out,
        "| memory per live version | WAT: {per_wat:.0} KiB (RSS growth over {} versions, each compiled and pre-instantiated); Python: {rss_py} KiB (RSS growth when a version is loaded from the cache) | reported |",
        many - 1
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "## Per-call latency (one call = instance + `handle` + drop)\n"
    );
    let _ = writeln!(
        out,
        "| handler | calls | p50 | p99 | overhead over native at p50 |"
    );
    let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
    let _ = writeln!(
        out,
        "| native Rust function (same work as hello.wat) | {calls} | {} | {} | – |",
        us(native_p50),
        us(percentile(&native, 0.99))
    );
    for (label, v, n) in &rows {
        let p50 = percentile(v, 0.5);
        let _ = writeln!(
            out,
            "| {label} | {n} | {} | {} | {} |",
            us(p50),
            us(percentile(v, 0.99)),
            us(p50.saturating_sub(native_p50))
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "## Swaps under load\n");
    let _ = writeln!(
        out,
        "baton-load on 2 keep-alive connections (no retries, every failure counted) while each new version is renamed into place; latency = rename → first response carrying the new version.\n"
    );
    let _ = writeln!(
        out,
        "| module | swaps | p50 | p99 | max | requests | failed |"
    );
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- | --- |");
    let _ = writeln!(
        out,
        "| hello.wat | {} | {} | {} | {} | {} | {} |",
        args.swaps,
        ms(wat_p50),
        ms(wat_p99),
        ms(wat_max),
        wat_report.requests,
        wat_report.failed
    );
    let _ = writeln!(
        out,
        "| python.wasm (v2 compiled during the swap, then v1 from the cache) | 2 | {} | | | {} | {} |",
        py_swaps
            .iter()
            .map(|d| ms(*d))
            .collect::<Vec<_>>()
            .join(", "),
        py_report.requests,
        py_report.failed
    );
    print!("{out}");
    if wat_report.failed + py_report.failed > 0 {
        bail!("requests failed during swaps");
    }
    Ok(())
}
