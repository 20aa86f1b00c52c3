//! `--watch`: content-fingerprinted reloads, the development loop.

use std::path::Path;

use baton_e2e::{Baton, BatonCmd, Signal, WAIT, http};

fn write_atomically(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, content).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn start(dir_files: &[(&str, &str)], extra: &[&str]) -> Baton {
    let cmd = BatonCmd::new();
    let dir = cmd.dir().to_path_buf();
    let watched = dir.join("src");
    std::fs::create_dir(&watched).expect("mkdir");
    for (name, content) in dir_files {
        std::fs::write(watched.join(name), content).expect("write");
    }
    let baton = cmd
        .arg("--watch")
        .arg(&watched)
        .args(["--watch-debounce", "100ms"])
        .args(extra)
        .probe(&["--drain-ms", "50"])
        .spawn();
    baton.wait_for("watching ", WAIT);
    baton.wait_for("generation 1 ready", WAIT);
    baton
}

#[test]
fn touch_and_identical_save_do_not_reload_but_a_content_change_does() {
    let baton = start(&[("a.conf", "alpha"), ("b.conf", "beta")], &[]);
    let src = baton.dir().join("src");
    let mark = baton.mark();
    // No content change: a touch (mtime only) and an identical atomic save.
    let f = std::fs::File::options()
        .append(true)
        .open(src.join("a.conf"))
        .expect("open");
    f.set_modified(std::time::SystemTime::now()).expect("touch");
    drop(f);
    write_atomically(&src.join("a.conf"), "alpha");
    // A real change to the other file.
    write_atomically(&src.join("b.conf"), "beta 2");
    let (_, line) = baton.wait_for_after(mark, "watch: fingerprint", WAIT);
    assert!(
        line.contains("b.conf changed") && !line.contains("a.conf"),
        "{line}"
    );
    baton.wait_for_after(mark, "generation 2 ready", WAIT);
    baton.wait_for_after(mark, "generation 1 exited", WAIT);
    // Exactly one reload came of all that.
    let lines = baton.lines();
    let reloads = lines[mark..]
        .iter()
        .filter(|l| l.contains("watch: fingerprint"))
        .count();
    assert_eq!(reloads, 1, "{:#?}", &lines[mark..]);
    assert_eq!(http::get_ok(baton.port(), "/").generation(), Some(2));
}

#[test]
fn a_broken_change_rolls_back_and_the_next_good_one_reloads() {
    let baton = start(&[("app.conf", "good"), ("other.conf", "x")], &[]);
    let src = baton.dir().join("src");
    // The next generation will fail to start, as a broken build would.
    baton.set_script("--exit-at-start 2");
    let mark = baton.mark();
    write_atomically(&src.join("app.conf"), "broken");
    baton.wait_for_after(mark, "reload failed: generation 2", WAIT);
    assert_eq!(http::get_ok(baton.port(), "/").generation(), Some(1));
    // Fixed: the next change reloads.
    baton.clear_script();
    let mark = baton.mark();
    write_atomically(&src.join("app.conf"), "good again");
    baton.wait_for_after(mark, "generation 3 ready", WAIT);
    baton.wait_for_after(mark, "generation 1 exited", WAIT);
    assert_eq!(http::get_ok(baton.port(), "/").generation(), Some(3));
}

/// An empty watched directory is said to be empty (it looked like a
/// mistake: "watching 0 file(s)"), and the first file to appear reloads.
#[test]
fn an_empty_watched_directory_is_said_and_its_first_file_reloads() {
    let mut baton = start(&[], &[]);
    baton.wait_for("nothing to watch yet under", WAIT);
    let mark = baton.mark();
    write_atomically(&baton.dir().join("src").join("app.conf"), "first");
    baton.wait_for_after(mark, "generation 2 ready", WAIT);
    assert_eq!(http::get_ok(baton.port(), "/").generation(), Some(2));
    let status = baton.stop(Signal::TERM, WAIT);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn ignored_files_never_reload() {
    let baton = start(
        &[("main.py", "v1"), ("cache.pyc", "c1")],
        &["--watch-ignore", "*.pyc"],
    );
    let src = baton.dir().join("src");
    let mark = baton.mark();
    write_atomically(&src.join("cache.pyc"), "c2");
    write_atomically(&src.join("main.py"), "v2");
    let (_, line) = baton.wait_for_after(mark, "watch: fingerprint", WAIT);
    assert!(
        line.contains("main.py changed") && !line.contains("cache.pyc"),
        "{line}"
    );
    baton.wait_for_after(mark, "generation 2 ready", WAIT);
    baton.signal(Signal::TERM);
}

#[test]
fn watching_a_missing_path_is_a_usage_error() {
    let (status, lines) = BatonCmd::new()
        .args(["--watch", "/nonexistent/dir/file"])
        .probe(&[])
        .run_to_exit(WAIT);
    assert_eq!(status.code(), Some(2), "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("--watch /nonexistent/dir/file") && l.contains("exists")),
        "{lines:#?}"
    );
    // A usage error: nothing was bound or started.
    assert!(
        !lines.iter().any(|l| l.contains("listening on")),
        "{lines:#?}"
    );
}

/// Writes `name` in `dir` (not watched: the test's own marker), then waits
/// until baton has looked at its events, so that every event before it has
/// been handled too.
fn handled(baton: &Baton, mark: usize, dir: &Path, name: &str) {
    std::fs::write(dir.join(name), "").expect("write the sentinel");
    baton.wait_until_after(mark, "the sentinel's events", WAIT, |l| {
        l.contains("events without a content change") && l.contains(name)
    });
}

#[test]
fn a_configmap_volume_update_reloads_once() {
    // `--watch /etc/app` on a ConfigMap volume: the kubelet writes a new
    // hidden directory and renames a new `..data` symlink over the old one;
    // the file names are links through `..data`.
    let cmd = BatonCmd::new();
    let volume_dir = cmd.dir().join("configmap");
    let mut volume =
        baton_e2e::configmap::Volume::new(&volume_dir, &[("app.conf", "v1"), ("other.conf", "x")]);
    let baton = cmd
        .arg("--watch")
        .arg(&volume_dir)
        .args(["--watch-debounce", "100ms", "--watch-ignore", "*.sentinel"])
        .probe(&["--drain-ms", "50"])
        .spawn();
    baton.wait_for("watching 2 file(s)", WAIT);
    baton.wait_for("generation 1 ready", WAIT);
    let mark = baton.mark();
    let old = volume
        .update(&[("app.conf", "v2"), ("other.conf", "x")])
        .expect("an old version");
    let (_, line) = baton.wait_for_after(mark, "watch: fingerprint", WAIT);
    assert!(
        line.contains("app.conf") && !line.contains("other.conf") && !line.contains("..2"),
        "the change is named by the file the volume shows: {line}"
    );
    baton.wait_for_after(mark, "generation 2 ready", WAIT);
    // The kubelet removes the old version last.
    volume.remove_old(&old);
    handled(&baton, mark, &volume_dir, "done.sentinel");
    let lines = baton.lines();
    let reloads = lines[mark..]
        .iter()
        .filter(|l| l.contains("watch: fingerprint"))
        .count();
    assert_eq!(reloads, 1, "one update, one reload: {:#?}", &lines[mark..]);
    assert_eq!(http::get_ok(baton.port(), "/").generation(), Some(2));
}

#[test]
fn a_swapped_current_symlink_reloads_and_is_followed() {
    // A symlink deploy: `--watch current`, `current` renamed over to lead
    // to the next release; then an edit in the new release reloads, and an
    // edit in the old one does not.
    use std::os::unix::fs::symlink;
    let cmd = BatonCmd::new();
    let dir = cmd.dir().to_path_buf();
    for r in ["1", "2"] {
        std::fs::create_dir_all(dir.join("releases").join(r)).expect("mkdir");
        std::fs::write(dir.join("releases").join(r).join("app.conf"), r).expect("write");
    }
    symlink("releases/1", dir.join("current")).expect("link");
    let baton = cmd
        .arg("--watch")
        .arg(dir.join("current"))
        .args(["--watch-debounce", "100ms", "--watch-ignore", "*.sentinel"])
        .probe(&["--drain-ms", "50"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let mark = baton.mark();
    symlink("releases/2", dir.join("current.new")).expect("link");
    std::fs::rename(dir.join("current.new"), dir.join("current")).expect("swap current");
    let (_, line) = baton.wait_for_after(mark, "watch: fingerprint", WAIT);
    assert!(line.contains("current/app.conf"), "{line}");
    baton.wait_for_after(mark, "generation 2 ready", WAIT);
    // The old release is not watched any more; the new one is.
    let mark = baton.mark();
    write_atomically(&dir.join("releases/1/app.conf"), "1, edited");
    handled(&baton, mark, &dir.join("releases/2"), "a.sentinel");
    assert!(
        !baton.seen_after(mark, "watch: fingerprint"),
        "{:#?}",
        &baton.lines()[mark..]
    );
    write_atomically(&dir.join("releases/2/app.conf"), "2, edited");
    baton.wait_for_after(mark, "generation 3 ready", WAIT);
}
