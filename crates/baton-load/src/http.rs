//! A minimal HTTP/1.1 client connection over TCP or a Unix socket.
//!
//! Hand-written on purpose. Generic clients (hyper's pooled client, reqwest,
//! ureq) retry a request transparently when a pooled connection turns out to
//! be closed, and hide which connection a request used. That is exactly the
//! event a zero-downtime reload must not cause, so here every connection is
//! explicit, nothing is retried, and each way a request can go wrong is told
//! apart ([`Failure`]). It needs only what our servers speak: a `GET`, a
//! status line, headers, and a body framed by `Content-Length`,
//! `Transfer-Encoding: chunked` or the end of the connection.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::Target;

/// A response head larger than this is refused.
const MAX_HEAD: usize = 64 * 1024;
/// A chunk-size line longer than this is refused.
const MAX_CHUNK_LINE: usize = 1024;
/// Bytes asked of the kernel per read.
const READ_SIZE: usize = 16 * 1024;

/// How one request failed. [`Failure::kind`] gives the key it is counted
/// under in [`crate::Report::errors`].
#[derive(Debug)]
pub enum Failure {
    /// The connection could not be opened.
    Connect(io::Error),
    /// The request could not be sent.
    Write(io::Error),
    /// Reading the response failed (reset, ...), or the deadline passed.
    Read(io::Error),
    /// The connection ended before any byte of the response arrived: the
    /// server closed it without answering.
    EofBeforeResponse,
    /// The connection ended part-way through the response.
    EofMidResponse,
    /// The response could not be parsed.
    BadResponse(String),
    /// A complete response whose status is not 2xx.
    Status(u16),
}

impl Failure {
    /// A short, stable description used as a counting key:
    /// `connect: connection refused`, `connect: timeout`, `write: broken pipe`,
    /// `read: reset`, `read: timeout`, `eof before response`,
    /// `eof mid-response`, `bad response: ...`, `status 503`.
    pub fn kind(&self) -> String {
        match self {
            Failure::Connect(e) => format!("connect: {}", io_kind(e)),
            Failure::Write(e) => format!("write: {}", io_kind(e)),
            Failure::Read(e) => format!("read: {}", io_kind(e)),
            Failure::EofBeforeResponse => "eof before response".to_owned(),
            Failure::EofMidResponse => "eof mid-response".to_owned(),
            Failure::BadResponse(m) => format!("bad response: {m}"),
            Failure::Status(s) => format!("status {s}"),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.kind())
    }
}

impl std::error::Error for Failure {}

/// A stable, short name for an I/O error.
fn io_kind(e: &io::Error) -> String {
    use io::ErrorKind as K;
    match e.kind() {
        K::ConnectionReset => "reset".to_owned(),
        K::TimedOut | K::WouldBlock => "timeout".to_owned(),
        K::ConnectionRefused => "connection refused".to_owned(),
        K::ConnectionAborted => "aborted".to_owned(),
        K::BrokenPipe => "broken pipe".to_owned(),
        K::NotFound => "no such socket".to_owned(),
        K::PermissionDenied => "permission denied".to_owned(),
        K::AddrNotAvailable => "address not available".to_owned(),
        _ => match e.raw_os_error() {
            // The OS text without std's " (os error N)" suffix keeps keys short.
            Some(code) => io::Error::from_raw_os_error(code)
                .to_string()
                .split(" (os error")
                .next()
                .unwrap_or_default()
                .to_lowercase(),
            None => e.to_string(),
        },
    }
}

fn timeout_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "request deadline passed")
}

/// Time left before `deadline`, or a timeout error.
fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(timeout_error())
    } else {
        Ok(left)
    }
}

/// A connected socket.
#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn set_read_timeout(&self, d: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(Some(d)),
            Stream::Unix(s) => s.set_read_timeout(Some(d)),
        }
    }

    fn set_write_timeout(&self, d: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(Some(d)),
            Stream::Unix(s) => s.set_write_timeout(Some(d)),
        }
    }

    fn shutdown(&self) {
        // Best effort: the peer may be gone already.
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Connects a Unix stream socket with a bound on the wait.
///
/// `UnixStream::connect` has no timeout, and a full accept backlog makes a
/// blocking Unix `connect` wait indefinitely. Linux bounds that wait by the
/// socket's send timeout, which can only be set before connecting, so the
/// socket is built by hand.
fn connect_unix(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType, sockopt};
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, Some(timeout))?;
    let addr = SocketAddrUnix::new(path)?;
    match rustix::net::connect(&fd, &addr) {
        Ok(()) => {}
        // EAGAIN here means the send timeout expired while the backlog was full.
        Err(rustix::io::Errno::AGAIN) => return Err(timeout_error()),
        Err(e) => return Err(e.into()),
    }
    Ok(UnixStream::from(fd))
}

/// A parsed response. The body is kept only by [`fetch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case, values as sent (trimmed).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the connection may carry another request.
    pub keep_alive: bool,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `X-Generation` header.
    pub fn generation(&self) -> Option<&str> {
        self.header("x-generation")
    }
}

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// One client connection and its read buffer.
#[derive(Debug)]
pub struct Conn {
    stream: Stream,
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    pos: usize,
}

impl Conn {
    /// Opens a connection, waiting at most until `deadline`.
    pub fn connect(target: &Target, deadline: Instant) -> Result<Self, Failure> {
        let left = remaining(deadline).map_err(Failure::Connect)?;
        let stream = match target {
            Target::Tcp(addr) => {
                let s = TcpStream::connect_timeout(addr, left).map_err(Failure::Connect)?;
                // Requests are written in one call; Nagle would only delay them.
                s.set_nodelay(true).map_err(Failure::Connect)?;
                Stream::Tcp(s)
            }
            Target::Unix(path) => Stream::Unix(connect_unix(path, left).map_err(Failure::Connect)?),
        };
        Ok(Self {
            stream,
            buf: Vec::with_capacity(READ_SIZE),
            pos: 0,
        })
    }

    /// Sends `request` (a complete request, head and body) and reads the
    /// response. With `keep_body` false the body is read and discarded.
    pub fn round_trip(
        &mut self,
        request: &[u8],
        deadline: Instant,
        keep_body: bool,
    ) -> Result<Response, Failure> {
        self.send(request, deadline)?;
        self.read_response(deadline, keep_body)
    }

    /// Sends a complete request without reading the answer (see
    /// [`Conn::read_response`]).
    pub fn send(&mut self, request: &[u8], deadline: Instant) -> Result<(), Failure> {
        let left = remaining(deadline).map_err(Failure::Write)?;
        self.stream
            .set_write_timeout(left)
            .map_err(Failure::Write)?;
        self.stream.write_all(request).map_err(Failure::Write)
    }

    /// Reads more bytes into the buffer; returns how many (0 at EOF).
    fn fill(&mut self, deadline: Instant) -> Result<usize, Failure> {
        let left = remaining(deadline).map_err(Failure::Read)?;
        self.stream.set_read_timeout(left).map_err(Failure::Read)?;
        if self.pos > 0 {
            // Keep only the unread bytes (usually none) at the front.
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let old = self.buf.len();
        self.buf.resize(old + READ_SIZE, 0);
        loop {
            match self.stream.read(&mut self.buf[old..]) {
                Ok(n) => {
                    self.buf.truncate(old + n);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(Failure::Read(e));
                }
            }
        }
    }

    fn unread(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Reads one complete response (skipping interim 1xx responses).
    pub fn read_response(
        &mut self,
        deadline: Instant,
        keep_body: bool,
    ) -> Result<Response, Failure> {
        let mut received_any = !self.unread().is_empty();
        loop {
            let head_len = loop {
                if let Some(i) = find(self.unread(), b"\r\n\r\n") {
                    break i + 4;
                }
                if self.unread().len() > MAX_HEAD {
                    return Err(Failure::BadResponse(format!(
                        "head larger than {MAX_HEAD} bytes"
                    )));
                }
                if self.fill(deadline)? == 0 {
                    return Err(if received_any {
                        Failure::EofMidResponse
                    } else {
                        Failure::EofBeforeResponse
                    });
                }
                received_any = true;
            };
            let head = parse_head(&self.unread()[..head_len])?;
            self.pos += head_len;
            if (100..200).contains(&head.status) && head.status != 101 {
                continue; // 100 Continue and friends: the real response follows.
            }
            let mut body = Vec::new();
            let framing = head.framing;
            match framing {
                Framing::None => {}
                Framing::Length(n) => self.read_exact_body(n, deadline, keep_body, &mut body)?,
                Framing::Chunked => self.read_chunked(deadline, keep_body, &mut body)?,
                Framing::UntilClose => self.read_until_close(deadline, keep_body, &mut body)?,
            }
            return Ok(Response {
                status: head.status,
                headers: head.headers,
                body,
                keep_alive: head.keep_alive && framing != Framing::UntilClose,
            });
        }
    }

    /// Consumes `n` body bytes.
    fn read_exact_body(
        &mut self,
        mut n: u64,
        deadline: Instant,
        keep: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), Failure> {
        loop {
            let avail = self.unread().len() as u64;
            let take = avail.min(n) as usize;
            if keep {
                out.extend_from_slice(&self.unread()[..take]);
            }
            self.pos += take;
            n -= take as u64;
            if n == 0 {
                return Ok(());
            }
            if self.fill(deadline)? == 0 {
                return Err(Failure::EofMidResponse);
            }
        }
    }

    /// Reads one CRLF-terminated line (without the CRLF).
    fn read_line(&mut self, deadline: Instant, limit: usize) -> Result<Vec<u8>, Failure> {
        loop {
            if let Some(i) = find(self.unread(), b"\r\n") {
                let line = self.unread()[..i].to_vec();
                self.pos += i + 2;
                return Ok(line);
            }
            if self.unread().len() > limit {
                return Err(Failure::BadResponse("chunk line too long".into()));
            }
            if self.fill(deadline)? == 0 {
                return Err(Failure::EofMidResponse);
            }
        }
    }

    fn read_chunked(
        &mut self,
        deadline: Instant,
        keep: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), Failure> {
        loop {
            let line = self.read_line(deadline, MAX_CHUNK_LINE)?;
            let size_text = line.split(|&b| b == b';').next().unwrap_or_default();
            let size_text = std::str::from_utf8(size_text)
                .map_err(|_| Failure::BadResponse("chunk size is not text".into()))?
                .trim();
            let size = u64::from_str_radix(size_text, 16)
                .map_err(|_| Failure::BadResponse(format!("bad chunk size {size_text:?}")))?;
            if size == 0 {
                // Trailer fields, then an empty line.
                loop {
                    if self.read_line(deadline, MAX_HEAD)?.is_empty() {
                        return Ok(());
                    }
                }
            }
            self.read_exact_body(size, deadline, keep, out)?;
            if !self.read_line(deadline, 2)?.is_empty() {
                return Err(Failure::BadResponse(
                    "chunk data not followed by CRLF".into(),
                ));
            }
        }
    }

    fn read_until_close(
        &mut self,
        deadline: Instant,
        keep: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), Failure> {
        loop {
            if keep {
                out.extend_from_slice(self.unread());
            }
            self.pos = self.buf.len();
            if self.fill(deadline)? == 0 {
                return Ok(());
            }
        }
    }

    /// Waits up to `wait` for the server to close this (idle) connection;
    /// true if it did. Bytes that arrive instead are kept for the next
    /// response.
    pub fn peer_closed(&mut self, wait: Duration) -> bool {
        match self.fill(Instant::now() + wait) {
            Ok(0) => true,
            Ok(_) => false,
            Err(Failure::Read(e)) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            Err(_) => true,
        }
    }

    /// Closes the connection now.
    pub fn close(self) {
        self.stream.shutdown();
    }
}

struct Head {
    status: u16,
    headers: Vec<(String, String)>,
    framing: Framing,
    keep_alive: bool,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn parse_head(raw: &[u8]) -> Result<Head, Failure> {
    let bad = |m: &str| Failure::BadResponse(m.to_owned());
    let text = std::str::from_utf8(raw).map_err(|_| bad("head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(Failure::BadResponse(format!("status line {status_line:?}"))),
    };
    let status: u16 = parts
        .next()
        .filter(|s| s.len() == 3)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Failure::BadResponse(format!("status line {status_line:?}")))?;

    let mut headers = Vec::new();
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut other_coding = false;
    let mut close = false;
    let mut keep_alive_token = false;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| Failure::BadResponse(format!("header line {line:?}")))?;
        let name = name.to_ascii_lowercase();
        let value = value.trim().to_owned();
        match name.as_str() {
            "content-length" => {
                let n: u64 = value
                    .parse()
                    .map_err(|_| Failure::BadResponse(format!("content-length {value:?}")))?;
                if length.is_some_and(|m| m != n) {
                    return Err(bad("conflicting content-length headers"));
                }
                length = Some(n);
            }
            "transfer-encoding" => {
                // Chunked must be the last coding; anything else means the
                // body runs to the end of the connection.
                let last = value.rsplit(',').next().unwrap_or_default().trim();
                if last.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                    other_coding = false;
                } else {
                    chunked = false;
                    other_coding = true;
                }
            }
            "connection" => {
                close |= has_token(&value, "close");
                keep_alive_token |= has_token(&value, "keep-alive");
            }
            _ => {}
        }
        headers.push((name, value));
    }
    let no_body = (100..200).contains(&status) || status == 204 || status == 304;
    let framing = if no_body {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if other_coding {
        Framing::UntilClose
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    let keep_alive = !close && (!http10 || keep_alive_token);
    Ok(Head {
        status,
        headers,
        framing,
        keep_alive,
    })
}

/// Builds a `GET` request for `path`.
pub fn get_request(path: &str, host: &str, keep_alive: bool) -> Vec<u8> {
    let connection = if keep_alive {
        ""
    } else {
        "Connection: close\r\n"
    };
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: baton-load\r\n{connection}\r\n")
        .into_bytes()
}

/// One `GET` on a fresh connection, body kept, then the connection closed.
/// Any status is returned as `Ok`; only transport and protocol errors fail.
pub fn fetch(target: &Target, path: &str, timeout: Duration) -> Result<Response, Failure> {
    let deadline = Instant::now() + timeout;
    let mut conn = Conn::connect(target, deadline)?;
    let host = match target {
        Target::Tcp(a) => a.to_string(),
        Target::Unix(_) => "localhost".to_owned(),
    };
    let resp = conn.round_trip(&get_request(path, &host, false), deadline, true)?;
    conn.close();
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_parsing() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Generation: 3\r\n\r\n")
            .expect("valid");
        assert_eq!(h.status, 200);
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);
        assert_eq!(h.headers[1], ("x-generation".into(), "3".into()));

        let h = parse_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nConnection: Close\r\n\r\n",
        )
        .expect("valid");
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.keep_alive);

        let h = parse_head(b"HTTP/1.0 200 OK\r\n\r\n").expect("valid");
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(!h.keep_alive);

        let h = parse_head(b"HTTP/1.0 204 No Content\r\nConnection: keep-alive\r\n\r\n")
            .expect("valid");
        assert_eq!(h.framing, Framing::None);
        assert!(h.keep_alive);

        assert!(parse_head(b"HTTP/2 200\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 2000 OK\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n").is_err());
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                .is_err()
        );
    }

    #[test]
    fn error_kinds_are_short() {
        let e = io::Error::from_raw_os_error(rustix::io::Errno::CONNREFUSED.raw_os_error());
        assert_eq!(Failure::Connect(e).kind(), "connect: connection refused");
        let e = io::Error::from_raw_os_error(rustix::io::Errno::CONNRESET.raw_os_error());
        assert_eq!(Failure::Read(e).kind(), "read: reset");
        assert_eq!(Failure::Read(timeout_error()).kind(), "read: timeout");
        assert_eq!(Failure::Status(503).kind(), "status 503");
    }
}
