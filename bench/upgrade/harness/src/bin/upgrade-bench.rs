//! Drives one self-upgrading server through N upgrades under keep-alive
//! load and prints one Markdown table row.
//!
//! `upgrade-bench LABEL UPGRADES CONCURRENCY [SECONDS] -- CMD ARGS...`,
//! where the arguments may contain `{port}` and `{pid_file}`. Each upgrade:
//! `SIGHUP` to the pid in the pid file; *ready* is when the pid file names
//! the new process (it writes it when it is ready to serve), *done* is when
//! the old process has exited (drained). The load runs throughout, and for
//! at least SECONDS (default 0) in all.
//!
//! The row gives the run's length and requests per second beside the
//! count: an upgrade lasts until the old process has exited, so runs of
//! the same number of upgrades last longer for a server whose old process
//! exits later, and their counts are not comparable (see NOTES.md).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn pid_in(path: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn exited(pid: u32) -> bool {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG);
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    true
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Milliseconds, or a dash for a run without upgrades.
fn ms_or_dash(d: Duration) -> String {
    if d.is_zero() {
        "-".to_owned()
    } else {
        format!("{:.1}", d.as_secs_f64() * 1000.0)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sep = args
        .iter()
        .position(|a| a == "--")
        .expect("usage: LABEL N C [SECONDS] -- CMD...");
    let label = &args[1];
    let upgrades: usize = args[2].parse().expect("upgrades");
    let concurrency: usize = args[3].parse().expect("concurrency");
    let at_least = Duration::from_secs_f64(
        args[4..sep]
            .first()
            .map_or(0.0, |s| s.parse().expect("seconds")),
    );
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).expect("subreaper");

    let dir = std::env::temp_dir().join(format!("upgrade-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let pid_file = dir.join("pid");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let subst = |a: &String| {
        a.replace("{port}", &port.to_string())
            .replace("{pid_file}", &pid_file.display().to_string())
    };
    let cmd: Vec<String> = args[sep + 1..].iter().map(subst).collect();
    let log = std::fs::File::create(dir.join("log")).expect("log file");
    let child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the server");
    let mut pids = vec![child.id()];
    assert!(
        wait_until(Duration::from_secs(20), || pid_in(&pid_file).is_some()),
        "{label}: no pid file"
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut cfg = baton_load::Config::new(baton_load::Target::Tcp(addr));
    cfg.concurrency = concurrency;
    let load = baton_load::start(cfg);
    let load_began = Instant::now();
    // Let the load reach a steady state first.
    std::thread::sleep(Duration::from_millis(500));

    let mut ready = Vec::new();
    let mut done = Vec::new();
    let mut stuck = 0;
    for _ in 0..upgrades {
        let old = pid_in(&pid_file).expect("pid file");
        let t0 = Instant::now();
        if let Some(p) = rustix::process::Pid::from_raw(old as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::HUP);
        }
        let mut new = old;
        if !wait_until(Duration::from_secs(20), || {
            new = pid_in(&pid_file).unwrap_or(old);
            new != old
        }) {
            eprintln!("{label}: upgrade did not happen");
            stuck += 1;
            continue;
        }
        ready.push(t0.elapsed());
        pids.push(new);
        if wait_until(Duration::from_secs(30), || exited(old)) {
            done.push(t0.elapsed());
        } else {
            eprintln!("{label}: pid {old} did not exit");
            stuck += 1;
        }
        // A short pause under load between upgrades.
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some(rest) = at_least.checked_sub(load_began.elapsed()) {
        std::thread::sleep(rest);
    }
    let report = load.stop();
    for pid in pids {
        if !exited(pid)
            && let Some(p) = rustix::process::Pid::from_raw(pid as i32)
        {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            wait_until(Duration::from_secs(5), || exited(pid));
        }
    }
    ready.sort();
    done.sort();
    let errors: Vec<String> = report
        .errors
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    println!(
        "| {label} | {} | {} | {} | {} | {} | {} | {:.1} | {:.0} | {} | {} | {} |",
        ready.len(),
        ms_or_dash(percentile(&ready, 0.5)),
        ms_or_dash(percentile(&ready, 0.99)),
        ms_or_dash(percentile(&done, 0.5)),
        ms_or_dash(percentile(&done, 0.99)),
        report.ok,
        report.elapsed.as_secs_f64(),
        report.ok as f64 / report.elapsed.as_secs_f64(),
        report.failed,
        if errors.is_empty() {
            "-".to_owned()
        } else {
            errors.join(", ")
        },
        stuck,
    );
    let _ = std::fs::remove_dir_all(&dir);
}
