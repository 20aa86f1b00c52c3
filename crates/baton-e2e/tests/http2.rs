//! HTTP/2 across reloads: the demo server speaks h2c (prior knowledge) on
//! the same socket as HTTP/1.1, and a drain ends each HTTP/2 connection
//! with a GOAWAY, so not one stream fails.
//!
//! The client is the `h2` crate (hyper's own HTTP/2 implementation), used
//! directly so that the test sees how each connection ended: a GOAWAY from
//! the server (the error `ready()` gives afterwards is a remote GOAWAY with
//! `NO_ERROR`), or a reset or end of file (an I/O error). A stream that the
//! client never sent because the connection was going away is not a
//! failure; one that was sent and not answered completely is, with one
//! exception the protocol defines: a stream above the last stream id of the
//! server's final GOAWAY was, by RFC 9113 §6.8, not processed at all, and
//! a client may send it again on a new connection. That happens when the
//! client had queued a stream just as the GOAWAY arrived: `h2` writes its
//! PING acknowledgement before the queued HEADERS, and the server sends its
//! final GOAWAY on that acknowledgement. Such streams are counted apart
//! ("refused"); the loop's next request (the same GET) goes on a new
//! connection, as a retry would.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use baton_e2e::{BatonCmd, Signal, WAIT};
use bytes::Bytes;
use h2::client::SendRequest;

const RELOADS: u32 = 50;
/// HTTP/2 connections open at any time.
const CONNECTIONS: usize = 4;
/// Concurrent streams on each connection.
const STREAMS: usize = 4;

/// How a connection that the server closed ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ending {
    /// The server sent GOAWAY (`NO_ERROR`) and closed cleanly.
    GoAway,
    /// Anything else (reset, end of file, an error code), described.
    Other(String),
}

#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    /// Streams that were sent and not answered `200` in full.
    failed: Vec<String>,
    /// Streams the server's final GOAWAY declared unprocessed.
    refused: u64,
    /// Complete responses by `X-Generation`.
    generations: BTreeMap<u32, u64>,
    /// Responses from a generation older than the one that alone served
    /// when the stream was sent.
    stale: Vec<String>,
    /// Connections that the server ended, and how.
    endings: Vec<Ending>,
}

struct Shared {
    addr: SocketAddr,
    tally: Mutex<Tally>,
    changed: Condvar,
    stop: AtomicBool,
    /// The generation that alone serves (its predecessor has exited): a
    /// stream sent from then on must be answered by it or a later one.
    floor: AtomicU32,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, f: impl FnOnce(&mut Tally)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }

    /// Waits (bounded) until `cond` holds for the tally.
    fn wait_until(&self, timeout: Duration, cond: impl Fn(&Tally) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut t = self.lock();
        while !cond(&t) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            t = self
                .changed
                .wait_timeout(t, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    fn summary(&self) -> String {
        let t = self.lock();
        let goaways = t.endings.iter().filter(|e| **e == Ending::GoAway).count();
        format!(
            "{} ok, {} failed {:?}, {} refused as unprocessed, {} stale {:?}, {} connection(s) ended ({goaways} by GOAWAY; others: {:?}), generations {:?}",
            t.ok,
            t.failed.len(),
            t.failed.iter().take(5).collect::<Vec<_>>(),
            t.refused,
            t.stale.len(),
            t.stale.iter().take(5).collect::<Vec<_>>(),
            t.endings.len(),
            t.endings
                .iter()
                .filter(|e| **e != Ending::GoAway)
                .take(5)
                .collect::<Vec<_>>(),
            t.generations,
        )
    }
}

/// Why a stream loop returned.
enum Exit {
    Stopped,
    /// The connection refused a new stream (it is going away or gone).
    Refused,
    /// A stream failed; the connection is not trusted further.
    Failed,
}

/// One stream after another on `client` until the connection refuses a
/// new one or the test stops.
async fn streams(client: SendRequest<Bytes>, shared: Arc<Shared>) -> Exit {
    let uri = format!("http://{}/", shared.addr);
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return Exit::Stopped;
        }
        let Ok(mut ready) = client.clone().ready().await else {
            return Exit::Refused;
        };
        let floor = shared.floor.load(Ordering::SeqCst);
        let req = http::Request::get(uri.as_str())
            .body(())
            .expect("a valid request");
        // An error here means the stream was not opened: never sent.
        let Ok((response, _)) = ready.send_request(req, true) else {
            return Exit::Refused;
        };
        match tokio::time::timeout(WAIT, read(response)).await {
            Ok(Ok((200, Some(g)))) => shared.update(|t| {
                t.ok += 1;
                *t.generations.entry(g).or_default() += 1;
                if g < floor {
                    t.stale.push(format!(
                        "generation {g} answered after {floor} alone served"
                    ));
                }
            }),
            Ok(Ok((status, g))) => {
                shared.update(|t| t.failed.push(format!("status {status}, generation {g:?}")));
                return Exit::Failed;
            }
            Ok(Err(e)) if unprocessed(&e) => {
                shared.update(|t| t.refused += 1);
                return Exit::Refused;
            }
            Ok(Err(e)) => {
                shared.update(|t| t.failed.push(format!("stream: {e:?}")));
                return Exit::Failed;
            }
            Err(_) => {
                shared.update(|t| t.failed.push(format!("no response within {WAIT:?}")));
                return Exit::Failed;
            }
        }
    }
}

/// The server's GOAWAY (`NO_ERROR`): for a stream, that it was above the
/// last stream id the server took, so not processed (RFC 9113 §6.8).
fn unprocessed(e: &h2::Error) -> bool {
    e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR)
}

/// The status and `X-Generation` of a response, read to its end.
async fn read(response: h2::client::ResponseFuture) -> Result<(u16, Option<u32>), h2::Error> {
    let response = response.await?;
    let status = response.status().as_u16();
    let generation = response
        .headers()
        .get("x-generation")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let n = chunk?.len();
        let _ = body.flow_control().release_capacity(n);
    }
    Ok((status, generation))
}

/// Keeps one HTTP/2 connection busy with `STREAMS` concurrent streams;
/// when the server ends it, records how, and opens the next one.
async fn connection(shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        let opened = async {
            let tcp = tokio::net::TcpStream::connect(shared.addr).await?;
            tcp.set_nodelay(true)?;
            h2::client::handshake(tcp)
                .await
                .map_err(std::io::Error::other)
        };
        let (client, conn) = match opened.await {
            Ok(opened) => opened,
            Err(e) => {
                // baton holds the socket open across reloads: a refused
                // connect is a failure, and retrying would only spin.
                shared.update(|t| t.failed.push(format!("connect: {e}")));
                return;
            }
        };
        let conn = tokio::spawn(conn);
        let loops: Vec<_> = (0..STREAMS)
            .map(|_| tokio::spawn(streams(client.clone(), Arc::clone(&shared))))
            .collect();
        let mut ended_by_server = false;
        for l in loops {
            match l.await {
                Ok(Exit::Stopped) => {}
                Ok(Exit::Refused | Exit::Failed) | Err(_) => ended_by_server = true,
            }
        }
        if !ended_by_server {
            // Stopped by the test: the client closes this one itself.
            drop(client);
            let _ = tokio::time::timeout(WAIT, conn).await;
            return;
        }
        let ended = match tokio::time::timeout(WAIT, conn).await {
            Err(_) => Err(format!("still open {WAIT:?} after it refused new streams")),
            Ok(Err(join)) => Err(format!("connection task: {join}")),
            Ok(Ok(Err(e))) => Err(format!("connection error: {e:?}")),
            Ok(Ok(Ok(()))) => Ok(()),
        };
        // How it ended, as the connection recorded it: the last GOAWAY
        // received, unless a reset or EOF came instead (or after it).
        let ending = match (ended, client.ready().await) {
            (Err(why), _) => Ending::Other(why),
            (Ok(()), Ok(_)) => Ending::Other("closed, yet still takes streams".to_owned()),
            (Ok(()), Err(e)) if unprocessed(&e) => Ending::GoAway,
            (Ok(()), Err(e)) => Ending::Other(format!("{e:?}")),
        };
        shared.update(|t| t.endings.push(ending));
    }
}

#[test]
fn http2_streams_survive_50_reloads_and_old_connections_end_with_goaway() {
    let demo = baton_e2e::bin("demo-server");
    let mut baton = BatonCmd::new()
        .args(["--workers", "2"])
        .command([demo.as_os_str(), "--drain-grace".as_ref(), "200ms".as_ref()])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let shared = Arc::new(Shared {
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, baton.port())),
        tally: Mutex::default(),
        changed: Condvar::new(),
        stop: AtomicBool::new(false),
        floor: AtomicU32::new(1),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the client");
    let drivers: Vec<_> = (0..CONNECTIONS)
        .map(|_| rt.spawn(connection(Arc::clone(&shared))))
        .collect();
    assert!(
        shared.wait_until(WAIT, |t| t.generations.contains_key(&1)),
        "no HTTP/2 response from generation 1: {}",
        shared.summary()
    );

    for g in 2..=RELOADS + 1 {
        baton.reload(g, WAIT);
        let old = baton.workers_of(g - 1).into_iter().filter_map(|w| w.proc);
        baton.assert_gone(old, WAIT, &format!("a worker of generation {}", g - 1));
        shared.floor.store(g, Ordering::SeqCst);
        assert!(
            shared.wait_until(WAIT, |t| t.generations.contains_key(&g)
                || !t.failed.is_empty()),
            "no HTTP/2 response from generation {g} after it was ready: {}",
            shared.summary()
        );
        let clean = {
            let t = shared.lock();
            t.failed.is_empty() && t.stale.is_empty()
        };
        assert!(
            clean,
            "by reload {} (generation {g}): {}",
            g - 1,
            shared.summary()
        );
    }

    shared.stop.store(true, Ordering::SeqCst);
    rt.block_on(async {
        for d in drivers {
            tokio::time::timeout(WAIT, d)
                .await
                .expect("the client stops within WAIT")
                .expect("a connection driver panicked");
        }
    });
    let summary = shared.summary();
    eprintln!("[e2e] http2: {summary}");
    let t = shared.lock();
    assert!(t.failed.is_empty(), "failed streams: {summary}");
    assert!(t.stale.is_empty(), "stale answers: {summary}");
    assert!(
        t.endings.iter().all(|e| *e == Ending::GoAway),
        "a connection ended without a GOAWAY: {summary}"
    );
    // Every reload ends every connection open to the old generation.
    assert!(
        t.endings.len() >= CONNECTIONS * RELOADS as usize,
        "fewer connections ended than reloads x connections: {summary}"
    );
    for g in 1..=RELOADS + 1 {
        assert!(
            t.generations.contains_key(&g),
            "generation {g} answered nothing: {summary}"
        );
    }
    drop(t);
    let status = baton.stop(Signal::TERM, WAIT);
    assert_eq!(status.code(), Some(0), "graceful stop after the reloads");
}
