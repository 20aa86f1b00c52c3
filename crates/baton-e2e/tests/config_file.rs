//! `baton run --config FILE`: the file is read again on every reload; a bad
//! file refuses the reload (line and column) and changes nothing; listeners
//! are diffed by name: kept (same socket), added (bound before the new
//! generation), removed (closed once the generations that have them are
//! gone); flags on the command line beat the file.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use baton_e2e::ctl::ctl_text as ctl;
use baton_e2e::tools::run_bounded;
use baton_e2e::{Baton, BatonCmd, Signal, WAIT, bin, http, inspect};
use baton_load::{Config, Target};

/// Writes the config file (atomically: a reload never reads half of it).
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write the config");
    std::fs::rename(&tmp, path).expect("install the config");
}

fn probe_command(script: &Path, extra: &str) -> String {
    format!(
        "command = [\"{}\", \"--script\", \"{}\", \"--drain-ms\", \"100\"{extra}]\n",
        bin("baton-probe").display(),
        script.display()
    )
}

/// A baton whose settings all come from `baton.toml` in its temp dir.
fn start(text_for: impl FnOnce(&Path) -> String, flags: &[&str]) -> (Baton, PathBuf) {
    let cmd = BatonCmd::new().listeners_from_config();
    let file = cmd.dir().join("baton.toml");
    write_config(&file, &text_for(&cmd.script_path()));
    let baton = cmd.arg("--config").arg(&file).args(flags).spawn();
    baton.wait_for("generation 1 ready", WAIT);
    (baton, file)
}

fn web_listener() -> &'static str {
    "[[listen]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\n"
}

#[test]
fn a_bad_file_at_start_exits_2_with_line_and_column() {
    let cmd = BatonCmd::new().listeners_from_config();
    let file = cmd.dir().join("baton.toml");
    write_config(&file, "workers = 2\nwokers = 3\n");
    let (status, lines) = cmd.arg("--config").arg(&file).run_to_exit(WAIT);
    assert_eq!(status.code(), Some(2), "{lines:?}");
    let all = lines.join("\n");
    assert!(all.contains("baton.toml:2:1:"), "{all}");
    assert!(all.contains("unknown field `wokers`"), "{all}");
}

#[test]
fn check_config_reports_what_the_file_sets_or_where_it_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("baton.toml");
    write_config(
        &file,
        &format!(
            "command = [\"sleep\", \"1000\"]\nworkers = 2\n{}",
            web_listener()
        ),
    );
    let mut cmd = Command::new(bin("baton"));
    cmd.arg("check-config").arg(&file);
    let out = run_bounded(cmd, WAIT);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains(": ok"), "{text}");
    assert!(text.contains("listen: web=127.0.0.1:0"), "{text}");
    assert!(text.contains("fingerprint: "), "{text}");

    write_config(&file, "grace = \"5 parsecs\"\n");
    let mut cmd = Command::new(bin("baton"));
    cmd.arg("check-config").arg(&file);
    let out = run_bounded(cmd, WAIT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(err.contains("baton.toml:1:9: grace:"), "{err}");
}

/// A file that does not parse, or does not validate, refuses the reload
/// with its line and column; nothing changes and generation 1 serves on.
#[test]
fn a_bad_file_refuses_the_reload_and_changes_nothing() {
    let (baton, file) = start(
        |script| format!("{}{}", probe_command(script, ""), web_listener()),
        &[],
    );
    let good = std::fs::read_to_string(&file).expect("read");
    for (bad, at) in [
        (format!("{good}workers = 0\n"), "baton.toml:"),
        (format!("{good}[[listen\n"), "baton.toml:"),
        (
            good.replace("baton-probe\"", "no-such-probe\""),
            "cannot run the command",
        ),
    ] {
        write_config(&file, &bad);
        let (code, out) = ctl(&baton, &["reload"]);
        assert_eq!(code, Some(12), "{out}");
        assert!(out.contains("reload refused"), "{out}");
        assert!(out.contains(at), "{out}");
        assert!(out.contains("nothing changed"), "{out}");
    }
    // HUP is refused the same way (logged).
    let mark = baton.mark();
    baton.signal(Signal::HUP);
    baton.wait_for_after(mark, "reload refused", WAIT);
    assert_eq!(baton.count("generation 2"), 0, "no generation started");
    assert_eq!(
        http::get_ok(baton.port_of("web"), "/").generation(),
        Some(1)
    );
    // Fixed, the next reload works.
    write_config(&file, &good);
    let (code, out) = ctl(&baton, &["reload"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        http::get_ok(baton.port_of("web"), "/").generation(),
        Some(2)
    );
}

/// An added listener is bound before the new generation starts and only
/// the new generation gets it; the unchanged one keeps its socket; under
/// load on the unchanged one, no request fails.
#[test]
fn an_added_listener_is_served_by_the_new_generation_only() {
    let (mut baton, file) = start(
        // Generation 1 ignores SIGTERM, so it is still there to be looked
        // at after the reload (it is killed at the grace: long enough that a
        // slow machine still finds it there).
        |script| {
            std::fs::write(script, "--ignore-term").expect("write the probe script");
            format!("{}{}", probe_command(script, ""), web_listener())
        },
        &["--workers", "2", "--grace", "60s"],
    );
    std::fs::remove_file(baton.script_path()).expect("generation 2 behaves");
    let web = baton.port_of("web");
    let old = baton.workers_of(1);
    let inode = inspect::socket_inode(old[0].pid, 3).expect("fd 3 is a socket");
    let mut cfg = Config::new(Target::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, web))));
    cfg.concurrency = 4;
    let load = baton_load::start(cfg);
    assert!(load.wait_for_generation("1", WAIT).is_some());

    let text = std::fs::read_to_string(&file).expect("read");
    write_config(
        &file,
        &format!("{text}[[listen]]\nname = \"admin\"\naddress = \"127.0.0.1:0\"\n"),
    );
    let (code, out) = ctl(&baton, &["reload"]);
    assert_eq!(code, Some(0), "{out}");
    // The verdict comes over the control socket; the lines naming the new
    // workers come over baton's output and may still be on their way.
    baton.wait_for("generation 2 ready", WAIT);
    let admin = baton.port_of("admin");
    let reply = http::get_ok(admin, "/env");
    assert_eq!(
        reply.generation(),
        Some(2),
        "the new generation serves admin"
    );
    assert_eq!(reply.var("LISTEN_FDS"), Some("2"));
    assert_eq!(reply.var("LISTEN_FDNAMES"), Some("web:admin"));
    for w in baton.workers_of(2) {
        assert_eq!(
            inspect::socket_inode(w.pid, 3),
            Some(inode),
            "web is the same socket in generation 2"
        );
    }
    // Generation 1 (draining now) never had admin.
    let new_worker = baton.workers_of(2)[0].pid;
    let admin_inode = inspect::socket_inodes(new_worker)
        .into_iter()
        .find(|(fd, _)| *fd == 4)
        .map_or_else(
            || {
                panic!(
                    "generation 2's worker {new_worker} has no fd 4: {:?}",
                    inspect::socket_inodes(new_worker)
                )
            },
            |(_, ino)| ino,
        );
    for w in &old {
        let sockets = inspect::socket_inodes(w.pid);
        assert!(
            !sockets.is_empty(),
            "generation 1's worker {} is still there",
            w.pid
        );
        assert!(
            sockets.iter().all(|(_, ino)| *ino != admin_inode),
            "generation 1's worker {} holds the new listener: {sockets:?}",
            w.pid
        );
    }
    // (Stopped before generation 1, which ignores SIGTERM, is killed: its
    // keep-alive connections are reset then.)
    let report = load.stop();
    assert_eq!(report.failed, 0, "{report}");
    assert!(
        baton.count("generation 1 exited") == 0,
        "generation 1 was still draining"
    );
    // It would drain for the whole grace: an immediate stop ends it.
    assert_eq!(baton.stop(Signal::QUIT, WAIT).code(), Some(7));
}

/// A removed listener: a connection generation 1 accepted on it completes;
/// once generation 1 is gone, new connections to it are refused.
#[test]
fn a_removed_listener_finishes_what_it_accepted_then_closes() {
    let (baton, file) = start(
        |script| {
            format!(
                "{}{}[[listen]]\nname = \"old\"\naddress = \"127.0.0.1:0\"\n",
                probe_command(script, ""),
                web_listener()
            )
        },
        &["--grace", "10s"],
    );
    let old_port = baton.port_of("old");
    // A slow request on the listener that goes away, in flight across the
    // reload.
    let mut conn = TcpStream::connect((Ipv4Addr::LOCALHOST, old_port)).expect("connect");
    conn.write_all(b"GET /slow?ms=1500 HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    write_config(
        &file,
        &std::fs::read_to_string(&file).expect("read").replace(
            "[[listen]]\nname = \"old\"\naddress = \"127.0.0.1:0\"\n",
            "",
        ),
    );
    let (code, out) = ctl(&baton, &["reload"]);
    assert_eq!(code, Some(0), "{out}");
    // The verdict comes over the control socket; the line about the removed
    // listener (logged before the new generation starts) comes over baton's
    // output, and is among those before this one.
    baton.wait_for("generation 2 ready", WAIT);
    assert!(baton.seen_after(0, "listener old"), "{:?}", baton.lines());
    let env = http::get_ok(baton.port_of("web"), "/env");
    assert_eq!(env.generation(), Some(2));
    assert_eq!(env.var("LISTEN_FDNAMES"), Some("web"));
    // The request in flight is answered in full, not reset.
    let mut reply = Vec::new();
    conn.set_read_timeout(Some(WAIT)).expect("timeout");
    let _ = conn.read_to_end(&mut reply);
    let reply = http::parse(&reply).expect("a whole response");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.generation(), Some(1));
    baton.wait_for("generation 1 exited", WAIT);
    // Gone with the last generation that had it.
    let refused = TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, old_port)),
        Duration::from_secs(5),
    );
    assert!(refused.is_err(), "the removed listener still accepts");
}

/// Flags beat the file, on every reload; the command, workers and env of
/// the file take effect from the new generation on, and each generation's
/// config fingerprint is in `ctl status`.
/// `ctl scale 3`, then a reload for a deploy: a file that does not set
/// `workers` (or sets the same value as before) went back to its count,
/// 1 here, dropping the scaled workers at each deploy. A scaled count now
/// holds until the file changes `workers`.
#[test]
fn a_scaled_worker_count_holds_across_a_reload_until_the_file_changes_it() {
    let (baton, file) = start(
        |script| format!("{}{}", probe_command(script, ""), web_listener()),
        &[],
    );
    let workers = |baton: &Baton| -> u64 {
        let (_, json) = ctl(baton, &["status", "--json"]);
        let s: serde_json::Value = serde_json::from_str(&json).expect("status is JSON");
        s["workers_per_generation"].as_u64().expect("workers")
    };
    let (code, out) = ctl(&baton, &["scale", "3"]);
    assert_eq!(code, Some(0), "{out}");
    baton.reload(2, WAIT);
    assert_eq!(baton.workers_of(2).len(), 3, "the scaled count holds");
    assert_eq!(workers(&baton), 3);
    baton.wait_for("keeping 3 workers per generation, as scaled", WAIT);
    // The file now says how many: that wins, and holds.
    let text = std::fs::read_to_string(&file).expect("read");
    write_config(
        &file,
        &text.replacen("[[listen]]", "workers = 2\n[[listen]]", 1),
    );
    baton.reload(3, WAIT);
    assert_eq!(baton.workers_of(3).len(), 2, "the file's new count");
    let (code, out) = ctl(&baton, &["scale", "4"]);
    assert_eq!(code, Some(0), "{out}");
    baton.reload(4, WAIT);
    assert_eq!(baton.workers_of(4).len(), 4, "scaled again, file unchanged");
    assert_eq!(workers(&baton), 4);
}

#[test]
fn flags_beat_the_file_and_changes_apply_from_the_next_generation() {
    let (baton, file) = start(
        |script| {
            format!(
                "{}workers = 3\ngrace = \"5s\"\n[env]\nTEST_COLOUR = \"blue\"\n{}",
                probe_command(script, ""),
                web_listener()
            )
        },
        &["--workers", "2"],
    );
    assert_eq!(
        baton.workers_of(1).len(),
        2,
        "--workers 2 beats workers = 3"
    );
    let web = baton.port_of("web");
    assert_eq!(http::get_ok(web, "/env").var("TEST_COLOUR"), Some("blue"));
    let text = std::fs::read_to_string(&file).expect("read");
    write_config(
        &file,
        &text
            .replace("blue", "green")
            .replace("workers = 3", "workers = 4"),
    );
    let (code, out) = ctl(&baton, &["reload"]);
    assert_eq!(code, Some(0), "{out}");
    // The lines naming generation 2's workers all come before this one.
    baton.wait_for("generation 2 ready", WAIT);
    assert_eq!(
        baton.workers_of(2).len(),
        2,
        "still 2: the flag wins on reload too"
    );
    let env = http::get_ok(web, "/env");
    assert_eq!(env.generation(), Some(2));
    assert_eq!(env.var("TEST_COLOUR"), Some("green"));
    let (_, json) = ctl(&baton, &["status", "--json"]);
    assert!(json.contains("\"config\": \""), "{json}");
    // An identical reload keeps the fingerprint.
    let before: Vec<String> = json
        .lines()
        .filter(|l| l.contains("\"config\""))
        .map(str::to_owned)
        .collect();
    let (code, _) = ctl(&baton, &["reload"]);
    assert_eq!(code, Some(0));
    baton.wait_for("generation 2 exited", WAIT);
    let (_, json) = ctl(&baton, &["status", "--json"]);
    let after: Vec<String> = json
        .lines()
        .filter(|l| l.contains("\"config\""))
        .map(str::to_owned)
        .collect();
    assert_eq!(before.last(), after.last(), "same file, same fingerprint");
}
