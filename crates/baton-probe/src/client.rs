//! One-shot client modes, so tests need no other tool to poke at baton
//! from another process (another uid, a readiness command).

use std::io::{Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::time::Duration;

/// `--send-notify PATH MSG`: sends `msg` as one datagram to `path`.
/// Exit code: 0 sent, 3 permission denied (the socket or its directory is
/// closed to this user), 1 any other error.
pub fn send_notify(path: &Path, msg: &str) -> i32 {
    let sock = match UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("probe: cannot create a datagram socket: {e}");
            return 1;
        }
    };
    match sock.send_to(msg.as_bytes(), path) {
        Ok(_) => {
            println!("probe: sent {msg:?} to {}", path.display());
            0
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            println!(
                "probe: permission denied sending to {}: {e}",
                path.display()
            );
            3
        }
        Err(e) => {
            eprintln!("probe: cannot send to {}: {e}", path.display());
            1
        }
    }
}

/// `--get-unix PATH URL`: `GET URL` over the Unix socket `path`; exit 0
/// when the status is 200, 1 otherwise (bounded by a 5 s timeout).
pub fn get_unix(path: &Path, url: &str) -> i32 {
    let attempt = || -> std::io::Result<String> {
        let mut s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {url} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        Ok(String::from_utf8_lossy(&raw).into_owned())
    };
    match attempt() {
        Ok(reply) => {
            let status = reply.lines().next().unwrap_or_default().to_owned();
            if status.split(' ').nth(1) == Some("200") {
                0
            } else {
                eprintln!("probe: {} {url}: {status}", path.display());
                1
            }
        }
        Err(e) => {
            eprintln!("probe: {} {url}: {e}", path.display());
            1
        }
    }
}
