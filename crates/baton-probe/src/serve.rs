//! Accepting and serving connections, and draining them on SIGTERM.
//!
//! The listening sockets are shared (same open file description) with the
//! supervisor and with other generations, so this module never calls
//! `shutdown` on a listener and does not trust its `O_NONBLOCK` flag: it
//! sets the flag itself, waits with `poll`, and treats `EAGAIN` from
//! `accept` as "another process took that connection".
//!
//! Draining: the stop signal makes a pipe readable (level-triggered, never
//! read), which wakes every thread blocked in `poll`. Accept loops return;
//! connections answer the requests they get during the drain window with
//! `Connection: close`; connections still idle at the end of the window are
//! closed; requests in flight are finished.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

use crate::http::{self, Request, Response};

/// Who this process is, as reported in every response.
#[derive(Debug, Clone)]
pub struct Identity {
    pub generation: String,
    pub worker: String,
    pub pid: u32,
}

/// State shared by every thread of the server.
#[derive(Debug)]
pub struct Shared {
    pub identity: Identity,
    /// Readable once the stop signal arrived (never read from).
    stop: OwnedFd,
    draining: AtomicBool,
    drain_for: Duration,
    drain_deadline: OnceLock<Instant>,
    /// Connections being served.
    active: Mutex<usize>,
    idle: Condvar,
    /// Descriptors the probe opened for its own machinery, left out of `/fds`.
    internal_fds: Vec<RawFd>,
    /// Accepted connections not yet closed (a count per number: a number
    /// can be reused before the thread that closed it unregisters it).
    conn_fds: Mutex<BTreeMap<RawFd, usize>>,
    /// `/proc/self/fd` as it was when `main` started.
    fds_at_start: String,
    /// The inherited listeners, `FD NAME ADDRESS` per line.
    sockets: String,
    /// Accepting on the listeners (`/health` says 200).
    serving: AtomicBool,
}

impl Shared {
    pub fn new(
        identity: Identity,
        stop: OwnedFd,
        drain_for: Duration,
        internal_fds: Vec<RawFd>,
        fds_at_start: String,
        sockets: String,
    ) -> Self {
        Self {
            identity,
            stop,
            draining: AtomicBool::new(false),
            drain_for,
            drain_deadline: OnceLock::new(),
            active: Mutex::new(0),
            idle: Condvar::new(),
            internal_fds,
            conn_fds: Mutex::new(BTreeMap::new()),
            fds_at_start,
            sockets,
            serving: AtomicBool::new(false),
        }
    }

    /// From now on `/health` says 200.
    pub fn set_serving(&self) {
        self.serving.store(true, Ordering::SeqCst);
    }

    fn conn_fds(&self) -> std::sync::MutexGuard<'_, BTreeMap<RawFd, usize>> {
        self.conn_fds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn register_conn(&self, fd: RawFd) {
        *self.conn_fds().entry(fd).or_default() += 1;
    }

    fn unregister_conn(&self, fd: RawFd) {
        let mut fds = self.conn_fds();
        if let Some(n) = fds.get_mut(&fd) {
            *n -= 1;
            if *n == 0 {
                fds.remove(&fd);
            }
        }
    }

    pub fn stop_fd(&self) -> &OwnedFd {
        &self.stop
    }

    /// Whether the stop signal has arrived (checks the pipe, so it is exact
    /// even before any thread woke up).
    pub fn draining(&self) -> bool {
        if self.draining.load(Ordering::SeqCst) {
            return true;
        }
        let mut fds = [PollFd::new(&self.stop, PollFlags::IN)];
        let ready =
            matches!(rustix::event::poll(&mut fds, Some(&Timespec::default())), Ok(n) if n > 0);
        if ready {
            self.draining.store(true, Ordering::SeqCst);
        }
        ready
    }

    /// When idle connections get closed; fixed by whoever notices the
    /// drain first.
    pub fn drain_deadline(&self) -> Instant {
        *self
            .drain_deadline
            .get_or_init(|| Instant::now() + self.drain_for)
    }

    /// Blocks until no connection is being served.
    pub fn wait_until_idle(&self) {
        let mut active = self
            .active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while *active > 0 {
            active = self
                .idle
                .wait(active)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn enter(self: &Arc<Self>) -> ActiveGuard {
        *self
            .active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) += 1;
        ActiveGuard(Arc::clone(self))
    }
}

/// Counts a connection as active until dropped.
struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let mut active = self
            .0
            .active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *active -= 1;
        if *active == 0 {
            self.0.idle.notify_all();
        }
    }
}

/// Waits with `poll` on `fd` and, unless draining already, the stop pipe.
/// Returns whether `fd` has something (data, EOF or an error) before the
/// timeout; retries on `EINTR`.
fn wait_readable(fd: &impl AsFd, stop: Option<&OwnedFd>, timeout: Option<Duration>) -> bool {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ts = deadline.map(|d| {
            Timespec::try_from(d.saturating_duration_since(Instant::now())).unwrap_or(Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            })
        });
        let mut fds = vec![PollFd::new(fd, PollFlags::IN)];
        if let Some(stop) = stop {
            fds.push(PollFd::new(stop, PollFlags::IN));
        }
        match rustix::event::poll(&mut fds, ts.as_ref()) {
            Ok(0) => return false,
            Ok(_) => return !fds[0].revents().is_empty(),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                eprintln!("probe: poll failed: {e}");
                return false;
            }
        }
    }
}

/// A listener of either family.
#[derive(Debug)]
pub enum AnyListener {
    Tcp(std::net::TcpListener),
    Unix(UnixListener),
}

impl AnyListener {
    pub fn raw_fd(&self) -> RawFd {
        self.fd().as_raw_fd()
    }

    /// `tcp://ADDR` or `unix:PATH`, from `getsockname`.
    pub fn describe(&self) -> String {
        match self {
            Self::Tcp(l) => l
                .local_addr()
                .map_or_else(|e| format!("tcp:(error: {e})"), |a| format!("tcp://{a}")),
            Self::Unix(l) => match l.local_addr() {
                Ok(a) => a.as_pathname().map_or_else(
                    || "unix:(unnamed)".to_owned(),
                    |p| format!("unix:{}", p.display()),
                ),
                Err(e) => format!("unix:(error: {e})"),
            },
        }
    }

    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Self::Tcp(l) => l.as_fd(),
            Self::Unix(l) => l.as_fd(),
        }
    }

    fn set_nonblocking(&self) -> std::io::Result<()> {
        match self {
            Self::Tcp(l) => l.set_nonblocking(true),
            Self::Unix(l) => l.set_nonblocking(true),
        }
    }

    fn accept(&self) -> std::io::Result<AnyStream> {
        match self {
            Self::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(false)?;
                // Small responses on keep-alive connections: send them now.
                s.set_nodelay(true)?;
                Ok(AnyStream::Tcp(s))
            }
            Self::Unix(l) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(false)?;
                Ok(AnyStream::Unix(s))
            }
        }
    }
}

/// A connection of either family.
#[derive(Debug)]
enum AnyStream {
    Tcp(std::net::TcpStream),
    Unix(UnixStream),
}

impl AnyStream {
    fn shutdown_write(&self) {
        // This is the accepted connection, never the shared listener.
        let _ = match self {
            Self::Tcp(s) => s.shutdown(Shutdown::Write),
            Self::Unix(s) => s.shutdown(Shutdown::Write),
        };
    }

    fn set_read_timeout(&self, t: Duration) {
        let _ = match self {
            Self::Tcp(s) => s.set_read_timeout(Some(t)),
            Self::Unix(s) => s.set_read_timeout(Some(t)),
        };
    }
}

impl AsFd for AnyStream {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Self::Tcp(s) => s.as_fd(),
            Self::Unix(s) => s.as_fd(),
        }
    }
}

impl Read for AnyStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Tcp(s) => s.read(buf),
            Self::Unix(s) => s.read(buf),
        }
    }
}

impl Write for AnyStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Tcp(s) => s.write(buf),
            Self::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Accepts connections on `listener` until the drain starts, serving each
/// on its own thread.
pub fn accept_loop(listener: &AnyListener, shared: &Arc<Shared>) {
    if let Err(e) = listener.set_nonblocking() {
        eprintln!("probe: cannot make the listener non-blocking: {e}");
        std::process::exit(1);
    }
    loop {
        if shared.draining() {
            return;
        }
        if !wait_readable(&listener.fd(), Some(shared.stop_fd()), None) {
            continue;
        }
        if shared.draining() {
            // The stop signal came first: leave the queue to the others.
            return;
        }
        match listener.accept() {
            Ok(stream) => {
                shared.register_conn(stream.as_fd().as_raw_fd());
                let guard = shared.enter();
                let shared = Arc::clone(shared);
                let spawned = std::thread::Builder::new()
                    .name("conn".into())
                    .spawn(move || {
                        let _guard = guard;
                        serve_connection(stream, &shared);
                    });
                if let Err(e) = spawned {
                    eprintln!("probe: cannot start a connection thread: {e}");
                }
            }
            // Another process (or generation) took it first.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::Interrupted
                        | std::io::ErrorKind::ConnectionReset
                ) => {}
            Err(e) => {
                // EMFILE and friends: say so, and back off a little so the
                // loop does not spin while the condition lasts.
                eprintln!("probe: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Waits for the first byte of the next request on an idle connection.
/// Returns `false` when the connection should be closed instead: the peer
/// went away, or the drain window ended with the connection still idle.
fn await_next_request(stream: &AnyStream, shared: &Shared) -> bool {
    loop {
        if shared.draining() {
            let left = shared
                .drain_deadline()
                .saturating_duration_since(Instant::now());
            return wait_readable(stream, None, Some(left));
        }
        if wait_readable(stream, Some(shared.stop_fd()), None) {
            return true;
        }
    }
}

/// Reads the next request (head and body) into `buf`. `None`: close.
fn read_request(
    stream: &mut AnyStream,
    buf: &mut Vec<u8>,
    shared: &Shared,
) -> Result<Option<Request>, Response> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = http::head_end(buf) {
            let req = http::parse_head(&buf[..end]).map_err(|e| Response::new(400, e + "\n"))?;
            // Read and discard the body.
            while buf.len() < end + req.content_length {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return Ok(None),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.drain(..end + req.content_length);
            return Ok(Some(req));
        }
        if buf.len() > http::MAX_HEAD {
            return Err(Response::new(431, "request head too large\n"));
        }
        if buf.is_empty() && !await_next_request(stream, shared) {
            return Ok(None);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Ok(None),
        }
    }
}

/// Closes a connection without resetting it: shut down our side, then read
/// what the peer still sends until it closes too (bounded).
fn close_gently(stream: &mut AnyStream) {
    stream.shutdown_write();
    stream.set_read_timeout(Duration::from_secs(1));
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut sink = [0u8; 1024];
    while Instant::now() < deadline {
        match stream.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

fn serve_connection(mut stream: AnyStream, shared: &Shared) {
    let conn_fd = stream.as_fd().as_raw_fd();
    let mut buf = Vec::with_capacity(1024);
    loop {
        let (response, close, head_only) = match read_request(&mut stream, &mut buf, shared) {
            Ok(None) => break,
            Ok(Some(req)) => {
                let resp = respond(&req, shared, conn_fd);
                // Decide after handling, so a request held across the start
                // of the drain is answered with `Connection: close`.
                (
                    resp,
                    req.wants_close || shared.draining(),
                    req.method == "HEAD",
                )
            }
            Err(resp) => (resp, true, false),
        };
        let id = &shared.identity;
        let response = response
            .header("X-Generation", &id.generation)
            .header("X-Worker", &id.worker)
            .header("X-Pid", &id.pid);
        if stream
            .write_all(&response.to_bytes(close, head_only))
            .is_err()
        {
            break;
        }
        if close {
            break;
        }
    }
    close_gently(&mut stream);
    drop(stream);
    shared.unregister_conn(conn_fd);
}

fn respond(req: &Request, shared: &Shared, conn_fd: RawFd) -> Response {
    let id = &shared.identity;
    match req.path.as_str() {
        "/" => Response::new(
            200,
            format!(
                "gen={} worker={} pid={}\n",
                id.generation, id.worker, id.pid
            ),
        ),
        "/fds" if req.query_param("at") == Some("start") => {
            Response::new(200, shared.fds_at_start.clone())
        }
        "/fds" => {
            // The probe's own descriptors are not what a test asks about:
            // its pipes and every connection it is serving (this one, and
            // earlier ones still closing).
            let mut skip = shared.internal_fds.clone();
            skip.push(conn_fd);
            skip.extend(shared.conn_fds().keys());
            Response::new(200, list_fds(&skip))
        }
        "/env" if req.query_param("all").is_some() => Response::new(200, env_all(id.pid)),
        "/env" => Response::new(200, env_report(id.pid)),
        "/identity" => Response::new(200, crate::privs::identity()),
        "/try" => Response::new(
            200,
            crate::privs::attempt(
                req.query_param("kill"),
                req.query_param("connect").map(percent_decode).as_deref(),
                req.query_param("bind"),
            ),
        ),
        "/sockets" => Response::new(200, shared.sockets.clone()),
        "/argv" => Response::new(200, argv_report()),
        "/health" if shared.serving.load(Ordering::SeqCst) => Response::new(200, "serving\n"),
        "/health" => Response::new(503, "said ready, cannot serve yet\n"),
        "/notify" => send_notify(req),
        "/slow" => {
            let ms = req
                .query_param("ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            std::thread::sleep(Duration::from_millis(ms));
            Response::new(
                200,
                format!(
                    "slept {ms} ms; gen={} worker={} pid={}\n",
                    id.generation, id.worker, id.pid
                ),
            )
        }
        _ => Response::new(404, format!("no such path {:?}\n", req.path)),
    }
}

/// Every argument, `argv[0]` included, as lowercase hex, one per line (an
/// empty argument is an empty line): byte for byte what `execve` passed.
fn argv_report() -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for arg in std::env::args_os() {
        for b in arg.as_bytes() {
            let _ = write!(out, "{b:02x}");
        }
        out.push('\n');
    }
    out
}

/// `/notify?to=PATH&msg=MSG`: sends MSG from this process to the datagram
/// socket PATH (a worker reporting to a socket that is not its own).
fn send_notify(req: &Request) -> Response {
    let (Some(to), Some(msg)) = (req.query_param("to"), req.query_param("msg")) else {
        return Response::new(400, "usage: /notify?to=PATH&msg=MSG\n");
    };
    let (to, msg) = (percent_decode(to), percent_decode(msg));
    let sent =
        std::os::unix::net::UnixDatagram::unbound().and_then(|s| s.send_to(msg.as_bytes(), &to));
    match sent {
        Ok(_) => Response::new(200, format!("sent {msg:?} to {to}\n")),
        Err(e) => Response::new(500, format!("cannot send to {to}: {e}\n")),
    }
}

/// Decodes `%XX` escapes (and `+` as a space) in a query value.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The variables a test may want to check, as `KEY=VALUE` lines (absent
/// ones are left out), every `TEST_*` variable (a test's own markers), then
/// `PID=` and `CWD=` (the working directory, as the kernel resolved it).
fn env_report(pid: u32) -> String {
    let mut out = String::new();
    let mut own: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            k.starts_with("TEST_")
                .then(|| (k, v.to_string_lossy().into_owned()))
        })
        .collect();
    own.sort();
    for (k, v) in own {
        let _ = writeln!(out, "{k}={v}");
    }
    for key in [
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "BATON_GENERATION",
        "BATON_WORKER",
        "NOTIFY_SOCKET",
        "BATON_READY_FD",
    ] {
        if let Some(v) = std::env::var_os(key) {
            let _ = writeln!(out, "{key}={}", v.to_string_lossy());
        }
    }
    let _ = writeln!(out, "PID={pid}");
    if let Ok(cwd) = std::env::current_dir() {
        let _ = writeln!(out, "CWD={}", cwd.display());
    }
    out
}

/// Every variable, `KEY=VALUE` sorted by key, then `PID=`.
fn env_all(pid: u32) -> String {
    let mut vars: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    vars.sort();
    let mut out = String::new();
    for (k, v) in vars {
        let _ = writeln!(out, "{k}={v}");
    }
    let _ = writeln!(out, "PID={pid}");
    out
}

/// One line per open descriptor, `<n> <target>`, in numeric order, leaving
/// out `skip` and the directory descriptor used to list them.
pub fn list_fds(skip: &[RawFd]) -> String {
    let numbers: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect(),
        Err(e) => return format!("error: cannot list /proc/self/fd: {e}\n"),
    };
    // The directory is closed now, so its descriptor no longer resolves
    // and drops out below.
    let mut numbers = numbers;
    numbers.sort_unstable();
    let mut out = String::new();
    for n in numbers.into_iter().filter(|n| !skip.contains(n)) {
        if let Ok(target) = std::fs::read_link(format!("/proc/self/fd/{n}")) {
            let _ = writeln!(out, "{n} {}", target.display());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decode("READY%3D1"), "READY=1");
        assert_eq!(percent_decode("/tmp/a%20b+c"), "/tmp/a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
