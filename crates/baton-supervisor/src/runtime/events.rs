//! Publishing what happened: every [`Notice`] (from the lifecycle's
//! actions, or the runtime's own) is counted by the metrics and sent to
//! each `baton ctl events` reader as one JSON line.
//!
//! A reader is a control client that asked for `events`. Its lines wait in
//! its output buffer while its socket is full; a reader whose buffer would
//! pass its bound ([`control::EVENTS_BUFFER`], or less if it asked) is
//! given one last line, `dropped`, and closed once that is written (or
//! after [`DROP_LINGER`]): a slow reader costs a bounded amount of memory,
//! is counted, and never holds up the loop or another reader. Readers are
//! control clients, so they cross an in-place upgrade like the others, and
//! their stream goes on with the next event number.

use std::time::{Duration, Instant};

use super::Runtime;
use super::clients::Waiting;
use crate::control::{self, Reply};
use crate::events::{EventLine, Notice};

/// How long a dropped reader gets to read its last line before it is
/// closed anyway.
pub(super) const DROP_LINGER: Duration = Duration::from_secs(5);

impl Runtime {
    /// Counts `notice` and sends it to every reader.
    pub(super) fn publish(&mut self, notice: Notice) {
        self.metrics.observe(&notice);
        self.metrics.events += 1;
        let seq = self.metrics.events;
        let readers: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, c)| c.waiting == Waiting::Events)
            .map(|(id, _)| *id)
            .collect();
        if readers.is_empty() {
            return;
        }
        let line = Reply::Event(EventLine::now(seq, notice)).to_line();
        for id in readers {
            let Some(c) = self.clients.get_mut(&id) else {
                continue;
            };
            if c.output.len() + line.len() > c.events_buffer {
                let reason = format!(
                    "this reader fell {} bytes of events behind; read faster, or reconnect and get the current state from baton ctl status",
                    c.events_buffer
                );
                c.output.extend_from_slice(
                    &Reply::Dropped {
                        reason,
                        missed_from: seq,
                    }
                    .to_line(),
                );
                c.waiting = Waiting::Nothing;
                c.close_when_flushed = true;
                // Closed when this passes, read or not (`expire_clients`).
                c.deadline = Some(Instant::now() + DROP_LINGER);
                self.metrics.event_readers_dropped += 1;
                tracing::warn!(
                    "dropped a baton ctl events reader that fell behind ({} bytes); {} dropped so far",
                    c.events_buffer,
                    self.metrics.event_readers_dropped
                );
            } else {
                c.output.extend_from_slice(&line);
            }
            self.flush(id);
        }
    }

    /// Client `id` asked for `events`.
    pub(super) fn subscribe(&mut self, id: u64, buffer: Option<usize>) {
        if self.event_readers() >= control::MAX_EVENT_READERS {
            self.reply_and_close(
                id,
                &Reply::Error {
                    message: format!(
                        "too many event readers: {} are connected; close one first",
                        control::MAX_EVENT_READERS
                    ),
                },
            );
            return;
        }
        let bound = buffer
            .unwrap_or(control::EVENTS_BUFFER)
            .clamp(1024, control::EVENTS_BUFFER);
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        if buffer.is_some() {
            // A reader that asked for a small bound means it: the kernel's
            // buffer would otherwise hold a few hundred KiB more.
            if let Err(e) = rustix::net::sockopt::set_socket_send_buffer_size(&c.stream, bound) {
                tracing::debug!("cannot bound an event reader's socket buffer: {e}");
            }
        }
        c.waiting = Waiting::Events;
        c.events_buffer = bound;
        let reply = Reply::Subscribed {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            serving: self.machine.serving(),
            seq: self.metrics.events,
        };
        self.reply(id, &reply);
    }

    /// `ctl events` readers connected now.
    pub(super) fn event_readers(&self) -> usize {
        self.clients
            .values()
            .filter(|c| c.waiting == Waiting::Events)
            .count()
    }
}
