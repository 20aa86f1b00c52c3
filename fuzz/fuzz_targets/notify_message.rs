//! A notify datagram of arbitrary bytes, through a real
//! `baton_supervisor::notify::NotifySocket`: what any process that can
//! reach a generation's `NOTIFY_SOCKET` may send. Receiving and reading it
//! must never panic; it arrives as one message from this process, its
//! text the first 4 KiB decoded lossily.
#![no_main]

use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;

use baton_supervisor::notify::NotifySocket;
use libfuzzer_sys::fuzz_target;

struct Pair {
    _dir: std::path::PathBuf,
    server: NotifySocket,
    client: UnixDatagram,
}

fn pair() -> &'static Pair {
    static PAIR: OnceLock<Pair> = OnceLock::new();
    PAIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("baton-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let path = dir.join("notify.sock");
        let server = NotifySocket::bind(&path).expect("bind a notify socket");
        let client = UnixDatagram::unbound().expect("a client socket");
        client.connect(&path).expect("connect");
        Pair { _dir: dir, server, client }
    })
}

fuzz_target!(|data: &[u8]| {
    let p = pair();
    if p.client.send(data).is_err() {
        // Larger than the socket's send buffer: nothing was sent.
        return;
    }
    let m = p
        .server
        .recv()
        .expect("recv")
        .expect("the datagram just sent");
    assert_eq!(m.pid, Some(std::process::id()));
    let kept = &data[..data.len().min(4096)];
    assert_eq!(m.text, String::from_utf8_lossy(kept));
    let _ = m.is_ready();
    let _ = m.get("MAINPID");
    let _ = m.get("STATUS");
    assert!(p.server.recv().expect("recv").is_none());
});
