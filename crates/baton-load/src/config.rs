//! What to load and how hard.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// Where requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(a) => write!(f, "tcp://{a}"),
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A load run's settings. Build with [`Config::new`], then adjust fields.
#[derive(Debug, Clone)]
pub struct Config {
    pub target: Target,
    /// Request target (path and query), default `/`.
    pub path: String,
    /// Connections, each driven by its own thread (default 8).
    pub concurrency: usize,
    /// Reuse connections (default). Without it, every request opens a new
    /// connection and says `Connection: close`.
    pub keep_alive: bool,
    /// Bound on one request from connect (if needed) to the end of the
    /// response body (default 5 s). Exceeding it is a failure.
    pub request_timeout: Duration,
    /// Stop after this many requests in total (over all connections).
    pub max_requests: Option<u64>,
    /// `Host` header; default: the address for TCP, `localhost` for Unix.
    pub host: Option<String>,
    /// Keep every request as a [`crate::Sample`] (default off: memory grows
    /// with the run).
    pub timeline: bool,
    /// Requests per second over all connections, paced; `None` (default):
    /// back to back.
    pub rate: Option<f64>,
}

impl Config {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            path: "/".to_owned(),
            concurrency: 8,
            keep_alive: true,
            request_timeout: Duration::from_secs(5),
            max_requests: None,
            host: None,
            timeline: false,
            rate: None,
        }
    }

    pub(crate) fn host_header(&self) -> String {
        match (&self.host, &self.target) {
            (Some(h), _) => h.clone(),
            (None, Target::Tcp(a)) => a.to_string(),
            (None, Target::Unix(_)) => "localhost".to_owned(),
        }
    }
}

/// Why a URL was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(pub String);

impl std::fmt::Display for UrlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UrlError {}

/// Splits `http://HOST[:PORT][/PATH]` into a resolved TCP target, the
/// `Host` header value and the path (default `/`). Only plain `http` is
/// supported; a name is resolved once, to its first address.
pub fn parse_http_url(url: &str) -> Result<(Target, String, String), UrlError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        UrlError(format!(
            "{url:?}: only http:// URLs are supported (for a Unix socket use --unix PATH)"
        ))
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    if authority.is_empty() {
        return Err(UrlError(format!("{url:?}: no host")));
    }
    if authority.contains('@') {
        return Err(UrlError(format!("{url:?}: user info is not supported")));
    }
    // A port is present if the text after the last ':' is digits and that
    // ':' is not inside an IPv6 literal.
    let has_port = authority
        .rfind(':')
        .is_some_and(|i| !authority[i..].contains(']'));
    let with_port = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| UrlError(format!("{url:?}: cannot resolve {with_port:?}: {e}")))?
        .next()
        .ok_or_else(|| UrlError(format!("{url:?}: {with_port:?} has no address")))?;
    Ok((Target::Tcp(addr), authority.to_owned(), path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let (t, host, path) = parse_http_url("http://127.0.0.1:8080/a/b?c=1").expect("valid");
        assert_eq!(t, Target::Tcp("127.0.0.1:8080".parse().expect("addr")));
        assert_eq!(host, "127.0.0.1:8080");
        assert_eq!(path, "/a/b?c=1");
        let (t, _, path) = parse_http_url("http://[::1]:9").expect("valid");
        assert_eq!(t, Target::Tcp("[::1]:9".parse().expect("addr")));
        assert_eq!(path, "/");
        let (t, _, _) = parse_http_url("http://127.0.0.1").expect("valid");
        assert_eq!(t, Target::Tcp("127.0.0.1:80".parse().expect("addr")));
        assert!(parse_http_url("https://127.0.0.1/").is_err());
        assert!(parse_http_url("http:///x").is_err());
        assert!(parse_http_url("127.0.0.1:80").is_err());
    }
}
