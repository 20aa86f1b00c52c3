//! The workers' environment: `--env`, `--env-file` (read again on every
//! reload), `--clear-env` with `--keep-env`, in that order of precedence,
//! and all of it carried across an in-place upgrade.

use baton_e2e::{Baton, BatonCmd, WAIT, ctl, http};

fn env_of(baton: &Baton) -> http::Reply {
    http::get_ok(baton.port(), "/env?all=1")
}

fn start_layered() -> (Baton, std::path::PathBuf) {
    let cmd = BatonCmd::new();
    let file = cmd.dir().join("app.env");
    std::fs::write(
        &file,
        "# the app's settings\nFROM_FILE=1\nOVERRIDDEN=file\nexport QUOTED=\"two words\"\nLC_TIME=from-file\n",
    )
    .expect("write the env file");
    let baton = cmd
        .env("SECRET", "do-not-pass")
        .env("LC_NUMERIC", "C")
        .env("LANG", "C.UTF-8")
        .arg("--env-file")
        .arg(&file)
        .args([
            "--clear-env",
            "--keep-env",
            "LC_*",
            "--env",
            "OVERRIDDEN=flag",
        ])
        .probe(&["--drain-ms", "50"])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    (baton, file)
}

fn assert_layered(env: &http::Reply) {
    let body = &env.body;
    assert_eq!(env.var("FROM_FILE"), Some("1"), "{body}");
    assert_eq!(env.var("OVERRIDDEN"), Some("flag"), "--env wins: {body}");
    assert_eq!(env.var("QUOTED"), Some("two words"), "{body}");
    assert_eq!(
        env.var("LC_TIME"),
        Some("from-file"),
        "the file wins over baton's: {body}"
    );
    assert_eq!(env.var("LC_NUMERIC"), Some("C"), "--keep-env LC_*: {body}");
    assert_eq!(env.var("LANG"), Some("C.UTF-8"), "always kept: {body}");
    assert!(env.var("PATH").is_some(), "always kept: {body}");
    assert_eq!(env.var("SECRET"), None, "--clear-env: {body}");
    assert_eq!(env.var("BATON_LOG"), None, "--clear-env: {body}");
    // What baton sets itself is there whatever is cleared.
    assert_eq!(env.var("LISTEN_FDS"), Some("1"), "{body}");
    assert!(env.var("NOTIFY_SOCKET").is_some(), "{body}");
}

#[test]
fn env_file_clear_env_and_env_layer_in_order_and_the_file_is_read_on_reload() {
    let (baton, file) = start_layered();
    assert_layered(&env_of(&baton));

    // A reload reads the file again (no config file needed).
    std::fs::write(
        &file,
        "FROM_FILE=2\nOVERRIDDEN=file\nQUOTED='two words'\nLC_TIME=from-file\n",
    )
    .expect("rewrite the env file");
    baton.reload(2, WAIT);
    let env = env_of(&baton);
    assert_eq!(env.var("FROM_FILE"), Some("2"), "{}", env.body);
    assert_eq!(env.var("QUOTED"), Some("two words"), "{}", env.body);

    // A broken file refuses the reload, naming the line and column, and
    // generation 2 serves on.
    std::fs::write(&file, "FROM_FILE=3\nnot a variable\n").expect("break the env file");
    let out = ctl::ctl(&baton, &["reload"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(12), "{text}");
    assert!(
        text.contains("app.env:2:1: expected KEY=VALUE"),
        "the refusal names the place: {text}"
    );
    assert_eq!(env_of(&baton).var("FROM_FILE"), Some("2"));
}

#[test]
fn the_environment_survives_an_upgrade_in_place() {
    let (baton, _file) = start_layered();
    let out = ctl::ctl(&baton, &["upgrade"]);
    assert!(out.status.success(), "{out:?}");
    // The next generation is started by the new image, from the settings
    // and the base environment the old one had.
    baton.reload(2, WAIT);
    let env = env_of(&baton);
    assert_eq!(env.var("BATON_GENERATION"), Some("2"), "{}", env.body);
    assert_layered(&env);
}

#[test]
fn env_mistakes_are_refused_at_start_with_the_fix() {
    let cmd = BatonCmd::new();
    let missing = cmd.dir().join("missing.env");
    let (status, lines) = cmd
        .arg("--env-file")
        .arg(&missing)
        .probe(&[])
        .run_to_exit(WAIT);
    assert_eq!(status.code(), Some(2), "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("cannot read the env file") && l.contains("create it")),
        "{lines:#?}"
    );
    for (args, want) in [
        (
            vec!["--keep-env", "LC_*"],
            "does nothing without --clear-env",
        ),
        (
            vec!["--clear-env", "--keep-env", "A-B"],
            "give a variable name",
        ),
        (vec!["--env", "=x"], "is not K=V"),
    ] {
        let (status, lines) = BatonCmd::new().args(&args).probe(&[]).run_to_exit(WAIT);
        assert_eq!(status.code(), Some(2), "{args:?}: {lines:#?}");
        assert!(
            lines.iter().any(|l| l.contains(want)),
            "{args:?}: no {want:?} in {lines:#?}"
        );
    }
}
