//! Deploying by switching a symlink (hupwatch's model): `--chdir` is
//! resolved at each generation's start, so a reload picks up the new
//! release and the previous release stays one symlink away.

use std::os::unix::fs::symlink;
use std::path::Path;

use baton_e2e::{BatonCmd, WAIT, http};

fn point(link: &Path, target: &Path) {
    let tmp = link.with_extension("new");
    symlink(target, &tmp).expect("create the new symlink");
    std::fs::rename(&tmp, link).expect("switch the symlink atomically");
}

#[test]
fn chdir_symlink_is_resolved_at_each_generation_start() {
    let cmd = BatonCmd::new();
    let a = cmd.dir().join("releases/a");
    let b = cmd.dir().join("releases/b");
    std::fs::create_dir_all(&a).expect("release a");
    std::fs::create_dir_all(&b).expect("release b");
    let current = cmd.dir().join("current");
    point(&current, &a);
    let a = a.canonicalize().expect("resolve a");
    let b = b.canonicalize().expect("resolve b");

    let baton = cmd
        .arg("--chdir")
        .arg(&current)
        .probe(&["--drain-ms", "50"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    let port = baton.port();
    let cwd = |expect: &Path| {
        let env = http::get_ok(port, "/env");
        assert_eq!(env.var("CWD").map(Path::new), Some(expect), "{}", env.body);
    };
    cwd(&a);

    point(&current, &b);
    // Generation 1 keeps its directory until it is replaced.
    cwd(&a);
    baton.reload(2, WAIT);
    cwd(&b);

    // Rollback by switching back.
    point(&current, &a);
    baton.reload(3, WAIT);
    cwd(&a);
}
