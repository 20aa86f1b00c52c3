//! Every mistake in the contract's exit-code table gets its code and a
//! message that names the thing.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::process::ExitStatus;
use std::time::Duration;

use baton_e2e::BatonCmd;

/// Bad input must be refused quickly.
const EXIT: Duration = Duration::from_secs(20);

fn all(lines: &[String]) -> String {
    lines.join("\n")
}

/// Asserts the exit code and that some line contains each of `needles`.
fn assert_refused(status: ExitStatus, lines: &[String], code: i32, needles: &[&str]) {
    assert_eq!(
        status.code(),
        Some(code),
        "expected exit code {code}, got {status}; output:\n{}",
        all(lines)
    );
    for needle in needles {
        assert!(
            lines.iter().any(|l| l.contains(needle)),
            "no line mentions {needle:?}; output:\n{}",
            all(lines)
        );
    }
}

#[test]
fn malformed_listen_spec_exits_2_naming_the_spec() {
    let (status, lines) = BatonCmd::new()
        .listen("127.0.0.1:notaport")
        .probe(&[])
        .run_to_exit(EXIT);
    assert_refused(status, &lines, 2, &["127.0.0.1:notaport"]);
}

#[test]
fn port_in_use_exits_3_naming_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    let addr = taken.local_addr().expect("local addr").to_string();
    let (status, lines) = BatonCmd::new().listen(&addr).probe(&[]).run_to_exit(EXIT);
    assert_refused(status, &lines, 3, &[&addr]);
    drop(taken);
}

#[test]
fn missing_command_exits_4_naming_it() {
    let cmd = BatonCmd::new();
    let missing = cmd.dir().join("no-such-server");
    let missing = missing.to_str().expect("UTF-8 temp path").to_owned();
    let (status, lines) = cmd.command([&missing]).run_to_exit(EXIT);
    assert_refused(status, &lines, 4, &[&missing]);
}

#[test]
fn non_executable_command_exits_4_naming_it() {
    let cmd = BatonCmd::new();
    let script = cmd.dir().join("server.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").expect("write the file");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644))
        .expect("make it non-executable");
    let script = script.to_str().expect("UTF-8 temp path").to_owned();
    let (status, lines) = cmd.command([&script]).run_to_exit(EXIT);
    assert_refused(status, &lines, 4, &[&script]);
}

#[test]
fn zero_workers_exits_2() {
    let (status, lines) = BatonCmd::new()
        .args(["--workers", "0"])
        .probe(&[])
        .run_to_exit(EXIT);
    assert_refused(status, &lines, 2, &["workers"]);
}

#[test]
fn unknown_stop_signal_exits_2_naming_it() {
    let (status, lines) = BatonCmd::new()
        .args(["--stop-signal", "SIGBOGUS"])
        .probe(&[])
        .run_to_exit(EXIT);
    assert_refused(status, &lines, 2, &["SIGBOGUS"]);
}

#[test]
fn bad_duration_exits_2_naming_it() {
    let (status, lines) = BatonCmd::new()
        .args(["--grace", "soonish"])
        .probe(&[])
        .run_to_exit(EXIT);
    assert_refused(status, &lines, 2, &["soonish"]);
}

#[test]
fn no_command_exits_2() {
    let (status, lines) = BatonCmd::new().run_to_exit(EXIT);
    assert_refused(status, &lines, 2, &[]);
}

#[test]
fn first_generation_exiting_at_once_exits_5_with_its_last_lines() {
    let (status, lines) = BatonCmd::new()
        .probe(&["--exit-at-start", "3"])
        .run_to_exit(EXIT);
    assert_refused(status, &lines, 5, &["exiting with 3 as asked"]);
    // baton's own message carries the worker's last lines: some line
    // other than the probe's own (which starts with `probe:`) quotes them.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("configuration is broken (on purpose)") && !l.starts_with("probe:")),
        "baton's message should include the worker's last lines; output:\n{}",
        all(&lines)
    );
}

#[test]
fn first_generation_crashing_at_once_exits_5() {
    let (status, lines) = BatonCmd::new()
        .probe(&["--crash-at-start"])
        .run_to_exit(EXIT);
    assert_refused(status, &lines, 5, &["aborting as asked"]);
}

#[test]
fn first_generation_never_ready_exits_6_with_a_hint() {
    let (status, lines) = BatonCmd::new()
        .args(["--ready-timeout", "1s"])
        .probe(&["--never-ready"])
        .run_to_exit(EXIT);
    assert_refused(status, &lines, 6, &["NOTIFY_SOCKET", "--ready"]);
}

/// `--grace -1` (and `-w -1`, `--ready-timeout -5`) was "unexpected
/// argument '-1' found; tip: to pass '-1' as a value, use '-- -1'": the
/// value was taken for a flag, and the tip would have made it the
/// command. The value must be read and refused for what it is.
#[test]
fn a_negative_value_is_refused_as_a_value_not_as_an_unknown_flag() {
    for (flag, value, needle) in [
        ("--grace", "-1", "a duration cannot be negative"),
        ("--ready-timeout", "-5s", "a duration cannot be negative"),
        ("--workers", "-1", "\"-1\" is not a number of workers"),
    ] {
        let (status, lines) = BatonCmd::new()
            .args([flag, value])
            .probe(&[])
            .run_to_exit(EXIT);
        assert_refused(status, &lines, 2, &[needle]);
        assert!(
            !lines.iter().any(|l| l.contains("unexpected argument")),
            "{flag} {value}:\n{}",
            all(&lines)
        );
    }
    let mut ctl = std::process::Command::new(baton_e2e::bin("baton"));
    ctl.args(["ctl", "--control", "/nonexistent/baton.sock", "scale", "-1"]);
    let out = baton_e2e::tools::run_bounded(ctl, EXIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("\"-1\" is not a number of workers"),
        "{stderr}"
    );
}
