//! baton under supervisord (hupwatch's setting): supervisord starts
//! `baton run`, reloads go through `supervisorctl signal HUP`, and
//! supervisord never notices: the pid it knows never changes, no process
//! but baton is ever its child, no orphan is left after a drain, and
//! `supervisorctl stop` leaves nothing running.
//!
//! supervisord comes from the venv `./test` prepares (PyPI `supervisor`);
//! without it the test fails unless skips are allowed
//! (`BATON_E2E_ALLOW_SKIP=1`, see `baton_e2e::tools::skip`).

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use baton_e2e::procs::{self, Proc};
use baton_e2e::tools::{output_text, run_bounded, try_run_bounded, venv_bin, venv_bin_or_skip};
use baton_e2e::{Baton, BatonCmd, Signal, WAIT};
use common::{Load, reloads_under_load};

const PROGRAM: &str = "baton-demo";

/// A word of a supervisord `command=`: quoted for its shlex split, `%`
/// doubled for its config interpolation.
fn quote(arg: &OsString) -> String {
    let s = arg.to_string_lossy();
    format!("'{}'", s.replace('\'', r"'\''").replace('%', "%%"))
}

/// Writes `supervisord.conf` into `dir` with baton as the one program; its
/// output goes to supervisord's own stdout/stderr (so the harness reads it).
fn write_config(dir: &Path, baton_argv: &[OsString]) -> PathBuf {
    let d = dir.display();
    let command: Vec<String> = baton_argv.iter().map(quote).collect();
    let conf = format!(
        "[unix_http_server]
file={d}/supervisor.sock
chmod=0700

[supervisord]
nodaemon=true
logfile={d}/supervisord.log
pidfile={d}/supervisord.pid
childlogdir={d}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{d}/supervisor.sock

[program:{PROGRAM}]
command={command}
directory={d}
autostart=true
autorestart=false
startsecs=0
stopsignal=TERM
stopwaitsecs=30
stdout_logfile=/dev/fd/1
stdout_logfile_maxbytes=0
stderr_logfile=/dev/fd/2
stderr_logfile_maxbytes=0
",
        command = command.join(" ")
    );
    let path = dir.join("supervisord.conf");
    std::fs::write(&path, conf).expect("write supervisord.conf");
    path
}

/// `supervisorctl -c CONF ARGS`, bounded; returns stdout, panics unless 0.
///
/// Read-only queries (`pid`, `status`) are retried when the client stalls:
/// on a starved 2-core machine a `supervisorctl` was seen to hang for 40 s
/// while supervisord and baton were idle and healthy (baton's log showed
/// the generation serving). The answer must still be right; only the
/// client's stall is forgiven, and it is logged. `signal` is never retried:
/// a second HUP would be a second reload.
fn supervisorctl(conf: &Path, args: &[&str]) -> String {
    let ctl = venv_bin("supervisorctl").expect("supervisorctl is in the venv");
    let read_only = matches!(args.first(), Some(&"pid" | &"status"));
    let attempts = if read_only { 3 } else { 1 };
    let timeout = if read_only {
        Duration::from_secs(20)
    } else {
        Duration::from_secs(40)
    };
    for attempt in 1..=attempts {
        let mut cmd = Command::new(&ctl);
        cmd.arg("-c").arg(conf).args(args);
        let t = std::time::Instant::now();
        match try_run_bounded(cmd, timeout) {
            Ok(out) => {
                eprintln!("[e2e] supervisorctl {args:?} took {:?}", t.elapsed());
                assert!(
                    out.status.success(),
                    "supervisorctl {args:?}: {}",
                    output_text(&out)
                );
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            Err(pid) => eprintln!(
                "[e2e] supervisorctl {args:?} (pid {pid}) stalled for {timeout:?}, attempt {attempt} of {attempts}; killed"
            ),
        }
    }
    panic!("supervisorctl {args:?} did not answer in {attempts} attempts of {timeout:?}");
}

/// The pid supervisord reports for baton.
fn supervised_pid(conf: &Path) -> u32 {
    let out = supervisorctl(conf, &["pid", PROGRAM]);
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("supervisorctl pid said {out:?}"))
}

/// No process but baton is supervisord's child, and baton's children are
/// exactly the workers of generation `g`: no orphan, nothing left over.
fn assert_tree(baton: &Baton, baton_pid: u32, g: u32) {
    assert_eq!(
        procs::children(baton.pid()),
        vec![baton_pid],
        "supervisord's children"
    );
    let mut workers: Vec<u32> = baton.workers_of(g).iter().map(|w| w.pid).collect();
    workers.sort_unstable();
    assert_eq!(
        procs::children_but_guard(baton_pid),
        workers,
        "baton's children after generation {} drained: only generation {g}'s workers",
        g - 1
    );
}

#[test]
fn twenty_reloads_via_supervisorctl_signal_hup_under_load() {
    let name = "twenty_reloads_via_supervisorctl_signal_hup_under_load";
    let Some(supervisord) = venv_bin_or_skip(name, "supervisord", "supervisor") else {
        return;
    };
    let mut conf = PathBuf::new();
    let mut baton = BatonCmd::new()
        .args(["--workers", "2", "--grace", "10s"])
        .probe(&["--drain-ms", "100"])
        .spawn_under(|argv, dir| {
            conf = write_config(dir, argv);
            let mut cmd = Command::new(&supervisord);
            cmd.arg("-c").arg(&conf);
            cmd
        });
    baton.wait_for("generation 1 ready", WAIT);
    let port = baton.port();
    let baton_pid = baton.baton_pid();
    assert_eq!(
        supervised_pid(&conf),
        baton_pid,
        "supervisord runs baton itself"
    );
    assert_tree(&baton, baton_pid, 1);

    let report = reloads_under_load(
        &baton,
        port,
        &Load::default(),
        || {
            supervisorctl(&conf, &["signal", "HUP", PROGRAM]);
        },
        |g| {
            assert_eq!(
                supervised_pid(&conf),
                baton_pid,
                "the pid supervisord knows changed by generation {g}"
            );
            assert_tree(&baton, baton_pid, g);
        },
    );
    eprintln!("[e2e] supervisord: 20 reloads via supervisorctl signal HUP: {report}");
    println!(
        "supervisord figures: reloads 20, requests {}, ok {}, failed {}",
        report.requests, report.ok, report.failed
    );

    // `supervisorctl stop` leaves nothing running.
    let everyone: Vec<Proc> = std::iter::once(Proc::find(baton_pid).expect("baton runs"))
        .chain(baton.workers().iter().filter_map(|w| w.proc))
        .collect();
    let out = supervisorctl(&conf, &["stop", PROGRAM]);
    assert!(out.contains("stopped"), "supervisorctl stop said {out:?}");
    for p in &everyone {
        assert!(
            p.wait_gone(Duration::from_secs(5), None),
            "process {} still there after supervisorctl stop: {:?}",
            p.pid,
            p.stat()
        );
    }
    baton.wait_for("stopped", WAIT);
    assert!(
        procs::children(baton.pid()).is_empty(),
        "supervisord has children left"
    );
    let status = supervisorctl_status(&conf);
    assert!(status.contains("STOPPED"), "{status}");

    // And supervisord itself, by pid.
    Proc::find(baton.pid())
        .expect("supervisord runs")
        .signal(Signal::TERM);
    baton.wait_exit(WAIT);
}

/// `supervisorctl status` exits 3 when a program is not running: read it
/// without insisting on 0.
fn supervisorctl_status(conf: &Path) -> String {
    let ctl = venv_bin("supervisorctl").expect("supervisorctl is in the venv");
    let mut cmd = Command::new(&ctl);
    cmd.arg("-c").arg(conf).args(["status", PROGRAM]);
    let out = run_bounded(cmd, Duration::from_secs(40));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
