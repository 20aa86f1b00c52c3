//! Command-line flags, plus extra flags read from a `--script` file.
//!
//! The supervisor passes the same argv to every generation, so a test that
//! wants generation N+1 to misbehave while generation N behaved writes the
//! misbehaviour into the script file between the two: each process reads the
//! file once, at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const USAGE: &str = "\
usage: baton-probe [FLAGS]
  --ready-after DUR     wait DUR before accepting and reporting ready
  --never-ready         never finish warming up (never accept, never report ready)
  --exit-at-start CODE  print a few lines on stderr and exit with CODE at once
  --crash-at-start      abort at once (SIGABRT)
  --ignore-term         ignore SIGTERM and SIGINT: keep serving
  --drain-ms N          on SIGTERM, answer with `Connection: close` for N ms
                        before closing idle connections (default 200)
  --exit-after DUR      exit with status 1 after DUR
  --spawn-grandchild    start a `sleep 1000` and leak it
  --script PATH         if PATH exists at start, read more flags from it
                        (whitespace-separated; they override the command line)
  --serve-after DUR     report ready at once, but accept nothing (and answer
                        /health with 503) until DUR has passed: an app that
                        says it is ready before it can serve
  --health-dir DIR      also serve on DIR/health-PID.sock from the start (a
                        per-worker health port for `--ready exec:`)
  --notify-at-start MSG send MSG on NOTIFY_SOCKET at start (`\n` in MSG is a
                        newline), before anything else is reported
  --rebind-reuseport ADDR  ignore the inherited sockets (close them) and bind
                        ADDR itself with SO_REUSEPORT, as rebinding tools do;
                        while draining, stop accepting but keep that socket
                        open until the drain window ends (a negative control)
  --                    stop reading flags: the rest is only for /argv
One-shot client modes (no server):
  --send-notify PATH MSG  send MSG as one datagram to the Unix socket PATH;
                        exit 0 when sent, 3 when permission was denied, 1 else
  --get-unix PATH URL   GET URL over the Unix socket PATH; exit 0 on a 200
UDP: every inherited UDP socket answers a datagram with `gen=G worker=W pid=P: `
  and the datagram, while serving.
Endpoints: GET /  /env (with PID= and CWD=)  /env?all=1 (every variable)  /slow?ms=N
  /identity      Uid, Gid, Groups, Cap* and NoNewPrivs of /proc/self/status
  /try?kill=PID  /try?connect=PATH  /try?bind=ADDR
                 attempt it (kill: signal 0), answer `ok` or `error: ...`
  /fds           open descriptors now, without the probe's own (its pipes,
                 its connections)
  /fds?at=start  open descriptors as inherited, listed before anything else
  /sockets       the inherited listeners: `FD NAME ADDRESS` per line
  /argv          every argument (argv[0] included) as hex, one per line
  /health        200 once serving, 503 before (see --serve-after)
  /notify?to=PATH&msg=MSG  send MSG as a datagram to PATH (percent-encoded
                 values; for readiness-spoofing tests)";

/// What the probe was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub ready_after: Option<Duration>,
    pub never_ready: bool,
    pub exit_at_start: Option<i32>,
    pub crash_at_start: bool,
    pub ignore_term: bool,
    pub drain: Duration,
    pub exit_after: Option<Duration>,
    pub spawn_grandchild: bool,
    pub serve_after: Option<Duration>,
    pub health_dir: Option<PathBuf>,
    pub notify_at_start: Option<String>,
    pub rebind_reuseport: Option<SocketAddr>,
    /// `--send-notify PATH MSG`: a one-shot client, not a server.
    pub send_notify: Option<(PathBuf, String)>,
    /// `--get-unix PATH URL`: a one-shot client, not a server.
    pub get_unix: Option<(PathBuf, String)>,
    pub script: Option<PathBuf>,
    /// The flags read from the script, if it existed (for the start line).
    pub script_flags: Option<String>,
    pub help: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            ready_after: None,
            never_ready: false,
            exit_at_start: None,
            crash_at_start: false,
            ignore_term: false,
            drain: Duration::from_millis(200),
            exit_after: None,
            spawn_grandchild: false,
            serve_after: None,
            health_dir: None,
            notify_at_start: None,
            rebind_reuseport: None,
            send_notify: None,
            get_unix: None,
            script: None,
            script_flags: None,
            help: false,
        }
    }
}

impl Options {
    /// Parses the command line (without the program name), then the script
    /// file it names, if that file exists.
    pub fn from_args<I>(args: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = String>,
    {
        let mut opts = Self::default();
        opts.apply(args, true)?;
        if let Some(path) = opts.script.clone() {
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    opts.apply(text.split_whitespace().map(str::to_owned), false)
                        .map_err(|e| format!("in script {}: {e}", path.display()))?;
                    opts.script_flags = Some(text.split_whitespace().collect::<Vec<_>>().join(" "));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot read script {}: {e}", path.display())),
            }
        }
        Ok(opts)
    }

    fn apply<I>(&mut self, args: I, allow_script: bool) -> Result<(), String>
    where
        I: IntoIterator<Item = String>,
    {
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            // Accept both `--flag value` and `--flag=value`.
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            let mut value = |what: &str| -> Result<String, String> {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| format!("{flag} needs {what}"))
            };
            match flag.as_str() {
                "--ready-after" => self.ready_after = Some(duration(&value("a duration")?)?),
                "--never-ready" => self.never_ready = true,
                "--exit-at-start" => {
                    let v = value("an exit code")?;
                    let code = v
                        .parse()
                        .map_err(|_| format!("--exit-at-start: {v:?} is not an exit code"))?;
                    self.exit_at_start = Some(code);
                }
                "--crash-at-start" => self.crash_at_start = true,
                "--ignore-term" => self.ignore_term = true,
                "--drain-ms" => {
                    let v = value("a number of milliseconds")?;
                    let ms: u64 = v
                        .parse()
                        .map_err(|_| format!("--drain-ms: {v:?} is not a number"))?;
                    self.drain = Duration::from_millis(ms);
                }
                "--exit-after" => self.exit_after = Some(duration(&value("a duration")?)?),
                "--spawn-grandchild" => self.spawn_grandchild = true,
                "--serve-after" => self.serve_after = Some(duration(&value("a duration")?)?),
                "--health-dir" => self.health_dir = Some(value("a directory")?.into()),
                "--notify-at-start" => {
                    self.notify_at_start = Some(unescape_newlines(&value("a message")?));
                }
                "--rebind-reuseport" => {
                    let v = value("an address")?;
                    let addr = v
                        .parse()
                        .map_err(|_| format!("--rebind-reuseport: {v:?} is not HOST:PORT"))?;
                    self.rebind_reuseport = Some(addr);
                }
                "--send-notify" => {
                    let path = value("a socket path")?;
                    let msg = args
                        .next()
                        .ok_or_else(|| "--send-notify needs a path and a message".to_owned())?;
                    self.send_notify = Some((path.into(), unescape_newlines(&msg)));
                }
                "--get-unix" => {
                    let path = value("a socket path")?;
                    let url = args
                        .next()
                        .ok_or_else(|| "--get-unix needs a path and a URL path".to_owned())?;
                    self.get_unix = Some((path.into(), url));
                }
                "--" => break,
                "--script" if allow_script => self.script = Some(value("a path")?.into()),
                "--script" => return Err("a script cannot name another script".into()),
                "-h" | "--help" => self.help = true,
                other => return Err(format!("unknown flag {other:?}\n{USAGE}")),
            }
        }
        Ok(())
    }
}

/// `\n` (backslash, n) in a message given on the command line or in a
/// script (where whitespace separates flags) becomes a newline.
fn unescape_newlines(s: &str) -> String {
    s.replace("\\n", "\n")
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        Options::from_args(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn defaults() {
        let o = parse(&[]).expect("no flags");
        assert_eq!(o, Options::default());
        assert_eq!(o.drain, Duration::from_millis(200));
    }

    #[test]
    fn flags_and_values() {
        let o = parse(&[
            "--ready-after",
            "300ms",
            "--exit-at-start=3",
            "--ignore-term",
            "--drain-ms",
            "50",
            "--exit-after",
            "1s",
            "--spawn-grandchild",
        ])
        .expect("valid");
        assert_eq!(o.ready_after, Some(Duration::from_millis(300)));
        assert_eq!(o.exit_at_start, Some(3));
        assert!(o.ignore_term && o.spawn_grandchild);
        assert_eq!(o.drain, Duration::from_millis(50));
        assert_eq!(o.exit_after, Some(Duration::from_secs(1)));
    }

    #[test]
    fn misbehaviours_and_client_modes() {
        let o = parse(&[
            "--serve-after",
            "2s",
            "--health-dir",
            "/tmp/h",
            "--notify-at-start",
            "MAINPID=1\\nSTATUS=x",
            "--rebind-reuseport",
            "127.0.0.1:8080",
            "--",
            "--bogus-but-ignored",
        ])
        .expect("valid");
        assert_eq!(o.serve_after, Some(Duration::from_secs(2)));
        assert_eq!(o.health_dir, Some(PathBuf::from("/tmp/h")));
        assert_eq!(o.notify_at_start.as_deref(), Some("MAINPID=1\nSTATUS=x"));
        assert_eq!(
            o.rebind_reuseport,
            Some("127.0.0.1:8080".parse().expect("addr"))
        );
        let o = parse(&["--send-notify", "/run/n.sock", "READY=1"]).expect("valid");
        assert_eq!(
            o.send_notify,
            Some((PathBuf::from("/run/n.sock"), "READY=1".to_owned()))
        );
        let o = parse(&["--get-unix", "/run/h.sock", "/health"]).expect("valid");
        assert_eq!(
            o.get_unix,
            Some((PathBuf::from("/run/h.sock"), "/health".to_owned()))
        );
        assert!(parse(&["--send-notify", "/run/n.sock"]).is_err());
        assert!(parse(&["--rebind-reuseport", "nowhere"]).is_err());
    }

    #[test]
    fn bad_flags_are_errors() {
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--exit-at-start"]).is_err());
        assert!(parse(&["--exit-at-start", "x"]).is_err());
        assert!(parse(&["--ready-after", "soon"]).is_err());
    }

    #[test]
    fn script_adds_flags_only_when_present() {
        let dir = std::env::temp_dir().join(format!("baton-probe-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let script = dir.join("script");
        let path = script.to_str().expect("utf-8 temp path");

        let o = parse(&["--script", path]).expect("missing script is fine");
        assert_eq!(o.exit_at_start, None);

        std::fs::write(&script, "--exit-at-start 3\n--never-ready\n").expect("write script");
        let o = parse(&["--script", path]).expect("valid script");
        assert_eq!(o.exit_at_start, Some(3));
        assert!(o.never_ready);
        assert_eq!(
            o.script_flags.as_deref(),
            Some("--exit-at-start 3 --never-ready")
        );

        std::fs::write(&script, "--script elsewhere").expect("write script");
        assert!(parse(&["--script", path]).is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
