//! Security: symlinks at or swapped into a Unix socket's path never make
//! baton create or touch another file, and a worker's argv arrives byte
//! for byte. (The control-request and notify-message parsers are fuzzed by
//! `crates/baton-supervisor/tests/parsers_prop.rs` and `fuzz/`.)

use std::ffi::OsString;
use std::fmt::Write as _;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use baton_e2e::{BatonCmd, Signal, WAIT, bin, http};

/// A file the attacker wants baton to touch, and what it looked like.
struct Target {
    path: PathBuf,
    ino: u64,
    mode: u32,
    mtime: (i64, i64),
    content: Vec<u8>,
}

impl Target {
    fn new(dir: &Path) -> Self {
        let path = dir.join("victim");
        std::fs::write(&path, b"precious\n").expect("write the victim file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let m = std::fs::metadata(&path).expect("stat");
        Self {
            ino: m.ino(),
            mode: m.mode(),
            mtime: (m.mtime(), m.mtime_nsec()),
            content: b"precious\n".to_vec(),
            path,
        }
    }

    /// Panics if anything about the file changed.
    fn assert_untouched(&self, when: &str) {
        let m = std::fs::symlink_metadata(&self.path)
            .unwrap_or_else(|e| panic!("{when}: the victim file is gone: {e}"));
        assert!(
            m.file_type().is_file(),
            "{when}: the victim is no longer a file"
        );
        assert_eq!(m.ino(), self.ino, "{when}: the victim file was replaced");
        assert_eq!(
            m.mode(),
            self.mode,
            "{when}: the victim's mode changed to {:o}",
            m.mode()
        );
        assert_eq!(
            (m.mtime(), m.mtime_nsec()),
            self.mtime,
            "{when}: the victim was written"
        );
        assert_eq!(
            std::fs::read(&self.path).expect("read the victim"),
            self.content,
            "{when}: the victim's content changed"
        );
    }
}

/// A symlink already at the socket path: baton refuses to start (exit 3)
/// with a message that says so, and neither the existing target nor a
/// dangling one is touched or created.
#[test]
fn symlink_at_the_unix_socket_path_at_start_is_refused() {
    for dangling in [false, true] {
        let cmd = BatonCmd::new();
        // Outside baton's temp dir, which goes when baton's guard drops.
        let theirs = tempfile::tempdir().expect("a temp dir for the victim");
        let victim = Target::new(theirs.path());
        let elsewhere = theirs.path().join("would-be-created");
        let sock = theirs.path().join("web.sock");
        let to = if dangling { &elsewhere } else { &victim.path };
        std::os::unix::fs::symlink(to, &sock).expect("plant the symlink");
        let (status, lines) = cmd
            .listen(format!("unix:{}?mode=0666", sock.display()))
            .probe(&[])
            .run_to_exit(WAIT);
        assert_eq!(status.code(), Some(3), "{lines:#?}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("symbolic link") && l.contains("web.sock")),
            "the error should name the path and say it is a symlink: {lines:#?}"
        );
        victim.assert_untouched("after a refused start");
        assert!(
            std::fs::symlink_metadata(&elsewhere).is_err(),
            "baton created the dangling symlink's target"
        );
        assert!(
            std::fs::symlink_metadata(&sock).is_ok_and(|m| m.file_type().is_symlink()),
            "baton removed or replaced the symlink it refused"
        );
    }
}

/// Outcomes of racing a symlink against baton's bind.
#[derive(Debug, Default)]
struct Race {
    refused: u32,
    bound: u32,
    other: Vec<String>,
}

/// How baton is started for a race.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    Plain,
    /// Under `strace`, with every `chmod` delayed by 300 ms: the window
    /// between creating a file and chmodding it by path, made wide enough
    /// that a racer always gets in.
    SlowChmod,
}

/// Runs baton (a command that exits at once, so each start is short)
/// `rounds` times against `racer`, which flips something at the socket's
/// paths while baton binds; checks the victim after each round.
fn race(
    rounds: u32,
    start: Start,
    flip: impl Fn(&Path, &Path, &Path, u32) + Send + Sync + 'static,
) -> Race {
    let flip = Arc::new(flip);
    let mut race = Race::default();
    for round in 0..rounds {
        let cmd = BatonCmd::new();
        let theirs = tempfile::tempdir().expect("a temp dir for the victim");
        let victim = Target::new(theirs.path());
        let sock = cmd.dir().join("web.sock");
        let baton = cmd
            .listen(format!("unix:{}?mode=0666", sock.display()))
            .args(["--no-control"])
            .command(["true"]);
        // The racer starts before baton and runs until baton has exited.
        let stop = Arc::new(AtomicBool::new(false));
        let pid = Arc::new(AtomicU64::new(0));
        let racer = {
            let (stop, pid, flip) = (Arc::clone(&stop), Arc::clone(&pid), Arc::clone(&flip));
            let (sock, victim) = (sock.clone(), victim.path.clone());
            let dir = sock.parent().expect("a dir").to_path_buf();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    flip(&dir, &sock, &victim, pid.load(Ordering::Relaxed) as u32);
                }
            })
        };
        let mut running = match start {
            Start::Plain => baton.spawn(),
            Start::SlowChmod => baton.spawn_under(|argv, _| {
                let mut c = std::process::Command::new("strace");
                c.args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=chmod,fchmodat"])
                    .args(["-e", "inject=chmod,fchmodat:delay_enter=300000", "--"])
                    .args(argv);
                c
            }),
        };
        pid.store(u64::from(running.baton_pid()), Ordering::Relaxed);
        let status = running.wait_exit(WAIT);
        running.wait_output_closed(WAIT);
        stop.store(true, Ordering::Relaxed);
        racer.join().expect("the racer");
        let lines = running.lines();
        match status.code() {
            // Refused: the symlink was there when baton looked, or the
            // racer removed or replaced the file under it.
            Some(3) => race.refused += 1,
            // Bound, then the command (`true`) exited at once.
            Some(5) => race.bound += 1,
            other => race
                .other
                .push(format!("round {round}: exit {other:?}: {lines:?}")),
        }
        victim.assert_untouched(&format!("round {round} ({race:?})"));
    }
    race
}

/// A symlink to a victim file swapped in and out at the socket path while
/// baton checks and binds it, 40 times: baton either refuses the symlink
/// or replaces it with its socket (the rename over a symlink replaces the
/// link itself), and never creates, chmods or writes the victim.
#[test]
fn symlink_swapped_in_at_the_unix_socket_path_never_touches_its_target() {
    let seen = race(40, Start::Plain, |dir, sock, victim, _| {
        let link = dir.join("link.tmp");
        let _ = std::fs::remove_file(&link);
        if std::os::unix::fs::symlink(victim, &link).is_ok() {
            let _ = std::fs::rename(&link, sock);
        }
        let _ = std::fs::remove_file(sock);
    });
    eprintln!("[e2e] path race: {seen:?}");
    assert!(seen.other.is_empty(), "{seen:?}");
    assert_eq!(seen.refused + seen.bound, 40, "{seen:?}");
}

/// The same, at the temporary name baton binds before renaming it into
/// place (`DIR/.NAME.baton-PID.tmp`, predictable from baton's pid): a
/// symlink put there after the bind must not make baton chmod (or rename
/// into place) something other than its own socket. Anyone who can write
/// to the socket's directory could otherwise have baton (often root) chmod
/// any file to the socket's mode. baton runs under `strace` with its
/// `chmod`s delayed by 300 ms, so the racer, which swaps the symlink in
/// the moment the socket appears, never misses the window: 3 rounds.
#[test]
fn symlink_swapped_in_at_the_temporary_socket_name_never_touches_its_target() {
    assert!(
        baton_e2e::tools::which("strace").is_some(),
        "this test needs strace (Debian package strace)"
    );
    let seen = race(3, Start::SlowChmod, |dir, _, victim, pid| {
        if pid == 0 {
            return;
        }
        // Aimed at the window: the moment baton's socket exists under the
        // temporary name, a symlink (made beforehand) replaces it.
        let tmp = dir.join(format!(".web.sock.baton-{pid}.tmp"));
        let link = dir.join("link.tmp");
        if std::fs::symlink_metadata(&link).is_err() {
            let _ = std::os::unix::fs::symlink(victim, &link);
        }
        if std::fs::symlink_metadata(&tmp).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::rename(&link, &tmp);
        }
    });
    eprintln!("[e2e] temporary-name race: {seen:?}");
    assert_eq!(seen.refused + seen.bound, 3, "{seen:?}");
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Arguments that are not UTF-8, empty, with spaces, newlines, control
/// bytes, or that look like baton's own flags: the worker's argv is byte
/// for byte what was given after `--`, in every generation.
#[test]
fn argv_arrives_byte_identical_including_non_utf8() {
    let cmd = BatonCmd::new();
    let odd: Vec<OsString> = [
        &b"\xff\xfe"[..],
        b"",
        b" two  spaces ",
        b"new\nline",
        b"caf\xc3\xa9",
        b"--workers",
        b"-l",
        b"\x01\x7f\x80",
        b"%s%n$HOME",
        b"--",
    ]
    .iter()
    .map(|b| OsString::from_vec(b.to_vec()))
    .collect();
    let mut argv: Vec<OsString> = vec![
        bin("baton-probe").into(),
        "--script".into(),
        cmd.script_path().into(),
        "--drain-ms".into(),
        "50".into(),
        "--".into(),
    ];
    argv.extend(odd);
    let baton = cmd.command(&argv).spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let want: Vec<String> = argv.iter().map(|a| hex(a.as_bytes())).collect();
    let got = |g: u32| {
        let r = http::get_ok(baton.port(), "/argv");
        assert_eq!(r.generation(), Some(g));
        r.body.lines().map(str::to_owned).collect::<Vec<String>>()
    };
    assert_eq!(got(1), want, "generation 1's argv, as hex");
    baton.reload(2, WAIT);
    assert_eq!(got(2), want, "generation 2's argv, as hex");
    let mut baton = baton;
    assert_eq!(baton.stop(Signal::TERM, WAIT).code(), Some(0));
}
