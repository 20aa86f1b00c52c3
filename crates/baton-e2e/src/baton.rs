//! A running `baton run`, owned by a test: its output captured line by line,
//! its workers tracked, and everything killed when the guard drops.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::bins::bin;
use crate::procs::{self, Proc};

/// A worker announced by `worker N of generation G started, pid P`.
///
/// When baton runs in a pid namespace ([`BatonCmd::spawn_in_pid_namespace`])
/// `pid` is the worker's pid as the test sees it, not as baton printed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Worker {
    pub generation: u32,
    pub index: u32,
    pub pid: u32,
    /// The process, if it was still there when the line was read.
    pub proc: Option<Proc>,
}

#[derive(Debug, Default)]
struct LogState {
    lines: Vec<String>,
    workers: Vec<Worker>,
    grandchildren: Vec<Proc>,
    /// Output streams (stdout, stderr) not yet at EOF.
    open: usize,
}

/// baton's output so far, shared with the reader threads.
#[derive(Debug, Default)]
struct Log {
    state: Mutex<LogState>,
    changed: Condvar,
    /// When baton runs in a pid namespace: the pid of the process whose
    /// `ns/pid_for_children` is that namespace (the `unshare`), to turn
    /// the pids baton and the probe print into pids the test can watch.
    ns_holder: Option<u32>,
}

impl Log {
    fn lock(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, tag: &str, raw: &str) {
        let line = strip_ansi(raw);
        eprintln!("[{tag}] {line}");
        let worker = parse_worker_line(&line).map(|w| self.in_host_ns(w));
        let grandchild = line
            .split("probe: grandchild pid ")
            .nth(1)
            .and_then(|s| s.trim().parse().ok())
            .and_then(|pid| self.host_proc(pid));
        let mut st = self.lock();
        if let Some(w) = worker {
            st.workers.push(w);
        }
        if let Some(p) = grandchild {
            st.grandchildren.push(p);
        }
        st.lines.push(line);
        drop(st);
        self.changed.notify_all();
    }

    /// The process that `pid` (as printed) names, seen from the test.
    fn host_proc(&self, pid: u32) -> Option<Proc> {
        match self.ns_holder {
            None => Proc::find(pid),
            Some(holder) => procs::host_pid(pid, holder).and_then(Proc::find),
        }
    }

    /// A worker line's pid turned into the test's view (unchanged unless
    /// baton runs in a pid namespace; there, a pid that cannot be found
    /// any more keeps its namespace value and gets no `proc`).
    fn in_host_ns(&self, mut w: Worker) -> Worker {
        if let Some(holder) = self.ns_holder {
            w.proc = procs::host_pid(w.pid, holder).and_then(Proc::find);
            if let Some(p) = w.proc {
                w.pid = p.pid;
            }
        }
        w
    }

    fn close_stream(&self) {
        self.lock().open -= 1;
        self.changed.notify_all();
    }
}

/// Removes ANSI escape sequences (colours), in case the logger adds them.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte (0x40..=0x7e)
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parses `worker 0 of generation 2 started, pid 12345`.
fn parse_worker_line(line: &str) -> Option<Worker> {
    let rest = &line[line.find("worker ")? + "worker ".len()..];
    let (index, rest) = rest.split_once(" of generation ")?;
    let (generation, rest) = rest.split_once(" started, pid ")?;
    let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let pid = pid.parse().ok()?;
    Some(Worker {
        generation: generation.trim().parse().ok()?,
        index: index.trim().parse().ok()?,
        pid,
        proc: Proc::find(pid),
    })
}

/// How to start `baton run`.
#[derive(Debug)]
pub struct BatonCmd {
    dir: tempfile::TempDir,
    args: Vec<OsString>,
    command: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    listens: usize,
}

impl Default for BatonCmd {
    fn default() -> Self {
        Self::new()
    }
}

impl BatonCmd {
    /// `baton run` with a fresh temp dir; no listener and no command yet.
    pub fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("baton-e2e-")
                .tempdir()
                .expect("create a temp dir for the test"),
            args: Vec::new(),
            command: Vec::new(),
            envs: Vec::new(),
            listens: 0,
        }
    }

    /// The test's temp dir (removed when the [`Baton`] drops).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where [`BatonCmd::probe`] tells the probe to look for extra flags.
    pub fn script_path(&self) -> PathBuf {
        self.dir.path().join("probe.script")
    }

    /// An option for `baton run` (before `--`).
    #[must_use]
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// `-l SPEC`. Without any, [`BatonCmd::spawn`] adds `-l 127.0.0.1:0`.
    #[must_use]
    pub fn listen(mut self, spec: impl AsRef<OsStr>) -> Self {
        self.listens += 1;
        self.arg("-l").arg(spec)
    }

    /// No `-l` of the harness's own: the listeners come from a config file
    /// (`--config`), so none is added.
    #[must_use]
    pub fn listeners_from_config(mut self) -> Self {
        self.listens = usize::MAX / 2;
        self
    }

    /// The worker command: `baton-probe --script DIR/probe.script FLAGS...`.
    #[must_use]
    pub fn probe(mut self, flags: &[&str]) -> Self {
        let script = self.script_path();
        self.command = vec![bin("baton-probe").into(), "--script".into(), script.into()];
        self.command.extend(flags.iter().map(OsString::from));
        self
    }

    /// Any worker command.
    #[must_use]
    pub fn command<I, S>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command = argv.into_iter().map(|a| a.as_ref().to_owned()).collect();
        self
    }

    /// An environment variable for baton (and so its workers).
    #[must_use]
    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    /// Starts `baton run ARGS -- COMMAND`.
    pub fn spawn(self) -> Baton {
        self.spawn_with(Start::Direct)
    }

    /// The whole command line: `[path of baton, "run", ARGS..., "--",
    /// COMMAND...]`, with the default listener added when there is none.
    fn argv(&mut self) -> Vec<OsString> {
        if self.listens == 0 {
            self.listens = 1;
            self.args.extend(["-l".into(), "127.0.0.1:0".into()]);
        }
        let mut argv: Vec<OsString> = vec![bin("baton").into(), "run".into()];
        argv.extend(self.args.iter().cloned());
        if !self.command.is_empty() {
            argv.push("--".into());
            argv.extend(self.command.iter().cloned());
        }
        argv
    }

    /// Starts baton under another program that runs it: `wrap` gets
    /// baton's whole command line and the test's temp dir and returns the
    /// command to start instead (a process supervisor, a socket activator).
    /// The returned command gets the environment, working directory and
    /// captured output [`BatonCmd::spawn`] would give baton; the wrapper
    /// must pass baton's output on to its own. [`Baton::pid`] is then the
    /// wrapper's pid and [`Baton::baton_pid`] finds baton among its
    /// descendants (or the wrapper itself, once it has exec'd baton).
    pub fn spawn_under(self, wrap: impl FnOnce(&[OsString], &Path) -> Command) -> Baton {
        self.spawn_with(Start::Under(Box::new(wrap)))
    }

    /// Starts baton as PID 1 of a new pid namespace: `unshare --pid --fork
    /// --mount-proc --kill-child -- baton run ...` (needs root). Worker pids
    /// from the log are turned into the test's pids; killing the `unshare`
    /// kills baton, and with it everything in the namespace.
    pub fn spawn_in_pid_namespace(self) -> Baton {
        self.spawn_with(Start::PidNamespace)
    }

    fn spawn_with(mut self, start: Start<'_>) -> Baton {
        let argv = self.argv();
        let wrapped = !matches!(start, Start::Direct);
        let pid_ns = matches!(start, Start::PidNamespace);
        let mut cmd = match start {
            Start::Direct => {
                let mut cmd = Command::new(&argv[0]);
                cmd.args(&argv[1..]);
                cmd
            }
            Start::Under(wrap) => wrap(&argv, self.dir.path()),
            Start::PidNamespace => {
                let mut cmd = Command::new("unshare");
                cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child", "--"])
                    .args(&argv);
                cmd
            }
        };
        let baton = PathBuf::from(cmd.get_program());
        // Nothing of the test runner's own environment that baton or the
        // probe would interpret.
        for k in [
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
            "NOTIFY_SOCKET",
            "BATON_READY_FD",
            "BATON_GENERATION",
            "BATON_WORKER",
        ] {
            cmd.env_remove(k);
        }
        cmd.env(
            "BATON_LOG",
            std::env::var_os("BATON_E2E_LOG").unwrap_or_else(|| "debug".into()),
        )
        .env("NO_COLOR", "1")
        // Each baton's control socket (and notify sockets) in its own
        // private temp dir: $XDG_RUNTIME_DIR/baton/baton.sock.
        .env("XDG_RUNTIME_DIR", self.dir.path())
        .envs(self.envs.iter().map(|(k, v)| (k, v)))
        .current_dir(self.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        eprintln!("[e2e] starting {cmd:?}");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", baton.display()));
        let pid = child.id();
        let log = Arc::new(Log {
            ns_holder: pid_ns.then_some(pid),
            ..Log::default()
        });
        log.lock().open = 2;
        let out = child.stdout.take().expect("stdout was piped");
        let err = child.stderr.take().expect("stderr was piped");
        spawn_reader(out, format!("baton {pid} out"), Arc::clone(&log));
        spawn_reader(err, format!("baton {pid} err"), Arc::clone(&log));
        Baton {
            child: Mutex::new(child),
            pid,
            wrapped,
            exe: argv[0].clone().into(),
            log,
            dir: self.dir,
            status: None,
            started: Instant::now(),
        }
    }

    /// Runs baton to completion (it must exit within `timeout`), returning
    /// its exit status and every line it printed.
    pub fn run_to_exit(self, timeout: Duration) -> (ExitStatus, Vec<String>) {
        let mut baton = self.spawn();
        let status = baton.wait_exit(timeout);
        baton.wait_output_closed(Duration::from_secs(5));
        (status, baton.lines())
    }
}

/// Builds the command baton runs under from baton's argv and the temp dir.
type Wrap<'a> = Box<dyn FnOnce(&[OsString], &Path) -> Command + 'a>;

/// How [`BatonCmd`] starts baton.
enum Start<'a> {
    Direct,
    Under(Wrap<'a>),
    PidNamespace,
}

fn spawn_reader<R: Read + Send + 'static>(stream: R, tag: String, log: Arc<Log>) {
    std::thread::Builder::new()
        .name(tag.clone())
        .spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&buf);
                        log.push(&tag, text.trim_end_matches(['\n', '\r']));
                    }
                }
            }
            log.close_stream();
        })
        .expect("start an output reader thread");
}

/// A running `baton run`. Dropping it stops baton (SIGTERM, then SIGKILL)
/// and kills every worker and grandchild it reported that still runs.
#[derive(Debug)]
pub struct Baton {
    child: Mutex<Child>,
    /// The process the test started: baton, or the program baton runs under.
    pid: u32,
    /// Started under another program ([`BatonCmd::spawn_under`] and
    /// [`BatonCmd::spawn_in_pid_namespace`]).
    wrapped: bool,
    exe: PathBuf,
    log: Arc<Log>,
    dir: tempfile::TempDir,
    status: Option<ExitStatus>,
    started: Instant,
}

/// The default bound for waiting on a log line.
pub const WAIT: Duration = Duration::from_secs(20);

impl Baton {
    /// The pid of the process the test started: baton itself, or the
    /// program it runs under (see [`BatonCmd::spawn_under`]).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// baton's own pid as the test sees it: [`Baton::pid`] unless baton
    /// runs under another program; then the process among that program's
    /// descendants (or the program itself, once it has exec'd baton) that
    /// runs the baton binary, waited for up to `WAIT`.
    ///
    /// # Panics
    /// When no such process appears in time.
    pub fn baton_pid(&self) -> u32 {
        if !self.wrapped {
            return self.pid;
        }
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(pid) = self.find_baton() {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "no process runs {} under pid {} after {WAIT:?}; last lines:\n{}",
                self.exe.display(),
                self.pid,
                tail(&self.lines(), 40)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process running the baton binary: the started process or one
    /// of its descendants; `None` when there is none (yet, or any more).
    pub fn find_baton(&self) -> Option<u32> {
        let runs_baton = |pid: u32| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe == self.exe || self.exe.canonicalize().is_ok_and(|b| b == exe))
        };
        std::iter::once(self.pid)
            .chain(procs::descendants(self.pid))
            .find(|&p| runs_baton(p))
    }

    /// The pid (as the test sees it) of the process that prints itself as
    /// `pid` in baton's output: the same number unless baton runs in a pid
    /// namespace. `None` when no such process runs.
    pub fn host_pid(&self, pid: u32) -> Option<u32> {
        self.log.host_proc(pid).map(|p| p.pid)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where the probe looks for extra flags (see [`BatonCmd::probe`]).
    pub fn script_path(&self) -> PathBuf {
        self.dir.path().join("probe.script")
    }

    /// Makes every probe started from now on also obey `flags`. Written to
    /// a temp name and renamed, so a starting probe never reads half of it.
    pub fn set_script(&self, flags: &str) {
        let tmp = self.dir.path().join("probe.script.tmp");
        std::fs::write(&tmp, flags).expect("write the probe script");
        std::fs::rename(&tmp, self.script_path()).expect("install the probe script");
    }

    /// Probes started from now on behave as their command line says.
    pub fn clear_script(&self) {
        match std::fs::remove_file(self.script_path()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot remove the probe script: {e}"),
        }
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().lines.clone()
    }

    /// The number of lines so far: a mark for [`Baton::wait_for_after`].
    pub fn mark(&self) -> usize {
        self.log.lock().lines.len()
    }

    /// How many lines so far contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .lines
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits for a line containing `needle`, from the first line on.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_after(0, needle, timeout).1
    }

    /// Waits for a line containing `needle` at index `mark` or later;
    /// returns its index and text.
    ///
    /// # Panics
    /// After `timeout`, or when baton's output ends first, with the tail of
    /// the output.
    pub fn wait_for_after(&self, mark: usize, needle: &str, timeout: Duration) -> (usize, String) {
        self.wait_until_after(mark, &format!("containing {needle:?}"), timeout, |l| {
            l.contains(needle)
        })
    }

    /// Waits for a line at index `mark` or later for which `matches` holds;
    /// `what` describes it for the failure message.
    pub fn wait_until_after(
        &self,
        mark: usize,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> (usize, String) {
        let deadline = Instant::now() + timeout;
        let mut st = self.log.lock();
        loop {
            if let Some((i, l)) = st
                .lines
                .iter()
                .enumerate()
                .skip(mark)
                .find(|(_, l)| matches(l))
            {
                return (i, l.clone());
            }
            let now = Instant::now();
            if st.open == 0 || now >= deadline {
                let why = if st.open == 0 {
                    "baton's output ended".to_owned()
                } else {
                    format!("timed out after {timeout:?}")
                };
                let tail = tail(&st.lines, 40);
                drop(st);
                let state = if why.starts_with("timed out") {
                    format!(
                        "\nwhat baton and its children are doing:\n{}",
                        procs::diagnose(self.find_baton().unwrap_or(self.pid))
                    )
                } else {
                    String::new()
                };
                panic!(
                    "{why} waiting for a line {what} (from line {mark}); \
                     baton pid {}, up {:?}; last lines:\n{tail}{state}",
                    self.pid,
                    self.started.elapsed()
                );
            }
            st = self
                .log
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Whether a line containing `needle` appeared at index `mark` or later.
    pub fn seen_after(&self, mark: usize, needle: &str) -> bool {
        self.log
            .lock()
            .lines
            .iter()
            .skip(mark)
            .any(|l| l.contains(needle))
    }

    /// The address of the first TCP listener, from
    /// `listening on tcp://127.0.0.1:PORT`.
    pub fn port(&self) -> u16 {
        let line = self.wait_for("listening on tcp://", WAIT);
        parse_port(&line).unwrap_or_else(|| panic!("no port in {line:?}"))
    }

    /// The port of the TCP listener named `name`, from the last
    /// `listening on tcp://HOST:PORT (name NAME...)` line (waited for).
    pub fn port_of(&self, name: &str) -> u16 {
        let needle = format!("(name {name}");
        let (_, line) = self.wait_until_after(0, &format!("naming listener {name}"), WAIT, |l| {
            l.contains("listening on tcp://")
                && l.split(&needle)
                    .nth(1)
                    .is_some_and(|rest| rest.starts_with(')') || rest.starts_with(','))
        });
        parse_port(&line).unwrap_or_else(|| panic!("no port in {line:?}"))
    }

    /// The workers announced so far.
    pub fn workers(&self) -> Vec<Worker> {
        self.log.lock().workers.clone()
    }

    /// The workers of generation `g` announced so far.
    pub fn workers_of(&self, g: u32) -> Vec<Worker> {
        self.workers()
            .into_iter()
            .filter(|w| w.generation == g)
            .collect()
    }

    /// Grandchildren the probe reported (`probe: grandchild pid N`).
    pub fn grandchildren(&self) -> Vec<Proc> {
        self.log.lock().grandchildren.clone()
    }

    /// Sends `sig` to baton (to baton itself when it runs under another
    /// program: see [`Baton::baton_pid`]).
    pub fn signal(&self, sig: Signal) {
        if self.status.is_some() {
            return;
        }
        let target = self.baton_pid();
        let pid = Pid::from_raw(target as i32).expect("a child pid is positive");
        rustix::process::kill_process(pid, sig)
            .unwrap_or_else(|e| panic!("cannot signal baton {target}: {e}"));
    }

    /// HUP, then waits for `generation {next} ready` and, when there was a
    /// previous generation, `generation {next - 1} exited`.
    pub fn reload(&self, next: u32, timeout: Duration) {
        self.reload_by(next, timeout, || self.signal(Signal::HUP));
    }

    /// Like [`Baton::reload`], with `trigger` asking for the reload (for
    /// example `supervisorctl signal HUP`, or `baton ctl reload`).
    pub fn reload_by(&self, next: u32, timeout: Duration, trigger: impl FnOnce()) {
        let mark = self.mark();
        trigger();
        self.wait_for_after(mark, &format!("generation {next} ready"), timeout);
        if next > 1 {
            self.wait_for_after(mark, &format!("generation {} exited", next - 1), timeout);
        }
    }

    /// Waits for the first `generation N ready in M ms` line at index
    /// `mark` or later; returns N and the reported time.
    pub fn wait_ready_after(&self, mark: usize, timeout: Duration) -> (u32, Option<Duration>) {
        let (_, line) = self.wait_for_after(mark, " ready in ", timeout);
        parse_ready(&line).unwrap_or_else(|| panic!("cannot parse a readiness line: {line:?}"))
    }

    /// Asserts that each of `pids` (a booting worker of a quiet-boot
    /// generation, its children) runs at `SCHED_IDLE`, unless baton gave
    /// the generation its normal priority back (`quiet boot over`, after
    /// at most 1 s) before this look: a loaded machine may get here late.
    /// baton logs the give-way just before it acts, so a look that finds
    /// the normal priority waits for that line and checks, by baton's
    /// clock, that the give-way came first.
    pub fn assert_booting_quietly(&self, mark: usize, pids: &[u32]) {
        let seen: Vec<Option<u32>> = pids.iter().map(|&p| procs::sched_policy(p)).collect();
        let looked = std::time::SystemTime::now();
        if seen.iter().all(|p| *p == Some(procs::SCHED_IDLE)) {
            return;
        }
        let (_, over) = self.wait_for_after(mark, "quiet boot over", WAIT);
        let at = log_time(&over).unwrap_or_else(|| panic!("no timestamp in {over:?}"));
        assert!(
            at <= looked,
            "pids {pids:?} should boot at SCHED_IDLE (5), their policies were {seen:?} \
             and the give-way came only after the look: {over}"
        );
    }

    /// Asserts that every process in `procs` is gone within `timeout`:
    /// exited, and not left as a zombie of baton (while baton runs).
    pub fn assert_gone(
        &self,
        procs: impl IntoIterator<Item = Proc>,
        timeout: Duration,
        what: &str,
    ) {
        let reaper = if self.status.is_some() {
            None
        } else if self.wrapped {
            self.find_baton()
        } else {
            Some(self.pid)
        };
        for p in procs {
            if !p.wait_gone(timeout, reaper) {
                let tail = tail(&self.lines(), 40);
                panic!(
                    "{what}: process {} still there after {timeout:?} ({:?}); last lines:\n{tail}",
                    p.pid,
                    p.stat()
                );
            }
        }
    }

    /// Waits for baton to exit and reaps it.
    ///
    /// # Panics
    /// When it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let deadline = Instant::now() + timeout;
        let exited = Proc::find(self.pid).is_none_or(|p| p.wait_exited(timeout));
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        // baton has threads (its output writers): its main thread can show
        // as a zombie while the others are still exiting, and it can be
        // reaped only once they are gone. Wait for the reap itself, bounded.
        let mut reaped = child.try_wait();
        while exited && matches!(reaped, Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            reaped = child.try_wait();
        }
        if let Ok(Some(status)) = reaped {
            drop(child);
            self.status = Some(status);
            eprintln!("[e2e] baton {} exited: {status}", self.pid);
            status
        } else {
            drop(child);
            let tail = tail(&self.lines(), 40);
            panic!(
                "baton {} still running after {timeout:?} (exited: {exited}); last lines:\n{tail}",
                self.pid
            );
        }
    }

    /// Waits (bounded) until baton's stdout and stderr are closed, so that
    /// [`Baton::lines`] holds everything it printed.
    pub fn wait_output_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.log.lock();
        while st.open > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .log
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// Stops baton with `sig` and waits for it to exit.
    pub fn stop(&mut self, sig: Signal, timeout: Duration) -> ExitStatus {
        self.signal(sig);
        self.wait_exit(timeout)
    }
}

impl Drop for Baton {
    fn drop(&mut self) {
        if self.status.is_none() {
            let pid = Pid::from_raw(self.pid as i32).expect("a child pid is positive");
            // A wrapper may not pass SIGTERM on (unshare ignores it): stop
            // baton itself first.
            let inner = if self.wrapped {
                self.find_baton()
            } else {
                None
            };
            let inner = inner.and_then(Proc::find);
            if let Some(b) = inner {
                b.signal(Signal::TERM);
            }
            let _ = rustix::process::kill_process(pid, Signal::TERM);
            let gone = Proc::find(self.pid).is_none_or(|p| p.wait_exited(Duration::from_secs(3)));
            if !gone {
                eprintln!("[e2e] baton {} ignored SIGTERM for 3s: SIGKILL", self.pid);
                let _ = rustix::process::kill_process(pid, Signal::KILL);
                if let Some(b) = inner {
                    b.signal(Signal::KILL);
                }
            }
            let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = child.wait();
        }
        let (workers, grandchildren) = {
            let st = self.log.lock();
            (st.workers.clone(), st.grandchildren.clone())
        };
        for p in workers.iter().filter_map(|w| w.proc).chain(grandchildren) {
            if p.is_alive() {
                eprintln!("[e2e] killing leftover process {}", p.pid);
                p.signal(Signal::KILL);
            }
        }
    }
}

fn tail(lines: &[String], n: usize) -> String {
    let start = lines.len().saturating_sub(n);
    let mut out = String::new();
    for l in &lines[start..] {
        out.push_str("  | ");
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// The port in `listening on tcp://HOST:PORT[ (name N)]`.
pub fn parse_port(line: &str) -> Option<u16> {
    let addr = line.split("listening on tcp://").nth(1)?;
    let addr = addr.split_whitespace().next()?;
    addr.rsplit_once(':')?.1.parse().ok()
}

/// `generation N ready in M ms` -> (N, M ms).
pub fn parse_ready(line: &str) -> Option<(u32, Option<Duration>)> {
    let rest = line.split("generation ").nth(1)?;
    let (generation, rest) = rest.split_once(" ready")?;
    let ms = rest
        .split(" in ")
        .nth(1)
        .and_then(|r| r.split(" ms").next())
        .and_then(|n| n.trim().parse().ok())
        .map(Duration::from_millis);
    Some((generation.trim().parse().ok()?, ms))
}

/// When baton wrote `line`, by its own clock: the RFC 3339 timestamp its
/// log lines start with (`2026-12-01T07:02:57.453Z baton INFO ...`), to the
/// millisecond. `None` for a line without one (a worker's output).
pub fn log_time(line: &str) -> Option<std::time::SystemTime> {
    humantime::parse_rfc3339(line.split_whitespace().next()?).ok()
}

/// The path in `listening on unix:PATH[ (name N)]`.
pub fn parse_unix_path(line: &str) -> Option<PathBuf> {
    let rest = line.split("listening on unix:").nth(1)?;
    let path = rest.split(" (name ").next()?.trim();
    Some(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_contract_lines() {
        assert_eq!(
            parse_port("INFO listening on tcp://127.0.0.1:43121 (name web)"),
            Some(43121)
        );
        assert_eq!(parse_port("listening on tcp://[::1]:80"), Some(80));
        assert_eq!(
            parse_unix_path("listening on unix:/tmp/x y.sock (name api)"),
            Some(PathBuf::from("/tmp/x y.sock"))
        );
        let w = parse_worker_line("INFO worker 1 of generation 2 started, pid 4194304")
            .expect("a worker line");
        assert_eq!((w.index, w.generation, w.pid), (1, 2, 4_194_304));
        assert!(parse_worker_line("worker 1 of generation 2 exited (status 1)").is_none());
        assert_eq!(
            parse_ready("INFO generation 12 ready in 41 ms"),
            Some((12, Some(Duration::from_millis(41))))
        );
        assert_eq!(strip_ansi("\u{1b}[32mINFO\u{1b}[0m x"), "INFO x");
        let t = log_time("2026-12-01T07:02:57.453Z baton INFO  generation 1 draining")
            .expect("a timestamp");
        let u = log_time("2026-12-01T07:02:59.455Z baton WARN  x").expect("a timestamp");
        assert_eq!(u.duration_since(t).ok(), Some(Duration::from_millis(2002)));
        assert_eq!(log_time("probe gen=1 worker=0 pid=3 ready"), None);
    }
}
