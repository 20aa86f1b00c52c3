//! The dispatch protocol's messages (version 1), as bytes: what baton
//! sends a worker and what a worker sends baton. Pure: no I/O, shared by
//! the worker side ([`super::Channel`]) and by baton itself.
//!
//! Every message is one packet of a `SOCK_SEQPACKET` socket: ASCII words
//! separated by spaces (a trailing newline is allowed). The whole protocol
//! is described in the repository's `docs/contract.md`, "The dispatch
//! protocol"; in short:
//!
//! | from | message | meaning |
//! | --- | --- | --- |
//! | worker | `ready [CREDITS]` | send me connections, at most CREDITS at once (default 1) |
//! | worker | `taken ID...` | (pass) I hold these connections |
//! | worker | `done ID...` | these connections are closed: their credits are free |
//! | worker | `got ID` / `none ID` | (accept) I accepted one / there was nothing to accept |
//! | worker | `stopping` | send me nothing more; answer `end` |
//! | worker | `batch N` | (pass) you may send me up to N connections in one packet |
//! | baton | `conn ID LISTENER` + the descriptor | (pass) a connection from listener LISTENER |
//! | baton | `accept ID INDEX LISTENER` | (accept) accept one connection on fd 3+INDEX now |
//! | baton | `end` | nothing more will come: the last message |
//!
//! A worker may put several of its messages in one packet (`done 4 taken
//! 9`): a word that is not a number starts the next message.
//!
//! baton sends one message per packet, except to a worker that said
//! `batch N` (which it may only say when baton set [`BATCH_VAR`]): then a
//! packet may hold up to N `conn` lines, one per line, with their
//! descriptors in the same order. One packet for several connections is
//! one `sendmsg` and one wake-up of the worker instead of several.

use std::fmt;
use std::fmt::Write as _;

/// The environment variable naming the worker's end of its channel.
pub const FD_VAR: &str = "BATON_DISPATCH_FD";
/// The environment variable naming the mode: `pass` or `accept`.
pub const MODE_VAR: &str = "BATON_DISPATCH";
/// Set by a baton that understands `batch` (pass mode only): the most
/// connections it puts in one packet.
pub const BATCH_VAR: &str = "BATON_DISPATCH_BATCH";
/// The most connections baton puts in one packet (and so the most
/// descriptors a worker must make room for).
pub const MAX_BATCH: u32 = 16;
/// The longest packet either side sends or accepts; longer is an error.
pub const MAX_MESSAGE: usize = 1024;
/// The most connections a worker may ask for at once.
pub const MAX_CREDITS: u32 = 65_536;

/// How connections reach a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// baton accepts and passes each connection's descriptor (`SCM_RIGHTS`).
    Pass,
    /// baton tells the worker to accept one from an inherited listener.
    Accept,
}

impl Mode {
    /// `pass` or `accept`: the value of [`MODE_VAR`].
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Pass => "pass",
            Mode::Accept => "accept",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pass" => Ok(Mode::Pass),
            "accept" => Ok(Mode::Accept),
            _ => Err(format!(
                "unknown dispatch mode {s:?}; use pass (baton passes each accepted connection) or accept (baton tells an idle worker to accept)"
            )),
        }
    }
}

/// A malformed packet, and what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed dispatch message {shown:?}: {problem}")]
pub struct ProtoError {
    /// The packet as text (cut at 80 characters).
    pub shown: String,
    pub problem: String,
}

fn error(packet: &[u8], problem: impl Into<String>) -> ProtoError {
    let text = String::from_utf8_lossy(packet);
    ProtoError {
        shown: text.trim_end().chars().take(80).collect(),
        problem: problem.into(),
    }
}

/// What a worker says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromWorker {
    /// `ready [CREDITS]`.
    Ready { credits: u32 },
    /// `taken ID`: a passed connection is in the worker's hands.
    Taken(u64),
    /// `done ID`: a connection is closed.
    Done(u64),
    /// `got ID`: the worker accepted a connection as told.
    Got(u64),
    /// `none ID`: the worker was told to accept and found nothing.
    Nothing(u64),
    /// `stopping`: the worker drains; baton answers [`ToWorker::End`].
    Stopping,
    /// `batch N`: baton may send up to `max` connections in one packet.
    Batch { max: u32 },
}

/// What baton says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToWorker {
    /// `conn ID LISTENER`, with the connection's descriptor.
    Conn { id: u64, listener: String },
    /// `accept ID INDEX LISTENER`.
    Accept {
        id: u64,
        index: usize,
        listener: String,
    },
    /// `end`.
    End,
}

fn words(packet: &[u8]) -> Result<std::str::SplitAsciiWhitespace<'_>, ProtoError> {
    if packet.len() > MAX_MESSAGE {
        return Err(error(packet, format!("longer than {MAX_MESSAGE} bytes")));
    }
    let text = std::str::from_utf8(packet).map_err(|_| error(packet, "not ASCII"))?;
    Ok(text.split_ascii_whitespace())
}

fn number(packet: &[u8], word: &str) -> Result<u64, ProtoError> {
    word.parse()
        .map_err(|_| error(packet, format!("{word:?} is not a connection id")))
}

/// Parses a worker's packet into its messages, in order.
pub fn parse_worker(packet: &[u8]) -> Result<Vec<FromWorker>, ProtoError> {
    let mut out = Vec::new();
    parse_worker_into(packet, &mut out)?;
    Ok(out)
}

/// [`parse_worker`], appending to `out` (a buffer a reader keeps: baton
/// reads a packet or two per connection). On an error, `out` is left as
/// it was: a packet is acted on whole or not at all.
pub fn parse_worker_into(packet: &[u8], out: &mut Vec<FromWorker>) -> Result<(), ProtoError> {
    let start = out.len();
    let parsed = parse_appending(packet, out);
    if parsed.is_err() {
        out.truncate(start);
    }
    parsed
}

fn parse_appending(packet: &[u8], out: &mut Vec<FromWorker>) -> Result<(), ProtoError> {
    let start = out.len();
    let mut it = words(packet)?.peekable();
    let is_number = |w: &&str| w.bytes().all(|b| b.is_ascii_digit());
    while let Some(verb) = it.next() {
        match verb {
            "ready" => {
                let credits = match it.next_if(is_number) {
                    None => 1,
                    Some(n) => n
                        .parse::<u32>()
                        .ok()
                        .filter(|c| (1..=MAX_CREDITS).contains(c))
                        .ok_or_else(|| {
                            error(packet, format!("credits {n} are not 1 to {MAX_CREDITS}"))
                        })?,
                };
                out.push(FromWorker::Ready { credits });
            }
            "taken" | "done" => {
                let before = out.len();
                while let Some(id) = it.next_if(is_number) {
                    let id = number(packet, id)?;
                    out.push(if verb == "taken" {
                        FromWorker::Taken(id)
                    } else {
                        FromWorker::Done(id)
                    });
                }
                if out.len() == before {
                    return Err(error(packet, format!("{verb} needs a connection id")));
                }
            }
            "got" | "none" => {
                let id = it
                    .next()
                    .ok_or_else(|| error(packet, format!("{verb} needs a connection id")))?;
                let id = number(packet, id)?;
                out.push(if verb == "got" {
                    FromWorker::Got(id)
                } else {
                    FromWorker::Nothing(id)
                });
            }
            "stopping" => out.push(FromWorker::Stopping),
            "batch" => {
                let n = it
                    .next_if(is_number)
                    .ok_or_else(|| error(packet, "batch needs a number"))?;
                let max = n
                    .parse::<u32>()
                    .ok()
                    .filter(|m| (1..=MAX_BATCH).contains(m))
                    .ok_or_else(|| error(packet, format!("batch {n} is not 1 to {MAX_BATCH}")))?;
                out.push(FromWorker::Batch { max });
            }
            other => {
                return Err(error(
                    packet,
                    format!(
                        "unknown message {other:?} (a worker says ready, taken, done, got, none, stopping or batch)"
                    ),
                ));
            }
        }
    }
    if out.len() == start {
        return Err(error(packet, "empty"));
    }
    Ok(())
}

/// A worker's messages as one packet (several verbs may share it).
pub fn encode_worker(msgs: &[FromWorker]) -> String {
    let mut s = String::new();
    // Consecutive takens (or dones) share their verb.
    let mut last: Option<&str> = None;
    for m in msgs {
        let (verb, arg) = match m {
            FromWorker::Ready { credits } => ("ready", Some(u64::from(*credits))),
            FromWorker::Taken(id) => ("taken", Some(*id)),
            FromWorker::Done(id) => ("done", Some(*id)),
            FromWorker::Got(id) => ("got", Some(*id)),
            FromWorker::Nothing(id) => ("none", Some(*id)),
            FromWorker::Stopping => ("stopping", None),
            FromWorker::Batch { max } => ("batch", Some(u64::from(*max))),
        };
        let shares = matches!(verb, "taken" | "done") && last == Some(verb);
        if !shares {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(verb);
        }
        if let Some(a) = arg {
            let _ = write!(s, " {a}");
        }
        last = Some(verb);
    }
    s
}

impl ToWorker {
    /// The packet baton sends.
    pub fn encode(&self) -> String {
        match self {
            ToWorker::Conn { id, listener } => format!("conn {id} {listener}"),
            ToWorker::Accept {
                id,
                index,
                listener,
            } => format!("accept {id} {index} {listener}"),
            ToWorker::End => "end".to_owned(),
        }
    }

    /// Parses a packet from baton into its messages: one per line (more
    /// than one only after the worker said `batch`).
    pub fn parse_all(packet: &[u8]) -> Result<Vec<Self>, ProtoError> {
        if packet.len() > MAX_MESSAGE {
            return Err(error(packet, format!("longer than {MAX_MESSAGE} bytes")));
        }
        let out = packet
            .split(|&b| b == b'\n')
            .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
            .map(Self::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if out.is_empty() {
            return Err(error(packet, "empty"));
        }
        Ok(out)
    }

    /// Parses one message from baton (one line of its packet).
    pub fn parse(packet: &[u8]) -> Result<Self, ProtoError> {
        let mut it = words(packet)?;
        let verb = it.next().ok_or_else(|| error(packet, "empty"))?;
        let msg = match verb {
            "conn" => {
                let id = number(packet, it.next().ok_or_else(|| error(packet, "no id"))?)?;
                let listener = it.next().unwrap_or_default().to_owned();
                ToWorker::Conn { id, listener }
            }
            "accept" => {
                let id = number(packet, it.next().ok_or_else(|| error(packet, "no id"))?)?;
                let index = it
                    .next()
                    .and_then(|w| w.parse().ok())
                    .ok_or_else(|| error(packet, "no listener index"))?;
                let listener = it.next().unwrap_or_default().to_owned();
                ToWorker::Accept {
                    id,
                    index,
                    listener,
                }
            }
            "end" => ToWorker::End,
            other => return Err(error(packet, format!("unknown message {other:?}"))),
        };
        if it.next().is_some() {
            return Err(error(packet, "unexpected words at the end"));
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader's buffer gets each packet's messages appended, and a bad
    /// packet leaves it as it was (acted on whole or not at all).
    #[test]
    fn parse_worker_into_appends_and_leaves_the_buffer_alone_on_an_error() {
        let mut out = vec![FromWorker::Done(1)];
        parse_worker_into(b"taken 2 3 done 2", &mut out).expect("parses");
        assert_eq!(
            out,
            [
                FromWorker::Done(1),
                FromWorker::Taken(2),
                FromWorker::Taken(3),
                FromWorker::Done(2)
            ]
        );
        assert!(parse_worker_into(b"done 4 taken x", &mut out).is_err());
        assert_eq!(out.len(), 4, "nothing of the bad packet: {out:?}");
        assert!(parse_worker_into(b"", &mut out).is_err(), "an empty packet");
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn worker_messages_round_trip_and_share_packets() {
        let msgs = [
            FromWorker::Done(4),
            FromWorker::Done(5),
            FromWorker::Taken(9),
            FromWorker::Ready { credits: 64 },
            FromWorker::Got(1),
            FromWorker::Nothing(2),
            FromWorker::Stopping,
        ];
        let text = encode_worker(&msgs);
        assert_eq!(text, "done 4 5 taken 9 ready 64 got 1 none 2 stopping");
        assert_eq!(
            parse_worker(b"ready 64 batch 16"),
            Ok(vec![
                FromWorker::Ready { credits: 64 },
                FromWorker::Batch { max: 16 }
            ])
        );
        assert_eq!(
            encode_worker(&[
                FromWorker::Ready { credits: 8 },
                FromWorker::Batch { max: 4 }
            ]),
            "ready 8 batch 4"
        );
        assert_eq!(parse_worker(text.as_bytes()), Ok(msgs.to_vec()));
        assert_eq!(
            parse_worker(b"ready\n"),
            Ok(vec![FromWorker::Ready { credits: 1 }])
        );
        assert_eq!(
            parse_worker(b"ready stopping"),
            Ok(vec![FromWorker::Ready { credits: 1 }, FromWorker::Stopping])
        );
    }

    #[test]
    fn malformed_worker_packets_say_what_is_wrong() {
        for (packet, what) in [
            (&b""[..], "empty"),
            (b"taken", "taken needs a connection id"),
            (b"done x", "done needs a connection id"),
            (b"done 1 x", "unknown message \"x\""),
            (b"got", "got needs a connection id"),
            (b"none -1", "not a connection id"),
            (b"ready 0", "credits 0 are not 1 to"),
            (b"ready 99999999", "credits 99999999 are not"),
            (b"batch", "batch needs a number"),
            (b"batch 0", "batch 0 is not 1 to"),
            (b"batch 17", "batch 17 is not 1 to"),
            (b"hello", "unknown message \"hello\""),
            (b"\xff", "not ASCII"),
        ] {
            let e = parse_worker(packet).expect_err(what);
            assert!(e.to_string().contains(what), "{packet:?}: {e}");
        }
        let long = vec![b'd'; MAX_MESSAGE + 1];
        assert!(parse_worker(&long).is_err());
    }

    #[test]
    fn baton_messages_round_trip() {
        for m in [
            ToWorker::Conn {
                id: 7,
                listener: "web".into(),
            },
            ToWorker::Accept {
                id: 8,
                index: 1,
                listener: "admin".into(),
            },
            ToWorker::End,
        ] {
            assert_eq!(ToWorker::parse(m.encode().as_bytes()), Ok(m));
        }
        assert!(ToWorker::parse(b"conn x web").is_err());
        assert_eq!(
            ToWorker::parse_all(b"conn 1 web\nconn 2 admin\n"),
            Ok(vec![
                ToWorker::Conn {
                    id: 1,
                    listener: "web".into()
                },
                ToWorker::Conn {
                    id: 2,
                    listener: "admin".into()
                }
            ])
        );
        assert_eq!(ToWorker::parse_all(b"end"), Ok(vec![ToWorker::End]));
        assert!(ToWorker::parse_all(b"conn 1 web\nconn x web").is_err());
        assert!(ToWorker::parse_all(b"\n").is_err(), "empty");
        assert!(ToWorker::parse(b"end now").is_err());
        assert!(ToWorker::parse(b"accept 1").is_err());
    }

    #[test]
    fn modes() {
        assert_eq!("pass".parse(), Ok(Mode::Pass));
        assert_eq!("accept".parse(), Ok(Mode::Accept));
        assert!(
            "fd".parse::<Mode>()
                .expect_err("unknown")
                .contains("unknown dispatch mode")
        );
        assert_eq!(Mode::Accept.to_string(), "accept");
    }
}
