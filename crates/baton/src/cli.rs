//! Flags (raw, as clap parses them) and their validation into settings.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use baton_supervisor::config::{self, Settings};
use baton_supervisor::config_file::{self, LoadErrorKind, Overrides};
use baton_supervisor::dispatch::{DispatchMode, DispatchOrder, Overload};
use baton_supervisor::lifecycle::{ReadyMode, Strategy};
use baton_supervisor::listen::{self, ListenSpec};
use baton_supervisor::runtime::Runtime;
use clap::{Parser, Subcommand};

/// Exit codes of `baton`, documented in `--help` and the README.
pub mod exit {
    pub const INTERNAL: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const LISTEN: u8 = 3;
    pub const COMMAND: u8 = 4;
}

const EXIT_CODES: &str = "\
Exit codes:
  0  stopped cleanly: every worker exited on its own
  1  internal error, or an open-files limit below 64 (ulimit -n)
  2  usage: a bad flag or value (listen spec, duration, signal, --workers 0)
  3  a listener, the control socket or the metrics endpoint cannot be set up (address
     in use, permission denied, unsafe path, another baton with the same --name)
  4  the command cannot be run (not found, not executable, bad --chdir)
  5  the first generation failed: a worker exited or crashed before it was ready
  6  the first generation was not ready within --ready-timeout
  7  stopped, but some worker had to be killed (grace expired, or an immediate stop)";

#[derive(Debug, Parser)]
#[command(
    name = "baton",
    version,
    about = "Zero-downtime code updates for long-running network servers",
    after_help = EXIT_CODES
)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Supervise a server: bind its sockets once, run it in generations,
    /// reload it with zero downtime on SIGHUP.
    #[command(after_help = RUN_HELP)]
    Run(Box<RunArgs>),
    /// Control a running supervisor: reload (and wait for the verdict),
    /// status, stop, scale.
    #[command(after_help = crate::ctl::CTL_HELP)]
    Ctl(crate::ctl::CtlArgs),
    /// Check a config file for `baton run --config`: print what it sets, or
    /// each mistake with its line and column (exit 0 or 2)
    CheckConfig {
        /// The TOML file
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Say which state schemas this binary reads (what an upgrading baton
    /// asks the new binary before it executes it in place)
    #[command(hide = true)]
    UpgradeCheck,
    /// The guard `baton run` starts to end what its workers started if baton
    /// is killed (internal: reads its instructions on fd 3).
    #[command(hide = true)]
    Guard,
}

const RUN_HELP: &str = "\
Signals:
  HUP           reload: start a new generation, wait until it is ready, drain the old one
                (--strategy rolling: a few workers at a time; restart: stop, then start)
  TERM, INT     graceful stop (another one, once baton is stopping, stops immediately)
  PWR           graceful stop (what LXC sends its init)
  QUIT          immediate stop (SIGKILL to every worker)
  TTIN, TTOU    one worker more, one fewer, per generation
  USR1          forwarded to the serving generation's workers (most servers reopen logs)
  USR2          upgrade baton itself in place: the same pid, every worker kept
                (the binary it was started from; baton ctl upgrade waits for the verdict)
  ALRM, VTALRM, PROF, IO, XCPU, XFSZ, STKFLT, RTMIN..RTMAX
                logged and ignored; WINCH and PIPE are ignored
  (no signal a person or a supervisor sends takes the service down by accident)

Dispatch (--dispatch): baton alone watches the sockets and hands each connection to an
idle worker of the serving generation over a channel of its own (BATON_DISPATCH_FD), so
connections spread evenly and a reload moves new connections at the very moment the new
generation is ready. The app must speak the protocol (baton_app::dispatch for tokio;
docs/dispatch.md for any language). --dispatch=pass: baton accepts and passes each socket;
--dispatch=accept: baton tells an idle worker to accept one. A worker that does not answer
within --dispatch-timeout is killed and its connection given to another.

Workers get the sockets at fds 3.. with LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES
(systemd socket activation), plus BATON_GENERATION and BATON_WORKER. Each worker runs
in a process group of its own, each generation in a cgroup of its own where baton can
make one; if baton is killed, a guard process ends what the workers started.
Their environment: baton's (with --clear-env only PATH, HOME, LANG, TZ and --keep-env),
then USER, LOGNAME and HOME of --user, then each --env-file, the config's [env], --env.

Example, as root: bind port 80, run the workers as www-data with no capability:
  baton run -l :80 --user www-data --env-file /etc/app.env --clear-env -- ./server

Example:
  baton run -l 0.0.0.0:8080 --workers 4 -- ./server --config prod.toml
  kill -HUP $(pidof baton)

Exit codes:
  0 clean stop, 1 internal error, 2 usage, 3 cannot bind, 4 cannot run the command,
  5 first generation failed, 6 first generation not ready in time, 7 had to kill workers";

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Read the settings from this TOML file (every flag has a key; a flag
    /// given here wins over the file). The file is read again on every
    /// reload; a file that does not parse refuses the reload
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Socket to listen on, repeatable: tcp://HOST:PORT, HOST:PORT, :PORT,
    /// [::1]:PORT, udp://HOST:PORT, unix:PATH, unix:PATH?mode=0660; prefix
    /// NAME= to name it in LISTEN_FDNAMES (default listen0, listen1, ...)
    #[arg(short, long = "listen", value_name = "SPEC", value_parser = parse_spec)]
    listen: Vec<ListenSpec>,

    /// Worker processes per generation [default: 1]
    #[arg(short, long, allow_negative_numbers = true, value_name = "N", value_parser = parse_workers)]
    workers: Option<usize>,

    /// How a generation says it is ready: notify (READY=1 on NOTIFY_SOCKET),
    /// fd (a newline on the fd in BATON_READY_FD), accepting (each worker
    /// waits for connections on baton's socket, in epoll or accept, as /proc
    /// shows: no change to the app), delay:DURATION, exec:CMD (a shell
    /// command that exits 0 once the generation is ready),
    /// accepting+exec:CMD (both), notify|accepting (either) or dispatch
    /// (`ready` on the --dispatch channel) [default: notify; with
    /// --dispatch: dispatch]
    #[arg(long, value_name = "MODE", value_parser = config::parse_ready)]
    ready: Option<ReadyMode>,

    /// How long a generation may take to become ready [default: 60s]
    #[arg(long, allow_hyphen_values = true, value_name = "DURATION", value_parser = config::parse_duration)]
    ready_timeout: Option<Duration>,

    /// How long a draining generation may take to exit before SIGKILL
    /// [default: 30s]
    #[arg(long, allow_hyphen_values = true, value_name = "DURATION", value_parser = config::parse_duration)]
    grace: Option<Duration>,

    /// Signal that tells a worker to drain and exit [default: TERM]
    #[arg(long, value_name = "SIG", value_parser = config::parse_signal)]
    stop_signal: Option<i32>,

    /// Run workers in DIR, resolved (symlinks followed) when each generation
    /// starts, so `current -> releases/N` deploys take effect on reload
    #[arg(long, value_name = "DIR")]
    chdir: Option<PathBuf>,

    /// Set an environment variable for the workers, repeatable: K=V (wins
    /// over --env-file and the config file's [env])
    #[arg(short, long = "env", value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,

    /// Read variables for the workers from FILE, repeatable: KEY=VALUE
    /// lines, # comments, "double" or 'single' quotes, `export` allowed.
    /// Read again on every reload; a later file wins over an earlier one
    #[arg(long = "env-file", value_name = "FILE")]
    env_file: Vec<PathBuf>,

    /// Give the workers none of baton's own environment but PATH, HOME,
    /// LANG, TZ and the --keep-env names (--env and --env-file still apply)
    #[arg(long)]
    clear_env: bool,

    /// With --clear-env: keep this variable of baton's too, repeatable; a
    /// trailing * keeps every name with that prefix (LC_*)
    #[arg(long = "keep-env", value_name = "NAME", value_parser = parse_keep)]
    keep_env: Vec<String>,

    /// Run the workers (and the --ready exec: command) as this user, a name
    /// or a uid, optionally with a group: baton binds the sockets first
    /// (ports below 1024 too, as root), then each worker takes the user's
    /// groups, its gid and uid, and no capability. Needs root
    #[arg(long, value_name = "USER[:GROUP]")]
    user: Option<String>,

    /// With --user: the workers' group, a name or a gid, instead of the
    /// user's own
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,

    /// Set no_new_privs on the workers: nothing they execute (set-user-ID
    /// programs, file capabilities) gains privileges. --no-new-privs=false
    /// turns it off [default: on with --user, off without]
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = baton_supervisor::privileges::parse_bool
    )]
    no_new_privs: Option<bool>,

    /// Name of this supervisor: its control socket is
    /// $XDG_RUNTIME_DIR/baton/NAME.sock (or /run/baton/NAME.sock as root)
    /// [default: baton]
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    name: Option<String>,

    /// Control socket path (overrides --name)
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,

    /// Reload when this file or directory (recursively) changes in
    /// content, repeatable; a touch or an identical save does not reload
    #[arg(long, value_name = "PATH")]
    watch: Vec<PathBuf>,

    /// With --watch: ignore paths matching this glob (matched against the
    /// whole path and the file name), repeatable, e.g. '*.pyc', '**/.git/**'
    #[arg(long, value_name = "GLOB")]
    watch_ignore: Vec<String>,

    /// With --watch: wait for this much quiet before looking at changes
    /// [default: 300ms]
    #[arg(long, allow_hyphen_values = true, value_name = "DURATION", value_parser = config::parse_duration)]
    watch_debounce: Option<Duration>,

    /// Do not create a control socket (baton ctl cannot reach this baton)
    #[arg(long, conflicts_with = "control")]
    no_control: bool,

    /// Give each generation a cgroup of its own, so nothing its workers
    /// start survives it: auto (where the cgroup is delegated to baton, or
    /// is the root of what baton sees, as in a container), on (wherever
    /// baton can write its cgroup) or off (process groups only)
    /// [default: auto]
    #[arg(long, value_name = "MODE", value_parser = config::parse_cgroups)]
    cgroups: Option<config::CgroupMode>,

    /// Serve Prometheus metrics at http://ADDR/metrics (OpenMetrics text),
    /// with /ready (200 while a generation serves) and /live (200 while
    /// baton's loop turns) for readiness and liveness probes: HOST:PORT,
    /// :PORT (every interface), [::1]:PORT. baton's own socket, never a
    /// worker's
    #[arg(long, value_name = "ADDR", value_parser = config::parse_metrics)]
    metrics: Option<ListenSpec>,
    /// Hand each connection to an idle worker over a channel of its own
    /// (BATON_DISPATCH_FD; the app must speak the protocol, see
    /// docs/dispatch.md): pass (baton accepts and passes the socket) or
    /// accept (baton tells an idle worker to accept one) [default: pass]
    #[arg(long, value_name = "MODE", num_args = 0..=1, require_equals = true,
          default_missing_value = "pass", value_parser = baton_supervisor::dispatch::parse_mode)]
    dispatch: Option<DispatchMode>,

    /// With --dispatch: how long a worker may take to answer a connection
    /// (or an order to accept) before it is killed and the connection
    /// given to another [default: 5s]
    #[arg(long, allow_hyphen_values = true, value_name = "DURATION", value_parser = baton_supervisor::dispatch::parse_timeout)]
    dispatch_timeout: Option<Duration>,

    /// With --dispatch: which idle worker gets the next connection: fifo
    /// (the one idle longest) or least-loaded (the most free credits)
    /// [default: fifo]
    #[arg(long, value_name = "ORDER", value_parser = baton_supervisor::dispatch::parse_order)]
    dispatch_order: Option<DispatchOrder>,

    /// With --dispatch: what to do with a connection no worker is free
    /// for: wait (leave it in the kernel's backlog until one is), close
    /// (accept and close it) or 503 (answer HTTP 503 with Retry-After)
    /// [default: wait]
    #[arg(long, value_name = "POLICY", value_parser = baton_supervisor::dispatch::parse_overload)]
    overload: Option<Overload>,

    /// With --dispatch=pass: accept up to N connections into baton's own
    /// queue while no worker is free, before --overload applies [default: 0]
    #[arg(long, allow_negative_numbers = true, value_name = "N", value_parser = baton_supervisor::dispatch::parse_queue)]
    queue: Option<usize>,

    /// With --queue: how long a connection may wait in it before
    /// --overload answers it (503, or close) [default: 1s]
    #[arg(long, allow_hyphen_values = true, value_name = "DURATION", value_parser = config::parse_duration)]
    queue_timeout: Option<Duration>,
    /// How a reload replaces the serving generation: overlap (the whole new
    /// generation starts beside the old one, which drains once every new
    /// worker is ready), rolling (a few workers at a time: a new worker must
    /// be ready before an old one drains, at most workers + --max-surge
    /// processes) or restart (stop, then start: for apps that cannot run
    /// twice; connections wait in the listen queue meanwhile) [default:
    /// overlap]
    #[arg(long, value_name = "STRATEGY", value_parser = config::parse_strategy)]
    strategy: Option<Strategy>,

    /// With --strategy rolling: how many processes beyond --workers the old
    /// and the new generation may have together, so how many new workers
    /// start at a time [default: 1]
    #[arg(long, allow_negative_numbers = true, value_name = "N", value_parser = config::parse_max_surge)]
    max_surge: Option<usize>,

    /// How many replaced generations may drain at once; past that, the
    /// oldest is killed (a reload never waits for a slow drain) [default: 1]
    #[arg(long, allow_negative_numbers = true, value_name = "N", value_parser = config::parse_max_draining)]
    max_draining: Option<usize>,

    /// Start each worker of a reload's new generation at the lowest CPU
    /// priority (SCHED_IDLE, with its whole process tree) until it is
    /// ready, so a booting generation does not slow the one serving; needs
    /// CAP_SYS_NICE or RLIMIT_NICE 20 to give the priority back (without
    /// either, baton warns once and boots normally); at most 1 s, or a third
    /// of --ready-timeout: on or off [default: off]
    #[arg(long, value_name = "on|off", value_parser = config::parse_switch)]
    quiet_boot: Option<bool>,

    /// The server command and its arguments (after --)
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

impl RunArgs {
    /// The flags given, as overrides of the config file.
    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            workers: self.workers,
            ready: self.ready.clone(),
            ready_timeout: self.ready_timeout,
            grace: self.grace,
            stop_signal: self.stop_signal,
            chdir: self.chdir.clone(),
            name: self.name.clone(),
            control: self.control.clone(),
            no_control: self.no_control,
            watch: self.watch.clone(),
            watch_ignore: self.watch_ignore.clone(),
            watch_debounce: self.watch_debounce,
            cgroups: self.cgroups,
            strategy: self.strategy,
            max_surge: self.max_surge,
            max_draining: self.max_draining,
            quiet_boot: self.quiet_boot,
            env: self.env.clone(),
            command: self.command.clone(),
            env_files: self.env_file.clone(),
            clear_env: self.clear_env,
            keep_env: self.keep_env.clone(),
            user: self.user.clone(),
            group: self.group.clone(),
            no_new_privs: self.no_new_privs,
            metrics: self.metrics.clone(),
            dispatch: self.dispatch,
            dispatch_timeout: self.dispatch_timeout,
            dispatch_order: self.dispatch_order,
            overload: self.overload,
            queue: self.queue,
            queue_timeout: self.queue_timeout,
        }
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        // `--env 'RUST_LOG =debug'` set a variable no program reads.
        Some((k, _)) if !k.is_empty() && !baton_supervisor::environment::valid_name(k) => {
            Err(format!(
                "{k:?} is not a variable name (letters, digits and _, not starting with a digit); write e.g. --env RUST_LOG=info"
            ))
        }
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not K=V; write e.g. --env RUST_LOG=info")),
    }
}

fn parse_keep(s: &str) -> Result<String, String> {
    baton_supervisor::environment::check_keep_pattern(s).map(|()| s.to_owned())
}

fn parse_spec(s: &str) -> Result<ListenSpec, String> {
    s.parse::<ListenSpec>().map_err(|e| e.to_string())
}

pub(crate) fn parse_name(s: &str) -> Result<String, String> {
    baton_supervisor::control::valid_name(s).map(|()| s.to_owned())
}

pub(crate) fn parse_workers(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("a generation needs at least one worker; use --workers 1 or more".into()),
        Ok(n) if n > baton_supervisor::runtime::MAX_WORKERS => Err(format!(
            "{n} workers is more than the limit of {}",
            baton_supervisor::runtime::MAX_WORKERS
        )),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a number of workers")),
    }
}

/// A failure with its exit code and a message a person can act on.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

pub fn parse() -> Args {
    Args::parse()
}

pub fn execute(args: Args, sinks: baton_supervisor::output::Sinks) -> Result<u8, Failure> {
    match args.command {
        Command::Run(run) => run_command(*run, sinks),
        Command::Ctl(ctl) => {
            // `baton ctl status | head -3`, `baton ctl events | jq ...`:
            // when the reader goes, end quietly (a panic with a backtrace
            // on a broken pipe otherwise).
            baton_sys::spawn::default_sigpipe();
            Ok(crate::ctl::run(&ctl))
        }
        Command::CheckConfig { file } => {
            baton_sys::spawn::default_sigpipe();
            Ok(check_config(&file))
        }
        Command::UpgradeCheck => {
            println!("{}", baton_supervisor::runtime::check_answer());
            Ok(0)
        }
        Command::Guard => {
            Ok(u8::try_from(baton_supervisor::guard::run()).unwrap_or(exit::INTERNAL))
        }
    }
}

/// `--no-new-privs false` (a space where `=` belongs) makes `false` the
/// command; the value must follow an `=`. Caught on the raw arguments,
/// where the space is still visible.
fn check_no_new_privs_value() -> Result<(), Failure> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let before_command = args.iter().take_while(|a| *a != "--");
    for (flag, next) in before_command.clone().zip(before_command.skip(1)) {
        if flag == "--no-new-privs"
            && next
                .to_str()
                .is_some_and(|v| baton_supervisor::privileges::parse_bool(v).is_ok())
        {
            let v = next.to_string_lossy();
            return Err(Failure::new(
                exit::USAGE,
                format!(
                    "--no-new-privs {v}: its value goes after an '=' (--no-new-privs={v}); as written, {v:?} would be the command"
                ),
            ));
        }
    }
    Ok(())
}

fn validate(run: &RunArgs) -> Result<Settings, Failure> {
    check_no_new_privs_value()?;
    // `--dispatch accept -- app`: clap reads `accept` as the command (the
    // mode needs `=`, or `--dispatch` alone could not be followed by one).
    if run.dispatch.is_some()
        && let Some(first) = run.command.first().and_then(|c| c.to_str())
        && matches!(first, "pass" | "accept")
    {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "{first:?} is read as the command: write the mode with an equals sign, --dispatch={first}"
            ),
        ));
    }
    let mut settings = config_file::load(run.config.as_deref(), &run.overrides()).map_err(|e| {
        let code = match e.kind {
            LoadErrorKind::Usage => exit::USAGE,
            LoadErrorKind::Command => exit::COMMAND,
        };
        Failure::new(code, e.message)
    })?;
    // baton's own binary, as the kernel knows it (the very file this
    // process runs, even if a deploy replaced the path since).
    settings.guard = Some((
        PathBuf::from("/proc/self/exe"),
        vec![
            std::env::args_os().next().unwrap_or_else(|| "baton".into()),
            "guard".into(),
        ],
    ));
    Ok(settings)
}

fn check_config(file: &std::path::Path) -> u8 {
    match config_file::check(file) {
        Ok(summary) => {
            println!("{}: ok", file.display());
            println!("{summary}");
            0
        }
        Err(e) => {
            eprintln!("{}", e.message);
            exit::USAGE
        }
    }
}

fn run_command(run: RunArgs, sinks: baton_supervisor::output::Sinks) -> Result<u8, Failure> {
    if Runtime::is_resuming() {
        // An upgrade in place: this is the new image (same pid, same argv);
        // everything is taken over from the previous one, nothing bound.
        let runtime =
            Runtime::resume(sinks).map_err(|e| Failure::new(exit::INTERNAL, e.to_string()))?;
        return runtime
            .run()
            .map_err(|e| Failure::new(exit::INTERNAL, e.to_string()));
    }
    let settings = validate(&run)?;
    // Sockets from our own parent (systemd socket activation) first: read
    // once, adopted only if LISTEN_PID is baton's pid.
    let mut inherited = baton_app::Inherited::from_env()
        .map_err(|e| Failure::new(exit::LISTEN, format!("cannot adopt inherited sockets: {e}")))?;
    let bound = listen::open_all(&settings.listeners, &mut inherited)
        .map_err(|e| Failure::new(exit::LISTEN, e.to_string()))?;
    for b in &bound {
        let how = if b.adopted { "adopted, " } else { "" };
        if b.spec.as_ref().is_some_and(|s| s.name.is_some()) || b.adopted {
            tracing::info!("listening on {} ({how}name {})", b.display, b.name);
        } else {
            tracing::info!("listening on {}", b.display);
        }
    }
    if bound.is_empty() {
        tracing::warn!("no --listen given: workers get no sockets (LISTEN_FDS=0)");
    }
    let runtime = Runtime::new(settings, bound, sinks).map_err(|e| match e {
        baton_supervisor::runtime::RuntimeError::Control(c) => {
            Failure::new(exit::LISTEN, c.to_string())
        }
        baton_supervisor::runtime::RuntimeError::Watch(w) => {
            Failure::new(exit::USAGE, w.to_string())
        }
        baton_supervisor::runtime::RuntimeError::Metrics(m) => Failure::new(exit::LISTEN, m),
        other => Failure::new(exit::INTERNAL, other.to_string()),
    })?;
    runtime
        .run()
        .map_err(|e| Failure::new(exit::INTERNAL, e.to_string()))
}
