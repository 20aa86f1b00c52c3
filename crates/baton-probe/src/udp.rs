//! The probe's UDP side: every inherited UDP socket answers each datagram
//! with `gen=G worker=W pid=P: ` and the datagram itself, from the moment
//! the probe serves until it drains.
//!
//! The socket is shared with the supervisor and the other generations, so
//! it is read without blocking after `poll` says it is readable: another
//! process may have taken the datagram meanwhile (`EAGAIN`). On the stop
//! signal the loop stops reading at once; what is still queued is read by
//! the next generation, which shares the queue.

use std::net::UdpSocket;
use std::sync::Arc;

use rustix::event::{PollFd, PollFlags};

use crate::serve::Shared;

pub fn echo_loop(sock: &UdpSocket, shared: &Arc<Shared>) {
    if let Err(e) = sock.set_nonblocking(true) {
        eprintln!("probe: cannot make the UDP socket non-blocking: {e}");
        return;
    }
    let id = &shared.identity;
    let mut buf = vec![0u8; 65_536];
    loop {
        let mut fds = [
            PollFd::new(sock, PollFlags::IN),
            PollFd::new(shared.stop_fd(), PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                eprintln!("probe: poll on the UDP socket failed: {e}");
                return;
            }
        }
        if !fds[1].revents().is_empty() {
            return;
        }
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                let mut reply = format!(
                    "gen={} worker={} pid={}: ",
                    id.generation, id.worker, id.pid
                )
                .into_bytes();
                reply.extend_from_slice(&buf[..n]);
                if let Err(e) = sock.send_to(&reply, from) {
                    eprintln!("probe: cannot answer {from}: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("probe: cannot read the UDP socket: {e}");
                return;
            }
        }
    }
}
