//! `--ready accepting`: the loop's side. A look at a generation's workers
//! ([`Action::CheckAccepting`](crate::lifecycle::Action::CheckAccepting))
//! is sent at once to the watcher thread ([`crate::accepting::Watcher`],
//! started at the first look) with the time it is due; the thread sleeps
//! until then, looks, and answers through a pipe the loop watches. Each
//! worker seen accepting becomes an `Event::WorkerReady`, and the look as a
//! whole an `Event::AcceptLooked` with what was seen of the others.
//!
//! The lifecycle asks for the next look only when the last one is done; a
//! look asked for while another of the same generation is in flight (a
//! worker restarted meanwhile) is dropped: the answer to the one in flight
//! leads to the next, which covers it. The loop never waits for the thread
//! (it may be stuck on a process in the middle of `execve`).

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};

use super::{Runtime, Source};
use crate::accepting::{Check, Listener, SocketId, Watcher};
use crate::lifecycle::{Event, GenId, Slot};

/// The watcher thread and what the loop knows of its work.
#[derive(Debug)]
pub(super) struct AcceptChecks {
    watcher: Watcher,
    wake_rx: mio::unix::pipe::Receiver,
    /// Generations with a look in flight.
    inflight: HashSet<GenId>,
    /// The last description logged for each worker (with its pid).
    said: HashMap<(GenId, Slot), (u32, String)>,
}

impl Runtime {
    /// Looks, `after` from now, at the running workers of generation `g`
    /// that are not ready (those of the moment the look is asked for).
    pub(super) fn check_accepting(&mut self, g: GenId, after: std::time::Duration) {
        let due = std::time::Instant::now() + after;
        let not_ready = self.machine.not_ready(g);
        let workers: Vec<(Slot, u32)> = self
            .machine
            .worker_pids(g)
            .into_iter()
            .filter(|(slot, _)| not_ready.contains(slot))
            .collect();
        let Some(spec) = self.generations.get(&g).and_then(|r| r.spec.clone()) else {
            return;
        };
        if self.accept.is_none() {
            match self.start_accept_watcher() {
                Ok(a) => self.accept = Some(a),
                Err(e) => {
                    tracing::error!(
                        "cannot start the thread that looks for accepting workers: {e}"
                    );
                    return;
                }
            }
        }
        let Some(accept) = self.accept.as_mut() else {
            return;
        };
        if !accept.inflight.insert(g) {
            return;
        }
        // A UDP socket has no connections to wait for: only the stream
        // listeners tell whether a worker accepts.
        let listeners = spec
            .listeners
            .iter()
            .filter(|b| !b.is_datagram())
            .filter_map(|b| match SocketId::of(&b.fd) {
                Ok(id) => Some(Listener {
                    id,
                    display: b.display.clone(),
                    local: rustix::net::getsockname(&b.fd).ok(),
                }),
                Err(e) => {
                    tracing::warn!("cannot identify listener {}: {e}", b.display);
                    None
                }
            })
            .collect();
        if !accept.watcher.send(Check {
            generation: g,
            due,
            workers,
            listeners,
        }) {
            tracing::error!("the thread that looks for accepting workers is gone");
            accept.inflight.remove(&g);
        }
    }

    fn start_accept_watcher(&mut self) -> std::io::Result<AcceptChecks> {
        let (wake_tx, mut wake_rx) = mio::unix::pipe::new()?;
        let wake_tx = std::sync::Mutex::new(wake_tx);
        let watcher = Watcher::start(Box::new(move || {
            // A full pipe already holds a wake-up.
            let mut tx = wake_tx
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = tx.write(&[1]);
        }))?;
        let token = self.token(Source::Accepting);
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut wake_rx, token, mio::Interest::READABLE)
        {
            self.tokens.remove(&token);
            return Err(e);
        }
        Ok(AcceptChecks {
            watcher,
            wake_rx,
            inflight: HashSet::new(),
            said: HashMap::new(),
        })
    }

    /// The watcher thread answered.
    pub(super) fn on_accept_results(&mut self) {
        let Some(accept) = self.accept.as_mut() else {
            return;
        };
        let mut buf = [0u8; 64];
        while matches!(accept.wake_rx.read(&mut buf), Ok(n) if n > 0) {}
        let results = accept.watcher.results();
        let mut events = Vec::new();
        for checked in results {
            let g = checked.generation;
            accept.inflight.remove(&g);
            if !self.generations.contains_key(&g) {
                continue;
            }
            let mut others = Vec::new();
            for w in checked.workers {
                tracing::trace!(
                    "looked at worker {} of generation {g} (pid {}) in {} µs",
                    w.slot,
                    w.pid,
                    w.took.as_micros()
                );
                // The slot may have a new worker meanwhile (a restart).
                let current = self.workers.get(&(g, w.slot)).map(|rw| rw.pid);
                if current != Some(w.pid) {
                    continue;
                }
                if let Some(how) = &w.seen.accepting {
                    tracing::debug!(
                        "worker {} of generation {g} (pid {}) accepts: {how} (seen in {} µs)",
                        w.slot,
                        w.pid,
                        w.took.as_micros()
                    );
                    accept.said.remove(&(g, w.slot));
                    events.push(Event::WorkerReady {
                        generation: g,
                        slot: w.slot,
                    });
                    continue;
                }
                let changed = accept
                    .said
                    .get(&(g, w.slot))
                    .is_none_or(|(pid, said)| *pid != w.pid || *said != w.description);
                if changed {
                    tracing::debug!("{} (seen in {} µs)", w.description, w.took.as_micros());
                    accept
                        .said
                        .insert((g, w.slot), (w.pid, w.description.clone()));
                }
                others.push((w.slot, w.description));
            }
            events.push(Event::AcceptLooked {
                generation: g,
                seen: others,
            });
        }
        let generations = &self.generations;
        accept.said.retain(|(g, _), _| generations.contains_key(g));
        accept.inflight.retain(|g| generations.contains_key(g));
        self.queue.extend(events);
    }
}
