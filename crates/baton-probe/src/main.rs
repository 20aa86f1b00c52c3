//! `baton-probe`: a small HTTP/1.1 server for baton's end-to-end tests.
//!
//! It inherits every listener through the systemd protocol (as `baton run`
//! passes them), reports who it is, reports readiness through whichever
//! channel the parent set up, drains on SIGTERM, and misbehaves on demand:
//! see `baton-probe --help`.
//!
//! ```text
//! baton run -l 127.0.0.1:0 -- baton-probe --drain-ms 300
//! curl http://127.0.0.1:PORT/      # gen=1 worker=0 pid=4242
//! ```
//!
//! Lines on stdout (tests wait for them): `probe gen=G worker=W pid=P started`
//! (with ` (script: FLAGS)` when a script file added flags),
//! `... ready`, `... draining`, `... exiting`, `... got SIGUSR1`, and
//! `probe: grandchild pid N`.
//! Std only, a thread per connection: the probe must be obviously correct,
//! not fast.

mod args;
mod client;
mod http;
mod privs;
mod serve;
mod udp;

use std::fmt::Write as _;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use baton_app::{Inherited, Listener, Notifier};
use rustix::event::{PollFd, PollFlags, Timespec};

use args::Options;
use serve::{AnyListener, Identity, Shared};

fn main() {
    // Before anything opens a descriptor of its own: what we were given.
    let fds_at_start = serve::list_fds(&[]);

    // Flags are UTF-8; whatever follows `--` is any bytes, kept only for
    // `/argv` (tests check that argv arrives byte for byte).
    let flags: Result<Vec<String>, String> = std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .map(|a| {
            a.into_string()
                .map_err(|a| format!("flag {} is not UTF-8", a.display()))
        })
        .collect();
    let opts = match flags.and_then(Options::from_args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("probe: {e}");
            std::process::exit(2);
        }
    };
    if opts.help {
        println!("{}", args::USAGE);
        return;
    }
    if let Some((path, msg)) = &opts.send_notify {
        std::process::exit(client::send_notify(path, msg));
    }
    if let Some((path, url)) = &opts.get_unix {
        std::process::exit(client::get_unix(path, url));
    }
    let id = Identity {
        generation: std::env::var("BATON_GENERATION").unwrap_or_else(|_| "-".into()),
        worker: std::env::var("BATON_WORKER").unwrap_or_else(|_| "-".into()),
        pid: std::process::id(),
    };
    let say = |what: &str| {
        println!(
            "probe gen={} worker={} pid={} {what}",
            id.generation, id.worker, id.pid
        );
    };
    match opts.script_flags.as_deref() {
        Some(flags) => say(&format!("started (script: {flags})")),
        None => say("started"),
    }
    let usr1_fds = report_usr1(&id);

    if let Some(code) = opts.exit_at_start {
        eprintln!(
            "probe: gen={} worker={} pid={} loading configuration",
            id.generation, id.worker, id.pid
        );
        eprintln!("probe: configuration is broken (on purpose)");
        eprintln!("probe: exiting with {code} as asked");
        std::process::exit(code);
    }
    if opts.crash_at_start {
        eprintln!("probe: aborting as asked");
        std::process::abort();
    }

    let (listeners, datagrams, sockets) = match opts.rebind_reuseport {
        None => take_listeners(),
        Some(addr) => {
            let (l, s) = rebind_reuseport(addr);
            (l, Vec::new(), s)
        }
    };
    say(&format!(
        "sockets: {}",
        sockets.trim_end().replace('\n', "; ")
    ));
    let notifier = match Notifier::from_env() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("probe: cannot set up readiness reporting: {e}");
            std::process::exit(1);
        }
    };
    if let Some(msg) = &opts.notify_at_start {
        match notifier.send(msg) {
            Ok(()) => say(&format!("sent {msg:?} on NOTIFY_SOCKET")),
            Err(e) => eprintln!("probe: cannot send {msg:?}: {e}"),
        }
    }

    let (stop_read, stop_write) = match rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("probe: cannot create the stop pipe: {e}");
            std::process::exit(1);
        }
    };
    let mut internal_fds = vec![stop_read.as_raw_fd(), stop_write.as_raw_fd()];
    internal_fds.extend(usr1_fds);
    // With --ignore-term nothing ever writes to the pipe, but its write end
    // must stay open: with no writer left, the read end would report
    // end-of-file, which reads as "stop".
    let _unused_writer = if opts.ignore_term {
        Some(stop_write)
    } else {
        match install_signals(stop_write) {
            Ok(fd) => {
                internal_fds.push(fd);
                None
            }
            Err(e) => {
                eprintln!("probe: cannot install signal handlers: {e}");
                std::process::exit(1);
            }
        }
    };
    if opts.ignore_term
        && let Err(e) = ignore_signals()
    {
        eprintln!("probe: cannot install signal handlers: {e}");
        std::process::exit(1);
    }
    let health = opts.health_dir.as_ref().map(|dir| {
        let path = dir.join(format!("health-{}.sock", id.pid));
        let _ = std::fs::remove_file(&path);
        match std::os::unix::net::UnixListener::bind(&path) {
            Ok(l) => {
                internal_fds.push(l.as_raw_fd());
                AnyListener::Unix(l)
            }
            Err(e) => {
                eprintln!("probe: cannot bind {}: {e}", path.display());
                std::process::exit(1);
            }
        }
    });
    let shared = Arc::new(Shared::new(
        id.clone(),
        stop_read,
        opts.drain,
        internal_fds,
        fds_at_start,
        sockets,
    ));
    // The health port answers from the start, serving or not.
    let health_thread = health.map(|listener| {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || serve::accept_loop(&listener, &shared))
    });

    if opts.spawn_grandchild {
        spawn_grandchild();
    }
    if let Some(after) = opts.exit_after {
        let id = id.clone();
        std::thread::spawn(move || {
            std::thread::sleep(after);
            eprintln!(
                "probe: gen={} worker={} pid={} exiting with 1 after {} as asked",
                id.generation,
                id.worker,
                id.pid,
                humantime::format_duration(after)
            );
            std::process::exit(1);
        });
    }

    // Warm-up: neither accept nor report ready, but do obey the stop signal.
    let warm_up = if opts.never_ready {
        None
    } else {
        Some(opts.ready_after.unwrap_or_default())
    };
    if stop_requested(shared.stop_fd(), warm_up) {
        say("draining");
        say("exiting");
        std::process::exit(0);
    }

    // Ready first, then accept: the connections wait in the shared queue
    // for the microseconds in between, and in fd mode the readiness fd is
    // closed before the first request can ask `/fds` about it.
    if let Err(e) = notifier.ready() {
        eprintln!("probe: cannot report ready: {e}");
        std::process::exit(1);
    }
    say("ready");
    // --serve-after: said ready, but cannot serve yet.
    if let Some(after) = opts.serve_after
        && stop_requested(shared.stop_fd(), Some(after))
    {
        say("draining");
        say("exiting");
        std::process::exit(0);
    }
    shared.set_serving();
    say("serving");
    let mut acceptors = Vec::new();
    let mut echoes = Vec::new();
    for sock in datagrams {
        let shared = Arc::clone(&shared);
        match std::thread::Builder::new()
            .name("udp".into())
            .spawn(move || udp::echo_loop(&sock, &shared))
        {
            Ok(handle) => echoes.push(handle),
            Err(e) => {
                eprintln!("probe: cannot start a UDP thread: {e}");
                std::process::exit(1);
            }
        }
    }
    for listener in listeners {
        let shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("accept".into())
            .spawn(move || {
                serve::accept_loop(&listener, &shared);
                listener
            });
        match spawned {
            Ok(handle) => acceptors.push(handle),
            Err(e) => {
                eprintln!("probe: cannot start an accept thread: {e}");
                std::process::exit(1);
            }
        }
    }

    // Serve until the stop signal.
    while !stop_requested(shared.stop_fd(), None) {}
    say("draining");
    let _ = notifier.stopping();
    let deadline = shared.drain_deadline();
    // Normally each listener is closed as soon as its accept loop ends
    // (the shared socket stays open in baton anyway). A rebinding app's own
    // socket is kept open, not accepted from, until the drain window ends:
    // whatever the kernel queued on it meanwhile is reset when it closes.
    let mut kept = Vec::new();
    for handle in acceptors {
        if let Ok(listener) = handle.join()
            && opts.rebind_reuseport.is_some()
        {
            kept.push(listener);
        }
    }
    for h in echoes {
        let _ = h.join();
    }
    if let Some(h) = health_thread {
        let _ = h.join();
    }
    shared.wait_until_idle();
    if !kept.is_empty() {
        std::thread::sleep(deadline.saturating_duration_since(std::time::Instant::now()));
        drop(kept);
    }
    say("exiting");
}

/// Takes every inherited listener (and UDP socket), in order; exits
/// loudly when there are none or one cannot be taken. Also returns them as
/// `FD NAME ADDRESS` lines (for `/sockets` and the start line).
fn take_listeners() -> (Vec<AnyListener>, Vec<std::net::UdpSocket>, String) {
    let mut inherited = match Inherited::from_env() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("probe: cannot take inherited sockets: {e}");
            std::process::exit(1);
        }
    };
    if inherited.is_empty() {
        eprintln!(
            "probe: no inherited listening sockets ({}); run me under `baton run -l ...` \
             or systemd socket activation",
            inherited.absent_reason().unwrap_or("LISTEN_FDS=0")
        );
        std::process::exit(1);
    }
    let names: Vec<String> = inherited.names().map(str::to_owned).collect();
    let mut out = Vec::new();
    let mut datagrams = Vec::new();
    let mut listing = String::new();
    for i in 0..inherited.len() {
        let name = names.get(i).map_or("-", String::as_str);
        if let Ok(Some(sock)) = inherited.take_udp_at(i) {
            let addr = sock
                .local_addr()
                .map_or_else(|_| "udp://?".to_owned(), |a| format!("udp://{a}"));
            let _ = writeln!(listing, "{} {name} {addr}", sock.as_raw_fd());
            datagrams.push(sock);
            continue;
        }
        let listener = match inherited.take_at(i) {
            Ok(Some(Listener::Tcp(l))) => AnyListener::Tcp(l),
            Ok(Some(Listener::Unix(l))) => AnyListener::Unix(l),
            Ok(None) => continue,
            Err(e) => {
                eprintln!("probe: cannot take inherited socket {i}: {e}");
                std::process::exit(1);
            }
        };
        let _ = writeln!(
            listing,
            "{} {name} {}",
            listener.raw_fd(),
            listener.describe()
        );
        out.push(listener);
    }
    (out, datagrams, listing)
}

/// `--rebind-reuseport`: what a tool that rebinds the port in every
/// process does. The inherited sockets are closed unused; `addr` is bound
/// with `SO_REUSEPORT`, so each generation has its own accept queue.
fn rebind_reuseport(addr: std::net::SocketAddr) -> (Vec<AnyListener>, String) {
    // Taking them (and dropping them) closes them.
    if let Ok(mut inherited) = Inherited::from_env() {
        for i in 0..inherited.len() {
            let _ = inherited.take_at(i);
        }
    }
    let bound = (|| -> std::io::Result<std::net::TcpListener> {
        use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
        let family = if addr.is_ipv4() {
            AddressFamily::INET
        } else {
            AddressFamily::INET6
        };
        let fd = rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
        sockopt::set_socket_reuseaddr(&fd, true)?;
        sockopt::set_socket_reuseport(&fd, true)?;
        rustix::net::bind(&fd, &addr)?;
        rustix::net::listen(&fd, 128)?;
        Ok(fd.into())
    })();
    match bound {
        Ok(l) => {
            let l = AnyListener::Tcp(l);
            let listing = format!("{} rebound {}\n", l.raw_fd(), l.describe());
            (vec![l], listing)
        }
        Err(e) => {
            eprintln!("probe: cannot bind {addr} with SO_REUSEPORT: {e}");
            std::process::exit(1);
        }
    }
}

/// Prints `probe gen=G worker=W pid=P got SIGUSR1` for each SIGUSR1 (which
/// baton forwards for log reopening), instead of dying of it. Returns the
/// two descriptors this holds (left out of `/fds`).
fn report_usr1(id: &Identity) -> Vec<RawFd> {
    let pair = std::os::unix::net::UnixStream::pair();
    let (mut read, write) = match pair {
        Ok(p) => p,
        Err(e) => {
            eprintln!("probe: cannot handle SIGUSR1: {e}");
            std::process::exit(1);
        }
    };
    let fds = vec![read.as_raw_fd(), write.as_raw_fd()];
    if let Err(e) = signal_hook::low_level::pipe::register(signal_hook::consts::SIGUSR1, write) {
        eprintln!("probe: cannot handle SIGUSR1: {e}");
        std::process::exit(1);
    }
    let id = id.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        loop {
            match std::io::Read::read(&mut read, &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    for _ in 0..n {
                        println!(
                            "probe gen={} worker={} pid={} got SIGUSR1",
                            id.generation, id.worker, id.pid
                        );
                    }
                }
            }
        }
    });
    fds
}

/// Routes SIGTERM and SIGINT to the stop pipe. Returns the extra
/// descriptor now held by the signal handlers.
fn install_signals(stop_write: OwnedFd) -> std::io::Result<RawFd> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let again = stop_write.try_clone()?;
    let extra = again.as_raw_fd();
    signal_hook::low_level::pipe::register(SIGTERM, stop_write)?;
    signal_hook::low_level::pipe::register(SIGINT, again)?;
    Ok(extra)
}

/// Swallows SIGTERM and SIGINT: a handler that only sets a flag nobody
/// reads replaces the default action (terminate), and nothing else happens.
fn ignore_signals() -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let ignored = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(SIGTERM, Arc::clone(&ignored))?;
    signal_hook::flag::register(SIGINT, ignored)?;
    Ok(())
}

/// Waits up to `timeout` (forever with `None`) for the stop signal.
fn stop_requested(stop: &OwnedFd, timeout: Option<Duration>) -> bool {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        let ts = deadline.map(|d| {
            Timespec::try_from(d.saturating_duration_since(std::time::Instant::now())).unwrap_or(
                Timespec {
                    tv_sec: i64::MAX,
                    tv_nsec: 0,
                },
            )
        });
        let mut fds = [PollFd::new(stop, PollFlags::IN)];
        match rustix::event::poll(&mut fds, ts.as_ref()) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                eprintln!("probe: poll on the stop pipe failed: {e}");
                std::process::exit(1);
            }
        }
    }
}

/// Starts a long `sleep` and leaks it (never kills it); a thread reaps it
/// if it ever ends while the probe lives.
fn spawn_grandchild() {
    match std::process::Command::new("sleep")
        .arg("1000")
        .stdin(std::process::Stdio::null())
        .spawn()
    {
        Ok(mut child) => {
            println!("probe: grandchild pid {}", child.id());
            std::thread::spawn(move || child.wait());
        }
        Err(e) => {
            eprintln!("probe: cannot start the grandchild: {e}");
            std::process::exit(1);
        }
    }
}
