//! Symlink deploys with code in the release: `releases/1` and `releases/2`
//! each hold their own `server` (a script that says which release it is and
//! runs the probe), `current` points at one of them, and baton runs
//! `--chdir current -- ./server`. A reload after switching `current` runs
//! the new generation wholly from the new release (its program, its
//! working directory); switching back and reloading rolls back.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use baton_e2e::{Baton, BatonCmd, WAIT, bin, http};

/// Switches `link` to `target` atomically: a new symlink, then rename.
fn point(link: &Path, target: &Path) {
    let tmp = link.with_extension("new");
    symlink(target, &tmp).expect("create the new symlink");
    std::fs::rename(&tmp, link).expect("switch the symlink atomically");
}

fn release(root: &Path, n: u32) -> PathBuf {
    let dir = root.join("releases").join(n.to_string());
    std::fs::create_dir_all(&dir).expect("create the release");
    let server = dir.join("server");
    std::fs::write(
        &server,
        format!(
            "#!/bin/sh\nRELEASE={n} exec {} --drain-ms 50 \"$@\"\n",
            bin("baton-probe").display()
        ),
    )
    .expect("write the release's server");
    std::fs::set_permissions(&server, std::fs::Permissions::from_mode(0o755))
        .expect("make it executable");
    dir.canonicalize().expect("resolve the release")
}

/// Every worker of generation `g` runs release `n`'s program (its
/// environment says `RELEASE=n`) in release `n`'s directory, and answers
/// from there.
fn assert_runs_from(baton: &Baton, g: u32, n: u32, dir: &Path) {
    let workers = baton.workers_of(g);
    assert!(!workers.is_empty(), "generation {g} has workers");
    for w in workers {
        let environ = std::fs::read(format!("/proc/{}/environ", w.pid)).expect("read environ");
        let release = format!("RELEASE={n}");
        assert!(
            environ.split(|&b| b == 0).any(|v| v == release.as_bytes()),
            "worker {} of generation {g} does not run release {n}",
            w.pid
        );
        let cwd = std::fs::read_link(format!("/proc/{}/cwd", w.pid)).expect("read cwd");
        assert_eq!(cwd, dir, "worker {} of generation {g}", w.pid);
    }
    let env = http::get_ok(baton.port(), "/env");
    assert_eq!(env.generation(), Some(g));
    assert_eq!(env.var("CWD").map(Path::new), Some(dir), "{}", env.body);
}

#[test]
fn deploy_release_2_then_roll_back_to_release_1() {
    let cmd = BatonCmd::new();
    let one = release(cmd.dir(), 1);
    let two = release(cmd.dir(), 2);
    let current = cmd.dir().join("current");
    point(&current, &one);

    let baton = cmd
        .args(["--workers", "2", "--chdir"])
        .arg(&current)
        .command(["./server"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    assert_runs_from(&baton, 1, 1, &one);

    point(&current, &two);
    baton.reload(2, WAIT);
    assert_runs_from(&baton, 2, 2, &two);

    point(&current, &one);
    baton.reload(3, WAIT);
    assert_runs_from(&baton, 3, 1, &one);
}
