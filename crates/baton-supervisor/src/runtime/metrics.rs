//! The `--metrics` endpoint's sockets: `/metrics`, `/ready` and `/live`,
//! served by the event loop itself.
//!
//! # Why on the loop, and not a thread with an HTTP crate
//!
//! `/live` must fail when baton's loop is stuck, and an answer from the
//! loop does so by construction: a thread of its own (`tiny_http`, or
//! hyper on a current-thread tokio runtime) would go on answering for a
//! loop that no longer turns unless it watched a heartbeat, which is one
//! more timing rule to get wrong. The requests are tiny `GET`s, parsed by
//! `httparse` (`crate::metrics::http`); the sockets follow the control
//! socket's discipline (non-blocking, a bounded request, a deadline per
//! client, a cap on clients), so a slow or hostile scraper can never hold
//! the loop. hyper would also bring tokio into the supervisor, which
//! baton's dependency choices keep out (about +14 s of build and +1 MB).
//! Measured cost: bench/metrics (a scrape takes the loop tens of
//! microseconds; see bench/RESULTS.md).
//!
//! The listener is baton's own: close-on-exec, never among the sockets a
//! worker gets, and carried across an in-place upgrade with its clients.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant, SystemTime};

use mio::{Interest, Token};

use super::{Runtime, RuntimeError, Source};
use crate::listen::{ListenAddr, ListenSpec};
use crate::metrics::http::{self, Page, Parsed};

/// The most metrics clients at once; past it, the one idle longest is
/// closed to make room (a keep-alive scraper reconnects).
pub(super) const MAX_CLIENTS: usize = 64;
/// How long a client may take to send a whole request, and stay idle
/// between requests on a kept-alive connection.
pub(super) const CLIENT_TIME: Duration = Duration::from_secs(10);
/// A client that does not read its responses is dropped past this much
/// unsent output.
const MAX_OUTPUT: usize = 1024 * 1024;

/// The endpoint: its listener and clients.
#[derive(Debug)]
pub(super) struct Endpoint {
    /// What the settings asked for (a reload compares it).
    pub(super) spec: ListenSpec,
    pub(super) listener: mio::net::TcpListener,
    pub(super) token: Token,
    /// The address bound (`:0` resolved to its port).
    pub(super) local: SocketAddr,
    pub(super) clients: HashMap<u64, HttpClient>,
    pub(super) next_client: u64,
}

#[derive(Debug)]
pub(super) struct HttpClient {
    pub(super) stream: mio::net::TcpStream,
    pub(super) token: Token,
    pub(super) input: Vec<u8>,
    pub(super) output: Vec<u8>,
    pub(super) deadline: Instant,
    pub(super) close_when_flushed: bool,
    pub(super) want_write: bool,
}

impl HttpClient {
    pub(super) fn new(
        stream: mio::net::TcpStream,
        input: Vec<u8>,
        output: Vec<u8>,
        deadline: Instant,
        close_when_flushed: bool,
    ) -> Self {
        Self {
            stream,
            token: Token(usize::MAX),
            input,
            output,
            deadline,
            close_when_flushed,
            want_write: false,
        }
    }
}

/// Binds the endpoint's listener for `spec` (a TCP address).
pub(super) fn bind(spec: &ListenSpec) -> Result<(OwnedFd, SocketAddr), String> {
    let ListenAddr::Tcp { host, port } = &spec.addr else {
        return Err(format!(
            "the metrics endpoint needs a TCP address, not {}",
            spec.text
        ));
    };
    let addr = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, *port),
        Err(_) => (host.as_str(), *port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| {
                format!(
                    "cannot resolve {host:?} (from --metrics {}); use an IP address such as 127.0.0.1",
                    spec.text
                )
            })?,
    };
    let fd = crate::listen::bind_tcp(addr).map_err(|e| {
        format!(
            "cannot bind the metrics endpoint {addr} (from --metrics {}): {}",
            spec.text,
            crate::listen::explain(e, &addr.to_string(), Some(*port))
        )
    })?;
    let local = rustix::net::getsockname(&fd)
        .ok()
        .and_then(|a| SocketAddr::try_from(a).ok())
        .unwrap_or(addr);
    Ok((fd, local))
}

fn listener_from(fd: OwnedFd) -> std::io::Result<mio::net::TcpListener> {
    let std_listener = std::net::TcpListener::from(fd);
    std_listener.set_nonblocking(true)?;
    Ok(mio::net::TcpListener::from_std(std_listener))
}

impl Runtime {
    /// Binds and watches the endpoint the settings ask for (at start).
    pub(super) fn open_metrics(&mut self) -> Result<(), RuntimeError> {
        let Some(spec) = self.settings.metrics.clone() else {
            return Ok(());
        };
        let (fd, local) = bind(&spec).map_err(RuntimeError::Metrics)?;
        let listener = listener_from(fd).map_err(|e| RuntimeError::Metrics(e.to_string()))?;
        self.adopt_metrics(spec, listener, local, HashMap::new(), 1)
            .map_err(RuntimeError::Poll)
    }

    /// Watches an endpoint's listener and clients (new, or taken over from
    /// the previous image).
    pub(super) fn adopt_metrics(
        &mut self,
        spec: ListenSpec,
        mut listener: mio::net::TcpListener,
        local: SocketAddr,
        clients: HashMap<u64, HttpClient>,
        next_client: u64,
    ) -> std::io::Result<()> {
        let token = self.token(Source::Metrics);
        self.poll
            .registry()
            .register(&mut listener, token, Interest::READABLE)?;
        let mut ep = Endpoint {
            spec,
            listener,
            token,
            local,
            clients: HashMap::new(),
            next_client,
        };
        for (id, mut c) in clients {
            let t = self.token(Source::MetricsClient(id));
            let interest = if c.output.is_empty() {
                Interest::READABLE
            } else {
                c.want_write = true;
                Interest::READABLE | Interest::WRITABLE
            };
            self.poll.registry().register(&mut c.stream, t, interest)?;
            c.token = t;
            ep.clients.insert(id, c);
        }
        tracing::info!("metrics on http://{local}/metrics (also /ready and /live)");
        self.endpoint = Some(ep);
        Ok(())
    }

    /// A reload's settings name another endpoint (or none): the new one is
    /// bound first (an error refuses the reload), then the old one closes.
    pub(super) fn reconfigure_metrics(&mut self, want: Option<&ListenSpec>) -> Result<(), String> {
        let have = self.endpoint.as_ref().map(|e| e.spec.text.as_str());
        if have == want.map(|s| s.text.as_str()) {
            return Ok(());
        }
        let new = match want {
            Some(spec) => {
                let (fd, local) = bind(spec)?;
                Some((
                    spec.clone(),
                    listener_from(fd).map_err(|e| format!("the metrics endpoint: {e}"))?,
                    local,
                ))
            }
            None => None,
        };
        if let Some(mut old) = self.endpoint.take() {
            let _ = self.poll.registry().deregister(&mut old.listener);
            self.tokens.remove(&old.token);
            for (_, mut c) in old.clients.drain() {
                let _ = self.poll.registry().deregister(&mut c.stream);
                self.tokens.remove(&c.token);
            }
            tracing::info!("metrics endpoint http://{} closed", old.local);
        }
        if let Some((spec, listener, local)) = new {
            self.adopt_metrics(spec, listener, local, HashMap::new(), 1)
                .map_err(|e| format!("cannot watch the metrics endpoint: {e}"))?;
        }
        Ok(())
    }

    pub(super) fn accept_metrics_clients(&mut self) {
        loop {
            let Some(ep) = self.endpoint.as_mut() else {
                return;
            };
            let stream = match ep.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors, most likely: the connection waits
                    // in the backlog; the listener is edge-triggered, so
                    // this does not spin.
                    tracing::debug!("metrics endpoint: cannot accept a client: {e}");
                    if let Some(idle) = ep.clients.iter().min_by_key(|(_, c)| c.deadline) {
                        let id = *idle.0;
                        self.close_metrics_client(id);
                        continue;
                    }
                    return;
                }
            };
            if ep.clients.len() >= MAX_CLIENTS
                && let Some(idle) = ep.clients.iter().min_by_key(|(_, c)| c.deadline)
            {
                let id = *idle.0;
                self.close_metrics_client(id);
            }
            // Responses are small and go out whole: no Nagle delay.
            let _ = stream.set_nodelay(true);
            let Some(ep) = self.endpoint.as_mut() else {
                return;
            };
            let id = ep.next_client;
            ep.next_client += 1;
            let token = self.token(Source::MetricsClient(id));
            let mut c = HttpClient::new(
                stream,
                Vec::new(),
                Vec::new(),
                Instant::now() + CLIENT_TIME,
                false,
            );
            c.token = token;
            if let Err(e) = self
                .poll
                .registry()
                .register(&mut c.stream, token, Interest::READABLE)
            {
                tracing::debug!("cannot watch a metrics client: {e}");
                self.tokens.remove(&token);
                continue;
            }
            if let Some(ep) = self.endpoint.as_mut() {
                ep.clients.insert(id, c);
            }
        }
    }

    pub(super) fn on_metrics_client(&mut self, id: u64) {
        self.flush_metrics_client(id);
        let mut closed = false;
        let input = {
            let Some(c) = self.endpoint.as_mut().and_then(|e| e.clients.get_mut(&id)) else {
                return;
            };
            let mut buf = [0u8; 4096];
            loop {
                // Enough to tell a request that is too large from one that
                // is not; the rest is not read.
                if c.input.len() > http::MAX_HEAD + buf.len() || c.close_when_flushed {
                    break;
                }
                match std::io::Read::read(&mut c.stream, &mut buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => c.input.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            std::mem::take(&mut c.input)
        };
        let mut out = Vec::new();
        let mut used = 0;
        let mut close = false;
        let mut answered = false;
        while !close {
            match http::parse(&input[used..]) {
                Parsed::Partial => break,
                Parsed::Request(r) => {
                    out.extend(self.answer(r.page, r.head, r.close));
                    used += r.len;
                    close = r.close;
                    answered = true;
                }
                Parsed::Bad { status, message } => {
                    out.extend(http::text(status, &format!("{message}\n"), false, true));
                    close = true;
                    answered = true;
                }
            }
        }
        let Some(c) = self.endpoint.as_mut().and_then(|e| e.clients.get_mut(&id)) else {
            return;
        };
        c.input = input[used..].to_vec();
        c.output.extend(out);
        if answered {
            c.deadline = Instant::now() + CLIENT_TIME;
        }
        c.close_when_flushed |= close;
        if c.output.len() > MAX_OUTPUT {
            self.close_metrics_client(id);
            return;
        }
        if closed && c.output.is_empty() {
            self.close_metrics_client(id);
            return;
        }
        self.flush_metrics_client(id);
    }

    /// The response to one request.
    fn answer(&self, page: Page, head: bool, close: bool) -> Vec<u8> {
        match page {
            Page::Metrics => {
                let body = crate::metrics::encode(&self.metrics, &self.scrape());
                http::response(
                    200,
                    crate::metrics::CONTENT_TYPE,
                    body.as_bytes(),
                    head,
                    close,
                )
            }
            Page::Ready => {
                let (status, body) = if self.machine.is_stopping() {
                    (503, "not ready: baton is stopping\n".to_owned())
                } else if let Some(g) = self.machine.serving() {
                    (200, format!("ready: generation {g} serves\n"))
                } else if self.machine.generation_count() > 0 {
                    (
                        503,
                        "not ready: the first generation is still starting\n".to_owned(),
                    )
                } else {
                    (503, "not ready: no generation serves\n".to_owned())
                };
                http::text(status, &body, head, close)
            }
            // The loop answered: it turns.
            Page::Live => http::text(200, "live\n", head, close),
            Page::Index => http::text(200, http::INDEX, head, close),
            Page::NotFound => http::text(
                404,
                "not found: this endpoint serves /metrics, /ready and /live\n",
                head,
                close,
            ),
        }
    }

    /// What is true now, for `/metrics`.
    pub(super) fn scrape(&self) -> crate::metrics::Scrape {
        let now = Instant::now();
        let wall = SystemTime::now();
        let at = |t: Instant| {
            wall.checked_sub(now.saturating_duration_since(t))
                .unwrap_or(wall)
        };
        crate::metrics::Scrape {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started: match self.metrics.started_unix_us {
                0 => at(self.started),
                us => SystemTime::UNIX_EPOCH + Duration::from_micros(us),
            },
            ready: self.ready_now(),
            serving: self.machine.serving(),
            workers_per_generation: self.machine.workers(),
            counters: self.machine.counters(),
            generations: self.machine.snapshot(),
            last_reload: self.machine.last_reload().and_then(|o| {
                let ok = match o {
                    crate::lifecycle::ReloadOutcome::Ready { .. } => true,
                    crate::lifecycle::ReloadOutcome::Failed { .. } => false,
                    crate::lifecycle::ReloadOutcome::Refused(_) => return None,
                };
                Some((ok, self.machine.last_reload_at().map_or(wall, at)))
            }),
            event_readers: self.event_readers(),
            dispatch: self.dispatch_status(),
        }
    }

    /// What `/ready` says: a generation serves and baton is not stopping.
    pub(super) fn ready_now(&self) -> bool {
        self.machine.serving().is_some() && !self.machine.is_stopping()
    }

    /// Writes what the client can take now; never blocks.
    fn flush_metrics_client(&mut self, id: u64) {
        let Some(ep) = self.endpoint.as_mut() else {
            return;
        };
        let Some(c) = ep.clients.get_mut(&id) else {
            return;
        };
        let failed = super::clients::write_pending(
            &self.poll,
            &mut c.stream,
            c.token,
            &mut c.output,
            &mut c.want_write,
        );
        if failed || (c.output.is_empty() && c.close_when_flushed) {
            self.close_metrics_client(id);
        }
    }

    fn close_metrics_client(&mut self, id: u64) {
        if let Some(mut c) = self.endpoint.as_mut().and_then(|e| e.clients.remove(&id)) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            self.tokens.remove(&c.token);
        }
    }

    /// The earliest deadline of a metrics client.
    pub(super) fn metrics_deadline(&self) -> Option<Instant> {
        self.endpoint
            .as_ref()
            .and_then(|e| e.clients.values().map(|c| c.deadline).min())
    }

    /// Closes clients past their deadline: one that sent part of a request
    /// gets 408 first; an idle kept-alive one is simply closed.
    pub(super) fn expire_metrics_clients(&mut self, now: Instant) {
        let Some(ep) = self.endpoint.as_ref() else {
            return;
        };
        let late: Vec<(u64, bool)> = ep
            .clients
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(id, c)| (*id, !c.input.is_empty() && !c.close_when_flushed))
            .collect();
        for (id, partial) in late {
            if partial && let Some(c) = self.endpoint.as_mut().and_then(|e| e.clients.get_mut(&id))
            {
                let line = http::text(
                    408,
                    &format!("no complete request within {} s\n", CLIENT_TIME.as_secs()),
                    false,
                    true,
                );
                let _ = std::io::Write::write(&mut c.stream, &line);
            }
            self.close_metrics_client(id);
        }
    }
}
