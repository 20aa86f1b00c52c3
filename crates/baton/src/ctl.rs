//! `baton ctl`: the client side of the control socket.
//!
//! It prints plain text meant for people and scripts (`--json` for
//! machines) and exits with a code from [`exit`], so `systemctl reload`,
//! Ansible or CI can trust `baton ctl reload`.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use baton_supervisor::config;
use baton_supervisor::control::{self, Command, Reply, Request, Status};

/// Exit codes of `baton ctl`.
pub mod exit {
    pub const OK: u8 = 0;
    pub const USAGE: u8 = 2;
    pub const UNREACHABLE: u8 = 8;
    pub const DENIED: u8 = 9;
    pub const RELOAD_FAILED: u8 = 10;
    pub const TIMEOUT: u8 = 11;
    pub const REFUSED: u8 = 12;
    pub const UPGRADE_FAILED: u8 = 13;
    pub const EVENTS_DROPPED: u8 = 14;
}

/// How long `status` and `scale` wait for their answer without `--timeout`.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

pub const CTL_HELP: &str = "\
Exit codes of baton ctl:
  0   done (reload: the new generation is serving)
  2   usage
  8   no supervisor reachable: no control socket, or a stale one
  9   permission denied: the supervisor runs as another user
  10  reload failed: the new generation was rolled back, the old one keeps serving
  11  no verdict within --timeout (the reload may still finish); status and scale:
      no answer within --timeout, 10s by default (baton stopped or stuck)
  12  the supervisor refused the request (it is stopping, or its config file has a
      mistake: the message gives the line and column) or answered an error
  13  upgrade refused (the new binary failed its check) or rolled back (it could not
      take over); the old baton keeps running, every worker kept
  14  events: this reader fell behind and baton dropped it (its last line says so)
events exits 0 once baton has stopped (its last line is {\"event\":\"stopped\",...}) or
--timeout has passed, 8 if the stream ends otherwise (baton was killed).
stop exits with baton's own exit code once it has stopped: 0 when every worker
exited on its own, 7 when some had to be killed (see baton run --help)";

#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The supervisor's --name
    #[arg(long, global = true, value_name = "NAME", default_value = "baton", value_parser = crate::cli::parse_name)]
    name: String,

    /// The supervisor's control socket path (overrides --name)
    #[arg(long, global = true, value_name = "PATH")]
    control: Option<PathBuf>,

    /// How long to wait for the verdict of reload and stop, or to stream
    /// events (default: no limit), or for the answer to status and scale
    /// (default: 10s)
    #[arg(long, global = true, allow_hyphen_values = true, value_name = "DURATION", value_parser = config::parse_duration)]
    timeout: Option<Duration>,

    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CtlCommand {
    /// Reload and wait for the verdict: exit 0 when the new generation
    /// serves, 10 when it failed and the old one keeps serving
    Reload,
    /// Show generations, workers, listeners and the last reload
    Status {
        /// Print the status as JSON (fields in docs/contract.md)
        #[arg(long)]
        json: bool,
    },
    /// Stream lifecycle events as JSON lines, one per event (reloads and
    /// their verdicts, generations, workers, scaling, upgrades, the stop),
    /// until baton stops; across an upgrade of baton the stream goes on
    Events {
        /// How many bytes of events baton may hold for this reader before
        /// it drops it (at most, and by default, 256 KiB)
        #[arg(long, value_name = "BYTES", hide = true)]
        buffer: Option<usize>,
    },
    /// Stop the supervisor and wait until it has exited
    Stop {
        /// Kill the workers at once instead of letting them drain
        #[arg(long)]
        fast: bool,
    },
    /// Set the number of workers per generation (the serving one at once)
    Scale {
        /// Workers per generation
        #[arg(value_name = "N", allow_negative_numbers = true, value_parser = crate::cli::parse_workers)]
        workers: usize,
    },
    /// Upgrade baton itself in place: check the new binary, then execute it
    /// in the same pid, every worker and socket kept; exit 0 when the new
    /// image runs, 13 when it was refused or rolled back
    Upgrade {
        /// The new baton (default: the path the running one was started from)
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// Make the new image fail in a given way while it loads (tests)
        #[arg(long, value_name = "NAME", hide = true)]
        failpoint: Option<String>,
    },
}

fn fail(code: u8, message: impl Into<String>) -> u8 {
    eprintln!("baton ctl: {}", message.into());
    code
}

fn connect(
    path: &std::path::Path,
    name: &str,
    explicit: bool,
    also_looked: &[PathBuf],
) -> Result<UnixStream, u8> {
    UnixStream::connect(path).map_err(|e| {
        let which = if explicit && path.is_relative() {
            // `--control run/app.sock` from another directory than baton's.
            let full = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
            format!(
                "at {} ({}: a relative --control is taken from the directory baton ctl runs in; baton logs the whole path at start, \"control socket /...\")",
                path.display(),
                full.display()
            )
        } else if explicit {
            format!("at {}", path.display())
        } else if also_looked.is_empty() {
            format!("named {name:?} (control socket {})", path.display())
        } else {
            let others: Vec<String> = also_looked
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            format!(
                "named {name:?} (control socket {}, nor {})",
                path.display(),
                others.join(", ")
            )
        };
        match e.kind() {
            std::io::ErrorKind::NotFound => fail(
                exit::UNREACHABLE,
                format!("no baton is running {which}: the socket does not exist (is baton running, with the same --name or --control?)"),
            ),
            std::io::ErrorKind::ConnectionRefused => fail(
                exit::UNREACHABLE,
                format!("no baton is listening {which}: the socket is stale (the supervisor is gone)"),
            ),
            std::io::ErrorKind::PermissionDenied => fail(
                exit::DENIED,
                format!("permission denied {which}: the supervisor runs as another user; run baton ctl as that user or as root"),
            ),
            _ => fail(exit::UNREACHABLE, format!("cannot reach baton {which}: {e}")),
        }
    })
}

pub fn run(args: &CtlArgs) -> u8 {
    let explicit = args.control.is_some();
    // Without --control, the first of the default places that has a
    // socket (see control::default_paths), else the first.
    let (path, also_looked) = match &args.control {
        Some(p) => (p.clone(), Vec::new()),
        None => {
            let mut paths = control::default_paths(&args.name);
            match paths.iter().position(|p| p.exists()) {
                Some(i) => (paths.swap_remove(i), Vec::new()),
                None => {
                    let first = paths.remove(0);
                    (first, paths)
                }
            }
        }
    };
    let cmd = match &args.command {
        CtlCommand::Reload => Command::Reload,
        CtlCommand::Status { .. } => Command::Status,
        CtlCommand::Events { buffer } => Command::Events { buffer: *buffer },
        CtlCommand::Stop { fast } => Command::Stop { fast: *fast },
        // 0 and too many are refused by the parser (parse_workers).
        CtlCommand::Scale { workers } => Command::Scale { workers: *workers },
        CtlCommand::Upgrade { binary, failpoint } => Command::Upgrade {
            binary: match binary {
                Some(b) => match std::path::absolute(b) {
                    Ok(p) => Some(p),
                    Err(e) => return fail(exit::USAGE, format!("--binary {}: {e}", b.display())),
                },
                None => None,
            },
            failpoint: failpoint.clone(),
        },
    };
    let mut stream = match connect(&path, &args.name, explicit, &also_looked) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let request = Request {
        v: control::PROTOCOL_VERSION,
        cmd,
    };
    let mut line = serde_json::to_vec(&request).unwrap_or_default();
    line.push(b'\n');
    if let Err(e) = stream.write_all(&line) {
        // The supervisor may have refused us (another user) and closed
        // before our request was through: its reply explains why.
        let mut reply = String::new();
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if BufReader::new(&stream)
            .read_line(&mut reply)
            .is_ok_and(|n| n > 0)
            && let Ok(r) = serde_json::from_str::<Reply>(&reply)
        {
            return show(&r, false);
        }
        return fail(exit::UNREACHABLE, format!("cannot send the request: {e}"));
    }
    // status and scale are answered at once by a baton whose loop turns:
    // without --timeout they wait ANSWER_TIMEOUT, not forever, for one
    // that is stopped (SIGSTOP, Ctrl-Z in its terminal) or stuck.
    let answers_at_once = matches!(
        args.command,
        CtlCommand::Status { .. } | CtlCommand::Scale { .. }
    );
    let timeout = args
        .timeout
        .or_else(|| answers_at_once.then_some(ANSWER_TIMEOUT));
    let deadline = timeout.map(|t| Instant::now() + t);
    if matches!(args.command, CtlCommand::Events { .. }) {
        return stream_events(stream, deadline);
    }
    let json = matches!(args.command, CtlCommand::Status { json: true });
    read_replies(stream, deadline, json, &args.command)
}

/// What [`next_line`] read.
enum Next {
    Line(String),
    /// `--timeout` has passed.
    Deadline,
    /// The supervisor closed the connection.
    End,
    Lost(std::io::Error),
}

/// The next line from the supervisor, waiting at most until `deadline`.
fn next_line(reader: &mut BufReader<UnixStream>, deadline: Option<Instant>) -> Next {
    loop {
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Next::Deadline;
            }
            let _ = reader.get_ref().set_read_timeout(Some(left));
        }
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return Next::End,
            Ok(_) => return Next::Line(line),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Next::Lost(e),
        }
    }
}

/// `ctl events`: prints each event as one JSON line on stdout, flushed at
/// once, until baton stops (exit 0), drops this reader (14), `--timeout`
/// passes (0) or the connection is lost (8).
fn stream_events(stream: UnixStream, deadline: Option<Instant>) -> u8 {
    let mut reader = BufReader::new(stream);
    let mut out = std::io::stdout().lock();
    let mut stopped = false;
    loop {
        // `baton ctl events | grep -m1 reload_failed`: once the reader has
        // what it wanted and exits, end now, not at the next event (which
        // may never come) that would have failed to write; and end as that
        // write would have ended it, by SIGPIPE.
        if reader.buffer().is_empty() && !wait_readable_while_read(reader.get_ref(), deadline) {
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::PIPE,
            );
            return exit::OK;
        }
        let line = match next_line(&mut reader, deadline) {
            Next::Line(line) => line,
            Next::Deadline => return exit::OK,
            Next::End => break,
            Next::Lost(_) if stopped => break,
            Next::Lost(e) => return fail(exit::UNREACHABLE, format!("connection lost: {e}")),
        };
        let reply: Reply = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => return fail(exit::REFUSED, format!("unreadable reply ({e}): {line}")),
        };
        let printed = match &reply {
            Reply::Event(ev) => {
                stopped |= matches!(ev.notice, baton_supervisor::events::Notice::Stopped { .. });
                serde_json::to_string(ev)
            }
            Reply::Subscribed {
                pid,
                version,
                serving,
                seq,
            } => serde_json::to_string(&serde_json::json!({
                "event": "subscribed",
                "pid": pid,
                "version": version,
                "serving": serving,
                "seq": seq,
            })),
            Reply::Dropped {
                reason,
                missed_from,
            } => {
                let line = serde_json::json!({
                    "event": "dropped",
                    "reason": reason,
                    "missed_from": missed_from,
                });
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
                return fail(
                    exit::EVENTS_DROPPED,
                    format!(
                        "baton dropped this reader: {reason} (events from {missed_from} on were missed)"
                    ),
                );
            }
            other => {
                drop(out);
                return show(other, false);
            }
        };
        let Ok(text) = printed else {
            continue;
        };
        // A reader that went away (`| head -n 3`) ends the stream; that is
        // what it asked for.
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            return exit::OK;
        }
    }
    if stopped {
        exit::OK
    } else {
        fail(
            exit::UNREACHABLE,
            "the event stream ended without a last line: the connection to baton was lost (was it killed?)",
        )
    }
}

/// Waits until `stream` has something to read or `deadline` passes (true),
/// or until nobody reads stdout any more (false): the read end of a pipe
/// closed (`POLLERR`) or a socket hung up (`POLLHUP`). A terminal or a file
/// never reports either.
fn wait_readable_while_read(stream: &UnixStream, deadline: Option<Instant>) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let stdout = std::io::stdout();
    loop {
        let timeout = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            Timespec {
                tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(left.subsec_nanos()),
            }
        });
        let mut fds = [
            PollFd::new(stream, PollFlags::IN),
            PollFd::new(&stdout, PollFlags::empty()),
        ];
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Err(rustix::io::Errno::INTR) => {}
            // A deadline passed, or a failure the read itself will report.
            Ok(0) | Err(_) => return true,
            Ok(_) => {
                return !fds[1].revents().intersects(PollFlags::ERR | PollFlags::HUP);
            }
        }
    }
}

/// Reads reply lines until the server closes the connection; returns the
/// exit code.
fn read_replies(
    stream: UnixStream,
    deadline: Option<Instant>,
    json: bool,
    command: &CtlCommand,
) -> u8 {
    let mut reader = BufReader::new(stream);
    let mut code = None;
    let mut stopped = false;
    loop {
        let line = match next_line(&mut reader, deadline) {
            Next::Line(line) => line,
            Next::Deadline
                if code.is_none()
                    && matches!(
                        command,
                        CtlCommand::Status { .. } | CtlCommand::Scale { .. }
                    ) =>
            {
                return fail(
                    exit::TIMEOUT,
                    "no answer within the timeout (10s unless --timeout says otherwise): baton may be stopped (SIGSTOP, or Ctrl-Z in its terminal: kill -CONT it), stuck, or out of descriptors",
                );
            }
            Next::Deadline => {
                return fail(
                    exit::TIMEOUT,
                    "no verdict within --timeout; the supervisor carries on (check with baton ctl status)",
                );
            }
            Next::End => break,
            // A refusal is followed by a reset when the supervisor closes
            // with our request unread: the answer already received stands.
            Next::Lost(_) if code.is_some() => break,
            Next::Lost(e) => return fail(exit::UNREACHABLE, format!("connection lost: {e}")),
        };
        let reply: Reply = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => return fail(exit::REFUSED, format!("unreadable reply ({e}): {line}")),
        };
        stopped |= matches!(reply, Reply::Stopped { .. });
        code = Some(show(&reply, json));
    }
    match (code, command) {
        // `stop`: a baton that did not report its exit code (protocol
        // version 1 without `stopped`): the connection closing is the news.
        (Some(exit::OK), CtlCommand::Stop { .. }) if !stopped => {
            println!("stopped");
            exit::OK
        }
        (Some(c), _) => c,
        (None, _) => fail(
            exit::UNREACHABLE,
            "the supervisor closed the connection without an answer",
        ),
    }
}

fn show(reply: &Reply, json: bool) -> u8 {
    match reply {
        Reply::Progress { message } => {
            eprintln!("  {message}");
            exit::OK
        }
        Reply::Reloaded {
            generation,
            took_ms,
        } => {
            println!("reloaded: generation {generation} is serving (ready in {took_ms} ms)");
            exit::OK
        }
        Reply::ReloadFailed {
            generation,
            serving,
            reason,
            output,
        } => {
            eprintln!(
                "reload failed: generation {generation} {reason}; generation {serving} keeps serving"
            );
            if !output.is_empty() {
                eprintln!("last output of the failed worker:");
                for l in output {
                    eprintln!("  | {l}");
                }
            }
            exit::RELOAD_FAILED
        }
        Reply::Status(status) => {
            if json {
                match serde_json::to_string_pretty(status) {
                    Ok(s) => println!("{s}"),
                    Err(e) => return fail(exit::REFUSED, format!("cannot print status: {e}")),
                }
            } else {
                print_status(status);
            }
            exit::OK
        }
        Reply::Ok { message } => {
            eprintln!("{message}");
            exit::OK
        }
        Reply::Upgraded {
            pid,
            from,
            to,
            took_ms,
        } => {
            println!("upgraded in place: baton {from} -> {to}, pid {pid}, in {took_ms} ms");
            exit::OK
        }
        Reply::UpgradeFailed {
            reason,
            rolled_back,
        } => {
            if *rolled_back {
                eprintln!(
                    "upgrade rolled back: {reason}; the old baton runs again, every worker kept"
                );
            } else {
                eprintln!("upgrade refused: {reason}; the old baton keeps running");
            }
            exit::UPGRADE_FAILED
        }
        Reply::Stopped { exit_code } => {
            match *exit_code {
                0 => println!("stopped"),
                code => println!("stopped with exit code {code} ({})", run_exit_meaning(code)),
            }
            *exit_code
        }
        Reply::Subscribed { .. } | Reply::Event(_) | Reply::Dropped { .. } => fail(
            exit::REFUSED,
            "the supervisor answered with an event stream, which this command did not ask for",
        ),
        Reply::Error { message } => {
            if message.starts_with("permission denied") {
                fail(exit::DENIED, message.clone())
            } else {
                fail(exit::REFUSED, message.clone())
            }
        }
    }
}

/// What an exit code of `baton run` means (its table in the README).
fn run_exit_meaning(code: u8) -> &'static str {
    match code {
        0 => "stopped cleanly",
        1 => "internal error",
        5 => "the first generation failed",
        6 => "the first generation was not ready in time",
        7 => "some worker had to be killed",
        _ => "see the exit codes of baton run",
    }
}

/// A short human duration: `850ms`, `12s`, `3m 12s`, `3h 12m`, `2d 3h`.
fn short(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Rows of cells, printed in columns as wide as their widest cell.
fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            } else {
                line.push_str(cell);
            }
        }
        println!("{}", line.trim_end());
    }
}

/// `ctl status` for people: a summary, then one row per worker.
fn print_status(s: &Status) {
    let state = if s.ready {
        "ready".to_owned()
    } else if s.serving.is_some() {
        "stopping".to_owned()
    } else {
        "not ready".to_owned()
    };
    let serving = s.serving.map_or_else(
        || "nothing serving".to_owned(),
        |g| format!("serving generation {g}"),
    );
    println!(
        "baton {}, pid {}, up {}: {state}, {serving}, {} per generation",
        s.version,
        s.pid,
        short(s.uptime_ms),
        plural(s.workers_per_generation as u64, "worker", "workers"),
    );
    let in_flight = s
        .reloads_attempted
        .saturating_sub(s.reloads + s.reloads_failed);
    let in_flight = if in_flight > 0 {
        format!(" ({in_flight} in progress or cut short by a stop)")
    } else {
        String::new()
    };
    println!(
        "reloads: {} attempted, {} succeeded, {} failed{in_flight}; worker restarts: {}; reloads refused: {}; upgrades in place: {}",
        s.reloads_attempted, s.reloads, s.reloads_failed, s.restarts, s.reloads_refused, s.upgrades
    );
    // Empty from a baton older than these fields.
    if !s.strategy.is_empty() {
        let surge = if s.strategy == "rolling" {
            format!(", max surge {}", s.max_surge)
        } else {
            String::new()
        };
        println!(
            "strategy: {}{surge}, max draining {}, quiet boot {}",
            s.strategy,
            s.max_draining,
            if s.quiet_boot { "on" } else { "off" }
        );
    }
    match &s.last_reload {
        Some(last) => {
            let verdict = if last.ok { "ok" } else { "FAILED" };
            let when = last
                .age_ms
                .map_or_else(String::new, |ms| format!(" {} ago", short(ms)));
            println!(
                "last reload: {verdict}{when}, generation {}: {}",
                last.generation, last.detail
            );
        }
        None => println!("last reload: none yet"),
    }
    let listeners: Vec<String> = s
        .listeners
        .iter()
        .map(|l| format!("{} {}", l.name, l.address))
        .collect();
    if listeners.is_empty() {
        println!("listeners: none");
    } else {
        println!("listeners: {}", listeners.join(", "));
    }
    if let Some(m) = &s.metrics {
        println!("metrics: {m}/metrics (/ready, /live)");
    }
    if let Some(d) = &s.dispatch {
        crate::ctl_dispatch::print_summary(d);
    }
    if s.event_readers > 0 || s.event_readers_dropped > 0 {
        println!(
            "event readers: {} connected, {} dropped for falling behind",
            s.event_readers, s.event_readers_dropped
        );
    }
    println!();
    let mut rows = vec![
        [
            "GEN",
            "STATE",
            "AGE",
            "READY IN",
            "CONFIG",
            "WORKER",
            "PID",
            "WORKER STATE",
            "UPTIME",
            "RESTARTS",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    let dispatching = s.dispatch.is_some();
    if dispatching {
        rows[0].push("DISPATCH".to_owned());
    }
    for g in &s.generations {
        let first = [
            g.id.to_string(),
            g.state.clone(),
            short(g.age_ms),
            g.ready_after_ms
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms")),
            g.config.clone().unwrap_or_else(|| "-".to_owned()),
        ];
        if g.workers.is_empty() {
            rows.push(first.to_vec());
        }
        for (i, w) in g.workers.iter().enumerate() {
            let mut row: Vec<String> = if i == 0 {
                first.to_vec()
            } else {
                vec![String::new(); first.len()]
            };
            let restarts = if w.lifetime_restarts > u64::from(w.restarts) {
                format!("{} (lifetime {})", w.restarts, w.lifetime_restarts)
            } else {
                w.restarts.to_string()
            };
            row.extend([
                w.slot.to_string(),
                w.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                w.state.clone(),
                w.uptime_ms.map_or_else(|| "-".to_owned(), short),
                restarts,
            ]);
            if dispatching {
                row.push(crate::ctl_dispatch::worker_cell(w.dispatch.as_ref()));
            }
            rows.push(row);
        }
    }
    if s.generations.is_empty() {
        println!("no generation runs");
    } else {
        print_table(&rows);
    }
}
