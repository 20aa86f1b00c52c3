//! A small HTTP/1.1 load client that counts every failed request.
//!
//! baton's promise is "no failed request across a reload", so the tool that
//! checks it must never hide a failure: no retries, no connection pool that
//! quietly reopens a connection the server closed, and every way a request
//! can go wrong counted under its own name.
//!
//! ```no_run
//! use std::time::Duration;
//! use baton_load::{Config, Target};
//!
//! let mut cfg = Config::new(Target::Tcp("127.0.0.1:8080".parse().unwrap()));
//! cfg.concurrency = 8; // connections, one thread each
//! let run = baton_load::start(cfg);
//! // ... reload the server ...
//! run.wait_for_generation("2", Duration::from_secs(10));
//! let report = run.stop();
//! assert_eq!(report.failed, 0, "{report}");
//! ```
//!
//! Theory of operation: each of `concurrency` threads owns one connection
//! (TCP or Unix) and sends `GET` requests back to back, one at a time.
//!
//! * With `keep_alive` (the default) a connection is reused until the server
//!   answers `Connection: close` (or HTTP/1.0 without keep-alive, or a body
//!   delimited by the end of the connection); the next request then opens a
//!   new connection. That is the server politely ending the connection, not
//!   a failure. A connection the server closes *without* saying so in a
//!   response makes the next request fail.
//! * Without `keep_alive` every request says `Connection: close` and uses a
//!   new connection.
//! * A request fails on: connect error, write error, read error or reset,
//!   end of connection before or during the response, the request timeout,
//!   an unparsable response, or a status outside 2xx. A failed request's
//!   connection is closed and the next request opens a new one; the failed
//!   request itself is never retried.
//! * Latencies go into a log-linear histogram per thread (bounded memory,
//!   about 3 % resolution), merged on [`Running::snapshot`].
//! * With `timeline`, every request is also kept as a [`Sample`] (when it
//!   began, its latency, its outcome, its generation): [`Running::timeline`].
//! * With `rate`, requests are paced (open loop) instead of sent back to
//!   back: each thread starts one every `concurrency / rate` seconds, and a
//!   thread that falls behind skips the slots it missed rather than
//!   bursting, so a stall shows as a gap, not as a flood after it.

mod config;
mod histogram;
mod http;
mod report;
mod run;
mod timeline;

pub use config::{Config, Target, UrlError, parse_http_url};
pub use histogram::{Histogram, Latency};
pub use http::{Conn, Failure, Response, fetch, get_request};
pub use report::{Report, human};
pub use run::{Running, start, try_start};
pub use timeline::{Sample, write_csv};

#[cfg(test)]
mod tests;
