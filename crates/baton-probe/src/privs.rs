//! What a worker may do, for the `--user` tests: `/identity` (who it is
//! and which capabilities it holds, as the kernel says in
//! `/proc/self/status`) and `/try?...` (an operation attempted, and how it
//! went).

use std::fmt::Write as _;

/// `Uid:`, `Gid:`, `Groups:`, the `Cap*:` lines and `NoNewPrivs:` of
/// `/proc/self/status`, as they are.
pub fn identity() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mut out = String::new();
    for line in status.lines() {
        let key = line.split(':').next().unwrap_or_default();
        if matches!(key, "Uid" | "Gid" | "Groups" | "NoNewPrivs") || key.starts_with("Cap") {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

/// `/try?kill=PID` (signal 0: the permission check alone, nothing is
/// delivered), `/try?connect=PATH` (a Unix stream socket), `/try?bind=ADDR`
/// (a TCP socket): `ok`, or `error: ...` with the OS's reason.
pub fn attempt(kill: Option<&str>, connect: Option<&str>, bind: Option<&str>) -> String {
    let result: Result<(), String> = if let Some(pid) = kill {
        pid.parse::<i32>()
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| format!("{pid:?} is not a pid"))
            .and_then(|p| {
                rustix::process::test_kill_process(p)
                    .map_err(|e| std::io::Error::from(e).to_string())
            })
    } else if let Some(path) = connect {
        std::os::unix::net::UnixStream::connect(path)
            .map(drop)
            .map_err(|e| e.to_string())
    } else if let Some(addr) = bind {
        std::net::TcpListener::bind(addr)
            .map(drop)
            .map_err(|e| e.to_string())
    } else {
        Err("give kill=PID, connect=PATH or bind=ADDR".into())
    };
    match result {
        Ok(()) => "ok\n".into(),
        Err(e) => format!("error: {e}\n"),
    }
}
