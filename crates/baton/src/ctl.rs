//! `baton ctl`: the client side of the control socket.
//!
//! It prints plain text meant for people and scripts (`--json` for
//! machines) and exits with a code from [`exit`], so `systemctl reload`,
//! Ansible or CI can trust `baton ctl reload`.

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
}

pub const CTL_HELP: &str = "\
Exit codes of baton ctl:
  0   done (reload: the new generation is serving)
  2   usage
  8   no supervisor reachable: no control socket, or a stale one
  9   permission denied: the supervisor runs as another user
  10  reload failed: the new generation was rolled back, the old one keeps serving
  11  no verdict within --timeout (the reload may still finish)
  12  the supervisor refused the request (it is stopping, or its config file has a
      mistake: the message gives the line and column) or answered an error
  13  upgrade refused (the new binary failed its check) or rolled back (it could not
      take over); the old baton keeps running, every worker kept
stop exits with baton's own exit code once it has stopped: 0 when every worker
exited on its own, 7 when some had to be killed (see baton run --help)";

#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The supervisor's --name
    #[arg(long, value_name = "NAME", default_value = "baton", value_parser = crate::cli::parse_name)]
    name: String,

    /// The supervisor's control socket path (overrides --name)
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,

    /// How long to wait for the verdict of reload and stop (default: no limit)
    #[arg(long, value_name = "DURATION", value_parser = config::parse_duration)]
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
        /// Print the status as JSON
        #[arg(long)]
        json: bool,
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
        #[arg(value_name = "N")]
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

fn connect(path: &std::path::Path, name: &str, explicit: bool) -> Result<UnixStream, u8> {
    UnixStream::connect(path).map_err(|e| {
        let which = if explicit {
            format!("at {}", path.display())
        } else {
            format!("named {name:?} (control socket {})", path.display())
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
    let path = args
        .control
        .clone()
        .unwrap_or_else(|| control::default_path(&args.name));
    let cmd = match &args.command {
        CtlCommand::Reload => Command::Reload,
        CtlCommand::Status { .. } => Command::Status,
        CtlCommand::Stop { fast } => Command::Stop { fast: *fast },
        CtlCommand::Scale { workers } => {
            if *workers == 0 {
                return fail(exit::USAGE, "scale needs at least 1 worker");
            }
            Command::Scale { workers: *workers }
        }
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
    let mut stream = match connect(&path, &args.name, explicit) {
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
    let deadline = args.timeout.map(|t| Instant::now() + t);
    let json = matches!(args.command, CtlCommand::Status { json: true });
    read_replies(stream, deadline, json, &args.command)
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
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return fail(
                    exit::TIMEOUT,
                    "no verdict within --timeout; the supervisor carries on (check with baton ctl status)",
                );
            }
            let _ = reader.get_ref().set_read_timeout(Some(left));
        }
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            // A refusal is followed by a reset when the supervisor closes
            // with our request unread: the answer already received stands.
            Err(_) if code.is_some() => break,
            Err(e) => return fail(exit::UNREACHABLE, format!("connection lost: {e}")),
        }
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

fn ago(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

fn print_status(s: &Status) {
    let serving = s.serving.map_or_else(
        || "nothing serving".to_owned(),
        |g| format!("serving generation {g}"),
    );
    println!(
        "baton pid {}, up {}, {serving}, {} worker{} per generation",
        s.pid,
        ago(s.uptime_ms),
        s.workers_per_generation,
        if s.workers_per_generation == 1 {
            ""
        } else {
            "s"
        },
    );
    let in_flight = s
        .reloads_attempted
        .saturating_sub(s.reloads + s.reloads_failed);
    let in_flight = if in_flight > 0 {
        format!(", {in_flight} in progress or cut short by a stop")
    } else {
        String::new()
    };
    println!(
        "reloads: {} attempted, {} succeeded, {} failed{in_flight}; worker restarts: {}",
        s.reloads_attempted, s.reloads, s.reloads_failed, s.restarts
    );
    if s.upgrades > 0 {
        println!(
            "baton {}, upgraded in place {} time{}",
            s.version,
            s.upgrades,
            if s.upgrades == 1 { "" } else { "s" }
        );
    }
    if let Some(last) = &s.last_reload {
        let verdict = if last.ok { "ok" } else { "FAILED" };
        println!(
            "last reload: {verdict}, generation {}: {}",
            last.generation, last.detail
        );
    }
    println!("listeners:");
    for l in &s.listeners {
        println!("  {:<12} {}", l.name, l.address);
    }
    if let Some(d) = &s.dispatch {
        crate::ctl_dispatch::print_summary(d);
    }
    println!("generations:");
    for g in &s.generations {
        let ready = g
            .ready_after_ms
            .map_or_else(String::new, |ms| format!(", ready after {ms} ms"));
        let config = g
            .config
            .as_ref()
            .map_or_else(String::new, |c| format!(", config {c}"));
        println!(
            "  {:<4} {:<9} started {} ago{ready}{config}",
            g.id,
            g.state,
            ago(g.age_ms)
        );
        for w in &g.workers {
            let pid = w.pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
            println!(
                "       worker {:<3} pid {:<8} {:<10} restarts {} (lifetime {}){}",
                w.slot,
                pid,
                w.state,
                w.restarts,
                w.lifetime_restarts,
                crate::ctl_dispatch::worker_suffix(w.dispatch.as_ref())
            );
        }
    }
}
