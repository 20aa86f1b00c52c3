//! A worker that crashes while serving is restarted, with backoff.

use std::time::Duration;

use baton_e2e::{BatonCmd, WAIT, http};

/// The delay in `...; restarting in 200 ms`.
fn restart_delay(line: &str) -> Option<Duration> {
    let ms = line.split("restarting in ").nth(1)?.split(" ms").next()?;
    ms.trim().parse().ok().map(Duration::from_millis)
}

#[test]
fn crashed_worker_is_restarted_with_backoff() {
    let cmd = BatonCmd::new();
    // Every probe started while the script exists crashes 300 ms in, after
    // it reported ready: a crash while serving, not a failed start.
    std::fs::write(cmd.script_path(), "--exit-after 300ms").expect("write the probe script");
    let baton = cmd.probe(&["--drain-ms", "50"]).spawn();
    baton.wait_for("generation 1 ready", WAIT);

    let mut delays = Vec::new();
    let mut mark = 0;
    while delays.len() < 3 {
        // The contract's line is `worker 0 of generation 1 exited (...);
        // restarting in 100 ms`; accept the restart delay on a line of its
        // own too.
        let (i, line) = baton.wait_until_after(mark, "announcing a restart", WAIT, |l| {
            l.contains("worker 0 of generation 1") && l.contains("restarting in ")
        });
        let delay = restart_delay(&line).unwrap_or_else(|| panic!("no delay in {line:?}"));
        delays.push(delay);
        // ... and it is started again.
        let (started, _) = baton.wait_for_after(i, "worker 0 of generation 1 started", WAIT);
        mark = started;
    }
    assert!(
        delays.windows(2).all(|w| w[0] <= w[1]) && delays[0] < delays[2],
        "restart delays should back off: {delays:?}"
    );

    // Fixed: the first probe that starts without the script stays up and
    // serves. (The one just started may or may not have read the script
    // yet; its own start line says which.)
    baton.clear_script();
    let (_, line) =
        baton.wait_until_after(mark, "of a probe started without the script", WAIT, |l| {
            l.contains("probe gen=1 worker=0 ") && l.ends_with(" started")
        });
    let pid: u32 = line
        .split("pid=")
        .nth(1)
        .and_then(|p| p.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("a pid in the probe's start line");
    let port = baton.port();
    let reply = http::get_ok(port, "/");
    assert_eq!(reply.pid(), Some(pid), "{reply:?}");
    assert_eq!(reply.generation(), Some(1));
}
