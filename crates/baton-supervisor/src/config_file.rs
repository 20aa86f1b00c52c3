//! `baton run --config FILE`: the settings in a TOML file, merged with the
//! flags (a flag given on the command line wins over the file, on every
//! reload too), validated into [`Settings`].
//!
//! ```toml
//! command = ["./server", "--config", "prod.toml"]
//! workers = 4
//! ready = "notify"
//! grace = "30s"
//! chdir = "/srv/app/current"
//!
//! [[listen]]
//! name = "web"
//! address = "tcp://0.0.0.0:8080"
//!
//! [[listen]]
//! name = "admin"
//! address = "unix:/run/app/admin.sock?mode=0660"
//!
//! [env]
//! RUST_LOG = "info"
//! ```
//!
//! Every key is a `baton run` flag (docs/config.md lists them). Mistakes
//! are reported with the file, line and column: an unknown key (a typo), a
//! value of the wrong type, a duration or signal that does not parse, two
//! listeners with one name.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::config::{
    CgroupMode, CommandError, Settings, check_policy, parse_cgroups, parse_duration,
    parse_max_draining, parse_max_surge, parse_metrics, parse_ready, parse_signal, parse_strategy,
    parse_switch, resolve_program,
};
use crate::dispatch::{DispatchMode, DispatchOrder, DispatchSettings, Overload};
use crate::lifecycle::{Policy, ReadyMode, Strategy};
use crate::listen::ListenSpec;

/// The defaults of `baton run`'s flags, in one place.
pub mod defaults {
    use std::time::Duration;
    pub const WORKERS: usize = 1;
    pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
    pub const GRACE: Duration = Duration::from_secs(30);
    pub const STOP_SIGNAL: i32 = libc::SIGTERM;
    pub const WATCH_DEBOUNCE: Duration = Duration::from_millis(300);
    pub const NAME: &str = "baton";
    pub const MAX_SURGE: usize = crate::lifecycle::DEFAULT_MAX_SURGE;
    pub const MAX_DRAINING: usize = crate::lifecycle::DEFAULT_MAX_DRAINING;
    // Off, although issue 9 asked for on: measured, it costs more than it
    // gives. Under a load that keeps the cores busy a quiet generation gets
    // almost no CPU, so every reload waits for the 1 s give-way (the
    // 50-reload e2e test took 44 s with it on, 1.6 s off; the 300-reload
    // soak 88 s against 6 s), while bench/quiet-boot showed p99 during
    // reloads only about a tenth lower. `--quiet-boot on` where cores idle.
    pub const QUIET_BOOT: bool = false;
}

/// The flags given on the command line; `None` (or empty) when not given,
/// so that the file's value, or the default, applies.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Overrides {
    pub listen: Vec<ListenSpec>,
    pub workers: Option<usize>,
    pub ready: Option<ReadyMode>,
    pub ready_timeout: Option<Duration>,
    pub grace: Option<Duration>,
    pub stop_signal: Option<i32>,
    pub chdir: Option<PathBuf>,
    pub name: Option<String>,
    pub control: Option<PathBuf>,
    pub no_control: bool,
    pub watch: Vec<PathBuf>,
    pub watch_ignore: Vec<String>,
    pub watch_debounce: Option<Duration>,
    pub cgroups: Option<CgroupMode>,
    #[serde(default)]
    pub strategy: Option<Strategy>,
    #[serde(default)]
    pub max_surge: Option<usize>,
    #[serde(default)]
    pub max_draining: Option<usize>,
    #[serde(default)]
    pub quiet_boot: Option<bool>,
    /// `--env K=V`, on top of the file's `[env]`.
    pub env: Vec<(String, String)>,
    /// The command after `--` (empty: the file's `command`).
    pub command: Vec<OsString>,
    /// `--env-file` (replaces the file's `env_file`).
    #[serde(default)]
    pub env_files: Vec<PathBuf>,
    /// `--clear-env` (given: on, whatever the file says).
    #[serde(default)]
    pub clear_env: bool,
    /// `--keep-env` (replaces the file's `keep_env`).
    #[serde(default)]
    pub keep_env: Vec<String>,
    /// `--user USER[:GROUP]`.
    #[serde(default)]
    pub user: Option<String>,
    /// `--group GROUP`.
    #[serde(default)]
    pub group: Option<String>,
    /// `--no-new-privs[=BOOL]`.
    #[serde(default)]
    pub no_new_privs: Option<bool>,
    /// `--metrics ADDR`.
    #[serde(default)]
    pub metrics: Option<ListenSpec>,
    /// `--dispatch[=MODE]` and its companions.
    #[serde(default)]
    pub dispatch: Option<DispatchMode>,
    #[serde(default)]
    pub dispatch_timeout: Option<Duration>,
    #[serde(default)]
    pub dispatch_order: Option<DispatchOrder>,
    #[serde(default)]
    pub overload: Option<Overload>,
    #[serde(default)]
    pub queue: Option<usize>,
    #[serde(default)]
    pub queue_timeout: Option<Duration>,
}

/// Why the settings cannot be used, with the exit code `baton run` gives
/// at start (a reload is refused with the same message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LoadError {
    pub kind: LoadErrorKind,
    pub message: String,
}

/// What kind of mistake a [`LoadError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadErrorKind {
    /// A flag, a key or a value (exit 2).
    Usage,
    /// The command cannot be run (exit 4).
    Command,
}

impl LoadError {
    fn usage(message: impl Into<String>) -> Self {
        Self {
            kind: LoadErrorKind::Usage,
            message: message.into(),
        }
    }
}

/// A duration: `"30s"`, `"1m30s"`, or a number of seconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Secs(u64),
    Text(String),
}

/// `env_file = "path"` or `env_file = ["a", "b"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

/// A number given as a TOML integer or a string (`max_surge = 2`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawCount {
    Int(i64),
    Text(String),
}

/// `quiet_boot = true` or `quiet_boot = "off"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawSwitch {
    Bool(bool),
    Text(String),
}

/// `control = "/path"` or `control = false`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawControl {
    Path(PathBuf),
    Enabled(bool),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    name: Option<Spanned<String>>,
    address: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    command: Option<Spanned<Vec<String>>>,
    listen: Option<Vec<Spanned<RawListen>>>,
    workers: Option<Spanned<i64>>,
    ready: Option<Spanned<String>>,
    ready_timeout: Option<Spanned<RawDuration>>,
    grace: Option<Spanned<RawDuration>>,
    stop_signal: Option<Spanned<String>>,
    chdir: Option<Spanned<PathBuf>>,
    name: Option<Spanned<String>>,
    control: Option<Spanned<RawControl>>,
    watch: Option<Vec<Spanned<PathBuf>>>,
    watch_ignore: Option<Vec<String>>,
    watch_debounce: Option<Spanned<RawDuration>>,
    cgroups: Option<Spanned<String>>,
    strategy: Option<Spanned<String>>,
    max_surge: Option<Spanned<RawCount>>,
    max_draining: Option<Spanned<RawCount>>,
    quiet_boot: Option<Spanned<RawSwitch>>,
    env: Option<BTreeMap<String, Spanned<String>>>,
    env_file: Option<Spanned<OneOrMany>>,
    clear_env: Option<bool>,
    keep_env: Option<Vec<Spanned<String>>>,
    user: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    no_new_privs: Option<bool>,
    metrics: Option<Spanned<String>>,
    dispatch: Option<Spanned<String>>,
    dispatch_timeout: Option<Spanned<RawDuration>>,
    dispatch_order: Option<Spanned<String>>,
    overload: Option<Spanned<RawOverload>>,
    queue: Option<Spanned<i64>>,
    queue_timeout: Option<Spanned<RawDuration>>,
}

/// `overload = "503"` or `overload = 503`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawOverload {
    Code(i64),
    Text(String),
}

/// The file's `control` key.
#[derive(Debug)]
enum ControlSetting {
    At(PathBuf),
    Off,
}

/// The file's settings, validated; `None` where the file says nothing.
#[derive(Debug, Default)]
struct FileSettings {
    command: Option<Vec<OsString>>,
    listen: Option<Vec<ListenSpec>>,
    workers: Option<usize>,
    ready: Option<ReadyMode>,
    ready_timeout: Option<Duration>,
    grace: Option<Duration>,
    stop_signal: Option<i32>,
    chdir: Option<PathBuf>,
    name: Option<String>,
    control: Option<ControlSetting>,
    watch: Option<Vec<PathBuf>>,
    watch_ignore: Option<Vec<String>>,
    watch_debounce: Option<Duration>,
    cgroups: Option<CgroupMode>,
    strategy: Option<Strategy>,
    max_surge: Option<usize>,
    max_draining: Option<usize>,
    quiet_boot: Option<bool>,
    env: Vec<(String, String)>,
    /// Relative paths made relative to the config file's directory.
    env_files: Option<Vec<PathBuf>>,
    clear_env: Option<bool>,
    keep_env: Option<Vec<String>>,
    user: Option<String>,
    group: Option<String>,
    no_new_privs: Option<bool>,
    metrics: Option<ListenSpec>,
    dispatch: Option<DispatchMode>,
    dispatch_timeout: Option<Duration>,
    dispatch_order: Option<DispatchOrder>,
    overload: Option<Overload>,
    queue: Option<usize>,
    queue_timeout: Option<Duration>,
    /// Where each dispatch key is, for a mistake found when it is combined
    /// with the rest (e.g. `queue` without `dispatch`).
    dispatch_spans: Vec<(&'static str, Range<usize>)>,
    /// The file's text, to turn those spans into lines and columns.
    text: String,
    path: PathBuf,
}

/// `line:column` (1-based) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn error(&self, span: Range<usize>, message: impl std::fmt::Display) -> LoadError {
        let (line, col) = line_col(self.text, span.start);
        LoadError::usage(format!("{}:{line}:{col}: {message}", self.path.display()))
    }

    /// A count through the flag's own parser (`parser` names the flag in
    /// its messages; here the key is named instead).
    fn count(
        &self,
        v: &Spanned<RawCount>,
        key: &str,
        parser: fn(&str) -> Result<usize, String>,
    ) -> Result<usize, LoadError> {
        let text = match v.get_ref() {
            RawCount::Int(n) => n.to_string(),
            RawCount::Text(t) => t.clone(),
        };
        parser(&text).map_err(|e| {
            let e = e.replace(
                &format!("--{} ", key.replace('_', "-")),
                &format!("{key} = "),
            );
            self.error(v.span(), format!("{key}: {e}"))
        })
    }

    fn duration(&self, v: &Spanned<RawDuration>, key: &str) -> Result<Duration, LoadError> {
        match v.get_ref() {
            RawDuration::Secs(n) => Ok(Duration::from_secs(*n)),
            RawDuration::Text(t) => {
                parse_duration(t).map_err(|e| self.error(v.span(), format!("{key}: {e}")))
            }
        }
    }
}

/// serde's "unknown field `worker`, expected one of `command`, ..." (every
/// key baton reads, 30 and more) turned into "unknown field `worker`; did
/// you mean `workers`?" when one key is close to the typo; other messages
/// are kept as they are.
fn with_suggestion(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_owned();
    };
    // serde says "expected `a`", "expected `a` or `b`" or "expected one
    // of `a`, `b`, ...".
    let Some((typo, expected)) = rest.split_once("`, expected ") else {
        return message.to_owned();
    };
    let expected = expected.strip_prefix("one of ").unwrap_or(expected);
    let best = expected
        .split(", ")
        .flat_map(|k| k.split(" or "))
        .map(|k| k.trim_matches('`'))
        .map(|k| (strsim::jaro_winkler(typo, k), k))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        // The threshold clap uses for its flag suggestions.
        Some((score, key)) if score > 0.7 => {
            format!("unknown field `{typo}`; did you mean `{key}`? (every key: docs/config.md)")
        }
        _ => format!("unknown field `{typo}`; the keys here are {expected} (docs/config.md)"),
    }
}

/// Every top-level key of the file, as serde lists them when it meets one
/// it does not know (so the list can never drift from [`RawFile`]).
fn top_level_keys() -> &'static [String] {
    static KEYS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let e = toml::from_str::<RawFile>("not-a-baton-key = 0\n")
            .expect_err("an unknown key is refused (deny_unknown_fields)");
        let message = e.message().to_owned();
        let list = message.split_once("expected ").map_or("", |(_, l)| l);
        list.strip_prefix("one of ")
            .unwrap_or(list)
            .split(", ")
            .flat_map(|k| k.split(" or "))
            .map(|k| k.trim().trim_matches('`').to_owned())
            .filter(|k| !k.is_empty())
            .collect()
    })
}

/// Where the line `offset` is in starts.
fn line_start(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1)
}

/// The table header (`[env]`, `[[listen]]`, without a comment) the line
/// starting at `line_start` is under, if any.
fn table_above(text: &str, line_start: usize) -> Option<&str> {
    let header = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))?;
    Some(header.split('#').next().unwrap_or(header).trim())
}

/// The key of the `key = value` line `offset` is in.
fn key_at(text: &str, offset: usize) -> Option<&str> {
    let line_start = line_start(text, offset);
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |i| line_start + i);
    let key = text[line_start..line_end].split_once('=')?.0.trim();
    Some(key.trim_matches('"'))
}

/// A value of the wrong type, as serde says it ("invalid type: string
/// \"8\", expected i64", "data did not match any variant of untagged enum
/// RawDuration"), said with the key (or table header) it is at, in words
/// a reader of docs/config.md knows, and with the fix for the usual slips:
/// a quoted number, `[listen]` for `[[listen]]`, `[[env]]` for `[env]`, a
/// number in `[env]`. Other messages come back as they were.
fn explain_type_error(text: &str, offset: usize, message: String) -> String {
    let untagged = message
        .strip_prefix("data did not match any variant of untagged enum ")
        .map(str::trim);
    if !message.starts_with("invalid type") && untagged.is_none() {
        return message;
    }
    let line_start = line_start(text, offset);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let line = line.split('#').next().unwrap_or(line).trim();
    let expected = match untagged {
        Some("RawDuration") => {
            "expected a duration: a string such as \"5s\", \"1m30s\" or \"250ms\", or a number of seconds".to_owned()
        }
        Some("RawCount") => "expected a whole number".to_owned(),
        Some("RawSwitch") => "expected true or false (or \"on\" / \"off\")".to_owned(),
        Some("RawControl") => "expected a path, or false for no control socket".to_owned(),
        Some("OneOrMany") => "expected a path or a list of paths".to_owned(),
        Some("RawOverload") => "expected \"wait\", \"close\" or \"503\"".to_owned(),
        Some(_) => message.clone(),
        None => {
            let mut m = message.clone();
            for int in ["i64", "u64", "u32", "usize"] {
                if let Some(head) = m.strip_suffix(&format!("expected {int}")) {
                    m = format!("{head}expected a whole number");
                }
            }
            m
        }
    };
    if line.starts_with('[') {
        let hint = match line {
            "[listen]" => {
                "; listeners are a list of tables: write `[[listen]]` (two brackets), one per listener"
            }
            "[[env]]" => "; the environment is one table: write `[env]` (one bracket)",
            _ => "",
        };
        return format!("`{line}`: {expected}{hint} (docs/config.md)");
    }
    let Some(key) = key_at(text, offset) else {
        return expected;
    };
    let table = table_above(text, line_start);
    let value = line.split_once('=').map_or("", |(_, v)| v.trim());
    let quoted_number = value.len() > 2
        && value.starts_with('"')
        && value.ends_with('"')
        && value[1..value.len() - 1].parse::<i64>().is_ok();
    let hint = if table == Some("[env]") && expected.ends_with("expected a string") {
        format!("; environment values are strings: write {key} = \"{value}\"")
    } else if quoted_number && expected.ends_with("expected a whole number") {
        format!("; write {key} = {} (no quotes)", value.trim_matches('"'))
    } else if key == "listen" && table.is_none() {
        "; listeners are tables: write `[[listen]]` with `address = \"...\"` below the top-level keys".to_owned()
    } else {
        String::new()
    };
    match table {
        Some(t) if t != "[[listen]]" => {
            format!("`{key}` in {t}: {expected}{hint} (docs/config.md)")
        }
        Some(_) => format!("`{key}` of a [[listen]]: {expected}{hint} (docs/config.md)"),
        None => format!("`{key}`: {expected}{hint} (docs/config.md)"),
    }
}

/// A top-level key written after a table header (`workers = 4` appended
/// to a file that ends with `[env]` or a `[[listen]]`) is in that table;
/// the error there says so. `offset` is where the error is.
fn misplaced_key(text: &str, offset: usize) -> Option<String> {
    let key = key_at(text, offset)?;
    if !top_level_keys().iter().any(|k| k == key) {
        return None;
    }
    let table = table_above(text, line_start(text, offset))?;
    if table == "[[listen]]" && matches!(key, "name" | "address") {
        return None;
    }
    Some(format!(
        "`{key}` is a top-level key, but written after `{table}` it belongs to that table (in TOML every key after a table header does): move it above the first table header"
    ))
}

/// Reads and validates `path`.
fn read_file(path: &Path) -> Result<FileSettings, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        LoadError::usage(format!(
            "cannot read the config file {}: {e}",
            path.display()
        ))
    })?;
    parse_file(path, &text)
}

fn parse_file(path: &Path, text: &str) -> Result<FileSettings, LoadError> {
    let src = Source { path, text };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let mut message = with_suggestion(e.message().trim());
        if message == "duplicate key"
            && let Some(key) = e.span().and_then(|span| key_at(text, span.start))
        {
            message = format!("duplicate key `{key}`: it is set above already; keep one");
        }
        if let Some(hint) = e.span().and_then(|span| misplaced_key(text, span.start)) {
            message.push_str("; ");
            message.push_str(&hint);
        } else if let Some(span) = e.span() {
            message = explain_type_error(text, span.start, message);
        }
        match e.span() {
            Some(span) => src.error(span, message),
            None => LoadError::usage(format!("{}: {message}", path.display())),
        }
    })?;
    let mut out = FileSettings::default();
    if let Some(cmd) = raw.command {
        if cmd.get_ref().is_empty() || cmd.get_ref()[0].is_empty() {
            return Err(src.error(
                cmd.span(),
                "command: give the program and its arguments, e.g. command = [\"./server\", \"--port\", \"8080\"]",
            ));
        }
        out.command = Some(cmd.into_inner().into_iter().map(OsString::from).collect());
    }
    if let Some(listen) = raw.listen {
        let mut specs: Vec<ListenSpec> = Vec::new();
        for (i, l) in listen.iter().enumerate() {
            let l = l.get_ref();
            let text = match &l.name {
                Some(n) => format!("{}={}", n.get_ref(), l.address.get_ref()),
                None => l.address.get_ref().clone(),
            };
            let spec: ListenSpec = text
                .parse()
                .map_err(|e| src.error(l.address.span(), format!("listen #{}: {e}", i + 1)))?;
            if let (Some(n), Some(name)) = (&spec.name, &l.name)
                && specs.iter().any(|s| s.name.as_ref() == Some(n))
            {
                return Err(src.error(
                    name.span(),
                    format!("two listeners are named {n:?}; names must be unique"),
                ));
            }
            specs.push(spec);
        }
        out.listen = Some(specs);
    }
    if let Some(w) = raw.workers {
        let n = *w.get_ref();
        out.workers = Some(
            usize::try_from(n)
                .ok()
                .filter(|n| (1..=crate::runtime::MAX_WORKERS).contains(n))
                .ok_or_else(|| {
                    src.error(
                        w.span(),
                        format!(
                            "workers = {n}: use 1 to {} workers per generation",
                            crate::runtime::MAX_WORKERS
                        ),
                    )
                })?,
        );
    }
    if let Some(r) = raw.ready {
        out.ready =
            Some(parse_ready(r.get_ref()).map_err(|e| src.error(r.span(), format!("ready: {e}")))?);
    }
    if let Some(d) = &raw.ready_timeout {
        out.ready_timeout = Some(src.duration(d, "ready_timeout")?);
    }
    if let Some(d) = &raw.grace {
        out.grace = Some(src.duration(d, "grace")?);
    }
    if let Some(s) = raw.stop_signal {
        out.stop_signal = Some(
            parse_signal(s.get_ref())
                .map_err(|e| src.error(s.span(), format!("stop_signal: {e}")))?,
        );
    }
    out.chdir = raw.chdir.map(Spanned::into_inner);
    if let Some(n) = raw.name {
        crate::control::valid_name(n.get_ref())
            .map_err(|e| src.error(n.span(), format!("name: {e}")))?;
        out.name = Some(n.into_inner());
    }
    if let Some(c) = raw.control {
        out.control = Some(match c.into_inner() {
            RawControl::Path(p) => ControlSetting::At(p),
            RawControl::Enabled(false) => ControlSetting::Off,
            RawControl::Enabled(true) => {
                return Err(LoadError::usage(format!(
                    "{}: control = true: give the socket's path, or false for none",
                    path.display()
                )));
            }
        });
    }
    out.watch = raw
        .watch
        .map(|w| w.into_iter().map(Spanned::into_inner).collect());
    out.watch_ignore = raw.watch_ignore;
    if let Some(d) = &raw.watch_debounce {
        out.watch_debounce = Some(src.duration(d, "watch_debounce")?);
    }
    if let Some(c) = raw.cgroups {
        out.cgroups = Some(
            parse_cgroups(c.get_ref()).map_err(|e| src.error(c.span(), format!("cgroups: {e}")))?,
        );
    }
    if let Some(m) = raw.metrics {
        out.metrics = Some(
            parse_metrics(m.get_ref()).map_err(|e| src.error(m.span(), format!("metrics: {e}")))?,
        );
    }
    if let Some(d) = raw.dispatch {
        out.dispatch_spans.push(("dispatch", d.span()));
        out.dispatch = Some(
            crate::dispatch::parse_mode(d.get_ref())
                .map_err(|e| src.error(d.span(), format!("dispatch: {e}")))?,
        );
    }
    if let Some(d) = &raw.dispatch_timeout {
        out.dispatch_spans.push(("dispatch_timeout", d.span()));
        let t = src.duration(d, "dispatch_timeout")?;
        if t.is_zero() {
            return Err(src.error(
                d.span(),
                "dispatch_timeout: a worker needs some time to answer; write e.g. \"5s\"",
            ));
        }
        out.dispatch_timeout = Some(t);
    }
    if let Some(o) = raw.dispatch_order {
        out.dispatch_spans.push(("dispatch_order", o.span()));
        out.dispatch_order = Some(
            crate::dispatch::parse_order(o.get_ref())
                .map_err(|e| src.error(o.span(), format!("dispatch_order: {e}")))?,
        );
    }
    if let Some(o) = raw.overload {
        out.dispatch_spans.push(("overload", o.span()));
        let text = match o.get_ref() {
            RawOverload::Code(n) => n.to_string(),
            RawOverload::Text(t) => t.clone(),
        };
        out.overload = Some(
            crate::dispatch::parse_overload(&text)
                .map_err(|e| src.error(o.span(), format!("overload: {e}")))?,
        );
    }
    if let Some(q) = raw.queue {
        out.dispatch_spans.push(("queue", q.span()));
        let n = *q.get_ref();
        out.queue = Some(
            usize::try_from(n)
                .ok()
                .filter(|n| *n <= crate::dispatch::MAX_QUEUE)
                .ok_or_else(|| {
                    src.error(
                        q.span(),
                        format!(
                            "queue = {n}: use 0 to {} connections",
                            crate::dispatch::MAX_QUEUE
                        ),
                    )
                })?,
        );
    }
    if let Some(d) = &raw.queue_timeout {
        out.dispatch_spans.push(("queue_timeout", d.span()));
        out.queue_timeout = Some(src.duration(d, "queue_timeout")?);
    }
    text.clone_into(&mut out.text);
    out.path = path.to_path_buf();
    if let Some(v) = raw.strategy {
        out.strategy = Some(
            parse_strategy(v.get_ref())
                .map_err(|e| src.error(v.span(), format!("strategy: {e}")))?,
        );
    }
    if let Some(v) = &raw.max_surge {
        out.max_surge = Some(src.count(v, "max_surge", parse_max_surge)?);
    }
    if let Some(v) = &raw.max_draining {
        out.max_draining = Some(src.count(v, "max_draining", parse_max_draining)?);
    }
    if let Some(v) = raw.quiet_boot {
        out.quiet_boot = Some(match v.get_ref() {
            RawSwitch::Bool(b) => *b,
            RawSwitch::Text(t) => parse_switch(t).map_err(|e| {
                src.error(
                    v.span(),
                    format!("quiet_boot: {e}; write quiet_boot = \"on\" or \"off\""),
                )
            })?,
        });
    }
    if let Some(env) = raw.env {
        for (k, v) in env {
            if !crate::environment::valid_name(&k) {
                return Err(src.error(
                    v.span(),
                    format!(
                        "env: {k:?} is not a variable name (letters, digits and _, not starting with a digit)"
                    ),
                ));
            }
            if top_level_keys().contains(&k) {
                let (line, col) = line_col(text, v.span().start);
                tracing::warn!(
                    "{}:{line}:{col}: [env] sets a variable named `{k}`; if you meant baton's own `{k}`, move it above `[env]` (in TOML every key after a table header belongs to that table)",
                    path.display()
                );
            }
            out.env.push((k, v.into_inner()));
        }
    }
    if let Some(files) = raw.env_file {
        let dir = path.parent().unwrap_or(Path::new("."));
        let list = match files.into_inner() {
            OneOrMany::One(p) => vec![p],
            OneOrMany::Many(v) => v,
        };
        // Relative to the config file, wherever baton was started from.
        out.env_files = Some(
            list.into_iter()
                .map(|p| if p.is_relative() { dir.join(p) } else { p })
                .collect(),
        );
    }
    out.clear_env = raw.clear_env;
    if let Some(keep) = raw.keep_env {
        let mut names = Vec::new();
        for k in keep {
            crate::environment::check_keep_pattern(k.get_ref())
                .map_err(|e| src.error(k.span(), format!("keep_env: {e}")))?;
            names.push(k.into_inner());
        }
        out.keep_env = Some(names);
    }
    out.user = raw.user.map(Spanned::into_inner);
    out.group = raw.group.map(Spanned::into_inner);
    out.no_new_privs = raw.no_new_privs;
    Ok(out)
}

/// The workers' variables from the env files, then `[env]`, then `--env`;
/// and the run-as user, resolved: the parts of [`load`] for `--env-file`,
/// `--clear-env` and `--user`.
struct WorkerIdentity {
    env: Vec<(String, String)>,
    env_files: Vec<PathBuf>,
    clear_env: bool,
    keep_env: Vec<String>,
    run_as: Option<crate::privileges::RunAs>,
    no_new_privs: Option<bool>,
}

fn worker_identity(
    f: &mut FileSettings,
    over: &Overrides,
    from_file: &dyn Fn(&str) -> String,
) -> Result<WorkerIdentity, LoadError> {
    let env_files = if over.env_files.is_empty() {
        f.env_files.take().unwrap_or_default()
    } else {
        over.env_files.clone()
    };
    let mut env: Vec<(String, String)> = Vec::new();
    for file in &env_files {
        for (k, v) in crate::environment::read_file(file).map_err(LoadError::usage)? {
            crate::environment::set(&mut env, &k, &v);
        }
    }
    for (k, v) in std::mem::take(&mut f.env).iter().chain(&over.env) {
        crate::environment::set(&mut env, k, v);
    }
    let clear_env = over.clear_env || f.clear_env.unwrap_or(false);
    let keep_env = if over.keep_env.is_empty() {
        f.keep_env.take().unwrap_or_default()
    } else {
        over.keep_env.clone()
    };
    if !keep_env.is_empty() && !clear_env {
        return Err(LoadError::usage(from_file(&format!(
            "--keep-env {} does nothing without --clear-env (baton's whole environment is passed on already); add --clear-env, or leave --keep-env out",
            keep_env.join(",")
        ))));
    }
    let user = over.user.clone().or_else(|| f.user.take());
    let group = over.group.clone().or_else(|| f.group.take());
    let run_as = match (&user, &group) {
        (Some(u), g) => {
            let r = crate::privileges::RunAs::resolve(u, g.as_deref())
                .map_err(|e| LoadError::usage(from_file(&e)))?;
            r.check_allowed().map_err(|e| LoadError {
                kind: LoadErrorKind::Command,
                message: from_file(&e),
            })?;
            Some(r)
        }
        (None, Some(g)) => {
            return Err(LoadError::usage(from_file(&format!(
                "--group {g} needs --user: give the user the workers run as, e.g. --user www-data --group {g}"
            ))));
        }
        (None, None) => None,
    };
    Ok(WorkerIdentity {
        env,
        env_files,
        clear_env,
        keep_env,
        run_as,
        no_new_privs: over.no_new_privs.or(f.no_new_privs),
    })
}

/// The settings of `baton run`: the file (if any), the flags over it, the
/// defaults under both; checked (the command can be run, the watched paths
/// exist).
pub fn load(file: Option<&Path>, over: &Overrides) -> Result<Settings, LoadError> {
    let mut f = match file {
        Some(p) => read_file(p)?,
        None => FileSettings::default(),
    };
    let dispatch = dispatch_settings(&f, over)?;
    let ready = over
        .ready
        .clone()
        .or(f.ready.clone())
        .unwrap_or(if dispatch.is_some() {
            ReadyMode::Dispatch
        } else {
            ReadyMode::Notify
        });
    check_ready_with_dispatch(&ready, dispatch.as_ref(), over, &f)?;
    let from_file = |what: &str| match file {
        Some(p) => format!("{what} (from {})", p.display()),
        None => what.to_owned(),
    };
    let identity = worker_identity(&mut f, over, &from_file)?;
    let args: Vec<OsString> = if over.command.is_empty() {
        f.command.clone().unwrap_or_default()
    } else {
        over.command.clone()
    };
    let Some(first) = args.first() else {
        return Err(LoadError::usage(match file {
            Some(p) => format!(
                "no command given: write it after -- or as command = [...] in {}",
                p.display()
            ),
            None => CommandError::Missing.to_string(),
        }));
    };
    let Some(program_name) = first.to_str() else {
        return Err(LoadError {
            kind: LoadErrorKind::Command,
            message: format!("the command name {} is not valid UTF-8", first.display()),
        });
    };
    let chdir = over.chdir.clone().or(f.chdir);
    let program = resolve_program(
        program_name,
        chdir.as_deref(),
        std::env::var_os("PATH").as_deref(),
    )
    .map_err(|e| LoadError {
        kind: LoadErrorKind::Command,
        message: format!("cannot run the command: {e}"),
    })?;
    let listeners = if over.listen.is_empty() {
        f.listen.unwrap_or_default()
    } else {
        over.listen.clone()
    };
    let mut names: Vec<&str> = Vec::new();
    for spec in &listeners {
        if let Some(n) = spec.name.as_deref() {
            if names.contains(&n) {
                return Err(LoadError::usage(format!(
                    "two listeners are named {n:?}; names must be unique"
                )));
            }
            names.push(n);
        }
    }
    if ready.accepting() && !listeners.is_empty() && listeners.iter().all(|l| l.addr.is_datagram())
    {
        return Err(LoadError::usage(from_file(
            "--ready accepting watches for a worker waiting for connections, and a UDP socket has none to accept: with only udp:// listeners use notify, fd, exec:CMD or delay:DURATION",
        )));
    }
    // Dispatch hands out accepted connections; a datagram socket has none
    // (baton's accept on it fails for ever), and in pass mode the workers
    // would not even get the socket.
    if dispatch.is_some()
        && let Some(udp) = listeners.iter().find(|l| l.addr.is_datagram())
    {
        return Err(LoadError::usage(from_file(&format!(
            "--dispatch hands each accepted connection to a worker, and the UDP listener {} has no connections to accept: serve UDP from a baton run without --dispatch, or leave --dispatch out",
            udp.text
        ))));
    }
    let watch = if over.watch.is_empty() {
        f.watch.unwrap_or_default()
    } else {
        over.watch.clone()
    };
    let watch_ignore = if over.watch_ignore.is_empty() {
        f.watch_ignore.unwrap_or_default()
    } else {
        over.watch_ignore.clone()
    };
    crate::watch::check(&watch, &watch_ignore)
        .map_err(|e| LoadError::usage(from_file(&e.to_string())))?;
    let name = over
        .name
        .clone()
        .or(f.name)
        .unwrap_or_else(|| defaults::NAME.to_owned());
    let control = if over.no_control {
        None
    } else if let Some(p) = &over.control {
        Some(p.clone())
    } else {
        match f.control {
            Some(ControlSetting::At(p)) => Some(p),
            Some(ControlSetting::Off) => None,
            None => Some(crate::control::default_path(&name)),
        }
    };
    let settings = Settings {
        listeners,
        program,
        args,
        policy: Policy {
            workers: over.workers.or(f.workers).unwrap_or(defaults::WORKERS),
            ready,
            ready_timeout: over
                .ready_timeout
                .or(f.ready_timeout)
                .unwrap_or(defaults::READY_TIMEOUT),
            grace: over.grace.or(f.grace).unwrap_or(defaults::GRACE),
            stop_signal: over
                .stop_signal
                .or(f.stop_signal)
                .unwrap_or(defaults::STOP_SIGNAL),
            strategy: over.strategy.or(f.strategy).unwrap_or_default(),
            max_surge: over
                .max_surge
                .or(f.max_surge)
                .unwrap_or(defaults::MAX_SURGE),
            max_draining: over
                .max_draining
                .or(f.max_draining)
                .unwrap_or(defaults::MAX_DRAINING),
            quiet_boot: over
                .quiet_boot
                .or(f.quiet_boot)
                .unwrap_or(defaults::QUIET_BOOT),
        },
        chdir,
        control,
        watch,
        watch_ignore,
        watch_debounce: over
            .watch_debounce
            .or(f.watch_debounce)
            .unwrap_or(defaults::WATCH_DEBOUNCE),
        guard: None,
        cgroups: over.cgroups.or(f.cgroups).unwrap_or(CgroupMode::Auto),
        env: identity.env,
        env_files: identity.env_files,
        clear_env: identity.clear_env,
        keep_env: identity.keep_env,
        run_as: identity.run_as,
        no_new_privs: identity.no_new_privs,
        config_file: file.map(Path::to_path_buf),
        overrides: over.clone(),
        metrics: over.metrics.clone().or(f.metrics),
        dispatch,
    };
    check_policy(&settings.policy).map_err(|e| LoadError::usage(from_file(&e)))?;
    let surge_given = over.max_surge.is_some() || f.max_surge.is_some();
    if surge_given && settings.policy.strategy != Strategy::Rolling {
        tracing::warn!(
            "{}",
            from_file(&format!(
                "--max-surge applies to --strategy rolling only; with --strategy {} it changes nothing",
                settings.policy.strategy
            ))
        );
    }
    Ok(settings)
}

/// The dispatch settings from the flags over the file, checked: a
/// companion (`--queue`, `--overload`, ...) needs `--dispatch`, and a queue
/// needs pass mode.
fn dispatch_settings(
    f: &FileSettings,
    over: &Overrides,
) -> Result<Option<DispatchSettings>, LoadError> {
    // Where the file said it, or which flag.
    let whence = |key: &'static str, flag: &str| -> String {
        match f.dispatch_spans.iter().find(|(k, _)| *k == key) {
            Some((_, span)) => {
                let (line, col) = line_col(&f.text, span.start);
                format!("{}:{line}:{col}: {key}", f.path.display())
            }
            None => flag.to_owned(),
        }
    };
    let mode = over.dispatch.or(f.dispatch);
    let companions = [
        (
            over.dispatch_timeout.is_some(),
            f.dispatch_timeout.is_some(),
            "dispatch_timeout",
            "--dispatch-timeout",
        ),
        (
            over.dispatch_order.is_some(),
            f.dispatch_order.is_some(),
            "dispatch_order",
            "--dispatch-order",
        ),
        (
            over.overload.is_some(),
            f.overload.is_some(),
            "overload",
            "--overload",
        ),
        (over.queue.is_some(), f.queue.is_some(), "queue", "--queue"),
        (
            over.queue_timeout.is_some(),
            f.queue_timeout.is_some(),
            "queue_timeout",
            "--queue-timeout",
        ),
    ];
    let Some(mode) = mode else {
        if let Some((_, _, key, flag)) = companions.iter().find(|(o, fi, _, _)| *o || *fi) {
            let said = if companions.iter().any(|(o, _, k, _)| *o && k == key) {
                (*flag).to_owned()
            } else {
                whence(key, flag)
            };
            return Err(LoadError::usage(format!(
                "{said} applies to dispatch mode only: add --dispatch (or dispatch = \"pass\" in the config file), or leave it out"
            )));
        }
        return Ok(None);
    };
    let queue = over.queue.or(f.queue).unwrap_or(0);
    if mode == DispatchMode::Accept && queue > 0 {
        let said = if over.queue.is_some() {
            "--queue".to_owned()
        } else {
            whence("queue", "--queue")
        };
        return Err(LoadError::usage(format!(
            "{said}: a queue holds connections baton accepted, and only --dispatch=pass can hand those to a worker; with --dispatch=accept they wait in the kernel's backlog (--overload wait), or use --dispatch=pass"
        )));
    }
    let queue_timeout_given = over.queue_timeout.is_some() || f.queue_timeout.is_some();
    if queue == 0 && queue_timeout_given {
        let said = if over.queue_timeout.is_some() {
            "--queue-timeout".to_owned()
        } else {
            whence("queue_timeout", "--queue-timeout")
        };
        return Err(LoadError::usage(format!(
            "{said} is how long a connection may wait in baton's queue, and there is none: add --queue N (pass mode), or leave it out"
        )));
    }
    Ok(Some(DispatchSettings {
        mode,
        timeout: over
            .dispatch_timeout
            .or(f.dispatch_timeout)
            .unwrap_or(crate::dispatch::defaults::TIMEOUT),
        order: over
            .dispatch_order
            .or(f.dispatch_order)
            .unwrap_or(DispatchOrder::Fifo),
        overload: over.overload.or(f.overload).unwrap_or(Overload::Wait),
        queue,
        queue_timeout: over
            .queue_timeout
            .or(f.queue_timeout)
            .unwrap_or(crate::dispatch::defaults::QUEUE_TIMEOUT),
    }))
}

/// Readiness modes that cannot work with (or without) dispatch.
fn check_ready_with_dispatch(
    ready: &ReadyMode,
    dispatch: Option<&DispatchSettings>,
    over: &Overrides,
    f: &FileSettings,
) -> Result<(), LoadError> {
    let from = if over.ready.is_some() || f.ready.is_none() {
        "--ready".to_owned()
    } else {
        format!("ready (in {})", f.path.display())
    };
    match (dispatch, ready) {
        (None, ReadyMode::Dispatch) => Err(LoadError::usage(format!(
            "{from} dispatch: the `ready` message comes over the dispatch channel, which only --dispatch sets up; add --dispatch, or choose another readiness mode"
        ))),
        (
            Some(_),
            ReadyMode::Accepting | ReadyMode::AcceptingAndExec(_) | ReadyMode::NotifyOrAccepting,
        ) => Err(LoadError::usage(format!(
            "{from} accepting: under --dispatch a worker does not wait on baton's listeners (baton does, and hands it connections), so nothing would ever be seen; use --ready dispatch (the default with --dispatch: the worker's `ready` on its channel)"
        ))),
        _ => Ok(()),
    }
}

/// What `baton check-config FILE` says of a valid file.
pub fn check(path: &Path) -> Result<String, LoadError> {
    let f = read_file(path)?;
    let mut lines = Vec::new();
    match &f.command {
        Some(cmd) => {
            // The whole of it, as `baton run --config FILE` would use it.
            let s = load(Some(path), &Overrides::default())?;
            lines.push(format!(
                "command: {}",
                cmd.iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
            lines.push(format!("program: {}", s.program.display()));
            lines.push(format!("fingerprint: {}", fingerprint(&s)));
        }
        None => lines.push("command: none in the file (give it after -- when running)".into()),
    }
    for l in f.listen.iter().flatten() {
        lines.push(format!("listen: {}", l.text));
    }
    if let Some(w) = f.workers {
        lines.push(format!("workers: {w}"));
    }
    for e in f.env_files.iter().flatten() {
        let vars = crate::environment::read_file(e).map_err(LoadError::usage)?;
        lines.push(format!(
            "env_file: {} ({} variables)",
            e.display(),
            vars.len()
        ));
    }
    if f.clear_env == Some(true) {
        lines.push(format!("clear_env: keeps {}", {
            let mut kept: Vec<String> = crate::environment::ALWAYS_KEPT
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
            kept.extend(f.keep_env.iter().flatten().cloned());
            kept.join(", ")
        }));
    }
    if let Some(u) = &f.user {
        let r = crate::privileges::RunAs::resolve(u, f.group.as_deref())
            .map_err(|e| LoadError::usage(format!("{}: {e}", path.display())))?;
        lines.push(format!("user: {}", r.describe()));
    }
    // Checked as `baton run` would combine them (without flags).
    if let Some(d) = dispatch_settings(&f, &Overrides::default())? {
        lines.push(format!(
            "dispatch: {} ({}, overload {}, timeout {}{})",
            d.mode.as_str(),
            d.order.as_str(),
            d.overload.as_str(),
            humantime::format_duration(d.timeout),
            if d.queue > 0 {
                format!(
                    ", queue {} for {}",
                    d.queue,
                    humantime::format_duration(d.queue_timeout)
                )
            } else {
                String::new()
            }
        ));
    }
    Ok(lines.join("\n"))
}

/// A short fingerprint of what a generation runs (command, arguments,
/// environment, listeners, working directory, readiness, timeouts,
/// signal): equal settings, equal fingerprint. Shown by `ctl status`.
pub fn fingerprint(s: &Settings) -> String {
    let canonical = format!(
        "{:?}",
        (
            &s.args,
            &s.env,
            s.listeners
                .iter()
                .map(|l| l.text.as_str())
                .collect::<Vec<_>>(),
            &s.chdir,
            &s.policy.workers,
            &s.policy.ready,
            &s.policy.ready_timeout,
            &s.policy.grace,
            &s.policy.stop_signal,
        )
    );
    // Later settings are added only when not at their default, so the
    // fingerprint of settings that do not use them stays what it was.
    let mut canonical = canonical;
    if let Some(r) = &s.run_as {
        let _ = write!(canonical, "{:?}", (r.uid, r.gid, &r.groups));
    }
    if s.no_new_privs.is_some() {
        let _ = write!(canonical, "nnp={}", s.no_new_privs());
    }
    if s.clear_env {
        let _ = write!(canonical, "clear={:?}", s.keep_env);
    }
    // Without --dispatch, the same text as before dispatch existed, so a
    // generation's fingerprint does not change across an upgrade of baton.
    let canonical = match &s.dispatch {
        Some(d) => format!("{canonical}{d:?}"),
        None => canonical,
    };
    let hash = blake3::hash(canonical.as_bytes());
    hash.to_hex()[..12].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileSettings, LoadError> {
        parse_file(Path::new("baton.toml"), text)
    }

    #[test]
    fn every_key_parses() {
        let f = parse(
            r#"
command = ["./server", "--port", "8080"]
workers = 3
ready = "delay:2s"
ready_timeout = "10s"
grace = 5
stop_signal = "INT"
chdir = "/srv/app/current"
name = "web"
control = false
watch = ["/srv/app/current/bin"]
watch_ignore = ["*.pyc"]
watch_debounce = "100ms"
cgroups = "off"
metrics = "127.0.0.1:9100"
strategy = "rolling"
max_surge = 2
max_draining = "3"
quiet_boot = "off"

[[listen]]
name = "web"
address = "tcp://127.0.0.1:8080"

[[listen]]
address = "unix:/tmp/x.sock?mode=0660"

[[listen]]
name = "dns"
address = "udp://127.0.0.1:5353"

[env]
RUST_LOG = "info"
"#,
        )
        .expect("valid");
        assert_eq!(f.workers, Some(3));
        assert_eq!(f.ready, Some(ReadyMode::Delay(Duration::from_secs(2))));
        assert_eq!(f.grace, Some(Duration::from_secs(5)));
        assert_eq!(f.stop_signal, Some(libc::SIGINT));
        assert!(matches!(f.control, Some(ControlSetting::Off)));
        assert_eq!(f.cgroups, Some(CgroupMode::Off));
        assert_eq!(f.metrics.map(|m| m.text), Some("127.0.0.1:9100".to_owned()));
        assert_eq!(f.strategy, Some(Strategy::Rolling));
        assert_eq!(f.max_surge, Some(2));
        assert_eq!(f.max_draining, Some(3));
        assert_eq!(f.quiet_boot, Some(false));
        let listen = f.listen.expect("listeners");
        assert_eq!(listen.len(), 3);
        assert!(listen[2].addr.is_datagram());
        assert_eq!(listen[0].name.as_deref(), Some("web"));
        assert_eq!(listen[1].name, None);
        assert_eq!(f.env, vec![("RUST_LOG".to_owned(), "info".to_owned())]);
    }

    #[test]
    fn users_and_environments_parse_and_layer() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.env"), "A=file\nB=file\nC=file\n").expect("write");
        let file = dir.path().join("baton.toml");
        std::fs::write(
            &file,
            "command = [\"sh\", \"-c\", \"exec sleep 100\"]\nenv_file = \"a.env\"\nclear_env = true\nkeep_env = [\"LC_*\"]\nuser = \"root\"\nno_new_privs = false\n[env]\nB = \"table\"\nC = \"table\"\n",
        )
        .expect("write");
        let over = Overrides {
            env: vec![("C".into(), "flag".into())],
            ..Overrides::default()
        };
        let s = load(Some(&file), &over).expect("load");
        // Relative to the config file's directory.
        assert_eq!(s.env_files, vec![dir.path().join("a.env")]);
        assert_eq!(
            s.env,
            vec![
                ("A".to_owned(), "file".to_owned()),
                ("B".to_owned(), "table".to_owned()),
                ("C".to_owned(), "flag".to_owned()),
            ]
        );
        assert!(s.clear_env);
        assert_eq!(s.keep_env, vec!["LC_*".to_owned()]);
        assert_eq!(s.run_as.as_ref().map(|r| r.uid), Some(0));
        assert_eq!(s.no_new_privs, Some(false));
        assert!(!s.no_new_privs());
        let plain = load(
            None,
            &Overrides {
                command: vec!["sh".into()],
                ..Overrides::default()
            },
        )
        .expect("load");
        assert_ne!(fingerprint(&s), fingerprint(&plain));
        // A missing env file, a bad keep_env, a group alone.
        for (text, want) in [
            ("env_file = [\"nope.env\"]\n", "cannot read the env file"),
            ("keep_env = [\"A-B\"]\nclear_env = true\n", "keep_env:"),
            ("group = \"root\"\n", "needs --user"),
            ("user = \"no-such-user-baton\"\n", "no such user"),
            ("no_new_privs = \"yes\"\n", "invalid type"),
        ] {
            std::fs::write(&file, format!("command = [\"sh\"]\n{text}")).expect("write");
            let e = load(Some(&file), &Overrides::default()).expect_err(text);
            assert!(e.message.contains(want), "{text:?}: {}", e.message);
        }
    }

    /// `grace = "5s"` appended to a file that ends with `[env]` (as the
    /// example in docs/config.md does) was an environment variable named
    /// `grace`: `check-config` said ok and the grace stayed 30 s. A number
    /// there was "invalid type: integer, expected a string", and a key after
    /// a `[[listen]]` "unknown field": neither said where the key belongs.
    #[test]
    fn a_top_level_key_after_a_table_header_is_named_as_misplaced() {
        assert!(top_level_keys().iter().any(|k| k == "workers"));
        assert!(top_level_keys().iter().any(|k| k == "queue_timeout"));
        for text in [
            "command = [\"sh\"]\n[env]\nA = \"1\"\nworkers = 4\n",
            "command = [\"sh\"]\n[[listen]]\naddress = \":0\"\nworkers = 4\n",
        ] {
            let e = parse_file(Path::new("baton.toml"), text).expect_err(text);
            assert!(e.message.starts_with("baton.toml:4:"), "{}", e.message);
            assert!(
                e.message.contains("`workers` is a top-level key")
                    && e.message.contains("move it above the first table header"),
                "{}",
                e.message
            );
        }
        // A value of the right type is taken as a variable (it may be
        // one), with a warning; a real variable gets no hint.
        let f = parse_file(
            Path::new("baton.toml"),
            "command = [\"sh\"]\n[env]\ngrace = \"5s\"\n",
        )
        .expect("a string in [env] is a variable");
        assert_eq!(f.env, vec![("grace".to_owned(), "5s".to_owned())]);
        assert_eq!(misplaced_key("[env]\nRUST_LOG = 1\n", 17), None);
        assert_eq!(misplaced_key("[[listen]]\nname = 1\n", 18), None);
    }

    /// `--queue-timeout` (or `queue_timeout`) with no queue was accepted
    /// and did nothing.
    #[test]
    fn a_queue_timeout_without_a_queue_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("baton.toml");
        std::fs::write(
            &file,
            "command = [\"sh\"]\ndispatch = \"pass\"\nqueue_timeout = \"2s\"\n",
        )
        .expect("write");
        let e = load(Some(&file), &Overrides::default()).expect_err("no queue");
        assert!(
            e.message.contains("baton.toml:3:17: queue_timeout is how long a connection may wait in baton's queue, and there is none: add --queue N"),
            "{}",
            e.message
        );
        let over = Overrides {
            queue: Some(4),
            ..Overrides::default()
        };
        let s = load(Some(&file), &over).expect("with a queue");
        assert_eq!(
            s.dispatch.map(|d| (d.queue, d.queue_timeout)),
            Some((4, Duration::from_secs(2)))
        );
    }

    /// A value of the wrong type said only "invalid type: string \"8\",
    /// expected i64" or "data did not match any variant of untagged enum
    /// RawDuration", with no key; `[listen]` for `[[listen]]` said
    /// "invalid type: map, expected a sequence".
    #[test]
    fn a_value_of_the_wrong_type_names_its_key_and_the_fix() {
        let cases = [
            (
                "workers = \"8\"\n",
                "`workers`: invalid type: string \"8\", expected a whole number; write workers = 8 (no quotes)",
            ),
            (
                "grace = true\n",
                "`grace`: expected a duration: a string such as \"5s\"",
            ),
            ("max_surge = true\n", "`max_surge`: expected a whole number"),
            ("quiet_boot = 3\n", "`quiet_boot`: expected true or false"),
            (
                "listen = \"tcp://127.0.0.1:0\"\n",
                "`listen`: invalid type: string \"tcp://127.0.0.1:0\", expected a sequence; listeners are tables: write `[[listen]]`",
            ),
            (
                "[listen]\naddress = \":0\"\n",
                "`[listen]`: invalid type: map, expected a sequence; listeners are a list of tables: write `[[listen]]`",
            ),
            (
                "[env]\nPORT = 8080\n",
                "`PORT` in [env]: invalid type: integer `8080`, expected a string; environment values are strings: write PORT = \"8080\"",
            ),
            (
                "[[env]]\nA = \"1\"\n",
                "`[[env]]`: invalid type: sequence, expected a map; the environment is one table: write `[env]`",
            ),
            (
                "[[listen]]\naddress = 8080\n",
                "`address` of a [[listen]]: invalid type: integer `8080`, expected a string",
            ),
        ];
        for (body, want) in cases {
            let text = format!("command = [\"sh\"]\n{body}");
            let e = parse(&text).expect_err(&text);
            assert!(e.message.contains(want), "{text}: {}", e.message);
            assert!(e.message.starts_with("baton.toml:"), "{}", e.message);
        }
    }

    /// A key set twice (a line added at the top, the old one left below)
    /// was "baton.toml:3:1: duplicate key", without the key.
    #[test]
    fn a_duplicate_key_is_named() {
        let e = parse_file(
            Path::new("baton.toml"),
            "workers = 2\ngrace = \"5s\"\nworkers = 3\n",
        )
        .expect_err("twice");
        assert!(
            e.message.contains("baton.toml:3:") && e.message.contains("duplicate key `workers`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn mistakes_name_the_line_and_column() {
        let cases = [
            (
                "workers = 2\nwokers = 3\n",
                "baton.toml:2:1:",
                "unknown field `wokers`; did you mean `workers`?",
            ),
            (
                "[[listen]]\nadress = \":1\"\n",
                "baton.toml:2:1:",
                "did you mean `address`?",
            ),
            (
                "zzz = 1\n",
                "baton.toml:1:1:",
                "unknown field `zzz`; the keys here are `command`",
            ),
            ("grace = \"5 parsecs\"\n", "baton.toml:1:9:", "grace:"),
            (
                "ready = \"notfy\"\n",
                "baton.toml:1:9:",
                "unknown readiness mode",
            ),
            ("workers = 0\n", "baton.toml:1:11:", "use 1 to"),
            ("workers = \"four\"\n", "baton.toml:1:", "invalid type"),
            (
                "[[listen]]\nname = \"a\"\naddress = \":1\"\n[[listen]]\nname = \"a\"\naddress = \":2\"\n",
                "baton.toml:5:8:",
                "two listeners are named \"a\"",
            ),
            (
                "[[listen]]\naddress = \"127.0.0.1:notaport\"\n",
                "baton.toml:2:11:",
                "listen #1",
            ),
            ("command = []\n", "baton.toml:1:11:", "give the program"),
            (
                "stop_signal = \"TERMINATE\"\n",
                "baton.toml:1:15:",
                "unknown signal",
            ),
            ("workers = 2\n[broken\n", "baton.toml:2:", ""),
            (
                "metrics = \"unix:/tmp/m.sock\"\n",
                "baton.toml:1:11:",
                "needs a TCP address",
            ),
            (
                "strategy = \"rollin\"\n",
                "baton.toml:1:12:",
                "strategy: unknown strategy \"rollin\"",
            ),
            (
                "max_surge = 0\n",
                "baton.toml:1:13:",
                "max_surge: max_surge = 0 would never start",
            ),
            ("max_draining = -1\n", "baton.toml:1:16:", "max_draining:"),
            (
                "quiet_boot = \"maybe\"\n",
                "baton.toml:1:14:",
                "quiet_boot: \"maybe\" is neither on nor off",
            ),
        ];
        for (text, at, what) in cases {
            let e = parse(text).expect_err(text);
            assert!(e.message.starts_with(at), "{text:?}: {}", e.message);
            assert!(e.message.contains(what), "{text:?}: {}", e.message);
            assert_eq!(e.kind, LoadErrorKind::Usage);
        }
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("baton.toml");
        std::fs::write(
            &file,
            "command = [\"sh\", \"-c\", \"exec sleep 100\"]\nworkers = 3\ngrace = \"5s\"\n[[listen]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\n",
        )
        .expect("write");
        let s = load(Some(&file), &Overrides::default()).expect("load");
        assert_eq!(s.policy.workers, 3);
        assert_eq!(s.policy.grace, Duration::from_secs(5));
        assert_eq!(s.policy.ready_timeout, defaults::READY_TIMEOUT);
        assert_eq!(s.listeners.len(), 1);
        let over = Overrides {
            workers: Some(8),
            command: vec!["sleep".into(), "5".into()],
            ..Overrides::default()
        };
        let s2 = load(Some(&file), &over).expect("load");
        assert_eq!(s2.policy.workers, 8, "the flag wins");
        assert_eq!(s2.args, vec![OsString::from("sleep"), OsString::from("5")]);
        assert_eq!(
            s2.policy.grace,
            Duration::from_secs(5),
            "the file still counts"
        );
        assert_ne!(fingerprint(&s), fingerprint(&s2));
        assert_eq!(
            fingerprint(&s),
            fingerprint(&load(Some(&file), &Overrides::default()).expect("load"))
        );
    }
}
