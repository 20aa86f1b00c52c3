//! Control clients: accepting them, reading their one request, answering
//! without ever blocking the loop.

use std::time::{Duration, Instant};

use mio::{Interest, Token};

use super::{MAX_WORKERS, Runtime, Source};
use crate::control::{self, Reply};
use crate::lifecycle::{Event, ReloadOutcome, StopKind};

/// How long accepting pauses when baton is out of file descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Dropped silent clients are reported at most this often.
const EVICTION_REPORT_EVERY: Duration = Duration::from_secs(10);

/// What a control client waits for after its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) enum Waiting {
    /// Nothing: its request has not arrived yet, or was answered.
    Nothing,
    /// The verdict of its reload; it receives progress lines meanwhile.
    Reload,
    /// baton's exit (`ctl stop`): the connection closes when baton exits.
    Exit,
    /// The verdict of an upgrade (`ctl upgrade`), across the exec.
    Upgrade,
    /// Events, for as long as it reads them (`ctl events`).
    Events,
}

#[derive(Debug)]
pub(super) struct Client {
    pub(super) stream: mio::net::UnixStream,
    pub(super) token: Token,
    pub(super) input: Vec<u8>,
    pub(super) output: Vec<u8>,
    /// When it must have sent its request.
    pub(super) deadline: Option<Instant>,
    pub(super) waiting: Waiting,
    pub(super) close_when_flushed: bool,
    pub(super) want_write: bool,
    /// An event reader: how many bytes of events may wait for it.
    pub(super) events_buffer: usize,
}

impl Client {
    /// A client the previous image was serving (after an upgrade).
    pub(super) fn restored(
        stream: mio::net::UnixStream,
        input: Vec<u8>,
        output: Vec<u8>,
        deadline: Option<Instant>,
        waiting: Waiting,
        close_when_flushed: bool,
    ) -> Self {
        Self {
            stream,
            token: Token(usize::MAX),
            input,
            output,
            deadline,
            waiting,
            close_when_flushed,
            want_write: false,
            events_buffer: 0,
        }
    }
}

impl Runtime {
    pub(super) fn accept_clients(&mut self) {
        loop {
            let Some((_, sock)) = &self.control else {
                return;
            };
            let mut stream = match sock.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // Out of descriptors: make room by dropping a client that
                    // has not said anything yet, or stop accepting for a
                    // moment (the listener would stay readable and spin the
                    // loop otherwise).
                    if self.evict_silent_client("baton is out of file descriptors") {
                        continue;
                    }
                    tracing::warn!(
                        "control socket: cannot accept a client ({e}); pausing accepts for {} ms",
                        ACCEPT_PAUSE.as_millis()
                    );
                    self.pause_accepting();
                    return;
                }
                Err(e) => {
                    tracing::warn!("control socket accept failed: {e}");
                    return;
                }
            };
            if self.clients.len() >= self.max_clients
                && !self.evict_silent_client("too many control clients")
            {
                let line = Reply::Error {
                    message: format!(
                        "too many control clients: {} are connected and waiting for answers; try again when one is done",
                        self.max_clients
                    ),
                }
                .to_line();
                let _ = std::io::Write::write(&mut stream, &line);
                continue;
            }
            let me = rustix::process::geteuid().as_raw();
            match rustix::net::sockopt::socket_peercred(&stream) {
                Ok(cred) if control::uid_allowed(cred.uid.as_raw(), me) => {}
                Ok(cred) => {
                    tracing::warn!(
                        "refused a control client of uid {} (pid {}): only uid {me} and root may control this baton",
                        cred.uid.as_raw(),
                        cred.pid.as_raw_nonzero()
                    );
                    let line = Reply::Error {
                        message: format!(
                            "permission denied: this baton runs as uid {me}; only that user and root may control it"
                        ),
                    }
                    .to_line();
                    let _ = std::io::Write::write(&mut stream, &line);
                    continue;
                }
                Err(e) => {
                    tracing::warn!("cannot check a control client's credentials: {e}");
                    continue;
                }
            }
            let id = self.next_client;
            self.next_client += 1;
            let token = self.token(Source::Client(id));
            if let Err(e) = self
                .poll
                .registry()
                .register(&mut stream, token, Interest::READABLE)
            {
                tracing::warn!("cannot watch a control client: {e}");
                self.tokens.remove(&token);
                continue;
            }
            self.clients.insert(
                id,
                Client {
                    stream,
                    token,
                    input: Vec::new(),
                    output: Vec::new(),
                    deadline: Some(Instant::now() + control::CLIENT_TIMEOUT),
                    waiting: Waiting::Nothing,
                    close_when_flushed: false,
                    want_write: false,
                    events_buffer: 0,
                },
            );
        }
    }

    /// Drops the oldest client that has not sent a complete request yet (a
    /// slow or idle one) to make room for a new one; `false` if every client
    /// has sent its request (they wait for verdicts and are kept).
    fn evict_silent_client(&mut self, why: &str) -> bool {
        let Some(id) = self
            .clients
            .iter()
            .filter(|(_, c)| c.deadline.is_some())
            .map(|(id, _)| *id)
            .min()
        else {
            return false;
        };
        if let Some(c) = self.clients.get_mut(&id) {
            let line = Reply::Error {
                message: format!("dropped before a request arrived: {why}"),
            }
            .to_line();
            let _ = std::io::Write::write(&mut c.stream, &line);
        }
        self.close_client(id);
        self.evicted += 1;
        let now = Instant::now();
        if self
            .evicted_reported
            .is_none_or(|at| now.saturating_duration_since(at) >= EVICTION_REPORT_EVERY)
        {
            tracing::warn!(
                "dropped {} control client{} that had sent no request ({why}; at most {} clients)",
                self.evicted,
                if self.evicted == 1 { "" } else { "s" },
                self.max_clients
            );
            self.evicted = 0;
            self.evicted_reported = Some(now);
        }
        true
    }

    /// Stops watching the control socket for [`ACCEPT_PAUSE`].
    fn pause_accepting(&mut self) {
        if let Some((_, sock)) = self.control.as_mut() {
            let _ = self.poll.registry().deregister(&mut sock.listener);
            self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
        }
    }

    /// Watches the control socket again once the pause is over.
    pub(super) fn resume_accepting(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|at| at <= now) {
            self.accept_paused_until = None;
            if let Some((token, sock)) = self.control.as_mut()
                && let Err(e) =
                    self.poll
                        .registry()
                        .register(&mut sock.listener, *token, Interest::READABLE)
            {
                tracing::warn!("cannot watch the control socket again: {e}");
            }
        }
    }

    pub(super) fn on_client(&mut self, id: u64) {
        self.flush(id);
        let mut closed = false;
        let mut request = None;
        let mut too_large = false;
        {
            let Some(c) = self.clients.get_mut(&id) else {
                return;
            };
            let mut buf = [0u8; 4096];
            loop {
                match std::io::Read::read(&mut c.stream, &mut buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => {
                        // Only the first line counts; later input is ignored.
                        if c.deadline.is_some() {
                            c.input.extend_from_slice(&buf[..n]);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            if c.deadline.is_some() {
                if let Some(end) = c.input.iter().position(|b| *b == b'\n') {
                    request = Some(c.input[..end].to_vec());
                    c.input.clear();
                    c.deadline = None;
                } else if c.input.len() > control::MAX_REQUEST {
                    too_large = true;
                    c.deadline = None;
                }
            }
        }
        if too_large {
            self.reply_and_close(
                id,
                &Reply::Error {
                    message: format!("request longer than {} bytes", control::MAX_REQUEST),
                },
            );
        } else if let Some(line) = request {
            self.handle_request(id, &line);
        }
        if closed {
            // A client that goes away simply stops hearing; a reload it asked
            // for still runs to its end.
            self.close_client(id);
        }
    }

    pub(super) fn handle_request(&mut self, id: u64, line: &[u8]) {
        let request = match control::parse_request(line) {
            Ok(r) => r,
            Err(message) => {
                self.reply_and_close(id, &Reply::Error { message });
                return;
            }
        };
        match request.cmd {
            control::Command::Status => {
                let status = self.status();
                self.reply_and_close(id, &Reply::Status(Box::new(status)));
            }
            control::Command::Reload => {
                if let Some(c) = self.clients.get_mut(&id) {
                    c.waiting = Waiting::Reload;
                }
                self.request_reload(Some(id));
            }
            control::Command::Upgrade { binary, failpoint } => {
                if let Some(c) = self.clients.get_mut(&id) {
                    c.waiting = Waiting::Upgrade;
                }
                self.start_upgrade(Some(id), binary, failpoint);
            }
            control::Command::Stop { fast } => {
                self.reply(
                    id,
                    &Reply::Ok {
                        message: if fast {
                            "stopping immediately".into()
                        } else {
                            "stopping gracefully".into()
                        },
                    },
                );
                if let Some(c) = self.clients.get_mut(&id) {
                    c.waiting = Waiting::Exit;
                }
                self.queue.push_back(Event::Stop(if fast {
                    StopKind::Immediate
                } else {
                    StopKind::Graceful
                }));
            }
            control::Command::Events { buffer } => self.subscribe(id, buffer),
            control::Command::Scale { workers } => {
                if workers == 0 || workers > MAX_WORKERS {
                    self.reply_and_close(
                        id,
                        &Reply::Error {
                            message: format!(
                                "cannot scale to {workers} workers: use 1 to {MAX_WORKERS}"
                            ),
                        },
                    );
                } else {
                    self.queue.push_back(Event::Scale(workers));
                    self.reply_and_close(
                        id,
                        &Reply::Ok {
                            message: format!("scaling to {workers} workers per generation"),
                        },
                    );
                }
            }
        }
    }

    pub(super) fn reply(&mut self, id: u64, reply: &Reply) {
        let too_much = match self.clients.get_mut(&id) {
            Some(c) => {
                c.output.extend_from_slice(&reply.to_line());
                c.output.len() > control::MAX_PENDING_OUTPUT
            }
            None => return,
        };
        if too_much {
            tracing::warn!("dropping a control client that does not read its replies");
            self.close_client(id);
            return;
        }
        self.flush(id);
    }

    pub(super) fn reply_and_close(&mut self, id: u64, reply: &Reply) {
        if let Some(c) = self.clients.get_mut(&id) {
            c.close_when_flushed = true;
            c.waiting = Waiting::Nothing;
            c.deadline = None;
        }
        self.reply(id, reply);
    }

    /// Writes what the client can take now; never blocks.
    pub(super) fn flush(&mut self, id: u64) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        let failed = write_pending(
            &self.poll,
            &mut c.stream,
            c.token,
            &mut c.output,
            &mut c.want_write,
        );
        if failed || (c.output.is_empty() && c.close_when_flushed) {
            self.close_client(id);
        }
    }

    pub(super) fn close_client(&mut self, id: u64) {
        if let Some(mut c) = self.clients.remove(&id) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            self.tokens.remove(&c.token);
        }
    }

    pub(super) fn expire_clients(&mut self, now: Instant) {
        let late: Vec<(u64, bool)> = self
            .clients
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(id, c)| (*id, c.close_when_flushed))
            .collect();
        for (id, answered) in late {
            if answered {
                // Its last line was not read in time (a dropped event
                // reader): nothing more to say.
                self.close_client(id);
                continue;
            }
            self.reply_and_close(
                id,
                &Reply::Error {
                    message: format!(
                        "no complete request within {} s",
                        control::CLIENT_TIMEOUT.as_secs()
                    ),
                },
            );
        }
    }

    pub(super) fn reload_done(&mut self, tickets: &[u64], outcome: &ReloadOutcome) {
        let reply = match outcome {
            ReloadOutcome::Ready { generation, took } => Reply::Reloaded {
                generation: *generation,
                took_ms: took.as_millis() as u64,
            },
            ReloadOutcome::Failed {
                generation,
                serving,
                reason,
                tail,
            } => Reply::ReloadFailed {
                generation: *generation,
                serving: *serving,
                reason: reason.clone(),
                output: tail
                    .and_then(|key| self.workers.get(&key))
                    .map(|w| w.tail.lines().map(str::to_owned).collect())
                    .unwrap_or_default(),
            },
            ReloadOutcome::Refused(why) => {
                self.publish(crate::events::Notice::ReloadRefused {
                    reason: why.clone(),
                });
                Reply::Error {
                    message: format!("reload refused: {why}"),
                }
            }
        };
        for id in tickets {
            self.reply_and_close(*id, &reply);
        }
    }

    pub(super) fn status(&self) -> control::Status {
        let now = Instant::now();
        let counters = self.machine.counters();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let last_age = self
            .machine
            .last_reload_at()
            .map(|at| ms(now.saturating_duration_since(at)));
        control::Status {
            ready: self.ready_now(),
            reloads_refused: self.metrics.reloads_refused,
            metrics: self
                .endpoint
                .as_ref()
                .map(|e| format!("http://{}", e.local)),
            events: self.metrics.events,
            event_readers: self.event_readers(),
            event_readers_dropped: self.metrics.event_readers_dropped,
            pid: std::process::id(),
            uptime_ms: now.saturating_duration_since(self.started).as_millis() as u64,
            serving: self.machine.serving(),
            workers_per_generation: self.machine.workers(),
            strategy: self.machine.policy().strategy.name().to_owned(),
            max_surge: self.machine.policy().max_surge,
            max_draining: self.machine.policy().max_draining,
            quiet_boot: self.machine.policy().quiet_boot
                && crate::quiet::mechanism() == crate::quiet::Mechanism::SchedIdle,
            reloads: counters.reloads_succeeded,
            reloads_attempted: counters.reloads_started,
            reloads_failed: counters.reloads_failed,
            restarts: counters.restarts,
            upgrades: self.upgrades,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            last_reload: self.machine.last_reload().and_then(|o| match o {
                ReloadOutcome::Ready { generation, took } => Some(control::LastReload {
                    ok: true,
                    generation: *generation,
                    detail: format!("ready in {} ms", took.as_millis()),
                    age_ms: last_age,
                }),
                ReloadOutcome::Failed {
                    generation, reason, ..
                } => Some(control::LastReload {
                    ok: false,
                    generation: *generation,
                    detail: reason.clone(),
                    age_ms: last_age,
                }),
                ReloadOutcome::Refused(_) => None,
            }),
            listeners: self
                .listeners
                .iter()
                .map(|l| control::ListenerStatus {
                    name: l.name.clone(),
                    address: l.display.clone(),
                })
                .collect(),
            generations: self
                .machine
                .snapshot()
                .into_iter()
                .map(|g| control::GenerationStatus {
                    id: g.id,
                    state: g.state.to_owned(),
                    age_ms: now.saturating_duration_since(g.started).as_millis() as u64,
                    ready_after_ms: g.ready_after.map(|d| d.as_millis() as u64),
                    config: self
                        .generations
                        .get(&g.id)
                        .and_then(|r| r.spec.as_ref())
                        .map(|s| s.fingerprint.clone()),
                    workers: g
                        .workers
                        .into_iter()
                        .map(|w| control::WorkerStatus {
                            slot: w.slot,
                            pid: w.pid,
                            state: w.state.to_owned(),
                            restarts: w.restarts,
                            lifetime_restarts: w.lifetime_restarts,
                            uptime_ms: w.started.map(|s| ms(now.saturating_duration_since(s))),
                            dispatch: self.dispatch_of_worker(g.id, w.slot, w.pid),
                        })
                        .collect(),
                })
                .collect(),
            dispatch: self.dispatch_status(),
        }
    }
}

/// Writes as much of `output` as `stream` takes now, never blocking, and
/// asks for `WRITABLE` while some is left (`want_write` is what is
/// registered). Returns whether the peer is gone. The control socket's and
/// the metrics endpoint's clients share it.
pub(super) fn write_pending<S>(
    poll: &mio::Poll,
    stream: &mut S,
    token: mio::Token,
    output: &mut Vec<u8>,
    want_write: &mut bool,
) -> bool
where
    S: std::io::Write + mio::event::Source,
{
    let mut failed = false;
    while !output.is_empty() {
        match stream.write(output) {
            Ok(0) => {
                failed = true;
                break;
            }
            Ok(n) => {
                output.drain(..n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    let want = !output.is_empty();
    if !failed && want != *want_write {
        *want_write = want;
        let interest = if want {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let _ = poll.registry().reregister(stream, token, interest);
    }
    failed
}
