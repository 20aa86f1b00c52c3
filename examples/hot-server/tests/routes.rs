//! The hot server over HTTP, in process: routes in WAT, Python and C
//! swapped under load by the watcher with no failed request.
//!
//! The Python and C routes are built by `guests/build`, which needs
//! componentize-py (`./test` installs it into target/hot-venv) and
//! Debian's clang, lld, wasi-libc and wabt (`./test` installs them). A
//! missing tool fails the test with what to install.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use baton_app::serve::DrainConfig;
use baton_app::shutdown::{Shutdown, StopReason};
use baton_hot::HostConfig;
use baton_load::{Config, Target, fetch};
use hot_server::routes::Routes;

const WAIT: Duration = Duration::from_secs(120);

/// A hot server on an ephemeral port, serving `dir`, in its own thread.
struct Server {
    addr: SocketAddr,
    stop: Shutdown,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    fn start(dir: &Path, config: HostConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let addr = listener.local_addr().expect("local address");
        listener.set_nonblocking(true).expect("non-blocking");
        // Loads (and compiles) every module before serving; connections
        // made meanwhile wait in the accept queue.
        let routes = Routes::open(dir, config).expect("open the modules directory");
        // Watching from here on: a change saved as soon as `start`
        // returns is seen.
        let watcher = routes.watch().expect("start the watcher");
        let stop = Shutdown::new();
        let shutdown = stop.clone();
        let thread = std::thread::spawn(move || {
            let _watcher = watcher;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let notifier = baton_app::Notifier::default();
                let drain = DrainConfig {
                    grace: Duration::from_millis(100),
                    deadline: Duration::from_secs(5),
                };
                hot_server::server::serve(routes, listener, &notifier, &shutdown, drain).await
            })
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn get(&self, path: &str) -> (u16, String, Option<String>) {
        let r = fetch(&Target::Tcp(self.addr), path, Duration::from_secs(60)).expect("a response");
        (
            r.status,
            String::from_utf8_lossy(&r.body).into_owned(),
            r.generation().map(str::to_owned),
        )
    }

    fn load(&self, path: &str) -> baton_load::Running {
        let mut cfg = Config::new(Target::Tcp(self.addr));
        path.clone_into(&mut cfg.path);
        cfg.concurrency = 4;
        cfg.request_timeout = Duration::from_secs(30);
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

fn config(dir: &Path) -> HostConfig {
    HostConfig {
        log_file: Some(dir.join("hotswap.log")),
        ..HostConfig::default()
    }
}

/// A route answering `MARKER PATH` (the shipped hello.wat with another
/// greeting of the same length).
fn hello(marker: &str) -> String {
    let shipped = include_str!("../modules/hello.wat");
    assert_eq!(marker.len(), 16, "the greeting is 16 bytes long");
    shipped.replace("hello from WAT: ", marker)
}

fn save(path: &Path, text: &[u8]) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).expect("write the new version");
    std::fs::rename(&tmp, path).expect("rename it into place");
}

#[test]
fn a_wat_route_swaps_20_times_under_load_with_no_failed_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let route = dir.path().join("hello.wat");
    save(&route, hello("version 01 says ").as_bytes());
    let server = Server::start(dir.path(), config(dir.path()));
    assert_eq!(server.get("/hello/x").1, "version 01 says /x\n");
    let load = server.load("/hello/load");
    for v in 2..=21 {
        save(&route, hello(&format!("version {v:02} says ")).as_bytes());
        assert!(
            load.wait_for_generation(&v.to_string(), WAIT).is_some(),
            "version {v} never answered"
        );
    }
    let report = load.stop();
    assert_eq!(report.failed, 0, "{report}");
    assert_eq!(
        report.generation_numbers(),
        (1..=21).collect::<Vec<_>>(),
        "{report}"
    );
    let (status, body, generation) = server.get("/hello/end");
    assert_eq!((status, body.as_str()), (200, "version 21 says /end\n"));
    assert_eq!(generation.as_deref(), Some("21"));
}

#[test]
fn a_bad_version_keeps_the_old_one_serving_and_status_says_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let route = dir.path().join("hello.wat");
    save(&route, hello("the good version").as_bytes());
    let server = Server::start(dir.path(), config(dir.path()));
    save(&route, b"(component (this is not wat");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, status, _) = server.get("/_status");
        if status.contains("last rejected") {
            assert!(status.contains("at compile"), "{status}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never rejected: {status}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(server.get("/hello/").1, "the good version/\n");
    assert_eq!(server.get("/nothing/").0, 404);
}

#[test]
fn the_shipped_modules_serve_and_a_library_change_switches_its_route() {
    let dir = tempfile::tempdir().expect("temp dir");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("modules");
    std::fs::create_dir_all(dir.path().join("lib")).expect("lib dir");
    for f in ["hello.wat", "greet.wat", "lib/text.wat"] {
        std::fs::copy(shipped.join(f), dir.path().join(f)).expect("copy a shipped module");
    }
    let server = Server::start(dir.path(), config(dir.path()));
    assert_eq!(server.get("/hello/world").1, "hello from WAT: /world\n");
    let (status, body, generation) = server.get("/greet/");
    assert_eq!(
        (status, body.as_str()),
        (200, "bonjour from the text library")
    );
    assert_eq!(generation.as_deref(), Some("1"));
    let text = std::fs::read_to_string(shipped.join("lib/text.wat")).expect("read text.wat");
    save(
        &dir.path().join("lib/text.wat"),
        text.replace(
            "bonjour from the text library",
            "goodbye from the text library",
        )
        .as_bytes(),
    );
    let load = server.load("/greet/");
    assert!(
        load.wait_for_generation("2", WAIT).is_some(),
        "greet was not re-linked"
    );
    let report = load.stop();
    assert_eq!(report.failed, 0, "{report}");
    assert_eq!(server.get("/greet/").1, "goodbye from the text library");
}

/// Runs `guests/build OUT WHAT` with componentize-py from target/hot-venv
/// when there, failing the test with the reason when a tool is missing.
fn build_guest(out: &Path, what: &str, python_dir: Option<&Path>) {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv: PathBuf = manifest.join("../../target/hot-venv/bin/componentize-py");
    let mut cmd = Command::new(manifest.join("guests/build"));
    cmd.arg(out).arg(what);
    if std::env::var_os("COMPONENTIZE_PY").is_none() && venv.exists() {
        cmd.env("COMPONENTIZE_PY", &venv);
    }
    if let Some(d) = python_dir {
        cmd.env("GUEST_PYTHON_DIR", d);
    }
    let output = cmd.output().expect("run guests/build");
    assert!(
        output.status.success(),
        "guests/build {what} failed (./test installs what it needs):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_c_route_built_with_clang_answers_and_swaps() {
    let dir = tempfile::tempdir().expect("temp dir");
    build_guest(dir.path(), "c", None);
    let server = Server::start(dir.path(), config(dir.path()));
    let (status, body, generation) = server.get("/c/x?y=1");
    assert_eq!((status, body.as_str()), (200, "hello from C: GET /x?y=1\n"));
    assert_eq!(generation.as_deref(), Some("1"));
    // The C module's data is text in the component: a new greeting of the
    // same length is a new version.
    let path = dir.path().join("c.wat");
    let text = std::fs::read_to_string(&path).expect("read c.wat");
    assert!(
        text.contains("hello from C: "),
        "the greeting is in the data"
    );
    save(
        &path,
        text.replace("hello from C: ", "salut from C: ").as_bytes(),
    );
    let load = server.load("/c/");
    assert!(
        load.wait_for_generation("2", WAIT).is_some(),
        "version 2 never answered"
    );
    let report = load.stop();
    assert_eq!(report.failed, 0, "{report}");
    assert_eq!(server.get("/c/z").1, "salut from C: GET /z\n");
}

#[test]
fn a_python_route_swaps_under_load_with_no_failed_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("guests/python/app.py");
    let app = std::fs::read_to_string(src).expect("read app.py");
    let (v1, v2) = (dir.path().join("v1"), dir.path().join("v2"));
    for (d, version) in [(&v1, "python v1"), (&v2, "python v2")] {
        std::fs::create_dir_all(d).expect("source dir");
        std::fs::write(
            d.join("app.py"),
            app.replace(
                "VERSION = \"python v1\"",
                &format!("VERSION = \"{version}\""),
            ),
        )
        .expect("write app.py");
    }
    let modules = dir.path().join("modules");
    build_guest(&modules, "python", Some(&v1));
    build_guest(&v2, "python", Some(&v2));
    // A cache beside the build: a rerun of the test loads both versions
    // without compiling them again.
    let mut cfg = config(dir.path());
    cfg.cache_dir = Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hot-cache"));
    let server = Server::start(&modules, cfg);
    let (status, body, _) = server.get("/python/p");
    assert_eq!(
        (status, body.as_str()),
        (200, "hello from python v1: GET /p\n")
    );
    let load = server.load("/python/load");
    let bytes = std::fs::read(v2.join("python.wasm")).expect("read version 2");
    save(&modules.join("python.wasm"), &bytes);
    assert!(
        load.wait_for_generation("2", WAIT).is_some(),
        "version 2 never answered"
    );
    let report = load.stop();
    assert_eq!(report.failed, 0, "{report}");
    assert_eq!(report.generation_numbers(), [1, 2], "{report}");
    assert_eq!(server.get("/python/q").1, "hello from python v2: GET /q\n");
}
