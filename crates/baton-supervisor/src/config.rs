//! Validated settings of `baton run`, and the parsers for their values.
//!
//! The binary collects raw flag values; the functions here turn them into
//! ready-to-use settings or into an error that names the problem and the fix.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::lifecycle::{Policy, ReadyMode, Strategy};
use crate::listen::ListenSpec;

/// Everything `baton run` needs, validated.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    pub listeners: Vec<ListenSpec>,
    /// What to execute: absolute if found on `PATH`, otherwise as given
    /// (relative paths are relative to `chdir`).
    pub program: PathBuf,
    /// `argv`, including `argv[0]` as the user wrote it.
    pub args: Vec<std::ffi::OsString>,
    pub policy: Policy,
    pub chdir: Option<PathBuf>,
    /// Where to create the control socket (`None`: no control socket).
    pub control: Option<PathBuf>,
    /// `--watch`: reload when these change in content.
    pub watch: Vec<PathBuf>,
    /// `--watch-ignore` globs.
    pub watch_ignore: Vec<String>,
    pub watch_debounce: Duration,
    /// How to start the guard (see [`crate::guard`]): a program and its
    /// `argv` that runs [`crate::guard::run`]. `None`: no guard, so a
    /// `SIGKILL` of baton leaves what the workers started.
    pub guard: Option<(PathBuf, Vec<std::ffi::OsString>)>,
    /// Whether each generation gets a cgroup of its own.
    pub cgroups: CgroupMode,
    /// Variables set for the workers, over baton's own: the `--env-file`
    /// files' in order, then `[env]`, then `--env` (a later one replaces an
    /// earlier one of the same name). See [`crate::environment`].
    pub env: Vec<(String, String)>,
    /// `--env-file`: the files `env` was read from (read again on reload).
    #[serde(default)]
    pub env_files: Vec<PathBuf>,
    /// `--clear-env`: workers get only `PATH`, `HOME`, `LANG`, `TZ` and the
    /// `keep_env` names of baton's own environment.
    #[serde(default)]
    pub clear_env: bool,
    /// `--keep-env`: more of baton's variables kept by `clear_env` (a name,
    /// or a prefix ending in `*`).
    #[serde(default)]
    pub keep_env: Vec<String>,
    /// `--user`/`--group`, resolved: whom the workers run as (`None`:
    /// baton's own user).
    #[serde(default)]
    pub run_as: Option<crate::privileges::RunAs>,
    /// `--no-new-privs` as given (`None`: on with `--user`, off without);
    /// see [`Settings::no_new_privs`].
    #[serde(default)]
    pub no_new_privs: Option<bool>,
    /// The config file these settings were read from (read again on every
    /// reload), and the flags that override it.
    pub config_file: Option<PathBuf>,
    pub overrides: crate::config_file::Overrides,
    /// `--dispatch`: baton hands each connection to an idle worker.
    #[serde(default)]
    pub dispatch: Option<crate::dispatch::DispatchSettings>,
    /// `--metrics`: where to serve `/metrics`, `/ready` and `/live`
    /// (baton's own socket, never a worker's).
    #[serde(default)]
    pub metrics: Option<ListenSpec>,
}

impl Settings {
    /// Whether workers get `PR_SET_NO_NEW_PRIVS`: as `--no-new-privs` says,
    /// else whenever they run as another user (`--user`).
    pub fn no_new_privs(&self) -> bool {
        self.no_new_privs.unwrap_or(self.run_as.is_some())
    }

    /// Whether the workers switch to another user than baton's.
    pub fn drops_privileges(&self) -> Option<&crate::privileges::RunAs> {
        self.run_as.as_ref().filter(|r| !r.is_baton_itself())
    }
}

/// `--cgroups`: whether baton gives each generation a cgroup of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CgroupMode {
    /// Where the cgroup is baton's to manage: delegated to it (systemd
    /// `Delegate=yes` marks the cgroup with a `trusted.delegate` or
    /// `user.delegate` attribute), or the root of the hierarchy baton sees
    /// (a container, a machine without systemd). Never inside a tree another
    /// manager owns (systemd's single-writer rule).
    Auto,
    /// Wherever baton can write its cgroup.
    On,
    /// Never: process groups only.
    Off,
}

/// Parses `--cgroups`: `auto`, `on` or `off`.
pub fn parse_cgroups(s: &str) -> Result<CgroupMode, String> {
    match s {
        "auto" => Ok(CgroupMode::Auto),
        "on" => Ok(CgroupMode::On),
        "off" => Ok(CgroupMode::Off),
        _ => Err(format!(
            "unknown cgroup mode {s:?}; use auto (where the cgroup is delegated to baton, or is the root), on or off"
        )),
    }
}

/// Parses `--metrics`: a TCP address in any `--listen` form (`HOST:PORT`,
/// `:PORT`, `[::1]:PORT`, `tcp://HOST:PORT`), without a name.
pub fn parse_metrics(s: &str) -> Result<ListenSpec, String> {
    let spec: ListenSpec = s.parse().map_err(|e: crate::listen::SpecError| {
        let text = e
            .to_string()
            .replace(
                "invalid listen spec",
                "invalid metrics address (a TCP address, e.g. 127.0.0.1:9100 or :9100)",
            )
            .replace("; for a Unix socket write unix:PATH", "");
        // The listen forms it ends with include names and Unix sockets,
        // which the endpoint does not take: give its own.
        let text = match text.find("valid forms:") {
            Some(i) => text[..i].trim_end().to_owned(),
            None => text,
        };
        format!(
            "{text}\nvalid forms: HOST:PORT, :PORT (every interface), [::1]:PORT, tcp://HOST:PORT"
        )
    })?;
    if spec.name.is_some() {
        return Err(format!(
            "{s:?}: the metrics endpoint has no name; write just the address, e.g. 127.0.0.1:9100"
        ));
    }
    match spec.addr {
        crate::listen::ListenAddr::Tcp { .. } => Ok(spec),
        crate::listen::ListenAddr::Unix { .. } => Err(format!(
            "{s:?}: the metrics endpoint needs a TCP address (Prometheus and Kubernetes probes speak TCP), e.g. 127.0.0.1:9100 or :9100"
        )),
        crate::listen::ListenAddr::Udp { .. } => Err(format!(
            "{s:?}: the metrics endpoint speaks HTTP over TCP, not UDP; write a TCP address, e.g. 127.0.0.1:9100"
        )),
    }
}

/// Parses `--strategy`: `overlap`, `rolling` or `restart`.
pub fn parse_strategy(s: &str) -> Result<Strategy, String> {
    match s {
        "overlap" => Ok(Strategy::Overlap),
        "rolling" => Ok(Strategy::Rolling),
        "restart" => Ok(Strategy::Restart),
        _ => Err(format!(
            "unknown strategy {s:?}; use overlap (the whole new generation beside the old one), rolling (a few workers at a time, see --max-surge) or restart (stop, then start: for apps that cannot run twice)"
        )),
    }
}

/// The most `--max-draining` allows.
pub const MAX_DRAINING: usize = 64;

/// Parses `--max-surge`: 1 or more (at most the workers limit).
pub fn parse_max_surge(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err(
            "--max-surge 0 would never start a new worker: a rolling reload starts a new worker before an old one drains; use 1 or more (or --strategy restart to stop first)".into(),
        ),
        Ok(n) if n > crate::runtime::MAX_WORKERS => Err(format!(
            "--max-surge {n} is more than the limit of {} workers",
            crate::runtime::MAX_WORKERS
        )),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a number of processes; write e.g. --max-surge 1")),
    }
}

/// Parses `--max-draining`: 1 to [`MAX_DRAINING`].
pub fn parse_max_draining(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err(
            "--max-draining 0 would kill the old generation the moment the new one is ready, cutting off its requests; use 1 or more (past that many draining generations the oldest is killed)".into(),
        ),
        Ok(n) if n > MAX_DRAINING => Err(format!(
            "--max-draining {n} is more than the limit of {MAX_DRAINING}"
        )),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "{s:?} is not a number of generations; write e.g. --max-draining 2"
        )),
    }
}

/// Parses an `on`/`off` switch (`--quiet-boot`).
pub fn parse_switch(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{s:?} is neither on nor off")),
    }
}

/// Why these settings cannot be used together (checked for the flags and
/// the config file alike, at start and on every reload).
pub fn check_policy(p: &Policy) -> Result<(), String> {
    let timeout = humantime::format_duration(p.ready_timeout);
    if p.ready_timeout.is_zero() {
        return Err(
            "--ready-timeout 0 fails every start before a worker can be ready: give it time, e.g. --ready-timeout 30s (the default is 60s)".into(),
        );
    }
    if let ReadyMode::Delay(d) = &p.ready
        && *d >= p.ready_timeout
    {
        return Err(format!(
            "--ready delay:{} is not shorter than --ready-timeout {timeout}: every start would time out; raise --ready-timeout above the delay",
            humantime::format_duration(*d)
        ));
    }
    if p.strategy == Strategy::Rolling && (!p.ready.per_worker() || p.ready.gen_wide()) {
        return Err(format!(
            "--strategy rolling replaces workers one at a time, so it needs to know when each one is ready: use --ready notify, fd, accepting or notify|accepting (--ready {} tells about a whole generation)",
            match &p.ready {
                ReadyMode::Delay(_) => "delay:DURATION",
                ReadyMode::Exec(_) => "exec:CMD",
                ReadyMode::AcceptingAndExec(_) => "accepting+exec:CMD",
                ReadyMode::Notify
                | ReadyMode::Fd
                | ReadyMode::Accepting
                | ReadyMode::NotifyOrAccepting
                | ReadyMode::Dispatch => "this mode",
            }
        ));
    }
    Ok(())
}

/// Parses `--ready`: `notify`, `fd`, `delay:DURATION`, `exec:CMD`,
/// `accepting`, `accepting+exec:CMD`, `notify|accepting`.
pub fn parse_ready(s: &str) -> Result<ReadyMode, String> {
    match s {
        "notify" => Ok(ReadyMode::Notify),
        "fd" => Ok(ReadyMode::Fd),
        "accepting" => Ok(ReadyMode::Accepting),
        "dispatch" => Ok(ReadyMode::Dispatch),
        "notify|accepting" | "accepting|notify" => Ok(ReadyMode::NotifyOrAccepting),
        _ => {
            if let Some(rest) = s.strip_prefix("accepting+") {
                return match parse_ready(rest)? {
                    ReadyMode::Exec(cmd) => Ok(ReadyMode::AcceptingAndExec(cmd)),
                    _ => Err(format!(
                        "accepting combines with exec:CMD (both must hold: accepting+exec:CMD) or with notify (either: notify|accepting), not with {rest:?}"
                    )),
                };
            }
            if let Some(d) = s.strip_prefix("delay:") {
                parse_duration(d).map(ReadyMode::Delay)
            } else if let Some(cmd) = s.strip_prefix("exec:") {
                if cmd.trim().is_empty() {
                    Err("exec: needs a command, e.g. --ready 'exec:curl -sf http://127.0.0.1:8080/health'".into())
                } else {
                    Ok(ReadyMode::Exec(cmd.to_owned()))
                }
            } else {
                Err(format!(
                    "unknown readiness mode {s:?}; use notify (sd_notify READY=1), fd (a newline on BATON_READY_FD), accepting (the app waits for connections on baton's socket, seen in /proc), dispatch (`ready` on the --dispatch channel), delay:DURATION (e.g. delay:2s), exec:CMD, accepting+exec:CMD or notify|accepting"
                ))
            }
        }
    }
}

/// Parses a duration such as `30s`, `500ms`, `1m30s` (humantime syntax);
/// a bare number means seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Some(rest) = s.trim_start().strip_prefix('-') {
        // Flags take a value that may start with '-' so that `--grace -1`
        // is read as the value it is meant to be.
        return Err(
            if rest.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
                format!("{s:?}: a duration cannot be negative; write e.g. 0s, 500ms, 30s")
            } else {
                format!(
                    "{s:?} is not a duration (the flag before it needs one); write e.g. 500ms, 30s, 2m"
                )
            },
        );
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration ({e}); write e.g. 500ms, 30s, 2m"))
}

const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("TERM", libc::SIGTERM),
    ("WINCH", libc::SIGWINCH),
    ("ALRM", libc::SIGALRM),
    ("PWR", libc::SIGPWR),
];

/// Parses a signal name (`TERM`, `SIGTERM`, `term`) or number (`15`).
pub fn parse_signal(s: &str) -> Result<i32, String> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(format!("signal number {n} is out of range (1-64)"));
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = SIGNALS.iter().map(|(n, _)| *n).collect();
            format!(
                "unknown signal {s:?}; use one of {} (with or without SIG), or a number",
                names.join(", ")
            )
        })
}

/// Why the command cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("no command given: write it after --, e.g. baton run -l :8080 -- ./server")]
    Missing,
    #[error("command {cmd:?} not found in PATH ({path}){hint}")]
    NotFound {
        cmd: String,
        path: String,
        /// Where the name is a file in the working directory: how to run it.
        hint: String,
    },
    #[error("{path} does not exist")]
    NoSuchFile { path: String },
    #[error("{path} is not executable (mode {mode:o}); fix it with chmod +x {path}")]
    NotExecutable { path: String, mode: u32 },
    #[error("{path} is a directory, not a program")]
    IsDirectory { path: String },
    #[error("--chdir {path}: {problem}")]
    Chdir { path: String, problem: String },
}

/// Checks the working directory and finds the program the way `execvp`
/// would: a name with a `/` is a path (relative to `chdir`, if given),
/// anything else is searched in `PATH`.
pub fn resolve_program(
    cmd: &str,
    chdir: Option<&Path>,
    path_env: Option<&OsStr>,
) -> Result<PathBuf, CommandError> {
    if cmd.is_empty() {
        return Err(CommandError::Missing);
    }
    if let Some(dir) = chdir {
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(CommandError::Chdir {
                    path: dir.display().to_string(),
                    problem: "not a directory".into(),
                });
            }
            Err(e) => {
                return Err(CommandError::Chdir {
                    path: dir.display().to_string(),
                    problem: e.to_string(),
                });
            }
        }
    }
    if cmd.contains('/') {
        let given = Path::new(cmd);
        let on_disk = match chdir {
            Some(dir) if given.is_relative() => dir.join(given),
            _ => given.to_path_buf(),
        };
        check_executable(&on_disk)?;
        return Ok(given.to_path_buf());
    }
    let path_var = path_env.map_or_else(
        || "/usr/local/bin:/usr/bin:/bin".to_owned(),
        |p| p.to_string_lossy().into_owned(),
    );
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(cmd);
        if check_executable(&candidate).is_ok() {
            // An absolute path keeps working after --chdir.
            return Ok(std::path::absolute(&candidate).unwrap_or(candidate));
        }
    }
    // `--chdir /srv/app -- server` for `./server`: a name without a '/'
    // is looked up in PATH only, as execvp does.
    let here = chdir.unwrap_or(Path::new(".")).join(cmd);
    let hint = if here.is_file() {
        format!(
            "; {} is there: write ./{cmd} to run it (a name without a '/' is looked up in PATH only)",
            here.display()
        )
    } else {
        String::new()
    };
    Err(CommandError::NotFound {
        cmd: cmd.to_owned(),
        path: path_var,
        hint,
    })
}

/// The program a generation runs, pinned when the generation starts: found
/// as [`resolve_program`] finds it (in `chdir`, the generation's resolved
/// working directory, or on `PATH`), made absolute and with every symlink
/// resolved. Each worker of the generation, restarts included, executes this
/// very path, so a `current -> releases/N` symlink swapped meanwhile moves
/// only the next reload to the new release, never half a generation.
pub fn pin_program(
    cmd: &str,
    chdir: Option<&Path>,
    path_env: Option<&OsStr>,
) -> Result<PathBuf, CommandError> {
    let found = resolve_program(cmd, chdir, path_env)?;
    let absolute = match chdir {
        Some(dir) if found.is_relative() => dir.join(&found),
        _ => std::path::absolute(&found).unwrap_or_else(|_| found.clone()),
    };
    std::fs::canonicalize(&absolute).map_err(|e| CommandError::NoSuchFile {
        path: format!("{} ({e})", absolute.display()),
    })
}

fn check_executable(path: &Path) -> Result<(), CommandError> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|_| CommandError::NoSuchFile {
        path: shown.clone(),
    })?;
    if meta.is_dir() {
        return Err(CommandError::IsDirectory { path: shown });
    }
    let mode = meta.permissions().mode();
    if mode & 0o111 == 0 {
        return Err(CommandError::NotExecutable {
            path: shown,
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_modes() {
        assert_eq!(parse_ready("accepting"), Ok(ReadyMode::Accepting));
        assert_eq!(
            parse_ready("accepting+exec:curl -sf x"),
            Ok(ReadyMode::AcceptingAndExec("curl -sf x".into()))
        );
        assert_eq!(
            parse_ready("notify|accepting"),
            Ok(ReadyMode::NotifyOrAccepting)
        );
        assert_eq!(
            parse_ready("accepting|notify"),
            Ok(ReadyMode::NotifyOrAccepting)
        );
        for bad in ["accepting+fd", "accepting+delay:1s", "accepting+accepting"] {
            assert!(
                parse_ready(bad)
                    .expect_err("not a combination")
                    .contains("accepting combines with exec:CMD"),
                "{bad}"
            );
        }
        assert!(
            parse_ready("accepting+exec:")
                .expect_err("no command")
                .contains("needs a command")
        );
        assert_eq!(parse_ready("notify"), Ok(ReadyMode::Notify));
        assert_eq!(parse_ready("dispatch"), Ok(ReadyMode::Dispatch));
        assert_eq!(parse_ready("fd"), Ok(ReadyMode::Fd));
        assert_eq!(
            parse_ready("delay:250ms"),
            Ok(ReadyMode::Delay(Duration::from_millis(250)))
        );
        assert_eq!(
            parse_ready("exec:test -e x"),
            Ok(ReadyMode::Exec("test -e x".into()))
        );
        assert!(
            parse_ready("exec:")
                .expect_err("empty")
                .contains("needs a command")
        );
        assert!(
            parse_ready("delay:soon")
                .expect_err("bad")
                .contains("not a duration")
        );
        assert!(
            parse_ready("systemd")
                .expect_err("bad")
                .contains("unknown readiness mode")
        );
    }

    #[test]
    fn metrics_addresses_are_tcp_and_unnamed() {
        assert_eq!(
            parse_metrics("127.0.0.1:9100").map(|s| s.text),
            Ok("127.0.0.1:9100".into())
        );
        assert!(parse_metrics(":9100").is_ok());
        assert!(parse_metrics("[::1]:0").is_ok());
        let e = parse_metrics("unix:/tmp/m.sock").expect_err("unix");
        assert!(e.contains("needs a TCP address"), "{e}");
        let e = parse_metrics("m=127.0.0.1:9100").expect_err("named");
        assert!(e.contains("has no name"), "{e}");
        let e = parse_metrics("127.0.0.1:91OO").expect_err("port");
        assert!(e.contains("invalid metrics address"), "{e}");
        assert!(e.contains("not a port number"), "{e}");
        let e = parse_metrics("localhost").expect_err("no port");
        assert!(e.contains("valid forms: HOST:PORT"), "{e}");
        assert!(
            !e.contains("unix:"),
            "the endpoint takes no Unix socket: {e}"
        );
    }

    #[test]
    fn strategies_and_their_numbers() {
        assert_eq!(parse_strategy("rolling"), Ok(Strategy::Rolling));
        assert_eq!(parse_strategy("restart"), Ok(Strategy::Restart));
        assert_eq!(parse_strategy("overlap"), Ok(Strategy::Overlap));
        assert!(
            parse_strategy("rollin")
                .expect_err("typo")
                .contains("unknown strategy \"rollin\"; use overlap")
        );
        assert_eq!(parse_max_surge("2"), Ok(2));
        assert!(parse_max_surge("0").expect_err("0").contains("never start"));
        assert!(
            parse_max_surge("x")
                .expect_err("x")
                .contains("not a number")
        );
        assert_eq!(parse_max_draining("3"), Ok(3));
        assert!(
            parse_max_draining("0")
                .expect_err("0")
                .contains("use 1 or more")
        );
        assert!(parse_max_draining("65").expect_err("65").contains("limit"));
        assert_eq!(parse_switch("off"), Ok(false));
        assert!(parse_switch("maybe").is_err());
        let mut p = Policy::new(2, ReadyMode::Delay(Duration::from_secs(1)));
        p.strategy = Strategy::Rolling;
        assert!(
            check_policy(&p)
                .expect_err("rolling needs per-worker readiness")
                .contains("--ready delay:DURATION tells about a whole generation")
        );
        p.ready = ReadyMode::Accepting;
        assert_eq!(check_policy(&p), Ok(()));
    }

    /// `--ready-timeout 0` was taken, and every start failed at once with
    /// "was not ready within 0s" (exit 6); `--ready delay:90s` with the
    /// default 60 s timeout could never be ready either. Both are mistakes
    /// in the settings, refused as such (exit 2, or a refused reload).
    #[test]
    fn a_ready_timeout_no_start_can_meet_is_refused() {
        let mut p = Policy::new(1, ReadyMode::Notify);
        p.ready_timeout = Duration::ZERO;
        assert!(
            check_policy(&p)
                .expect_err("0")
                .contains("--ready-timeout 0 fails every start")
        );
        p.ready_timeout = Duration::from_secs(60);
        p.ready = ReadyMode::Delay(Duration::from_secs(90));
        assert!(
            check_policy(&p)
                .expect_err("delay past the timeout")
                .contains("--ready delay:1m 30s is not shorter than --ready-timeout 1m")
        );
        p.ready = ReadyMode::Delay(Duration::from_secs(5));
        assert_eq!(check_policy(&p), Ok(()));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("-1").is_err_and(|e| e.contains("cannot be negative")));
        assert!(parse_duration("--workers").is_err_and(|e| e.contains("needs one")));
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("TERM"), Ok(libc::SIGTERM));
        assert_eq!(parse_signal("sigquit"), Ok(libc::SIGQUIT));
        assert_eq!(parse_signal("10"), Ok(10));
        assert!(
            parse_signal("TERMINATE")
                .expect_err("bad")
                .contains("unknown signal")
        );
        assert!(parse_signal("0").is_err());
    }

    /// `--chdir /srv/app/current -- server` (the program is
    /// `/srv/app/current/server`) said only "command \"server\" not found
    /// in PATH (...)": nothing about the file right there, or the `./`.
    #[test]
    fn a_program_in_the_working_directory_given_without_dot_slash_gets_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("server"), "#!/bin/sh\n").expect("write");
        let e = resolve_program("server", Some(dir.path()), Some(OsStr::new("/nonexistent")))
            .expect_err("not in PATH");
        assert!(
            e.to_string()
                .contains("server is there: write ./server to run it"),
            "{e}"
        );
        let e = resolve_program("other", Some(dir.path()), Some(OsStr::new("/nonexistent")))
            .expect_err("nowhere");
        assert!(!e.to_string().contains("is there"), "{e}");
    }

    #[test]
    fn program_resolution() {
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = dir.path().join("app");
        std::fs::write(&exe, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let plain = dir.path().join("data");
        std::fs::write(&plain, "").expect("write");
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).expect("chmod");

        let path = dir.path().as_os_str();
        assert_eq!(resolve_program("app", None, Some(path)), Ok(exe.clone()));
        assert!(matches!(
            resolve_program("nope", None, Some(path)),
            Err(CommandError::NotFound { .. })
        ));
        assert_eq!(
            resolve_program("./app", Some(dir.path()), None),
            Ok(PathBuf::from("./app"))
        );
        let e = resolve_program("./data", Some(dir.path()), None).expect_err("mode");
        assert!(e.to_string().contains("chmod +x"), "{e}");
        assert!(matches!(
            resolve_program("/", None, None),
            Err(CommandError::IsDirectory { .. })
        ));
        assert!(matches!(
            resolve_program("./app", Some(&dir.path().join("missing")), None),
            Err(CommandError::Chdir { .. })
        ));
        assert_eq!(resolve_program("", None, None), Err(CommandError::Missing));
    }

    #[test]
    fn pinned_program_resolves_symlinks_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        for release in ["r1", "r2"] {
            let bin = dir.path().join(release).join("bin");
            std::fs::create_dir_all(&bin).expect("mkdir");
            let exe = bin.join("server");
            std::fs::write(&exe, "#!/bin/sh\n").expect("write");
            std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let current = dir.path().join("current");
        std::os::unix::fs::symlink("r1", &current).expect("symlink");
        let given = current.join("bin/server");
        let given = given.to_str().expect("UTF-8 temp path");
        let r1 = std::fs::canonicalize(dir.path().join("r1/bin/server")).expect("r1");
        assert_eq!(pin_program(given, None, None), Ok(r1.clone()));
        // Relative to the generation's directory.
        assert_eq!(
            pin_program("./bin/server", Some(&dir.path().join("r1")), None),
            Ok(r1)
        );
        // A swap moves the next pin, not the one taken.
        std::fs::remove_file(&current).expect("unlink");
        std::os::unix::fs::symlink("r2", &current).expect("symlink");
        let r2 = std::fs::canonicalize(dir.path().join("r2/bin/server")).expect("r2");
        assert_eq!(pin_program(given, None, None), Ok(r2));
        // On PATH.
        let path = dir.path().join("current/bin");
        assert_eq!(
            pin_program("server", None, Some(path.as_os_str())),
            std::fs::canonicalize(dir.path().join("r2/bin/server"))
                .map_err(|_| CommandError::Missing)
        );
    }
}
