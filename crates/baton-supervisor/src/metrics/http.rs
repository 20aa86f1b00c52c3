//! The HTTP/1.1 of the metrics endpoint: parsing a request out of what a
//! client sent, choosing the page, writing the response. No I/O here (the
//! runtime's `metrics` module owns the sockets), so every case is tested
//! on bytes.
//!
//! The requests are tiny `GET`s from Prometheus, a kubelet or curl, so
//! this is a deliberately small subset: `GET` and `HEAD`, no request
//! bodies, keep-alive (HTTP/1.1's default; `Connection: close` and HTTP/1.0
//! close after the response), requests pipelined on one connection
//! answered in order. The request head is parsed by `httparse`; a head
//! larger than [`MAX_HEAD`] is refused.

/// The largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// The most headers a request may have.
const MAX_HEADERS: usize = 64;

/// What the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// `/metrics`: the OpenMetrics text.
    Metrics,
    /// `/ready`: 200 while a generation serves, else 503.
    Ready,
    /// `/live`: 200 whenever the event loop answers.
    Live,
    /// `/`: what is here.
    Index,
    NotFound,
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub page: Page,
    /// `HEAD`: the response without its body.
    pub head: bool,
    /// The connection closes after the response.
    pub close: bool,
    /// Bytes of the input the request took.
    pub len: usize,
}

/// The outcome of looking at what a client sent so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole request head yet.
    Partial,
    Request(Request),
    /// Answer this and close the connection.
    Bad {
        status: u16,
        message: String,
    },
}

fn page(path: &str) -> Page {
    // The query string means nothing here (Prometheus sends none; a probe
    // may add one).
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    match path {
        "/metrics" => Page::Metrics,
        "/ready" | "/readyz" => Page::Ready,
        "/live" | "/livez" | "/healthz" => Page::Live,
        "/" => Page::Index,
        _ => Page::NotFound,
    }
}

/// Parses the first request in `input`.
pub fn parse(input: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if input.len() > MAX_HEAD {
                return Parsed::Bad {
                    status: 431,
                    message: format!("the request head is longer than {MAX_HEAD} bytes"),
                };
            }
            return Parsed::Partial;
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Bad {
                status: 431,
                message: format!("more than {MAX_HEADERS} headers"),
            };
        }
        Err(e) => {
            return Parsed::Bad {
                status: 400,
                message: format!("not an HTTP/1 request ({e})"),
            };
        }
    };
    if len > MAX_HEAD {
        return Parsed::Bad {
            status: 431,
            message: format!("the request head is longer than {MAX_HEAD} bytes"),
        };
    }
    let method = req.method.unwrap_or_default();
    let path = req.path.unwrap_or_default();
    let http10 = req.version == Some(0);
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
    };
    let has_body = header("transfer-encoding").is_some()
        || header("content-length").is_some_and(|v| v.trim() != "0");
    if has_body {
        return Parsed::Bad {
            status: 400,
            message: "this endpoint takes no request body".into(),
        };
    }
    let connection = header("connection").unwrap_or_default();
    let close = if http10 {
        !connection.contains("keep-alive")
    } else {
        connection.split(',').any(|t| t.trim() == "close")
    };
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        other => {
            return Parsed::Bad {
                status: 405,
                message: format!("method {other} is not allowed here: use GET"),
            };
        }
    };
    Parsed::Request(Request {
        page: page(path),
        head,
        close,
        len,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A whole response.
pub fn response(
    status: u16,
    content_type: &str,
    body: &[u8],
    head_only: bool,
    close: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
        reason(status),
        body.len()
    )
    .into_bytes();
    if status == 405 {
        out.extend_from_slice(b"Allow: GET, HEAD\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

/// A plain-text response (`/ready`, `/live`, errors).
pub fn text(status: u16, body: &str, head_only: bool, close: bool) -> Vec<u8> {
    response(
        status,
        "text/plain; charset=utf-8",
        body.as_bytes(),
        head_only,
        close,
    )
}

/// What `/` says.
pub const INDEX: &str = "baton metrics endpoint\n\
/metrics  Prometheus metrics (OpenMetrics text)\n\
/ready    200 while a generation serves, 503 before the first one is ready and while stopping\n\
/live     200 while baton's event loop turns\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Request {
        match parse(text.as_bytes()) {
            Parsed::Request(r) => r,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn pages_methods_and_keep_alive() {
        let r = request("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!((r.page, r.head, r.close), (Page::Metrics, false, false));
        let r = request("HEAD /ready?verbose HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert_eq!((r.page, r.head, r.close), (Page::Ready, true, true));
        let r = request("GET /live HTTP/1.0\r\n\r\n");
        assert_eq!((r.page, r.close), (Page::Live, true), "HTTP/1.0 closes");
        let r = request("GET /live HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(!r.close);
        assert_eq!(request("GET /nope HTTP/1.1\r\n\r\n").page, Page::NotFound);
        assert_eq!(request("GET / HTTP/1.1\r\n\r\n").page, Page::Index);
    }

    #[test]
    fn pipelined_requests_are_taken_one_at_a_time() {
        let two = b"GET /live HTTP/1.1\r\n\r\nGET /ready HTTP/1.1\r\n\r\n";
        let Parsed::Request(first) = parse(two) else {
            panic!("first")
        };
        assert_eq!(first.page, Page::Live);
        let Parsed::Request(second) = parse(&two[first.len..]) else {
            panic!("second")
        };
        assert_eq!(second.page, Page::Ready);
        assert_eq!(first.len + second.len, two.len());
    }

    #[test]
    fn bad_requests_get_a_status_that_says_why() {
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\nHost"), Parsed::Partial);
        let bad = |input: &[u8]| match parse(input) {
            Parsed::Bad { status, .. } => status,
            other => panic!("{other:?}"),
        };
        assert_eq!(bad(b"POST /metrics HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(
            bad(b"GET /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
            400
        );
        assert_eq!(bad(b"\x16\x03\x01 hello TLS\r\n\r\n"), 400);
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD + 10, b'a');
        assert_eq!(bad(&huge), 431);
    }

    #[test]
    fn responses_have_a_length_and_head_has_no_body() {
        let r = String::from_utf8(text(503, "not ready\n", false, true)).expect("utf-8");
        assert!(r.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{r}");
        assert!(r.contains("Content-Length: 10\r\n"), "{r}");
        assert!(r.contains("Connection: close\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\nnot ready\n"), "{r}");
        let h = String::from_utf8(text(200, "ok\n", true, false)).expect("utf-8");
        assert!(
            h.ends_with("Content-Length: 3\r\nCache-Control: no-store\r\n\r\n"),
            "{h}"
        );
        assert!(String::from_utf8_lossy(&text(405, "", false, true)).contains("Allow: GET, HEAD"));
    }
}
