//! `--user`, `--group`, `--no-new-privs`: baton binds as root (port 80
//! included), each worker runs as the user with no capability left, cannot
//! signal baton, use its control socket or bind a privileged port, and
//! still reaches its own notify socket. These tests need root, as the
//! machine the suite runs on gives it (they fail otherwise, unless skips
//! are allowed).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use baton_e2e::tools::{root_or_skip, run_bounded, which_or_skip};
use baton_e2e::{Baton, BatonCmd, NetNs, Proc, Signal, WAIT, bin, ctl, http};

/// `nobody`, as Debian and most distributions have it.
const NOBODY: u32 = 65_534;

/// The value of `Key:` in a `/proc/PID/status` listing (the probe's
/// `/identity`), its whitespace collapsed.
fn field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key}: in\n{status}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A baton whose test directory (the workers' cwd, the probe's script)
/// another user may pass through: tempfile makes it 0700.
fn open_dir(cmd: &BatonCmd) {
    std::fs::set_permissions(cmd.dir(), std::fs::Permissions::from_mode(0o711))
        .expect("chmod the test dir");
}

fn assert_no_privileges(identity: &str, nnp: &str) {
    let all = format!("{NOBODY} {NOBODY} {NOBODY} {NOBODY}");
    assert_eq!(field(identity, "Uid"), all, "{identity}");
    assert_eq!(field(identity, "Gid"), all, "{identity}");
    // nobody's groups in the group database: its own (nogroup) only.
    assert_eq!(field(identity, "Groups"), NOBODY.to_string(), "{identity}");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            field(identity, cap),
            "0000000000000000",
            "{cap}:\n{identity}"
        );
    }
    assert_eq!(field(identity, "NoNewPrivs"), nnp, "{identity}");
}

fn worker_pid(baton: &Baton, generation: u32) -> u32 {
    baton
        .workers_of(generation)
        .first()
        .unwrap_or_else(|| panic!("generation {generation} has a worker"))
        .pid
}

#[test]
fn workers_run_as_the_user_with_no_capability_and_cannot_reach_baton() {
    if !root_or_skip(
        "workers_run_as_the_user_with_no_capability_and_cannot_reach_baton",
        "baton binds port 80 and switches users",
    ) {
        return;
    }
    let Some(setpriv) = which_or_skip(
        "workers_run_as_the_user_with_no_capability_and_cannot_reach_baton",
        "setpriv",
        "util-linux",
    ) else {
        return;
    };
    // A network namespace of its own: port 80 and 81 are free there, and
    // its ip_unprivileged_port_start is the kernel's 1024 whatever the
    // host's.
    let _ns = NetNs::enter();
    let cmd = BatonCmd::new();
    open_dir(&cmd);
    let baton = cmd
        .listen("127.0.0.1:80")
        .args(["--user", "nobody"])
        .probe(&["--drain-ms", "50"])
        .spawn();
    // Ready: the worker reached its notify socket as nobody.
    baton.wait_for("generation 1 ready", WAIT);
    let identity = http::get_ok(80, "/identity").body;
    assert_no_privileges(&identity, "1");

    let control = ctl::control_path(&baton);
    assert!(control.exists(), "{}", control.display());
    for (what, path, want) in [
        (
            "signal baton",
            format!("/try?kill={}", baton.pid()),
            "Operation not permitted",
        ),
        (
            "use the control socket",
            format!("/try?connect={}", control.display()),
            "Permission denied",
        ),
        (
            "bind :81",
            "/try?bind=127.0.0.1:81".to_owned(),
            "Permission denied",
        ),
    ] {
        let answer = http::get_ok(80, &path).body;
        assert!(
            answer.starts_with("error: ") && answer.contains(want),
            "a worker running as nobody could {what}: {answer}"
        );
    }
    // And can do what it may: signal itself, bind an ordinary port.
    let own = worker_pid(&baton, 1);
    assert_eq!(http::get_ok(80, &format!("/try?kill={own}")).body, "ok\n");
    assert_eq!(http::get_ok(80, "/try?bind=127.0.0.1:8081").body, "ok\n");

    // Its environment names the user.
    let env = http::get_ok(80, "/env?all=1");
    assert_eq!(env.var("USER"), Some("nobody"), "{}", env.body);
    assert_eq!(env.var("LOGNAME"), Some("nobody"), "{}", env.body);
    assert_eq!(env.var("HOME"), Some("/nonexistent"), "{}", env.body);

    // The notify socket: the worker's, mode 0600, in a directory anyone
    // may pass through but no one may list; another user cannot send.
    let socket = PathBuf::from(env.var("NOTIFY_SOCKET").expect("notify mode"));
    let meta = std::fs::symlink_metadata(&socket).expect("the notify socket");
    assert_eq!((meta.uid(), meta.gid()), (NOBODY, NOBODY));
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let dir = socket.parent().expect("a directory");
    let dir_meta = std::fs::metadata(dir).expect("its directory");
    assert_eq!(dir_meta.uid(), 0);
    assert_eq!(dir_meta.permissions().mode() & 0o777, 0o711);
    let mut other = Command::new(&setpriv);
    other
        .args([
            "--reuid",
            "65533",
            "--regid",
            "65533",
            "--clear-groups",
            "--",
        ])
        .arg(bin("baton-probe"))
        .arg("--send-notify")
        .arg(&socket)
        .arg("READY=1");
    let out = run_bounded(other, WAIT);
    assert_eq!(
        out.status.code(),
        Some(3),
        "another user could send to the worker's notify socket: {out:?}"
    );

    // A reload: generation 2 runs as nobody too, and reports ready.
    baton.reload(2, WAIT);
    let identity = http::get_ok(80, "/identity").body;
    assert_no_privileges(&identity, "1");
    let stat = std::fs::read_to_string(format!("/proc/{}/status", worker_pid(&baton, 2)))
        .expect("the worker of generation 2");
    assert_eq!(
        field(&stat, "Uid"),
        format!("{NOBODY} {NOBODY} {NOBODY} {NOBODY}")
    );
}

/// `--no-new-privs=false`: the bounding set is still empty, only the flag
/// goes; `--group` picks the group; without `--user` nothing changes
/// unless `--no-new-privs` says so.
#[test]
fn no_new_privs_and_group_do_what_they_say() {
    if !root_or_skip(
        "no_new_privs_and_group_do_what_they_say",
        "it switches users",
    ) {
        return;
    }
    let cmd = BatonCmd::new();
    open_dir(&cmd);
    let baton = cmd
        .args([
            "--user",
            "nobody",
            "--group",
            "daemon",
            "--no-new-privs=false",
        ])
        .probe(&[])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let identity = http::get_ok(baton.port(), "/identity").body;
    let daemon: u32 = baton_e2e::tools::run_ok("getent", &["group", "daemon"])
        .split(':')
        .nth(2)
        .and_then(|g| g.parse().ok())
        .expect("Debian has a daemon group");
    assert_eq!(
        field(&identity, "Gid"),
        format!("{daemon} {daemon} {daemon} {daemon}"),
        "{identity}"
    );
    assert_eq!(field(&identity, "CapBnd"), "0000000000000000", "{identity}");
    assert_eq!(field(&identity, "CapEff"), "0000000000000000", "{identity}");
    assert_eq!(field(&identity, "NoNewPrivs"), "0", "{identity}");
    drop(baton);

    let plain = BatonCmd::new().probe(&[]).spawn();
    plain.wait_for("generation 1 ready", WAIT);
    let identity = http::get_ok(plain.port(), "/identity").body;
    assert_eq!(field(&identity, "NoNewPrivs"), "0", "{identity}");
    assert_eq!(field(&identity, "Uid"), "0 0 0 0", "{identity}");
    drop(plain);
    let nnp = BatonCmd::new().arg("--no-new-privs").probe(&[]).spawn();
    nnp.wait_for("generation 1 ready", WAIT);
    let identity = http::get_ok(nnp.port(), "/identity").body;
    assert_eq!(field(&identity, "NoNewPrivs"), "1", "{identity}");
}

/// The `exec:` readiness command runs as the workers' user: one that
/// checks its own uid makes the generation ready only so.
#[test]
fn the_exec_readiness_command_runs_as_the_user() {
    if !root_or_skip(
        "the_exec_readiness_command_runs_as_the_user",
        "it switches users",
    ) {
        return;
    }
    let cmd = BatonCmd::new();
    open_dir(&cmd);
    let baton = cmd
        .args([
            "--user",
            "nobody",
            "--ready",
            "exec:test \"$(id -u)\" = 65534",
        ])
        .args(["--ready-timeout", "20s"])
        .probe(&[])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
}

/// Regression: the kernel clears the parent-death signal whenever a
/// process's credentials change, so a worker that set it before switching
/// users outlived a `kill -9` of baton. The guard, which would also kill
/// it, is stopped first, so only the parent-death signal is at work.
#[test]
fn a_worker_running_as_another_user_dies_with_baton() {
    if !root_or_skip(
        "a_worker_running_as_another_user_dies_with_baton",
        "it switches users",
    ) {
        return;
    }
    let cmd = BatonCmd::new();
    open_dir(&cmd);
    let mut baton = cmd
        .args(["--user", "nobody", "--cgroups", "off"])
        .probe(&[])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let guard_line = baton.wait_for("guard started, pid ", WAIT);
    let guard: u32 = guard_line
        .rsplit("pid ")
        .next()
        .and_then(|p| p.trim().parse().ok())
        .expect("the guard's pid");
    let guard = Proc::find(guard).expect("the guard runs");
    let worker = Proc::find(worker_pid(&baton, 1)).expect("the worker runs");
    guard.signal(Signal::STOP);
    baton.signal(Signal::KILL);
    let _ = baton.wait_exit(WAIT);
    let gone = worker.wait_gone(WAIT, None);
    guard.signal(Signal::KILL);
    if !gone {
        worker.signal(Signal::KILL);
    }
    assert!(
        gone,
        "worker {} (nobody) outlived baton's SIGKILL",
        worker.pid
    );
}

/// A user that does not exist, a group without a user, a baton that is
/// not root: each refused at start with what to do, before anything runs.
#[test]
fn impossible_users_are_refused_at_start_with_the_fix() {
    for (args, code, want) in [
        (
            vec!["--user", "no-such-user-baton"],
            2,
            "no such user in the user database",
        ),
        (vec!["--user", "nobody:no-such-group"], 2, "no such group"),
        (
            vec!["--group", "nogroup"],
            2,
            "--group nogroup needs --user",
        ),
        (
            vec!["--user", "4000000"],
            2,
            "give one, e.g. --user 4000000:4000000",
        ),
        (
            vec!["--user", "nobody", "--no-new-privs=maybe"],
            2,
            "is not true or false",
        ),
    ] {
        let (status, lines) = BatonCmd::new().args(&args).probe(&[]).run_to_exit(WAIT);
        assert_eq!(status.code(), Some(code), "{args:?}: {lines:#?}");
        assert!(
            lines.iter().any(|l| l.contains(want)),
            "{args:?}: no {want:?} in {lines:#?}"
        );
    }
    if !root_or_skip(
        "impossible_users_are_refused_at_start_with_the_fix",
        "it runs baton as another user to see it refuse",
    ) {
        return;
    }
    let Some(setpriv) = which_or_skip(
        "impossible_users_are_refused_at_start_with_the_fix",
        "setpriv",
        "util-linux",
    ) else {
        return;
    };
    let cmd = BatonCmd::new();
    open_dir(&cmd);
    let mut baton = cmd
        .args(["--user", "daemon"])
        .probe(&[])
        .spawn_under(move |argv, _| {
            let mut c = Command::new(&setpriv);
            c.args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "--",
            ])
            .args(argv);
            c
        });
    let status = baton.wait_exit(WAIT);
    assert_eq!(status.code(), Some(4), "{:#?}", baton.lines());
    baton.wait_for(
        "only root (or a baton holding CAP_SETUID and CAP_SETGID)",
        WAIT,
    );
}

/// Across an in-place upgrade the user carries over: a worker of the
/// generation that was running is restarted as nobody, a reload starts one
/// as nobody, and it reaches its notify socket (the shared directory goes
/// across too).
#[test]
fn the_user_survives_an_upgrade_in_place() {
    if !root_or_skip("the_user_survives_an_upgrade_in_place", "it switches users") {
        return;
    }
    let cmd = BatonCmd::new();
    open_dir(&cmd);
    let baton = cmd
        .args(["--user", "nobody"])
        .probe(&["--drain-ms", "50"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let port = baton.port();
    let out = ctl::ctl(&baton, &["upgrade"]);
    assert!(out.status.success(), "{out:?}");
    // The serving worker dies; the new image restarts it from the
    // generation's own settings.
    let first = Proc::find(worker_pid(&baton, 1)).expect("the worker runs");
    let mark = baton.mark();
    first.signal(Signal::KILL);
    baton.wait_for_after(mark, "is ready again", WAIT);
    assert_no_privileges(&http::get_ok(port, "/identity").body, "1");
    baton.reload(2, WAIT);
    assert_no_privileges(&http::get_ok(port, "/identity").body, "1");
    let socket = http::get_ok(port, "/env")
        .var("NOTIFY_SOCKET")
        .map(PathBuf::from)
        .expect("notify mode");
    let meta = std::fs::symlink_metadata(&socket).expect("the notify socket");
    assert_eq!(meta.uid(), NOBODY);
    assert!(socket.starts_with(Path::new(&std::env::temp_dir())));
}
