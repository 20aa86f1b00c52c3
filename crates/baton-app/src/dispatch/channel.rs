//! The worker's end of its dispatch channel, without an async runtime: a
//! blocking (or non-blocking) `SOCK_SEQPACKET` socket that receives
//! connections (pass mode) or orders to accept (accept mode) from baton,
//! and carries the worker's answers back.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Mutex;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendFlags,
    SocketType,
};

use super::proto::{self, FromWorker, MAX_MESSAGE, Mode, ToWorker};

/// Why the dispatch channel could not be taken from the environment.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("{var}={value:?} is not a descriptor number", var = proto::FD_VAR)]
    BadFd { value: String },
    #[error("{var}={value:?}: {problem}", var = proto::MODE_VAR)]
    BadMode { value: String, problem: String },
    #[error("{fd_var} is set but {mode_var} is not: the worker cannot tell pass from accept", fd_var = proto::FD_VAR, mode_var = proto::MODE_VAR)]
    NoMode,
    #[error("cannot take the dispatch channel (fd {fd}): {source}")]
    Claim {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("fd {fd} ({var}) is not a Unix SOCK_SEQPACKET socket: it is {found}", var = proto::FD_VAR)]
    WrongKind { fd: RawFd, found: String },
}

/// A connection baton passed, by the family of its socket.
#[derive(Debug)]
pub enum Stream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Stream {
    /// Wraps a connected socket, TCP or Unix by its address family.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        let family = rustix::net::getsockname(&fd)?.address_family();
        if family == AddressFamily::UNIX {
            Ok(Stream::Unix(fd.into()))
        } else if family == AddressFamily::INET || family == AddressFamily::INET6 {
            Ok(Stream::Tcp(fd.into()))
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a passed connection of address family {family:?}"),
            ))
        }
    }

    /// Wraps a connection baton passed (or that a worker accepted when
    /// told to), with `TCP_NODELAY` set on a TCP one: small answers go out
    /// at once. Setting it is also how TCP is told from Unix here, without
    /// a `getsockname` for every connection (only a socket that refuses
    /// the option is asked its family).
    pub(crate) fn from_dispatched(fd: OwnedFd) -> io::Result<Self> {
        if rustix::net::sockopt::set_tcp_nodelay(&fd, true).is_ok() {
            return Ok(Stream::Tcp(fd.into()));
        }
        Self::from_fd(fd)
    }
}

/// What baton sent.
#[derive(Debug)]
pub enum Received {
    /// Pass mode: a connection, accepted by baton from listener `listener`
    /// (its `LISTEN_FDNAMES` name). Answer `taken ID` at once (before
    /// reading from it), and `done ID` once it is closed. The socket is
    /// non-blocking, as baton accepted it (a blocking server clears that
    /// with `set_nonblocking(false)`), and a TCP one has `TCP_NODELAY` set.
    Conn {
        id: u64,
        listener: String,
        stream: Stream,
    },
    /// Accept mode: accept one connection now, non-blocking, from the
    /// inherited listener at fd `3 + index`; answer `got ID` or `none ID`.
    Accept {
        id: u64,
        index: usize,
        listener: String,
    },
    /// Nothing more will come.
    End,
}

/// The worker's end of the channel (see the module docs).
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
    mode: Mode,
    /// Messages of a packet already read, not handed out yet.
    pending: Mutex<VecDeque<Received>>,
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl Channel {
    /// The channel baton set up for this worker (`BATON_DISPATCH_FD`,
    /// `BATON_DISPATCH`), claimed once and checked to be a Unix
    /// `SOCK_SEQPACKET` socket; `None` when baton runs the worker without
    /// `--dispatch`. The environment is read, never changed.
    pub fn from_env() -> Result<Option<Self>, DispatchError> {
        let Some(value) = std::env::var_os(proto::FD_VAR) else {
            return Ok(None);
        };
        let value = value.to_string_lossy().into_owned();
        let fd: RawFd = value.trim().parse().map_err(|_| DispatchError::BadFd {
            value: value.clone(),
        })?;
        let mode = match std::env::var(proto::MODE_VAR) {
            Ok(m) => m
                .parse::<Mode>()
                .map_err(|problem| DispatchError::BadMode { value: m, problem })?,
            Err(_) => return Err(DispatchError::NoMode),
        };
        let owned =
            baton_sys::fd::claim_fd(fd).map_err(|source| DispatchError::Claim { fd, source })?;
        Self::new(owned, mode)
            .map(Some)
            .map_err(|found| DispatchError::WrongKind { fd, found })
    }

    /// A channel from a descriptor (a test's socket pair, say); refused
    /// unless it is a Unix `SOCK_SEQPACKET` socket, with what it is instead.
    pub fn new(fd: OwnedFd, mode: Mode) -> Result<Self, String> {
        let kind =
            rustix::net::sockopt::socket_type(&fd).map_err(|e| format!("not a socket ({e})"))?;
        let family = rustix::net::getsockname(&fd)
            .map(|a| a.address_family())
            .map_err(|e| format!("a socket without an address ({e})"))?;
        if kind != SocketType::SEQPACKET || family != AddressFamily::UNIX {
            let kind = match kind {
                SocketType::STREAM => "stream",
                SocketType::DGRAM => "datagram",
                SocketType::SEQPACKET => "seqpacket",
                _ => "other",
            };
            let family = if family == AddressFamily::UNIX {
                "Unix"
            } else if family == AddressFamily::INET || family == AddressFamily::INET6 {
                "IP"
            } else {
                "other"
            };
            return Err(format!("a {family} {kind} socket"));
        }
        Ok(Self {
            fd,
            mode,
            pending: Mutex::new(VecDeque::new()),
        })
    }

    /// Pass or accept.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Makes `recv` and `send` return `WouldBlock` instead of waiting.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        rustix::io::ioctl_fionbio(&self.fd, on)?;
        Ok(())
    }

    /// Sends messages (in one packet, unless they are too many for one).
    pub fn send(&self, msgs: &[FromWorker]) -> io::Result<()> {
        send_on(self.fd.as_fd(), msgs)
    }

    /// `ready CREDITS`: this worker takes up to `credits` connections at
    /// once (1 for a server that serves one at a time).
    pub fn ready(&self, credits: u32) -> io::Result<()> {
        self.send(&[FromWorker::Ready { credits }])
    }

    /// The next message from baton; `None` when baton closed its end (it
    /// is gone: finish what you hold and exit).
    pub fn recv(&self) -> io::Result<Option<Received>> {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if let Some(m) = pending.pop_front() {
                return Ok(Some(m));
            }
            if !recv_into(self.fd.as_fd(), &mut pending)? {
                return Ok(None);
            }
        }
    }
}

/// Reads one packet from baton on `fd` and appends its messages to `out`
/// (more than one only after this worker said `batch`); `false` when baton
/// closed its end.
pub(crate) fn recv_into(fd: BorrowedFd<'_>, out: &mut VecDeque<Received>) -> io::Result<bool> {
    let mut buf = [0u8; MAX_MESSAGE + 1];
    let mut space =
        [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(proto::MAX_BATCH as usize))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        match rustix::net::recvmsg(
            fd,
            &mut iov,
            &mut control,
            // Received descriptors are close-on-exec from the start.
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(m) => break m,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    };
    // Owned at once: whatever goes wrong below closes them.
    let mut fds: VecDeque<OwnedFd> = VecDeque::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    if got.bytes == 0 && fds.is_empty() {
        return Ok(false);
    }
    if got.flags.contains(ReturnFlags::TRUNC) || got.bytes > MAX_MESSAGE {
        return Err(invalid(format!(
            "baton sent a message longer than {MAX_MESSAGE} bytes"
        )));
    }
    if got.flags.contains(ReturnFlags::CTRUNC) {
        return Err(invalid(format!(
            "baton sent more than {} descriptors in a message",
            proto::MAX_BATCH
        )));
    }
    let msgs = ToWorker::parse_all(&buf[..got.bytes]).map_err(invalid)?;
    let conns = msgs
        .iter()
        .filter(|m| matches!(m, ToWorker::Conn { .. }))
        .count();
    if conns != fds.len() {
        return Err(invalid(format!(
            "baton sent {conns} connection(s) with {} descriptor(s): each needs its own",
            fds.len()
        )));
    }
    let start = out.len();
    for msg in msgs {
        out.push_back(match msg {
            ToWorker::Conn { id, listener } => {
                let fd = fds
                    .pop_front()
                    .expect("counted: one descriptor per connection");
                match Stream::from_dispatched(fd) {
                    Ok(stream) => Received::Conn {
                        id,
                        listener,
                        stream,
                    },
                    Err(e) => {
                        out.truncate(start);
                        return Err(e);
                    }
                }
            }
            ToWorker::Accept {
                id,
                index,
                listener,
            } => Received::Accept {
                id,
                index,
                listener,
            },
            ToWorker::End => Received::End,
        });
    }
    Ok(true)
}

/// Sends `msgs` on `fd`, in as few packets as fit [`MAX_MESSAGE`].
pub(crate) fn send_on(fd: BorrowedFd<'_>, msgs: &[FromWorker]) -> io::Result<()> {
    let mut start = 0;
    while start < msgs.len() {
        // Each message takes at most 30 bytes ("taken " and 20 digits).
        let end = (start + MAX_MESSAGE / 32).min(msgs.len());
        let text = proto::encode_worker(&msgs[start..end]);
        // MSG_NOSIGNAL: if baton is gone, an error, not a SIGPIPE.
        rustix::net::send(fd, text.as_bytes(), SendFlags::NOSIGNAL)?;
        start = end;
    }
    Ok(())
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Channel {
    /// The descriptor, and what `recv` had read and not handed out yet
    /// (the rest of a packet of several connections, after `batch`), in
    /// order. Answer those too: dropping them closes connections baton
    /// counts as sent to this worker.
    pub fn into_parts(self) -> (OwnedFd, Vec<Received>) {
        let pending = self
            .pending
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (self.fd, pending.into())
    }
}

/// Two connected ends of a channel (baton's, the worker's), for tests.
#[cfg(test)]
pub(crate) fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage};
    use std::io::{Read, Write};

    fn pair() -> (OwnedFd, Channel) {
        let (baton, worker) = seqpacket_pair();
        (baton, Channel::new(worker, Mode::Pass).expect("a channel"))
    }

    /// A dispatched TCP connection gets TCP_NODELAY and is known as TCP
    /// by it; a Unix one, which refuses the option, is known by its
    /// address family; either stays as non-blocking as it came.
    #[test]
    fn dispatched_streams_are_told_apart_and_tcp_ones_get_nodelay() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let _client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        accepted.set_nonblocking(true).expect("non-blocking");
        match Stream::from_dispatched(accepted.into()).expect("tcp") {
            Stream::Tcp(s) => {
                assert!(s.nodelay().expect("nodelay"), "TCP_NODELAY set");
                let mut buf = [0u8; 1];
                let e = (&s).read(&mut buf).expect_err("nothing to read yet");
                assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "still non-blocking");
            }
            Stream::Unix(_) => panic!("a TCP connection taken for Unix"),
        }
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        assert!(matches!(
            Stream::from_dispatched(a.into()).expect("unix"),
            Stream::Unix(_)
        ));
    }

    fn send_with_fd(to: &OwnedFd, text: &str, fd: BorrowedFd<'_>) {
        let fds = [fd];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        rustix::net::sendmsg(
            to,
            &[io::IoSlice::new(text.as_bytes())],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .expect("sendmsg");
    }

    #[test]
    fn a_passed_connection_arrives_close_on_exec_and_works() {
        let (baton, chan) = pair();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        send_with_fd(&baton, "conn 41 web", accepted.as_fd());
        drop(accepted);
        let Some(Received::Conn {
            id,
            listener,
            stream: Stream::Tcp(mut s),
        }) = chan.recv().expect("recv")
        else {
            panic!("not a TCP connection");
        };
        assert_eq!((id, listener.as_str()), (41, "web"));
        let flags = rustix::io::fcntl_getfd(&s).expect("getfd");
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        client.write_all(b"ping").expect("write");
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"ping");

        chan.send(&[FromWorker::Taken(41), FromWorker::Done(41)])
            .expect("send");
        let mut got = [0u8; 64];
        let (n, _) = rustix::net::recv(&baton, &mut got, RecvFlags::empty()).expect("recv");
        assert_eq!(&got[..n], b"taken 41 done 41");
    }

    #[test]
    fn orders_end_and_eof() {
        let (baton, chan) = pair();
        rustix::net::send(&baton, b"accept 3 1 admin", SendFlags::empty()).expect("send");
        rustix::net::send(&baton, b"end", SendFlags::empty()).expect("send");
        assert!(matches!(
            chan.recv().expect("recv"),
            Some(Received::Accept { id: 3, index: 1, ref listener }) if listener == "admin"
        ));
        assert!(matches!(chan.recv().expect("recv"), Some(Received::End)));
        drop(baton);
        assert!(chan.recv().expect("eof").is_none());
    }

    #[test]
    fn a_connection_without_its_descriptor_is_an_error() {
        let (baton, chan) = pair();
        rustix::net::send(&baton, b"conn 1 web", SendFlags::empty()).expect("send");
        let e = chan.recv().expect_err("no fd");
        assert!(
            e.to_string()
                .contains("1 connection(s) with 0 descriptor(s)"),
            "{e}"
        );
    }

    /// A packet of several connections (after `batch`) comes out of
    /// `recv` one at a time, in order, each with its own descriptor.
    #[test]
    fn a_batch_is_received_one_connection_at_a_time() {
        let (baton, chan) = pair();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut clients = Vec::new();
        let mut accepted = Vec::new();
        for _ in 0..2 {
            clients.push(std::net::TcpStream::connect(addr).expect("connect"));
            accepted.push(listener.accept().expect("accept").0);
        }
        let fds = [accepted[0].as_fd(), accepted[1].as_fd()];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        rustix::net::sendmsg(
            &baton,
            &[io::IoSlice::new(b"conn 1 web\nconn 2 admin\n")],
            &mut control,
            SendFlags::empty(),
        )
        .expect("sendmsg");
        for (want, name, client) in [(1, "web", &clients[0]), (2, "admin", &clients[1])] {
            let Some(Received::Conn {
                id,
                listener,
                stream: Stream::Tcp(s),
            }) = chan.recv().expect("recv")
            else {
                panic!("not a TCP connection");
            };
            assert_eq!((id, listener.as_str()), (want, name));
            assert_eq!(
                s.peer_addr().expect("peer"),
                client.local_addr().expect("addr")
            );
        }
    }

    #[test]
    fn a_stream_socket_is_not_a_channel() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let e = Channel::new(a.into(), Mode::Pass).expect_err("stream");
        assert!(e.contains("a Unix stream socket"), "{e}");
    }
}
