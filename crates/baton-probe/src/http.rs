//! Just enough HTTP/1.1 for a test server: request heads, `Content-Length`
//! bodies, keep-alive, and responses with a length.

use std::fmt::Write as _;

/// Largest request head accepted (a test client sends a few hundred bytes).
pub const MAX_HEAD: usize = 64 * 1024;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// The client asked to close the connection after this response
    /// (`Connection: close`, or HTTP/1.0 without `keep-alive`).
    pub wants_close: bool,
    pub content_length: usize,
}

impl Request {
    /// The value of `key` in the query string, if present.
    pub fn query_param(&self, key: &str) -> Option<&str> {
        self.query
            .as_deref()?
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find_map(|(k, v)| (k == key).then_some(v))
    }
}

/// Where the head ends (the index just past `\r\n\r\n`), if it is complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parses a complete request head (including the blank line).
pub fn parse_head(head: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8".to_owned())?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("malformed request line {request_line:?}"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("unsupported version {version:?}"));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    };
    let mut connection = String::new();
    let mut content_length = 0;
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("malformed header line {line:?}"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            connection = value.to_ascii_lowercase();
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = value
                .parse()
                .map_err(|_| format!("bad Content-Length {value:?}"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked request bodies are not supported".into());
        }
    }
    let has = |token: &str| connection.split(',').any(|t| t.trim() == token);
    let wants_close = if version == "HTTP/1.0" {
        !has("keep-alive")
    } else {
        has("close")
    };
    Ok(Request {
        method: method.to_owned(),
        path,
        query,
        wants_close,
        content_length,
    })
}

/// A response about to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn header(mut self, name: &str, value: &impl std::fmt::Display) -> Self {
        self.headers.push((name.to_owned(), value.to_string()));
        self
    }

    /// Serialises the response; `close` adds `Connection: close`.
    pub fn to_bytes(&self, close: bool, head_only: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "Unknown",
        };
        let mut out = format!("HTTP/1.1 {} {reason}\r\n", self.status);
        for (name, value) in &self.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        out.push_str("Content-Type: text/plain\r\n");
        let _ = write!(out, "Content-Length: {}\r\n", self.body.len());
        out.push_str(if close {
            "Connection: close\r\n"
        } else {
            "Connection: keep-alive\r\n"
        });
        out.push_str("\r\n");
        if !head_only {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_keep_alive_get() {
        let raw = b"GET /slow?ms=30&x HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(head_end(raw), Some(raw.len()));
        let r = parse_head(raw).expect("valid");
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/slow");
        assert_eq!(r.query_param("ms"), Some("30"));
        assert_eq!(r.query_param("x"), Some(""));
        assert_eq!(r.query_param("y"), None);
        assert!(!r.wants_close);
    }

    #[test]
    fn connection_semantics() {
        let close = parse_head(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").expect("valid");
        assert!(close.wants_close);
        let old = parse_head(b"GET / HTTP/1.0\r\n\r\n").expect("valid");
        assert!(old.wants_close);
        let old_ka =
            parse_head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").expect("valid");
        assert!(!old_ka.wants_close);
    }

    #[test]
    fn bodies_and_errors() {
        let r = parse_head(b"POST /x HTTP/1.1\r\ncontent-length: 5\r\n\r\n").expect("valid");
        assert_eq!(r.content_length, 5);
        assert!(parse_head(b"GARBAGE\r\n\r\n").is_err());
        assert!(parse_head(b"GET / SPDY/3\r\n\r\n").is_err());
        assert!(parse_head(b"GET / HTTP/1.1\r\nnocolon\r\n\r\n").is_err());
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn responses_carry_length_and_connection() {
        let bytes = Response::new(200, "hi\n")
            .header("X-A", &1)
            .to_bytes(true, false);
        let text = String::from_utf8(bytes).expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("X-A: 1\r\n"));
        assert!(text.contains("Content-Length: 3\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nhi\n"));
    }
}
