//! A tiny blocking HTTP/1.1 client: one request per connection.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long any single request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `X-Generation`, as the probe reports it.
    pub fn generation(&self) -> Option<u32> {
        self.header("X-Generation")?.parse().ok()
    }

    /// `X-Pid`, as the probe reports it.
    pub fn pid(&self) -> Option<u32> {
        self.header("X-Pid")?.parse().ok()
    }

    /// Body lines of the form `KEY=VALUE` (the probe's `/env`).
    pub fn var(&self, key: &str) -> Option<&str> {
        self.body
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }
}

fn exchange<S: Read + Write>(mut stream: S, path: &str) -> std::io::Result<Reply> {
    send_request(&mut stream, path)?;
    read_reply(stream)
}

fn send_request<S: Write>(stream: &mut S, path: &str) -> std::io::Result<()> {
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: baton-e2e\r\nConnection: close\r\n\r\n"
    )
}

fn read_reply<S: Read>(mut stream: S) -> std::io::Result<Reply> {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse(&raw).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Parses a complete response (the connection was closed after it).
pub fn parse(raw: &[u8]) -> Result<Reply, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            format!(
                "incomplete response head: {:?}",
                String::from_utf8_lossy(raw)
            )
        })?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let body = &raw[end + 4..];
    let reply = Reply {
        status,
        headers,
        body: String::from_utf8_lossy(body).into_owned(),
    };
    if let Some(len) = reply.header("Content-Length")
        && len.parse::<usize>().ok() != Some(body.len())
    {
        return Err(format!(
            "body has {} bytes but Content-Length is {len}",
            body.len()
        ));
    }
    Ok(reply)
}

/// `GET path` on `127.0.0.1:port`.
pub fn get(port: u16, path: &str) -> std::io::Result<Reply> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    exchange(stream, path)
}

/// A request sent, its reply not read yet.
#[derive(Debug)]
pub struct Pending(TcpStream);

impl Pending {
    /// Reads the reply (the server closes the connection after it).
    pub fn finish(self) -> std::io::Result<Reply> {
        read_reply(self.0)
    }
}

/// Connects to `127.0.0.1:port` and sends `GET path`, without waiting for
/// the reply: the connection is in the listener's queue (or accepted) when
/// this returns.
pub fn send(port: u16, path: &str) -> std::io::Result<Pending> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    send_request(&mut stream, path)?;
    Ok(Pending(stream))
}

/// A keep-alive connection: requests one after another on one socket,
/// responses delimited by `Content-Length`.
#[derive(Debug)]
pub struct KeepAlive {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    pub fn connect(port: u16) -> std::io::Result<Self> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)?;
        stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        Ok(Self {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends `GET path` (keep-alive) and reads its response.
    pub fn get(&mut self, path: &str) -> std::io::Result<Reply> {
        write!(
            self.stream,
            "GET {path} HTTP/1.1\r\nHost: baton-e2e\r\n\r\n"
        )?;
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let len = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("no Content-Length in {head:?}"),
                        )
                    })?;
                let total = end + 4 + len;
                if self.buf.len() >= total {
                    let raw: Vec<u8> = self.buf.drain(..total).collect();
                    return parse(&raw)
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e));
                }
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before a complete response ({} bytes read)",
                        self.buf.len()
                    ),
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Whether the server has closed its side (a read sees end-of-file).
    pub fn is_closed_by_peer(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0))
    }
}

/// `GET path` over the Unix socket at `socket`.
pub fn get_unix(socket: &Path, path: &str) -> std::io::Result<Reply> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    exchange(stream, path)
}

/// `GET path` that must answer 200.
///
/// # Panics
/// On any error or another status, naming the request.
pub fn get_ok(port: u16, path: &str) -> Reply {
    let reply =
        get(port, path).unwrap_or_else(|e| panic!("GET http://127.0.0.1:{port}{path} failed: {e}"));
    assert_eq!(
        reply.status, 200,
        "GET http://127.0.0.1:{port}{path}: {reply:?}"
    );
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_probe_reply() {
        let raw = b"HTTP/1.1 200 OK\r\nX-Generation: 2\r\nX-Pid: 77\r\nContent-Length: 14\r\n\r\nLISTEN_FDS=2\r\n";
        let r = parse(raw).expect("valid");
        assert_eq!(r.status, 200);
        assert_eq!(r.generation(), Some(2));
        assert_eq!(r.pid(), Some(77));
        assert_eq!(r.var("LISTEN_FDS"), Some("2"));
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc").is_err());
        assert!(parse(b"HTTP/1.1 200").is_err());
    }
}
