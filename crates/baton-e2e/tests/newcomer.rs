//! Regression tests for the defects a second newcomer's pass found (trying
//! `--dispatch`, `ctl`, env files and upgrades by hand), each named after
//! its bug. Every one of them failed on the code before its fix.

use std::path::Path;

use baton_e2e::ctl::ctl_text as ctl;
use baton_e2e::{BatonCmd, WAIT, bin};

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
