//! Flags (raw, as clap parses them) and their validation into settings.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use baton_supervisor::config::{self, Settings};
use baton_supervisor::config_file::{self, LoadErrorKind, Overrides};
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
  1  internal error
  2  usage: a bad flag or value (listen spec, duration, signal, --workers 0)
  3  a listener or the control socket cannot be set up (address in use, permission
     denied, unsafe path, another baton with the same --name)
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

Workers get the sockets at fds 3.. with LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES
(systemd socket activation), plus BATON_GENERATION and BATON_WORKER. Each worker runs
in a process group of its own, each generation in a cgroup of its own where baton can
make one; if baton is killed, a guard process ends what the workers started.

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
    /// [::1]:PORT, unix:PATH, unix:PATH?mode=0660; prefix NAME= to name it
    /// in LISTEN_FDNAMES (default listen0, listen1, ...)
    #[arg(short, long = "listen", value_name = "SPEC", value_parser = parse_spec)]
    listen: Vec<ListenSpec>,

    /// Worker processes per generation [default: 1]
    #[arg(short, long, value_name = "N", value_parser = parse_workers)]
    workers: Option<usize>,

    /// How a generation says it is ready: notify (READY=1 on NOTIFY_SOCKET),
    /// fd (a newline on the fd in BATON_READY_FD), accepting (each worker
    /// waits for connections on baton's socket, in epoll or accept, as /proc
    /// shows: no change to the app), delay:DURATION, exec:CMD (a shell
    /// command that exits 0 once the generation is ready),
    /// accepting+exec:CMD (both) or notify|accepting (either) [default:
    /// notify]
    #[arg(long, value_name = "MODE", value_parser = config::parse_ready)]
    ready: Option<ReadyMode>,

    /// How long a generation may take to become ready [default: 60s]
    #[arg(long, value_name = "DURATION", value_parser = config::parse_duration)]
    ready_timeout: Option<Duration>,

    /// How long a draining generation may take to exit before SIGKILL
    /// [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = config::parse_duration)]
    grace: Option<Duration>,

    /// Signal that tells a worker to drain and exit [default: TERM]
    #[arg(long, value_name = "SIG", value_parser = config::parse_signal)]
    stop_signal: Option<i32>,

    /// Run workers in DIR, resolved (symlinks followed) when each generation
    /// starts, so `current -> releases/N` deploys take effect on reload
    #[arg(long, value_name = "DIR")]
    chdir: Option<PathBuf>,

    /// Set an environment variable for the workers, repeatable: K=V
    #[arg(short, long = "env", value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,

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
    #[arg(long, value_name = "DURATION", value_parser = config::parse_duration)]
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
    #[arg(long, value_name = "N", value_parser = config::parse_max_surge)]
    max_surge: Option<usize>,

    /// How many replaced generations may drain at once; past that, the
    /// oldest is killed (a reload never waits for a slow drain) [default: 1]
    #[arg(long, value_name = "N", value_parser = config::parse_max_draining)]
    max_draining: Option<usize>,

    /// Start each worker of a reload's new generation at the lowest CPU
    /// priority (SCHED_IDLE, with its whole process tree) until it is
    /// ready, so a booting generation does not slow the one serving; needs
    /// CAP_SYS_NICE or RLIMIT_NICE 20 to give the priority back: on or off
    /// [default: on]
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
        }
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not K=V; write e.g. --env RUST_LOG=info")),
    }
}

fn parse_spec(s: &str) -> Result<ListenSpec, String> {
    s.parse::<ListenSpec>().map_err(|e| e.to_string())
}

pub(crate) fn parse_name(s: &str) -> Result<String, String> {
    baton_supervisor::control::valid_name(s).map(|()| s.to_owned())
}

fn parse_workers(s: &str) -> Result<usize, String> {
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
        Command::Ctl(ctl) => Ok(crate::ctl::run(&ctl)),
        Command::CheckConfig { file } => Ok(check_config(&file)),
        Command::UpgradeCheck => {
            println!("{}", baton_supervisor::runtime::check_answer());
            Ok(0)
        }
        Command::Guard => {
            Ok(u8::try_from(baton_supervisor::guard::run()).unwrap_or(exit::INTERNAL))
        }
    }
}

fn validate(run: &RunArgs) -> Result<Settings, Failure> {
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
        other => Failure::new(exit::INTERNAL, other.to_string()),
    })?;
    runtime
        .run()
        .map_err(|e| Failure::new(exit::INTERNAL, e.to_string()))
}
