//! The client against small in-test servers on ephemeral ports.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::{Config, Target, fetch, start};

/// What the test server does with one request.
enum Reply {
    /// Write these bytes and keep the connection.
    Send(Vec<u8>),
    /// Write these bytes (possibly in pieces), then close.
    SendThenClose(Vec<Vec<u8>>),
    /// Close without answering.
    Close,
    /// Read the request and never answer (until the client gives up).
    Hang,
}

/// `(connection number, request number on that connection, request text) -> Reply`.
type Behaviour = dyn Fn(usize, usize, &str) -> Reply + Send + Sync;

/// A threaded test server. Counts the connections it accepted.
struct Server {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
    done: Arc<AtomicBool>,
}

impl Server {
    fn start(behaviour: impl Fn(usize, usize, &str) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test server");
        let addr = listener.local_addr().expect("local addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let behaviour: Arc<Behaviour> = Arc::new(behaviour);
        let (c, d) = (Arc::clone(&connections), Arc::clone(&done));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if d.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let n = c.fetch_add(1, Ordering::SeqCst);
                let b = Arc::clone(&behaviour);
                std::thread::spawn(move || serve(stream, n, &*b));
            }
        });
        Self {
            addr,
            connections,
            done,
        }
    }

    fn target(&self) -> Target {
        Target::Tcp(self.addr)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        // Wake the accept loop so its thread ends.
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(mut stream: TcpStream, conn: usize, behaviour: &Behaviour) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = Vec::new();
    let mut req = 0;
    loop {
        // Read one request head.
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let text = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        match behaviour(conn, req, &text) {
            Reply::Send(bytes) => {
                if stream.write_all(&bytes).is_err() {
                    return;
                }
            }
            Reply::SendThenClose(pieces) => {
                for p in pieces {
                    let _ = stream.write_all(&p);
                    let _ = stream.flush();
                }
                return;
            }
            Reply::Close => return,
            Reply::Hang => {
                // Wait for the client to close, then go.
                let mut sink = [0u8; 64];
                while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
                return;
            }
        }
        req += 1;
    }
}

fn ok_with(generation: &str, extra: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-Generation: {generation}\r\n{extra}\r\nhello\n"
    )
    .into_bytes()
}

fn cfg(target: Target, concurrency: usize, max: u64) -> Config {
    let mut c = Config::new(target);
    c.concurrency = concurrency;
    c.max_requests = Some(max);
    c.request_timeout = Duration::from_secs(5);
    c
}

#[test]
fn counts_ok_responses_and_generations() {
    let server = Server::start(|_, _, _| Reply::Send(ok_with("7", "")));
    let report = start(cfg(server.target(), 4, 200)).wait();
    assert_eq!(report.requests, 200, "{report}");
    assert_eq!(report.ok, 200, "{report}");
    assert_eq!(report.failed, 0, "{report}");
    assert!(report.errors.is_empty(), "{report}");
    assert_eq!(report.generations.get("7"), Some(&200));
    assert!(report.first_seen.contains_key("7"));
    assert!(report.latency.max > Duration::ZERO);
    assert!(report.latency.p50 <= report.latency.p99);
}

#[test]
fn keep_alive_reuses_one_connection_per_thread() {
    let server = Server::start(|_, _, req| {
        assert!(!req.to_ascii_lowercase().contains("connection: close"));
        Reply::Send(ok_with("1", ""))
    });
    let report = start(cfg(server.target(), 3, 90)).wait();
    assert_eq!(report.ok, 90, "{report}");
    assert_eq!(server.connections(), 3);
}

#[test]
fn connection_close_means_reconnect_without_failure() {
    // Every third response on a connection says `Connection: close` and the
    // server then closes: the client must move to a new connection and
    // count no failure.
    let server = Server::start(|_, req, _| {
        if req == 2 {
            Reply::SendThenClose(vec![ok_with("1", "Connection: close\r\n")])
        } else {
            Reply::Send(ok_with("1", ""))
        }
    });
    let report = start(cfg(server.target(), 1, 30)).wait();
    assert_eq!(report.ok, 30, "{report}");
    assert_eq!(report.failed, 0, "{report}");
    assert_eq!(server.connections(), 10);
}

#[test]
fn without_keep_alive_every_request_has_its_own_connection() {
    let server = Server::start(|_, _, req| {
        assert!(req.contains("Connection: close\r\n"), "{req}");
        Reply::Send(ok_with("1", ""))
    });
    let mut c = cfg(server.target(), 2, 20);
    c.keep_alive = false;
    let report = start(c).wait();
    assert_eq!(report.ok, 20, "{report}");
    assert_eq!(server.connections(), 20);
}

const CHUNKED: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Generation: 4\r\n\r\n",
    b"6\r\nhello \r\n",
    b"1b;ext=1\r\nfrom a chunked body, pa",
    b"rt 2\r\n0\r\nX-Trailer: yes\r\n",
    b"\r\n",
];

#[test]
fn chunked_bodies_are_parsed() {
    let server =
        Server::start(|_, _, _| Reply::SendThenClose(CHUNKED.iter().map(|p| p.to_vec()).collect()));
    let resp = fetch(&server.target(), "/", Duration::from_secs(5)).expect("fetch");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.generation(), Some("4"));
    assert_eq!(
        String::from_utf8_lossy(&resp.body),
        "hello from a chunked body, part 2"
    );

    // On a kept-alive connection the next response is read correctly after it.
    let server = Server::start(|_, _, _| Reply::Send(CHUNKED.concat()));
    let report = start(cfg(server.target(), 2, 40)).wait();
    assert_eq!(report.ok, 40, "{report}");
    assert_eq!(server.connections(), 2);
}

#[test]
fn body_until_close_is_read() {
    let server = Server::start(|_, _, _| {
        Reply::SendThenClose(vec![b"HTTP/1.0 200 OK\r\n\r\nall of it".to_vec()])
    });
    let resp = fetch(&server.target(), "/x", Duration::from_secs(5)).expect("fetch");
    assert_eq!(resp.body, b"all of it");
    assert!(!resp.keep_alive);
    let report = start(cfg(server.target(), 1, 5)).wait();
    assert_eq!(report.ok, 5, "{report}");
    assert_eq!(server.connections(), 6);
}

#[test]
fn close_without_answer_is_a_failure() {
    // The second request on each connection is met with a close: that is
    // exactly the reset a badly drained server causes, and must be counted.
    let server = Server::start(|_, req, _| {
        if req == 1 {
            Reply::Close
        } else {
            Reply::Send(ok_with("1", ""))
        }
    });
    let report = start(cfg(server.target(), 1, 10)).wait();
    assert_eq!(report.requests, 10, "{report}");
    assert_eq!(report.ok, 5, "{report}");
    assert_eq!(report.failed, 5, "{report}");
    assert_eq!(
        report.errors.get("eof before response"),
        Some(&5),
        "{report}"
    );
    assert_eq!(server.connections(), 5);
}

#[test]
fn truncated_response_is_a_failure() {
    let server = Server::start(|_, _, _| {
        Reply::SendThenClose(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort".to_vec(),
        ])
    });
    let report = start(cfg(server.target(), 1, 3)).wait();
    assert_eq!(report.failed, 3, "{report}");
    assert_eq!(report.errors.get("eof mid-response"), Some(&3), "{report}");
}

#[test]
fn non_2xx_is_a_failure() {
    let server = Server::start(|_, req, _| {
        if req % 2 == 0 {
            Reply::Send(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nX-Generation: 2\r\n\r\n"
                    .to_vec(),
            )
        } else {
            Reply::Send(ok_with("2", ""))
        }
    });
    let report = start(cfg(server.target(), 1, 10)).wait();
    assert_eq!(report.ok, 5, "{report}");
    assert_eq!(report.failed, 5, "{report}");
    assert_eq!(report.errors.get("status 503"), Some(&5), "{report}");
    // The failed responses still tell which generation answered.
    assert_eq!(report.generations.get("2"), Some(&10));
    assert_eq!(server.connections(), 1);
}

#[test]
fn generations_are_counted_per_value() {
    // Connections alternate between two "generations".
    let server = Server::start(|conn, _, _| {
        let g = if conn % 2 == 0 { "1" } else { "2" };
        Reply::SendThenClose(vec![ok_with(g, "Connection: close\r\n")])
    });
    let run = start(cfg(server.target(), 1, 10));
    let first_2 = run
        .wait_for_generation("2", Duration::from_secs(10))
        .expect("generation 2 seen");
    let first_1 = run.first_seen_instant("1").expect("generation 1 seen");
    assert!(first_1 < first_2);
    assert!(run.first_seen_instant("3").is_none());
    let report = run.wait();
    assert_eq!(report.generations.get("1"), Some(&5), "{report}");
    assert_eq!(report.generations.get("2"), Some(&5), "{report}");
    assert_eq!(report.generation_numbers(), vec![1, 2]);
    assert!(report.first_seen["1"] < report.first_seen["2"]);
    assert_eq!(report.first_seen_at["2"], first_2);
}

#[test]
fn a_silent_server_times_out() {
    let server = Server::start(|_, _, _| Reply::Hang);
    let mut c = cfg(server.target(), 1, 1);
    c.request_timeout = Duration::from_millis(200);
    let report = start(c).wait();
    assert_eq!(report.failed, 1, "{report}");
    assert_eq!(report.errors.get("read: timeout"), Some(&1), "{report}");
}

#[test]
fn refused_connections_are_failures() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let report = start(cfg(Target::Tcp(addr), 1, 3)).wait();
    assert_eq!(report.failed, 3, "{report}");
    assert_eq!(
        report.errors.get("connect: connection refused"),
        Some(&3),
        "{report}"
    );
}

#[test]
fn stop_ends_an_open_ended_run() {
    let server = Server::start(|_, _, _| Reply::Send(ok_with("5", "")));
    let mut c = Config::new(server.target());
    c.concurrency = 2;
    let run = start(c);
    run.wait_for_generation("5", Duration::from_secs(10))
        .expect("traffic flows");
    let snap = run.snapshot();
    assert!(snap.ok >= 1);
    let report = run.stop();
    assert!(report.ok >= snap.ok);
    assert_eq!(report.failed, 0, "{report}");
    assert!(report.throughput() > 0.0);
}

#[test]
fn unix_sockets_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind unix");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                loop {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..i + 4);
                        if s.write_all(&ok_with("9", "")).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let report = start(cfg(Target::Unix(path.clone()), 2, 50)).wait();
    assert_eq!(report.ok, 50, "{report}");
    assert_eq!(report.generations.get("9"), Some(&50));

    let missing = start(cfg(Target::Unix(dir.path().join("nope")), 1, 1)).wait();
    assert_eq!(
        missing.errors.get("connect: no such socket"),
        Some(&1),
        "{missing}"
    );
}

#[test]
fn the_timeline_has_every_request_with_its_outcome_and_generation() {
    // Every third request of a connection gets a 503.
    let server = Server::start(|_, req, _| {
        if req % 3 == 2 {
            Reply::Send(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nX-Generation: 4\r\n\r\n"
                    .to_vec(),
            )
        } else {
            Reply::Send(ok_with("4", ""))
        }
    });
    let mut c = cfg(server.target(), 2, 30);
    c.timeline = true;
    let (report, samples) = start(c).wait_with_timeline();
    assert_eq!(samples.len() as u64, report.requests, "{report}");
    let failed = samples.iter().filter(|s| s.failure.is_some()).count() as u64;
    assert_eq!(failed, report.failed, "{report}");
    assert!(failed > 0, "{report}");
    assert!(
        samples
            .iter()
            .filter_map(|s| s.failure.as_deref())
            .all(|f| f == "status 503")
    );
    assert!(samples.iter().all(|s| s.generation.as_deref() == Some("4")));
    assert!(samples.windows(2).all(|w| w[0].start <= w[1].start));
    // Without it, nothing is kept.
    let (_, none) = start(cfg(server.target(), 1, 5)).wait_with_timeline();
    assert!(none.is_empty());
}

#[test]
fn a_paced_run_keeps_to_its_schedule() {
    let server = Server::start(|_, _, _| Reply::Send(ok_with("1", "")));
    let mut c = cfg(server.target(), 2, 6);
    c.timeline = true;
    // 50 per second over two connections: each starts one every 40 ms, so
    // the sixth request cannot begin before 100 ms into the run (a lower
    // bound only: a loaded machine makes it later, never sooner).
    c.rate = Some(50.0);
    let (report, samples) = start(c).wait_with_timeline();
    assert_eq!(report.ok, 6, "{report}");
    let last = samples.last().expect("six samples");
    assert!(
        last.start >= Duration::from_millis(100),
        "the last of 6 requests at 50/s began {:?} into the run",
        last.start
    );
}
