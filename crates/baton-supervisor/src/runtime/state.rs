//! What a re-executed baton takes over: the runtime's whole state, written
//! by the old image into a sealed memfd and read by the new one.
//!
//! # The format and its compatibility rule
//!
//! JSON (serde), with a schema number, [`STATE_SCHEMA`]. An image writes its
//! own schema and reads every schema in [`READS`]; before an upgrade, the
//! old image asks the new binary which schemas it reads (`baton
//! upgrade-check`) and refuses the upgrade unless its own is among them, so
//! a state the new image cannot read is refused by the pre-flight, never
//! discovered after the exec. A field added later gets `#[serde(default)]`
//! and keeps the schema; a change an older reader would get wrong needs a
//! new schema number (and the new reader keeps reading the old one).
//!
//! Descriptors travel as their numbers: the old image clears their
//! close-on-exec flag just before the exec, and the new image claims each
//! number once (which sets the flag again).

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Runtime;
use super::clients::{Client, Waiting};
use super::reconfig::GenSpec;
use super::workers::{RtGeneration, RtWorker};
use crate::config::Settings;
use crate::lifecycle::{GenId, Lifecycle, ReadyMode, Slot, TimerKey};
use crate::listen::{Bound, ListenSpec};
use crate::output::{Pipe, Stream, Tail};

/// The schema this image writes.
pub const STATE_SCHEMA: u32 = 1;
/// The schemas this image reads.
pub const READS: std::ops::RangeInclusive<u32> = 1..=1;

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ListenerState {
    fd: RawFd,
    spec: Option<ListenSpec>,
    adopted: bool,
    name: String,
    display: String,
    unix_file: Option<(PathBuf, u64, u64)>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct GenSpecState {
    args: Vec<OsString>,
    env: Vec<OsString>,
    /// Indexes into [`State::listeners`].
    listeners: Vec<usize>,
    ready_fd: bool,
    ready: ReadyMode,
    fingerprint: String,
    /// `--user`, resolved when the generation started.
    #[serde(default)]
    run_as: Option<crate::privileges::RunAs>,
    #[serde(default)]
    no_new_privs: bool,
    #[serde(default)]
    dispatch: Option<crate::dispatch::DispatchSettings>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct GenState {
    id: GenId,
    notify: Option<(RawFd, PathBuf)>,
    chdir: Option<PathBuf>,
    program: Option<PathBuf>,
    error: Option<String>,
    /// The `exec:` probe running: its pid and pidfd.
    probe: Option<(u32, RawFd)>,
    spec: Option<GenSpecState>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct PipeState {
    fd: RawFd,
    stream: Stream,
    partial: Vec<u8>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct WorkerState {
    generation: GenId,
    slot: Slot,
    pid: u32,
    /// The pidfd, unless the worker was reaped. (A worker whose exit was
    /// seen is reaped by the events handled before the state is written,
    /// so every worker with a pidfd here is alive, or exited during the
    /// exec, which its pidfd then reports.)
    pidfd: Option<RawFd>,
    pipes: Vec<PipeState>,
    ready: Option<RawFd>,
    tail: Tail,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ClientState {
    id: u64,
    fd: RawFd,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Microseconds left to send a request, if it has not yet.
    deadline_us: Option<u64>,
    waiting: Waiting,
    close_when_flushed: bool,
    /// An event reader's bound (`ctl events`).
    #[serde(default)]
    events_buffer: usize,
}

/// The `--metrics` endpoint: its listener and the clients being served.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct EndpointState {
    fd: RawFd,
    spec: ListenSpec,
    local: std::net::SocketAddr,
    clients: Vec<HttpClientState>,
    next_client: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct HttpClientState {
    id: u64,
    fd: RawFd,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Microseconds left before it is closed.
    deadline_us: u64,
    close_when_flushed: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct GuardState {
    pid: u32,
    pidfd: RawFd,
    tx: RawFd,
}

/// Work the runtime was asked for while the exec was being prepared, done
/// by the new image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Deferred {
    Spawn(GenId, Slot),
    /// A spawn at the lowest CPU priority (quiet boot).
    SpawnQuiet(GenId, Slot),
    Probe(GenId),
}

/// The upgrade that is being carried out: who waits for its verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct UpgradeState {
    /// The `ctl upgrade` client, if one asked.
    pub(super) client: Option<u64>,
    /// The version of the image that started it.
    pub(super) from: String,
    /// When the upgrade was asked for (wall clock, microseconds since the
    /// epoch): the new image tells how long it all took.
    pub(super) requested_unix_us: u64,
    /// The old binary, open across the exec for a rollback.
    pub(super) old_binary: RawFd,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) schema: u32,
    pub(super) version: String,
    uptime_us: u64,
    /// When it was written, on the monotonic clock (`stamp::monotonic_us`):
    /// the reader adds the time since to every age. Absent from states of
    /// older batons (their ages are then short by the exec).
    #[serde(default)]
    written_us: Option<u64>,
    settings: Settings,
    base_env: Vec<OsString>,
    machine: Lifecycle,
    /// Each armed timer and the microseconds left until it is due.
    timers: Vec<(TimerKey, u64)>,
    listeners: Vec<ListenerState>,
    /// Indexes into `listeners`: the set in force for the next generation.
    current: Vec<usize>,
    generations: Vec<GenState>,
    workers: Vec<WorkerState>,
    control: Option<(RawFd, PathBuf, (u64, u64))>,
    clients: Vec<ClientState>,
    next_client: u64,
    guard: Option<GuardState>,
    cgroup_root: Option<PathBuf>,
    rundir: PathBuf,
    /// The notify directory of generations that run as another user.
    #[serde(default)]
    rundir_shared: Option<PathBuf>,
    child_nofile: Option<u64>,
    stdin: RawFd,
    pub(super) deferred: Vec<Deferred>,
    pub(super) upgrade: Option<UpgradeState>,
    pub(super) upgrades: u64,
    /// The binary baton runs from (the default for the next upgrade), its
    /// `argv` and the environment it started with.
    pub(super) exe: PathBuf,
    pub(super) argv: Vec<OsString>,
    pub(super) environ: Vec<OsString>,
    /// What is counted over baton's life (the metrics, the event numbers).
    #[serde(default)]
    metrics: crate::metrics::Metrics,
    #[serde(default)]
    endpoint: Option<EndpointState>,
    /// `--dispatch`: channels, connections in flight, queue, counters.
    #[serde(default)]
    pub(super) dispatch: Option<super::dispatch::DispatchState>,
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Runtime {
    /// The state to hand over, and every descriptor in it (to be kept open
    /// across the exec).
    pub(super) fn capture(&self, upgrade: UpgradeState) -> (State, Vec<RawFd>) {
        let now = std::time::Instant::now();
        let mut fds: Vec<RawFd> = Vec::new();
        let mut keep = |fd: RawFd| {
            fds.push(fd);
            fd
        };
        // Every listener anything holds, once.
        let mut all: Vec<Arc<Bound>> = Vec::new();
        let index = |b: &Arc<Bound>, all: &mut Vec<Arc<Bound>>| {
            if let Some(i) = all.iter().position(|x| Arc::ptr_eq(x, b)) {
                i
            } else {
                all.push(Arc::clone(b));
                all.len() - 1
            }
        };
        let current: Vec<usize> = self.listeners.iter().map(|b| index(b, &mut all)).collect();
        let mut generations = Vec::new();
        for (id, rg) in &self.generations {
            generations.push(GenState {
                id: *id,
                notify: rg
                    .notify
                    .as_ref()
                    .map(|(_, s)| (keep(s.sock.as_raw_fd()), s.path.clone())),
                chdir: rg.chdir.clone(),
                program: rg.program.clone(),
                error: rg.error.clone(),
                probe: rg
                    .probe
                    .as_ref()
                    .map(|(_, c)| (c.pid, keep(c.pidfd.as_raw_fd()))),
                spec: rg.spec.as_ref().map(|s| GenSpecState {
                    args: s.args.to_vec(),
                    env: s.env.to_vec(),
                    listeners: s.listeners.iter().map(|b| index(b, &mut all)).collect(),
                    ready_fd: s.ready_fd,
                    ready: s.ready.clone(),
                    fingerprint: s.fingerprint.clone(),
                    run_as: s.run_as.as_deref().cloned(),
                    no_new_privs: s.no_new_privs,
                    dispatch: s.dispatch,
                }),
            });
        }
        let listeners = all
            .iter()
            .map(|b| ListenerState {
                fd: keep(b.fd.as_raw_fd()),
                spec: b.spec.clone(),
                adopted: b.adopted,
                name: b.name.clone(),
                display: b.display.clone(),
                unix_file: b.unix_file.clone(),
            })
            .collect();
        let workers = self
            .workers
            .iter()
            .map(|((g, slot), w)| WorkerState {
                generation: *g,
                slot: *slot,
                pid: w.pid,
                pidfd: w.child.as_ref().map(|(_, c)| keep(c.pidfd.as_raw_fd())),
                pipes: w
                    .pipes
                    .iter()
                    .map(|(_, p)| PipeState {
                        fd: keep(p.fd.as_raw_fd()),
                        stream: p.stream,
                        partial: p.partial.clone(),
                    })
                    .collect(),
                ready: w.ready.as_ref().map(|(_, fd)| keep(fd.as_raw_fd())),
                tail: w.tail.clone(),
            })
            .collect();
        let clients = self
            .clients
            .iter()
            .map(|(id, c)| ClientState {
                id: *id,
                fd: keep(c.stream.as_raw_fd()),
                input: c.input.clone(),
                output: c.output.clone(),
                deadline_us: c.deadline.map(|d| micros(d.saturating_duration_since(now))),
                waiting: c.waiting,
                close_when_flushed: c.close_when_flushed,
                events_buffer: c.events_buffer,
            })
            .collect();
        let endpoint = self.endpoint.as_ref().map(|e| EndpointState {
            fd: keep(e.listener.as_raw_fd()),
            spec: e.spec.clone(),
            local: e.local,
            clients: e
                .clients
                .iter()
                .map(|(id, c)| HttpClientState {
                    id: *id,
                    fd: keep(c.stream.as_raw_fd()),
                    input: c.input.clone(),
                    output: c.output.clone(),
                    deadline_us: micros(c.deadline.saturating_duration_since(now)),
                    close_when_flushed: c.close_when_flushed,
                })
                .collect(),
            next_client: e.next_client,
        });
        let control = self
            .control
            .as_ref()
            .map(|(_, s)| (keep(s.listener.as_raw_fd()), s.path.clone(), s.identity));
        let guard = self.guard.as_ref().map(|g| GuardState {
            pid: g.child.pid,
            pidfd: keep(g.child.pidfd.as_raw_fd()),
            tx: keep(g.tx.as_raw_fd()),
        });
        let stdin = keep(self.stdin.as_raw_fd());
        keep(upgrade.old_binary);
        let dispatch = self.capture_dispatch(&mut keep);
        let state = State {
            schema: STATE_SCHEMA,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_us: micros(now.saturating_duration_since(self.started)),
            written_us: Some(crate::stamp::monotonic_us()),
            settings: self.settings.clone(),
            base_env: self.base_env.to_vec(),
            machine: self.machine.clone(),
            timers: self
                .timers
                .iter()
                .map(|(k, at)| (*k, micros(at.saturating_duration_since(now))))
                .collect(),
            listeners,
            current,
            generations,
            workers,
            control,
            clients,
            next_client: self.next_client,
            guard,
            cgroup_root: self.cgroup_root.clone(),
            rundir: self.rundir.path().to_path_buf(),
            rundir_shared: self.rundir.shared.clone(),
            child_nofile: self.child_nofile,
            stdin,
            deferred: self.deferred.clone(),
            upgrade: Some(upgrade),
            upgrades: self.upgrades,
            exe: self.exe.clone(),
            argv: self.argv.clone(),
            environ: self.environ.clone(),
            metrics: self.metrics.clone(),
            endpoint,
            dispatch,
        };
        (state, fds)
    }
}

/// The descriptor a state names, claimed (once) by this image. Its
/// close-on-exec flag stays cleared until the whole state is restored
/// ([`seal_claimed`]), so a rollback finds it open.
pub(super) fn claim(fd: RawFd, what: &str) -> Result<OwnedFd, String> {
    let owned = baton_sys::fd::claim_fd_keep_flags(fd)
        .map_err(|e| format!("the state names fd {fd} for {what}, which is not usable: {e}"))?;
    CLAIMED.with(|c| c.borrow_mut().push(fd));
    Ok(owned)
}

thread_local! {
    static CLAIMED: std::cell::RefCell<Vec<RawFd>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The state is restored: every descriptor it named is close-on-exec again.
pub(super) fn seal_claimed() {
    for fd in CLAIMED.with(|c| std::mem::take(&mut *c.borrow_mut())) {
        let _ = baton_sys::fd::set_cloexec(fd, true);
    }
}

/// Every descriptor number a state names, without claiming any (checked
/// before anything is built from it).
fn all_fds(s: &State) -> Vec<RawFd> {
    let mut v: Vec<RawFd> = s.listeners.iter().map(|l| l.fd).collect();
    for g in &s.generations {
        v.extend(g.notify.as_ref().map(|(fd, _)| *fd));
        v.extend(g.probe.map(|(_, fd)| fd));
    }
    for w in &s.workers {
        v.extend(w.pidfd);
        v.extend(w.pipes.iter().map(|p| p.fd));
        v.extend(w.ready);
    }
    v.extend(s.control.as_ref().map(|(fd, _, _)| *fd));
    v.extend(s.clients.iter().map(|c| c.fd));
    if let Some(g) = &s.guard {
        v.push(g.pidfd);
        v.push(g.tx);
    }
    v.push(s.stdin);
    if let Some(e) = &s.endpoint {
        v.push(e.fd);
        v.extend(e.clients.iter().map(|c| c.fd));
    }
    if let Some(d) = &s.dispatch {
        v.extend(d.fds());
    }
    v
}

/// The parts of a runtime rebuilt from a state, ready to be registered with
/// a new event loop.
pub(super) struct Restored {
    pub(super) settings: Settings,
    pub(super) base_env: Vec<OsString>,
    pub(super) machine: Lifecycle,
    pub(super) timers: Vec<(TimerKey, std::time::Instant)>,
    pub(super) listeners: Vec<Arc<Bound>>,
    pub(super) generations: Vec<(GenId, RtGeneration)>,
    pub(super) workers: Vec<((GenId, Slot), RtWorker)>,
    pub(super) control: Option<crate::control::ControlSocket>,
    pub(super) clients: Vec<(u64, Client)>,
    pub(super) next_client: u64,
    pub(super) guard: Option<crate::guard::Guard>,
    pub(super) cgroup_root: Option<PathBuf>,
    pub(super) rundir: PathBuf,
    pub(super) rundir_shared: Option<PathBuf>,
    pub(super) child_nofile: Option<u64>,
    pub(super) stdin: OwnedFd,
    pub(super) started: std::time::Instant,
    pub(super) deferred: Vec<Deferred>,
    pub(super) upgrade: Option<UpgradeState>,
    pub(super) upgrades: u64,
    pub(super) exe: PathBuf,
    pub(super) argv: Vec<OsString>,
    pub(super) environ: Vec<OsString>,
    pub(super) dispatch: super::dispatch::Dispatcher,
    pub(super) metrics: crate::metrics::Metrics,
    /// The metrics endpoint: what it was asked for, its listener and
    /// address, its clients, the next client's number.
    pub(super) endpoint: Option<RestoredEndpoint>,
}

/// The metrics endpoint, rebuilt.
pub(super) struct RestoredEndpoint {
    pub(super) spec: ListenSpec,
    pub(super) listener: mio::net::TcpListener,
    pub(super) local: std::net::SocketAddr,
    pub(super) clients: std::collections::HashMap<u64, super::metrics::HttpClient>,
    pub(super) next_client: u64,
}

/// Parses a state (checking its schema) and claims every descriptor in it.
pub(super) fn restore(bytes: &[u8]) -> Result<Restored, String> {
    let probe: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("the state is not readable: {e}"))?;
    let schema = probe
        .get("schema")
        .and_then(serde_json::Value::as_u64)
        .ok_or("the state has no schema number")?;
    if !READS.contains(&u32::try_from(schema).unwrap_or(u32::MAX)) {
        return Err(format!(
            "the state has schema {schema}; this baton reads schemas {}..={}",
            READS.start(),
            READS.end()
        ));
    }
    // The time since the state was written (the exec): every age in it
    // grew by that much, and every timer came that much closer.
    let gap = probe
        .get("written_us")
        .and_then(serde_json::Value::as_u64)
        .map_or(Duration::ZERO, |at| {
            Duration::from_micros(crate::stamp::monotonic_us().saturating_sub(at))
        });
    let s: State = crate::stamp::reading_after(gap, || serde_json::from_value(probe))
        .map_err(|e| format!("the state does not fit schema {schema}: {e}"))?;
    // Every descriptor must be there before any is taken: a state that
    // fails half-way must leave them all open for a rollback.
    let fds = all_fds(&s);
    if let Some(fd) = fds.iter().find(|fd| !baton_sys::fd::is_open(**fd)) {
        return Err(format!("the state names fd {fd}, which is not open"));
    }
    let now = std::time::Instant::now();
    let mut listeners: Vec<Arc<Bound>> = Vec::with_capacity(s.listeners.len());
    for l in s.listeners {
        listeners.push(Arc::new(Bound {
            spec: l.spec,
            adopted: l.adopted,
            name: l.name.clone(),
            fd: claim(l.fd, &format!("listener {}", l.name))?,
            display: l.display,
            unix_file: l.unix_file,
        }));
    }
    let pick = |idx: &[usize]| -> Result<Vec<Arc<Bound>>, String> {
        idx.iter()
            .map(|i| {
                listeners
                    .get(*i)
                    .cloned()
                    .ok_or_else(|| format!("the state names listener #{i}, which it does not have"))
            })
            .collect()
    };
    let current = pick(&s.current)?;
    let mut generations = Vec::new();
    for g in s.generations {
        let notify = match g.notify {
            Some((fd, path)) => {
                let sock = std::os::unix::net::UnixDatagram::from(claim(fd, "a notify socket")?);
                Some(crate::notify::NotifySocket { sock, path })
            }
            None => None,
        };
        let probe = match g.probe {
            Some((pid, fd)) => Some(baton_sys::spawn::Child::from_parts(
                pid,
                claim(fd, "a probe")?,
            )),
            None => None,
        };
        let spec = match g.spec {
            Some(sp) => Some(Arc::new(GenSpec {
                args: Arc::new(sp.args),
                env: Arc::new(sp.env),
                listeners: Arc::new(pick(&sp.listeners)?),
                ready_fd: sp.ready_fd,
                ready: sp.ready,
                fingerprint: sp.fingerprint,
                run_as: sp.run_as.map(Arc::new),
                no_new_privs: sp.no_new_privs,
                dispatch: sp.dispatch,
            })),
            None => None,
        };
        generations.push((
            g.id,
            RtGeneration::restored(notify, g.chdir, g.program, g.error, probe, spec),
        ));
    }
    let mut workers = Vec::new();
    for w in s.workers {
        let child = match w.pidfd {
            Some(fd) => Some(baton_sys::spawn::Child::from_parts(
                w.pid,
                claim(fd, "a worker's pidfd")?,
            )),
            None => None,
        };
        let mut pipes = Vec::new();
        for p in w.pipes {
            let mut pipe = Pipe::new(claim(p.fd, "a worker's output")?, p.stream);
            pipe.partial = p.partial;
            pipes.push(pipe);
        }
        let ready = match w.ready {
            Some(fd) => Some(claim(fd, "a worker's readiness pipe")?),
            None => None,
        };
        workers.push((
            (w.generation, w.slot),
            RtWorker::restored(w.pid, child, pipes, ready, w.tail),
        ));
    }
    let control = match s.control {
        Some((fd, path, identity)) => {
            let std_listener =
                std::os::unix::net::UnixListener::from(claim(fd, "the control socket")?);
            std_listener
                .set_nonblocking(true)
                .map_err(|e| format!("the control socket: {e}"))?;
            Some(crate::control::ControlSocket {
                listener: mio::net::UnixListener::from_std(std_listener),
                path,
                identity,
            })
        }
        None => None,
    };
    let mut clients = Vec::new();
    for c in s.clients {
        let stream = std::os::unix::net::UnixStream::from(claim(c.fd, "a control client")?);
        stream
            .set_nonblocking(true)
            .map_err(|e| format!("a control client: {e}"))?;
        let mut client = Client::restored(
            mio::net::UnixStream::from_std(stream),
            c.input,
            c.output,
            c.deadline_us
                .map(|us| now + std::time::Duration::from_micros(us)),
            c.waiting,
            c.close_when_flushed,
        );
        client.events_buffer = c.events_buffer;
        clients.push((c.id, client));
    }
    let endpoint = match s.endpoint {
        Some(e) => {
            let listener = std::net::TcpListener::from(claim(e.fd, "the metrics endpoint")?);
            listener
                .set_nonblocking(true)
                .map_err(|err| format!("the metrics endpoint: {err}"))?;
            let mut http_clients = std::collections::HashMap::new();
            for c in e.clients {
                let stream = std::net::TcpStream::from(claim(c.fd, "a metrics client")?);
                stream
                    .set_nonblocking(true)
                    .map_err(|err| format!("a metrics client: {err}"))?;
                http_clients.insert(
                    c.id,
                    super::metrics::HttpClient::new(
                        mio::net::TcpStream::from_std(stream),
                        c.input,
                        c.output,
                        now + std::time::Duration::from_micros(c.deadline_us),
                        c.close_when_flushed,
                    ),
                );
            }
            Some(RestoredEndpoint {
                spec: e.spec,
                listener: mio::net::TcpListener::from_std(listener),
                local: e.local,
                clients: http_clients,
                next_client: e.next_client,
            })
        }
        None => None,
    };
    let guard = match s.guard {
        Some(g) => Some(crate::guard::Guard {
            child: baton_sys::spawn::Child::from_parts(g.pid, claim(g.pidfd, "the guard's pidfd")?),
            tx: claim(g.tx, "the guard's pipe")?,
        }),
        None => None,
    };
    let dispatch = match s.dispatch {
        Some(d) => super::dispatch::restore(d, &claim)?,
        None => super::dispatch::Dispatcher::default(),
    };
    Ok(Restored {
        dispatch,
        settings: s.settings,
        base_env: s.base_env,
        machine: s.machine,
        timers: s
            .timers
            .into_iter()
            .map(|(k, us)| (k, now + Duration::from_micros(us).saturating_sub(gap)))
            .collect(),
        listeners: current,
        generations,
        workers,
        control,
        clients,
        next_client: s.next_client,
        guard,
        cgroup_root: s.cgroup_root,
        rundir: s.rundir,
        rundir_shared: s.rundir_shared,
        child_nofile: s.child_nofile,
        stdin: claim(s.stdin, "the workers' stdin")?,
        started: now
            .checked_sub(Duration::from_micros(s.uptime_us) + gap)
            .unwrap_or(now),
        deferred: s.deferred,
        upgrade: s.upgrade,
        upgrades: s.upgrades,
        exe: s.exe,
        argv: s.argv,
        environ: s.environ,
        metrics: s.metrics,
        endpoint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state written by the first image of schema 1 (a real one, dumped
    /// with `baton ctl upgrade --failpoint resume-dump:PATH`: two workers,
    /// a named listener, after one reload). Every later image that says it
    /// reads schema 1 must read it: a change that breaks this needs a new
    /// schema number.
    const SCHEMA_1: &str = include_str!("fixtures/state-schema-1.json");

    #[test]
    fn a_schema_1_state_from_the_first_image_still_parses() {
        let s: State = serde_json::from_str(SCHEMA_1).expect("schema 1 parses");
        assert_eq!(s.schema, 1);
        assert!(READS.contains(&s.schema));
        assert_eq!(s.workers.len(), 2);
        assert_eq!(s.listeners.len(), 1);
        assert_eq!(s.settings.policy.workers, 2);
        assert!(!all_fds(&s).is_empty());
    }

    #[test]
    fn a_state_of_another_schema_is_refused_by_name() {
        let other = SCHEMA_1.replacen("\"schema\":1", "\"schema\":99", 1);
        let e = restore(other.as_bytes()).err().expect("refused");
        assert!(e.contains("schema 99"), "{e}");
        let e = restore(b"not json").err().expect("refused");
        assert!(e.contains("not readable"), "{e}");
    }
}
