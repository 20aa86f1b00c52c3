//! The demo server's drain, in process: generations of the server share one
//! listening socket (as under baton), and an old one drains while
//! baton-load keeps keep-alive connections busy. Not one request may fail.
//!
//! Readiness and the start of the drain are observed through the real
//! sd_notify protocol (`READY=1`, `STOPPING=1` on a datagram socket in the
//! test's temp dir), never by sleeping.

use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use baton_load::{Config, Conn, Target, get_request};
use demo_server::server::{Accepting, Settings, serve};

struct Generation {
    stop: baton_app::shutdown::Shutdown,
    done: mpsc::Receiver<anyhow::Result<()>>,
    notify: UnixDatagram,
}

impl Generation {
    fn start(listener: &TcpListener, generation: &str, dir: &Path, grace: Duration) -> Self {
        let l = listener.try_clone().expect("share the listening socket");
        let path = dir.join(format!("notify-{generation}"));
        let notify = UnixDatagram::bind(&path).expect("bind notify socket");
        notify
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let stop = baton_app::shutdown::Shutdown::new();
        let shutdown = stop.clone();
        let (done_tx, done) = mpsc::channel();
        let mut settings = Settings::from_env();
        generation.clone_into(&mut settings.generation);
        settings.worker = None;
        settings.drain_grace = grace;
        settings.shutdown_timeout = Duration::from_secs(5);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let result = rt.block_on(async move {
                let accepting = Accepting::tcp(l)?;
                let notifier = baton_app::Notifier::with_socket(path.to_string_lossy());
                serve(settings, accepting, &notifier, &shutdown).await
            });
            let _ = done_tx.send(result);
        });
        let g = Self { stop, done, notify };
        assert_eq!(g.next_message(), "READY=1");
        g
    }

    fn next_message(&self) -> String {
        let mut buf = [0u8; 256];
        let n = self
            .notify
            .recv(&mut buf)
            .expect("a notify message within 10 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Asks for the drain and waits until it has begun.
    fn begin_drain(&self) {
        assert!(
            self.stop.stop(baton_app::shutdown::StopReason::Requested),
            "the server was still running"
        );
        assert_eq!(self.next_message(), "STOPPING=1");
    }

    fn wait_exit(&self) {
        self.done
            .recv_timeout(Duration::from_secs(15))
            .expect("the server exits within 15 s")
            .expect("the server drains cleanly");
    }
}

#[test]
fn reloads_under_keep_alive_load_fail_no_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut current = Generation::start(&listener, "1", dir.path(), Duration::from_secs(1));

    let mut cfg = Config::new(Target::Tcp(addr));
    cfg.concurrency = 16;
    let load = baton_load::start(cfg);
    assert!(
        load.wait_for_generation("1", Duration::from_secs(10))
            .is_some()
    );
    for g in 2..=6 {
        let next = Generation::start(
            &listener,
            &g.to_string(),
            dir.path(),
            Duration::from_secs(1),
        );
        current.begin_drain();
        current.wait_exit();
        current = next;
        assert!(
            load.wait_for_generation(&g.to_string(), Duration::from_secs(10))
                .is_some(),
            "generation {g} answers"
        );
    }
    let report = load.stop();
    assert_eq!(report.failed, 0, "{report}");
    assert_eq!(
        report.generation_numbers(),
        vec![1, 2, 3, 4, 5, 6],
        "{report}"
    );
    current.begin_drain();
    current.wait_exit();
}

/// hyper's `graceful_shutdown` alone closes an idle keep-alive connection
/// without an answer, and the client's next request on it fails. Draining
/// must instead answer that request, with `Connection: close`.
#[test]
fn regression_keep_alive_request_during_drain_is_answered_with_connection_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = Target::Tcp(listener.local_addr().expect("addr"));
    let generation = Generation::start(&listener, "1", dir.path(), Duration::from_secs(5));
    let request = get_request("/", "test", true);
    let deadline = || Instant::now() + Duration::from_secs(5);

    let mut conn = Conn::connect(&target, deadline()).expect("connect");
    let first = conn.round_trip(&request, deadline(), true).expect("first");
    assert_eq!(first.status, 200);
    assert!(first.keep_alive);
    assert_eq!(first.generation(), Some("1"));

    // The connection is idle when the drain begins. It must stay open
    // (hyper's graceful_shutdown alone would close it here, at once).
    generation.begin_drain();
    assert!(
        !conn.peer_closed(Duration::from_millis(300)),
        "the server closed an idle keep-alive connection as the drain began"
    );
    let second = conn
        .round_trip(&request, deadline(), true)
        .expect("a request on an idle keep-alive connection is answered during the drain");
    assert_eq!(second.status, 200);
    assert_eq!(second.header("connection"), Some("close"));
    assert!(!second.keep_alive);
    conn.close();
    // That was the last connection: the drain ends well before its grace.
    let began = Instant::now();
    generation.wait_exit();
    assert!(
        began.elapsed() < Duration::from_secs(4),
        "{:?}",
        began.elapsed()
    );
}

#[test]
fn in_flight_requests_finish_during_the_drain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = Target::Tcp(listener.local_addr().expect("addr"));
    // A short grace, then step 3 must still let the slow request finish.
    let generation = Generation::start(&listener, "1", dir.path(), Duration::from_millis(500));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut conn = Conn::connect(&target, deadline).expect("connect");
    // A first answer proves the server accepted this connection.
    let quick = conn
        .round_trip(&get_request("/", "test", true), deadline, true)
        .expect("quick");
    assert_eq!(quick.status, 200);
    // The slow request is sent before the drain begins; whether the server
    // has read it yet or reads it during the grace, it is in progress when
    // the grace ends, and must be answered.
    conn.send(&get_request("/sleep?ms=1500", "test", true), deadline)
        .expect("send");
    generation.begin_drain();
    let resp = conn
        .read_response(deadline, true)
        .expect("the in-flight request is answered");
    assert_eq!(resp.status, 200);
    assert_eq!(String::from_utf8_lossy(&resp.body), "slept 1500 ms\n");
    assert!(!resp.keep_alive, "answered with Connection: close");
    generation.wait_exit();
}
