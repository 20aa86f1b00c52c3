//! Regression tests for the defects a second newcomer's pass found (trying
//! `--dispatch`, `ctl`, env files and upgrades by hand), each named after
//! its bug. Every one of them failed on the code before its fix.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use baton_e2e::ctl::{control_path, ctl_text as ctl};
use baton_e2e::{BatonCmd, Proc, Signal, WAIT, bin};

/// Writes the config file atomically (a reload never reads half of it).
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write the config");
    std::fs::rename(&tmp, path).expect("install the config");
}

// ---- 1. --dispatch with a udp:// listener failed an accept every 100 ms, for ever ----

/// A datagram socket has no connection to accept: baton's dispatcher
/// logged `accept on udp://… failed: Operation not supported` ten times a
/// second while no datagram ever reached a worker. Refused at start (exit
/// 2) and on a reload that adds one, naming the listener.
#[test]
fn dispatch_with_a_udp_listener_is_refused_instead_of_failing_every_accept() {
    let demo = bin("demo-server");
    let (status, lines) = BatonCmd::new()
        .listen("127.0.0.1:0")
        .listen("dns=udp://127.0.0.1:0")
        .arg("--dispatch")
        .command([&demo])
        .run_to_exit(WAIT);
    let all = lines.join("\n");
    assert_eq!(status.code(), Some(2), "{all}");
    assert!(
        all.contains("the UDP listener dns=udp://127.0.0.1:0 has no connections to accept"),
        "{all}"
    );
    assert!(!all.contains("accept on udp://"), "{all}");

    // The same mistake made in the config file refuses the reload.
    let cmd = BatonCmd::new().listeners_from_config();
    let file = cmd.dir().join("baton.toml");
    let good = format!(
        "command = [\"{}\"]\ndispatch = \"pass\"\n[[listen]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\n",
        demo.display()
    );
    write_config(&file, &good);
    let baton = cmd.arg("--config").arg(&file).spawn();
    baton.wait_for("generation 1 ready", WAIT);
    write_config(
        &file,
        &format!("{good}[[listen]]\nname = \"dns\"\naddress = \"udp://127.0.0.1:0\"\n"),
    );
    let (code, out) = ctl(&baton, &["reload"]);
    assert_eq!(code, Some(12), "{out}");
    assert!(out.contains("reload refused"), "{out}");
    assert!(out.contains("has no connections to accept"), "{out}");
    assert!(!baton.lines().join("\n").contains("accept on udp://"));
}

// ---- 2. `baton ctl events | head -1` waited for the next event, for ever ----

/// Once the reader of `ctl events` had its line and exited, ctl only
/// noticed at its next write, so with nothing happening on the service
/// `baton ctl events | head -1` (or `| grep -m1 ...`) never returned. It
/// must end at once, as a write to the closed pipe would have ended it
/// (SIGPIPE), with no event needed.
#[test]
fn ctl_events_ends_when_its_reader_goes_not_at_the_next_event() {
    use std::os::unix::process::ExitStatusExt;
    let baton = BatonCmd::new().probe(&[]).spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let (reader, writer) = std::io::pipe().expect("pipe");
    let mut cmd = Command::new(bin("baton"));
    cmd.arg("ctl")
        .arg("--control")
        .arg(control_path(&baton))
        .arg("events")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("start baton ctl events");
    // Our copy of the pipe's write end goes with the command.
    drop(cmd);
    let pid = child.id();
    let mut first = String::new();
    BufReader::new(reader)
        .read_line(&mut first)
        .expect("read the first event");
    assert!(first.contains("\"subscribed\""), "{first}");
    // The reader is gone (dropped above); nothing happens on the service.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(out) = rx.recv_timeout(WAIT) else {
        if let Some(p) = Proc::find(pid) {
            p.signal(Signal::KILL);
        }
        panic!("baton ctl events was still running {WAIT:?} after its reader went");
    };
    let out = out.expect("wait for baton ctl events");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
    assert!(stderr.is_empty(), "{stderr}");
}

// ---- 3. An upgrade ignored a swapped symlink to baton ----

/// `/usr/local/bin/baton -> /opt/baton-1.1/baton`, swapped to 1.2 by a
/// deploy, then `baton ctl upgrade`: baton executed 1.1 again (it had kept
/// the kernel's `/proc/self/exe`, the end of the link) and reported
/// "upgraded in place: 1.1 -> 1.1". It must run what the path it was
/// started as points to now: here a broken release, refused with exit 13.
#[test]
fn ctl_upgrade_runs_what_a_swapped_symlink_to_baton_points_to() {
    let cmd = BatonCmd::new().probe(&[]);
    let dir = cmd.dir().to_owned();
    let link = dir.join("baton-current");
    std::os::unix::fs::symlink(bin("baton"), &link).expect("link to baton");
    let started_as = link.clone();
    let baton = cmd.spawn_under(move |argv, _| {
        let mut c = Command::new(&started_as);
        c.args(&argv[1..]);
        c
    });
    baton.wait_for("generation 1 ready", WAIT);
    let swap_to = |target: &Path| {
        let tmp = dir.join("baton-current.new");
        std::os::unix::fs::symlink(target, &tmp).expect("new link");
        std::fs::rename(&tmp, &link).expect("swap the link");
    };
    let broken = dir.join("baton-broken");
    std::fs::write(&broken, "not a program\n").expect("write");
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    swap_to(&broken);
    let (code, out) = ctl(&baton, &["upgrade"]);
    assert_eq!(code, Some(13), "{out}");
    assert!(
        out.contains(&format!(
            "{} is not a program this machine can run",
            link.display()
        )),
        "{out}"
    );
    swap_to(&bin("baton"));
    let (code, out) = ctl(&baton, &["upgrade"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("upgraded in place"), "{out}");
}

// ---- 4. `--env 'RUST_LOG =debug'` set a variable no program reads ----

/// A name with a blank (or starting with a digit) passed: the workers got
/// a variable named `RUST_LOG ` while `RUST_LOG` stayed unset, and nothing
/// said so. `--env` and the config file's `[env]` now take the names an
/// env file takes.
#[test]
fn env_with_an_invalid_name_is_refused_not_set() {
    for name in ["RUST_LOG ", "A B", "1X"] {
        let flag = format!("{name}=debug");
        let (status, lines) = BatonCmd::new()
            .args(["--env", &flag])
            .probe(&[])
            .run_to_exit(WAIT);
        let all = lines.join("\n");
        assert_eq!(status.code(), Some(2), "{flag:?}: {all}");
        assert!(
            all.contains(&format!("{name:?} is not a variable name")),
            "{flag:?}: {all}"
        );
    }
    let cmd = BatonCmd::new().listeners_from_config();
    let file = cmd.dir().join("baton.toml");
    write_config(
        &file,
        &format!(
            "command = [\"{}\"]\n[env]\n\"RUST_LOG \" = \"debug\"\n",
            bin("baton-probe").display()
        ),
    );
    let (status, lines) = cmd.arg("--config").arg(&file).run_to_exit(WAIT);
    let all = lines.join("\n");
    assert_eq!(status.code(), Some(2), "{all}");
    assert!(all.contains("baton.toml:3:"), "{all}");
    assert!(
        all.contains("env: \"RUST_LOG \" is not a variable name"),
        "{all}"
    );
}

// ---- 5. A relative --control gave no clue from another directory ----

/// `baton run --control app.sock` logged `control socket app.sock`, and
/// `baton ctl --control app.sock` from another directory said only that no
/// baton runs at `app.sock`. baton now logs the whole path, and ctl says
/// which whole path it tried and why.
#[test]
fn a_relative_control_path_is_logged_in_full_and_explained_by_ctl() {
    let baton = BatonCmd::new()
        .args(["--control", "app.sock"])
        .probe(&[])
        .spawn();
    let line = baton.wait_for("control socket", WAIT);
    let full = baton.dir().join("app.sock");
    assert!(
        line.ends_with(&format!("control socket {}", full.display())),
        "{line}"
    );
    baton.wait_for("generation 1 ready", WAIT);
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(bin("baton"));
    cmd.current_dir(elsewhere.path())
        .args(["ctl", "--control", "app.sock", "status"]);
    let out = baton_e2e::tools::run_bounded(cmd, WAIT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{err}");
    let tried = elsewhere.path().join("app.sock");
    assert!(
        err.contains(&format!(
            "at app.sock ({}: a relative --control is taken from the directory baton ctl runs in",
            tried.display()
        )),
        "{err}"
    );
    // From baton's own directory it is found.
    let mut cmd = Command::new(bin("baton"));
    cmd.current_dir(baton.dir())
        .args(["ctl", "--control", "app.sock", "status"]);
    let out = baton_e2e::tools::run_bounded(cmd, WAIT);
    assert!(out.status.success(), "{out:?}");
}

// ---- 6. Root's `baton ctl` did not find a baton run by systemd ----

/// A system service has no `XDG_RUNTIME_DIR`, so its baton listens at
/// `/run/baton/NAME.sock`; root's login shell has `XDG_RUNTIME_DIR=/run/user/0`,
/// and `baton ctl --name NAME` typed there looked only under it: "no baton
/// is running". ctl now also looks where a baton without the variable is.
#[test]
fn ctl_finds_a_baton_started_without_xdg_runtime_dir() {
    let name = format!("newcomer-{}", std::process::id());
    let baton = BatonCmd::new()
        .env("XDG_RUNTIME_DIR", "")
        .args(["--name", &name])
        .probe(&[])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let shell_runtime_dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(bin("baton"));
    cmd.env("XDG_RUNTIME_DIR", shell_runtime_dir.path())
        .args(["ctl", "--name", &name, "status"]);
    let out = baton_e2e::tools::run_bounded(cmd, WAIT);
    assert!(
        out.status.success(),
        "{out:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("serving generation 1"));
    // Nowhere at all: both places are named.
    let mut cmd = Command::new(bin("baton"));
    cmd.env("XDG_RUNTIME_DIR", shell_runtime_dir.path()).args([
        "ctl",
        "--name",
        "no-such-baton",
        "status",
    ]);
    let out = baton_e2e::tools::run_bounded(cmd, WAIT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{err}");
    assert!(err.contains(", nor "), "{err}");
}
