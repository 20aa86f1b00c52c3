//! `--dispatch`: the settings of dispatch mode, and their parsers. The
//! runtime's side (channels, accepting, scheduling) is `runtime::dispatch`;
//! the messages are `baton_app::dispatch::proto`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How connections reach the workers (`--dispatch[=pass|accept]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DispatchMode {
    /// baton accepts and passes each connection (`SCM_RIGHTS`).
    Pass,
    /// baton tells an idle worker to accept one.
    Accept,
}

impl DispatchMode {
    /// The protocol's name for it.
    pub fn proto(self) -> baton_app::dispatch::Mode {
        match self {
            DispatchMode::Pass => baton_app::dispatch::Mode::Pass,
            DispatchMode::Accept => baton_app::dispatch::Mode::Accept,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.proto().as_str()
    }
}

/// Which idle worker gets the next connection (`--dispatch-order`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DispatchOrder {
    /// The worker that has waited longest since it was last given one
    /// (round robin over the workers with a free credit).
    Fifo,
    /// The worker with the most free credits; among equals, the one that
    /// waited longest.
    LeastLoaded,
}

impl DispatchOrder {
    pub fn as_str(self) -> &'static str {
        match self {
            DispatchOrder::Fifo => "fifo",
            DispatchOrder::LeastLoaded => "least-loaded",
        }
    }
}

/// What baton does with a connection no worker can take (`--overload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Overload {
    /// Stop accepting until a worker is idle: the kernel's backlog holds
    /// the clients.
    Wait,
    /// Accept and close at once.
    Close,
    /// Accept, answer a minimal `HTTP/1.1 503` with `Retry-After`, close.
    Http503,
}

impl Overload {
    pub fn as_str(self) -> &'static str {
        match self {
            Overload::Wait => "wait",
            Overload::Close => "close",
            Overload::Http503 => "503",
        }
    }
}

/// The dispatch settings a generation runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchSettings {
    pub mode: DispatchMode,
    /// How long a worker may take to answer a dispatch (`taken`, `got` or
    /// `none`) before it is killed and the connection goes to another.
    pub timeout: Duration,
    pub order: DispatchOrder,
    pub overload: Overload,
    /// Connections baton accepts and holds while no worker is idle (pass
    /// mode only); 0: none.
    pub queue: usize,
    /// How long a connection may wait in that queue before the overload
    /// policy answers it (503, or close).
    pub queue_timeout: Duration,
}

/// The defaults of the dispatch flags.
pub mod defaults {
    use std::time::Duration;
    pub const TIMEOUT: Duration = Duration::from_secs(5);
    pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
}

/// The most connections `--queue` may hold.
pub const MAX_QUEUE: usize = 1 << 20;

/// Parses `--dispatch`'s value: `pass` or `accept`.
pub fn parse_mode(s: &str) -> Result<DispatchMode, String> {
    match s.parse::<baton_app::dispatch::Mode>()? {
        baton_app::dispatch::Mode::Pass => Ok(DispatchMode::Pass),
        baton_app::dispatch::Mode::Accept => Ok(DispatchMode::Accept),
    }
}

/// Parses `--dispatch-order`: `fifo` or `least-loaded`.
pub fn parse_order(s: &str) -> Result<DispatchOrder, String> {
    match s {
        "fifo" => Ok(DispatchOrder::Fifo),
        "least-loaded" | "least_loaded" => Ok(DispatchOrder::LeastLoaded),
        _ => Err(format!(
            "unknown dispatch order {s:?}; use fifo (the worker idle longest) or least-loaded (the worker with the most free credits)"
        )),
    }
}

/// Parses `--overload`: `wait`, `close` or `503`.
pub fn parse_overload(s: &str) -> Result<Overload, String> {
    match s {
        "wait" => Ok(Overload::Wait),
        "close" => Ok(Overload::Close),
        "503" => Ok(Overload::Http503),
        _ => Err(format!(
            "unknown overload policy {s:?}; use wait (leave connections in the kernel's backlog until a worker is idle), close (accept and close them) or 503 (answer HTTP 503 with Retry-After)"
        )),
    }
}

/// Parses `--dispatch-timeout`: a duration above zero.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = crate::config::parse_duration(s)?;
    if d.is_zero() {
        return Err(
            "a worker needs some time to answer a dispatch; write e.g. --dispatch-timeout 5s"
                .into(),
        );
    }
    Ok(d)
}

/// Parses `--queue`: a number of connections, 0 to [`MAX_QUEUE`].
pub fn parse_queue(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n <= MAX_QUEUE => Ok(n),
        Ok(n) => Err(format!("--queue {n} is more than the limit of {MAX_QUEUE}")),
        Err(_) => Err(format!(
            "{s:?} is not a number of connections; write e.g. --queue 64"
        )),
    }
}

/// What baton answers a connection it refuses under `--overload 503`:
/// the whole response, with `Connection: close`.
pub const RESPONSE_503: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\nContent-Length: 20\r\nConnection: close\r\n\r\nno worker is free. \n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_and_mistakes_say_what_to_write() {
        assert_eq!(parse_mode("pass"), Ok(DispatchMode::Pass));
        assert_eq!(parse_mode("accept"), Ok(DispatchMode::Accept));
        assert!(parse_mode("yes").expect_err("bad").contains("use pass"));
        assert_eq!(parse_order("least-loaded"), Ok(DispatchOrder::LeastLoaded));
        assert!(parse_order("random").expect_err("bad").contains("use fifo"));
        assert_eq!(parse_overload("503"), Ok(Overload::Http503));
        assert!(
            parse_overload("drop")
                .expect_err("bad")
                .contains("use wait")
        );
        assert_eq!(parse_queue("64"), Ok(64));
        assert_eq!(parse_timeout("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_timeout("0").expect_err("zero").contains("some time"));
        assert!(
            parse_timeout("soon")
                .expect_err("bad")
                .contains("not a duration")
        );
        assert!(parse_queue("-1").expect_err("bad").contains("--queue 64"));
        assert!(parse_queue("99999999").is_err());
    }

    #[test]
    fn the_503_is_a_whole_response() {
        let text = std::str::from_utf8(RESPONSE_503).expect("ASCII");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.parse().ok())
            .expect("a length");
        assert_eq!(body.len(), len);
        assert!(head.contains("Retry-After: 1"));
    }
}
