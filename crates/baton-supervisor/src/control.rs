//! The control socket: `baton ctl` talks to a running supervisor here.
//!
//! # Protocol (version 1)
//!
//! A Unix stream socket. The client sends one JSON object on one line,
//! `{"v":1,"cmd":"reload"}`, and reads JSON lines back until the server
//! closes the connection:
//!
//! | request | replies |
//! | --- | --- |
//! | `{"v":1,"cmd":"reload"}` | `progress` lines as the reload happens, then `reloaded` or `reload_failed` (or `error`) |
//! | `{"v":1,"cmd":"status"}` | one `status` |
//! | `{"v":1,"cmd":"stop","fast":false}` | one `ok`; then `stopped` with baton's exit code, and the connection closes as baton exits |
//! | `{"v":1,"cmd":"scale","workers":4}` | one `ok` or `error` |
//! | `{"v":1,"cmd":"upgrade","binary":"/usr/bin/baton"}` | `progress` lines, then `upgraded` (from the new image) or `upgrade_failed` (with `rolled_back`) |
//! | `{"v":1,"cmd":"events"}` | `subscribed`, then one `event` line per event ([`crate::events`]) for as long as the client reads: across upgrades, until `stopped`; a reader that falls [`EVENTS_BUFFER`] behind gets `dropped` and is closed |
//!
//! # Safety of the socket
//!
//! * Its directory is created with mode 0700 and must be a real directory
//!   owned by baton's user; the socket is bound under a temporary name,
//!   given mode 0600 and renamed into place, so it never exists with wider
//!   permissions.
//! * A symlink at the path is refused, never followed; an existing socket
//!   is replaced only if nobody accepts on it.
//! * Each client's uid is checked with `SO_PEERCRED`: only baton's own user
//!   and root may send commands.
//! * A request may be at most [`MAX_REQUEST`] bytes and must arrive within
//!   [`CLIENT_TIMEOUT`], so a slow or hostile client cannot stall the
//!   supervisor (which never blocks on a client: all I/O is non-blocking).

use std::ffi::OsStr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The protocol version this baton speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The largest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long a client may take to send its request.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most control clients served at once: [`max_clients`] of the
/// open-files limit, and never more than this. Past it, the oldest client
/// that has not sent its request yet is dropped to make room; when every
/// client has sent one (they wait for verdicts), a new one is refused with an
/// error. So clients can never take the descriptors a reload needs.
pub const MAX_CLIENTS: usize = 1024;

/// The client cap for a process whose open-files soft limit is `nofile`:
/// a quarter of it (the rest is for workers, their pipes and pidfds, the
/// listeners), between 16 and [`MAX_CLIENTS`].
pub fn max_clients(nofile: Option<u64>) -> usize {
    let quarter = nofile.map_or(MAX_CLIENTS, |n| {
        usize::try_from(n / 4).unwrap_or(MAX_CLIENTS)
    });
    quarter.clamp(16, MAX_CLIENTS)
}
/// A client that does not read its replies is dropped past this much
/// unsent output.
pub const MAX_PENDING_OUTPUT: usize = 1024 * 1024;
/// How far a `ctl events` reader may fall behind (event lines waiting in
/// baton for it, beyond what its socket buffer holds) before it is dropped;
/// a reader may ask for less (`buffer`).
pub const EVENTS_BUFFER: usize = 256 * 1024;
/// The most `ctl events` readers at once (they count as control clients
/// too): past it, a new one is refused, so readers can never take the
/// places of `ctl reload` and `ctl stop`.
pub const MAX_EVENT_READERS: usize = 64;

/// A command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Command {
    Reload,
    Status,
    Stop {
        #[serde(default)]
        fast: bool,
    },
    Scale {
        workers: usize,
    },
    /// Upgrade baton itself in place (`binary`: the new one; default, the
    /// path baton was started from). `failpoint` is a test's hook.
    Upgrade {
        #[serde(default)]
        binary: Option<std::path::PathBuf>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failpoint: Option<String>,
    },
    /// Stream events (`baton ctl events`). `buffer`: how many bytes of
    /// event lines may wait for this reader before it is dropped (at most,
    /// and by default, [`EVENTS_BUFFER`]; it also bounds the socket's own
    /// send buffer).
    Events {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        buffer: Option<usize>,
    },
}

/// A request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub v: u32,
    #[serde(flatten)]
    pub cmd: Command,
}

/// One worker in a status report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub slot: usize,
    pub pid: Option<u32>,
    pub state: String,
    /// Restarts of this slot in this generation.
    pub restarts: u32,
    /// Restarts of this slot over baton's whole life.
    #[serde(default)]
    pub lifetime_restarts: u64,
    /// Milliseconds since its process started (`None` while it has none).
    #[serde(default)]
    pub uptime_ms: Option<u64>,
    /// `--dispatch`: what baton handed this worker process, if it has a
    /// channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatch: Option<WorkerDispatch>,
}

/// A worker's share of the dispatching (`--dispatch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerDispatch {
    /// It said `ready` on its channel.
    pub ready: bool,
    /// How many connections it takes at once.
    pub credits: u32,
    /// Pass mode: how many connections baton may put in one packet to it
    /// (its `batch N`; 1 if it never said it).
    #[serde(default = "one")]
    pub batch: u32,
    /// Connections it holds now (sent and not `done`).
    pub active: u32,
    /// Connections it was given, over its life.
    pub dispatched: u64,
}

fn one() -> u32 {
    1
}

/// Dispatching as a whole (`--dispatch`): the settings in force and what
/// happened over baton's life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchStatus {
    /// `pass` or `accept`; `none` when no generation takes connections
    /// from baton right now.
    pub mode: String,
    pub order: String,
    pub overload: String,
    /// `--queue`: its limit, and the connections in it now.
    pub queue_limit: usize,
    pub queued_now: usize,
    /// Connections handed to workers.
    pub dispatched: u64,
    /// Connections sent again after their worker died or did not answer.
    pub redispatched: u64,
    /// Workers killed for not answering within `--dispatch-timeout`.
    pub timeouts: u64,
    /// Overload: times connections waited for a free worker, and for how
    /// long in all (milliseconds).
    pub waits: u64,
    pub waited_ms: u64,
    /// Overload: connections closed at once (`--overload close`).
    pub closed: u64,
    /// Overload: connections answered with a 503 (`--overload 503`).
    pub rejected_503: u64,
    /// Connections that waited in baton's queue, and those of them whose
    /// `--queue-timeout` passed.
    pub queued: u64,
    pub queue_expired: u64,
    /// Accepts that failed for want of descriptors (each paused accepting
    /// for 100 ms).
    pub accept_errors: u64,
    /// Connections baton held that no worker could take (baton stopped,
    /// dispatch switched off, or three workers died holding one).
    pub dropped: u64,
    /// How far above the least loaded other worker one packet may take a
    /// worker now: 1 (exactly even) unless `short_lived` and the workers
    /// outnumber the CPUs (docs/dispatch.md, "Several connections per
    /// packet").
    #[serde(default = "one")]
    pub slack: u32,
    /// The recent connections all closed within 100 ms of their dispatch.
    #[serde(default)]
    pub short_lived: bool,
}

/// One generation in a status report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationStatus {
    pub id: u64,
    pub state: String,
    /// Milliseconds since it was started.
    pub age_ms: u64,
    /// How long it took to become ready, once it did.
    pub ready_after_ms: Option<u64>,
    /// The fingerprint of the settings it runs with (command, environment,
    /// listeners, readiness, timeouts): generations started from the same
    /// config have the same one.
    #[serde(default)]
    pub config: Option<String>,
    pub workers: Vec<WorkerStatus>,
}

/// A listener in a status report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerStatus {
    pub name: String,
    pub address: String,
}

/// The last reload's result in a status report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastReload {
    pub ok: bool,
    pub generation: u64,
    pub detail: String,
    /// Milliseconds since the verdict.
    #[serde(default)]
    pub age_ms: Option<u64>,
}

/// `baton ctl status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub uptime_ms: u64,
    pub serving: Option<u64>,
    pub workers_per_generation: usize,
    /// How a reload replaces the serving generation now: `overlap`,
    /// `rolling` or `restart` (empty from a baton older than this field).
    #[serde(default)]
    pub strategy: String,
    /// `--max-surge` (it matters with `rolling`) and `--max-draining`.
    #[serde(default)]
    pub max_surge: usize,
    #[serde(default)]
    pub max_draining: usize,
    /// Whether a reload's new generation boots at the lowest CPU priority
    /// (`--quiet-boot`, and baton able to give the priority back).
    #[serde(default)]
    pub quiet_boot: bool,
    /// Reloads that succeeded (the new generation serves).
    pub reloads: u64,
    /// Reloads that started a new generation.
    #[serde(default)]
    pub reloads_attempted: u64,
    /// Reloads that were rolled back.
    #[serde(default)]
    pub reloads_failed: u64,
    /// Worker restarts over baton's whole life, in every generation.
    #[serde(default)]
    pub restarts: u64,
    /// In-place upgrades of baton itself.
    #[serde(default)]
    pub upgrades: u64,
    /// The version of the baton that answers.
    #[serde(default)]
    pub version: String,
    pub last_reload: Option<LastReload>,
    pub listeners: Vec<ListenerStatus>,
    pub generations: Vec<GenerationStatus>,
    /// Whether a generation serves and baton is not stopping (what the
    /// metrics endpoint's `/ready` says).
    #[serde(default)]
    pub ready: bool,
    /// Reloads refused before anything started (a config file with a
    /// mistake, or baton stopping).
    #[serde(default)]
    pub reloads_refused: u64,
    /// The metrics endpoint, `http://HOST:PORT`, if there is one.
    #[serde(default)]
    pub metrics: Option<String>,
    /// The number of the last event (`ctl events`).
    #[serde(default)]
    pub events: u64,
    /// `ctl events` readers connected now, and dropped (they fell behind)
    /// over baton's life.
    #[serde(default)]
    pub event_readers: usize,
    #[serde(default)]
    pub event_readers_dropped: u64,
    /// `--dispatch`: how connections are handed out (absent without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatch: Option<DispatchStatus>,
}

/// A reply line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// A step of a reload in progress (a log line).
    Progress {
        message: String,
    },
    /// The reload succeeded.
    Reloaded {
        generation: u64,
        took_ms: u64,
    },
    /// The reload failed and was rolled back.
    ReloadFailed {
        generation: u64,
        serving: u64,
        reason: String,
        /// The last lines the failed worker printed.
        output: Vec<String>,
    },
    Status(Box<Status>),
    Ok {
        message: String,
    },
    /// baton was upgraded in place: the same pid runs the new image.
    Upgraded {
        pid: u32,
        from: String,
        to: String,
        took_ms: u64,
    },
    /// The upgrade did not happen (refused before the exec), or the new
    /// image could not take over and the old one runs again (`rolled_back`).
    UpgradeFailed {
        reason: String,
        rolled_back: bool,
    },
    /// `ctl events`: the stream is open; `seq` is the number of the last
    /// event before it (the first line the reader gets is `seq + 1`).
    Subscribed {
        pid: u32,
        version: String,
        serving: Option<u64>,
        seq: u64,
    },
    /// One event of a `ctl events` stream.
    Event(crate::events::EventLine),
    /// The last line to a `ctl events` reader that fell behind: it is
    /// closed, and missed the events from `missed_from` on.
    Dropped {
        reason: String,
        missed_from: u64,
    },
    /// baton has stopped (the last line to a `stop` client): its exit code,
    /// from the table of `baton run`'s exit codes.
    Stopped {
        exit_code: u8,
    },
    Error {
        message: String,
    },
}

impl Reply {
    /// The reply as one line of JSON, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_else(|e| {
            format!("{{\"type\":\"error\",\"message\":\"cannot encode a reply: {e}\"}}")
                .into_bytes()
        });
        line.push(b'\n');
        line
    }
}

/// Parses a request line; the error is meant for the client.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    // Check the version first, so a newer client gets a clear answer even
    // if its command is unknown here.
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("malformed request: {e}"))?;
    match value.get("v").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(format!(
                "protocol version {v} is not supported: this baton speaks version {PROTOCOL_VERSION}; use a baton ctl of the same release"
            ));
        }
        None => return Err("malformed request: missing protocol version \"v\"".into()),
    }
    serde_json::from_value(value).map_err(|e| format!("malformed request: {e}"))
}

/// Why the control socket cannot be set up or reached.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {problem}")]
    Path { path: String, problem: String },
}

fn path_err(path: &Path, problem: impl Into<String>) -> ControlError {
    ControlError::Path {
        path: path.display().to_string(),
        problem: problem.into(),
    }
}

/// Where the control socket of the supervisor named `name` lives:
/// `$XDG_RUNTIME_DIR/baton/NAME.sock`, else `/run/baton/NAME.sock` for root,
/// else `/tmp/baton-UID/NAME.sock`.
pub fn default_path(name: &str) -> PathBuf {
    default_paths(name).swap_remove(0)
}

/// Where `baton ctl --name NAME` looks, in order: [`default_path`], then,
/// with `XDG_RUNTIME_DIR` set, where a baton started without it put its
/// socket. A system service has no `XDG_RUNTIME_DIR` (its baton is at
/// `/run/baton/NAME.sock`) while root's login shell has one
/// (`/run/user/0`): `baton ctl` typed there must still find it.
pub fn default_paths(name: &str) -> Vec<PathBuf> {
    let file = format!("{name}.sock");
    let without = path_without_xdg(&file);
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => vec![PathBuf::from(dir).join("baton").join(file), without],
        None => vec![without],
    }
}

fn path_without_xdg(file: &str) -> PathBuf {
    let uid = rustix::process::geteuid();
    if uid.is_root() {
        PathBuf::from("/run/baton").join(file)
    } else {
        PathBuf::from(format!("/tmp/baton-{}", uid.as_raw())).join(file)
    }
}

/// Checks a control socket name: it becomes a file name.
pub fn valid_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!(
            "{name:?} is not a valid name: use up to 64 letters, digits, '_', '-' or '.', not starting with '.'"
        ));
    }
    Ok(())
}

/// Makes sure `dir` exists as a private directory of this user.
fn private_dir(dir: &Path, sock: &Path) -> Result<(), ControlError> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => {
            if meta.file_type().is_symlink() {
                return Err(path_err(
                    sock,
                    format!(
                        "its directory {} is a symbolic link; refusing to use it",
                        dir.display()
                    ),
                ));
            }
            if !meta.is_dir() {
                return Err(path_err(
                    sock,
                    format!("{} is not a directory", dir.display()),
                ));
            }
            let me = rustix::process::geteuid().as_raw();
            if meta.uid() != me {
                return Err(path_err(
                    sock,
                    format!(
                        "its directory {} belongs to uid {}, not to this user (uid {me})",
                        dir.display(),
                        meta.uid()
                    ),
                ));
            }
            if meta.permissions().mode() & 0o022 != 0 {
                return Err(path_err(
                    sock,
                    format!(
                        "its directory {} is writable by others (mode {:o}); fix it with chmod 700",
                        dir.display(),
                        meta.permissions().mode() & 0o777
                    ),
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| path_err(sock, format!("cannot create {}: {e}", dir.display())))?;
            // `recursive` applies the mode to the last component only when
            // it creates it; make sure.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| path_err(sock, format!("cannot chmod {}: {e}", dir.display())))
        }
        Err(e) => Err(path_err(sock, e.to_string())),
    }
}

/// The longest path a Unix socket can be bound at (`sun_path` holds 108
/// bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Where the socket is bound before it is renamed to `path`: beside it,
/// `.NAME.PID.tmp`, or a shorter `.PID.tmp` or `.PID` when that would not
/// fit in a socket address although `path` itself does.
fn temp_path(dir: &Path, file_name: &OsStr, path: &Path) -> Result<PathBuf, ControlError> {
    let pid = std::process::id();
    [
        format!(".{}.{pid}.tmp", file_name.to_string_lossy()),
        format!(".{pid}.tmp"),
        format!(".{pid}"),
    ]
    .into_iter()
    .map(|name| dir.join(name))
    .find(|tmp| tmp.as_os_str().len() <= MAX_SOCKET_PATH && tmp != path)
    .ok_or_else(|| {
        path_err(
            path,
            format!(
                "the path is {} bytes long, too close to the {MAX_SOCKET_PATH} a Unix socket path may have for baton to create it under a temporary name first: choose a shorter --control path",
                path.as_os_str().len()
            ),
        )
    })
}

/// The supervisor's listening control socket.
#[derive(Debug)]
pub struct ControlSocket {
    pub listener: mio::net::UnixListener,
    pub path: PathBuf,
    /// The socket file's (device, inode), so only ours is removed.
    pub identity: (u64, u64),
}

impl ControlSocket {
    /// Creates the control socket at `path` (see the module docs).
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        // Checked before anything is created, so a path that cannot work
        // leaves no directory behind.
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(path_err(
                path,
                format!(
                    "the path is {len} bytes long; a Unix socket path must be at most {MAX_SOCKET_PATH}: choose a shorter --control path (or --name, with a shorter $XDG_RUNTIME_DIR)"
                ),
            ));
        }
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        private_dir(dir, path)?;
        match std::fs::symlink_metadata(path) {
            Ok(meta) => {
                let ft = meta.file_type();
                if ft.is_symlink() {
                    return Err(path_err(
                        path,
                        "it is a symbolic link; refusing to follow it",
                    ));
                }
                if !ft.is_socket() {
                    return Err(path_err(
                        path,
                        "a file that is not a socket is in the way: remove it if it is a leftover, or give baton another --control path (or --name)",
                    ));
                }
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(path_err(
                        path,
                        "another baton is running with this control socket; give this one another --name or --control",
                    ));
                }
                let _ = std::fs::remove_file(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(path_err(path, e.to_string())),
        }
        let file_name = path
            .file_name()
            .ok_or_else(|| path_err(path, "the path has no file name"))?;
        let tmp = temp_path(dir, file_name, path)?;
        let _ = std::fs::remove_file(&tmp);
        let listener = mio::net::UnixListener::bind(&tmp)
            .map_err(|e| path_err(path, format!("cannot bind: {e}")))?;
        let cleanup = |e: String| {
            let _ = std::fs::remove_file(&tmp);
            path_err(path, e)
        };
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| cleanup(format!("cannot chmod: {e}")))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| cleanup(format!("cannot rename into place: {e}")))?;
        let meta = std::fs::symlink_metadata(path).map_err(|e| path_err(path, e.to_string()))?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
        })
    }

    /// Removes the socket file if it is still the one this process made.
    pub fn remove_file(&self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.identity
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether a client with `uid` may control a supervisor running as `me`.
pub fn uid_allowed(uid: u32, me: u32) -> bool {
    uid == me || uid == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_cap_leaves_three_quarters_of_the_descriptors() {
        assert_eq!(max_clients(Some(1024)), 256);
        assert_eq!(max_clients(Some(20_000)), MAX_CLIENTS);
        assert_eq!(max_clients(Some(32)), 16);
        assert_eq!(max_clients(None), MAX_CLIENTS);
    }

    #[test]
    fn requests_parse_and_versions_are_checked() {
        assert_eq!(
            parse_request(br#"{"v":1,"cmd":"reload"}"#),
            Ok(Request {
                v: 1,
                cmd: Command::Reload
            })
        );
        assert_eq!(
            parse_request(br#"{"v":1,"cmd":"stop"}"#).map(|r| r.cmd),
            Ok(Command::Stop { fast: false })
        );
        assert_eq!(
            parse_request(br#"{"v":1,"cmd":"scale","workers":3}"#).map(|r| r.cmd),
            Ok(Command::Scale { workers: 3 })
        );
        assert_eq!(
            parse_request(br#"{"v":1,"cmd":"events"}"#).map(|r| r.cmd),
            Ok(Command::Events { buffer: None })
        );
        let e = parse_request(br#"{"v":2,"cmd":"dance"}"#).expect_err("version");
        assert!(e.contains("protocol version 2 is not supported"), "{e}");
        assert!(
            parse_request(br#"{"cmd":"reload"}"#)
                .expect_err("no v")
                .contains("missing protocol version")
        );
        assert!(
            parse_request(b"reload")
                .expect_err("json")
                .contains("malformed")
        );
        assert!(
            parse_request(br#"{"v":1,"cmd":"dance"}"#)
                .expect_err("cmd")
                .contains("malformed")
        );
    }

    #[test]
    fn replies_are_single_json_lines() {
        let line = Reply::ReloadFailed {
            generation: 3,
            serving: 2,
            reason: "worker 0 exited\nwith status 1".into(),
            output: vec!["boom".into()],
        }
        .to_line();
        assert_eq!(line.last(), Some(&b'\n'));
        assert!(!line[..line.len() - 1].contains(&b'\n'));
        let back: Reply = serde_json::from_slice(&line).expect("parse");
        assert!(matches!(back, Reply::ReloadFailed { generation: 3, .. }));
        let event = Reply::Event(crate::events::EventLine::now(
            5,
            crate::events::Notice::WorkerStarted {
                generation: 2,
                worker: 1,
                pid: 77,
            },
        ));
        let line = event.to_line();
        let text = String::from_utf8_lossy(&line);
        assert!(
            text.starts_with(r#"{"type":"event","seq":5,"time":""#),
            "{text}"
        );
        assert!(
            text.contains(r#""event":"worker_started","generation":2,"worker":1,"pid":77}"#),
            "{text}"
        );
        assert_eq!(
            serde_json::from_slice::<Reply>(&line).expect("parse"),
            event
        );
    }

    #[test]
    fn socket_is_private_from_the_start_and_refuses_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("baton");
        let path = sub.join("x.sock");
        let s = ControlSocket::bind(&path).expect("bind");
        let meta = std::fs::symlink_metadata(&path).expect("socket");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let dmeta = std::fs::metadata(&sub).expect("dir");
        assert_eq!(dmeta.permissions().mode() & 0o777, 0o700);
        // A second supervisor on the same path is refused.
        let e = ControlSocket::bind(&path).expect_err("in use");
        assert!(e.to_string().contains("another baton is running"), "{e}");
        s.remove_file();
        assert!(!path.exists());
        // A stale socket is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("stale"));
        let s = ControlSocket::bind(&path).expect("over stale");
        s.remove_file();
        // A symlink is refused.
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &path).expect("symlink");
        assert!(
            ControlSocket::bind(&path)
                .expect_err("symlink")
                .to_string()
                .contains("symbolic link")
        );
        // A regular file is refused, and the message says what to do.
        std::fs::remove_file(&path).expect("rm symlink");
        std::fs::write(&path, "").expect("a file");
        let e = ControlSocket::bind(&path).expect_err("a file");
        assert!(
            e.to_string()
                .contains("not a socket is in the way: remove it if it is a leftover, or give baton another --control path"),
            "{e}"
        );
        std::fs::remove_file(&path).expect("rm file");
        // A directory writable by others is refused.
        let open = dir.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(
            ControlSocket::bind(&open.join("y.sock"))
                .expect_err("open dir")
                .to_string()
                .contains("writable by others")
        );
    }

    /// A control path of 100-odd bytes fits in a socket address, but the
    /// temporary name it was bound under first (`.NAME.PID.tmp`) did not:
    /// baton refused it with "path must be shorter than SUN_LEN", and a
    /// path too long for any socket left the directory it had made.
    #[test]
    fn a_long_control_path_that_fits_is_bound_and_one_that_cannot_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().as_os_str().len() + 1;
        let fits = dir
            .path()
            .join(format!("{}.sock", "x".repeat(MAX_SOCKET_PATH - base - 5)));
        assert_eq!(fits.as_os_str().len(), MAX_SOCKET_PATH);
        let s = ControlSocket::bind(&fits).expect("a 107-byte path is a valid socket path");
        assert!(
            std::fs::symlink_metadata(&fits)
                .expect("bound")
                .file_type()
                .is_socket()
        );
        s.remove_file();

        let sub = dir.path().join("sub");
        let too_long = sub.join(format!("{}.sock", "y".repeat(MAX_SOCKET_PATH)));
        let e = ControlSocket::bind(&too_long).expect_err("too long for any socket");
        assert!(e.to_string().contains("shorter --control path"), "{e}");
        assert!(
            !sub.exists(),
            "no directory is made for a path that cannot work"
        );
    }

    #[test]
    fn names_are_file_names() {
        assert!(valid_name("web-1.prod").is_ok());
        assert!(valid_name("").is_err());
        assert!(valid_name("../x").is_err());
        assert!(valid_name(".hidden").is_err());
    }

    #[test]
    fn only_the_same_user_or_root_may_control() {
        assert!(uid_allowed(1000, 1000));
        assert!(uid_allowed(0, 1000));
        assert!(!uid_allowed(1001, 1000));
    }
}
