//! The parsers on text captured from Linux 6.18, the tree walk on a fake
//! `/proc`, and the scan on this very process.

use super::*;

use std::os::unix::fs::symlink;

/// `/proc/PID/fdinfo/5` of a Python process whose epoll set (fd 5) watches
/// fd 4, a dup of its listening socket fd 3 (`socket:[5392336]`).
const EPOLL_FDINFO: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\n\
tfd:        4 events:       19 data:                4  pos:0 ino:5247d0 sdev:9\n";

/// uvicorn --fd 3: an epoll set with the listener (a dup, fd 7) and the
/// self-pipe of asyncio.
const UVICORN_FDINFO: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\n\
tfd:        6 events:       19 data: 0000000600000000  pos:0 ino:4e9f9e sdev:e\n\
tfd:        7 events:       19 data: 0000000700000000  pos:0 ino:4e9fa5 sdev:9\n";

#[test]
fn epoll_fdinfo_lists_each_watched_file_with_its_inode_and_device() {
    assert_eq!(
        parse_epoll_fdinfo(EPOLL_FDINFO),
        vec![Watched {
            tfd: 4,
            events: 0x19,
            id: SocketId {
                ino: 5_392_336,
                sdev: 9
            },
        }]
    );
    let w = parse_epoll_fdinfo(UVICORN_FDINFO);
    assert_eq!(w.len(), 2);
    assert_eq!(w[1].tfd, 7);
    assert_eq!(w[1].id.ino, 0x004e_9fa5);
    assert_eq!(w[0].id.sdev, 0xe);
}

#[test]
fn malformed_fdinfo_lines_are_skipped() {
    let text = "tfd: x events: 19 ino:1 sdev:9\ntfd: 3 events: 19\ntfd: 4 events: zz ino:1 sdev:9\n\
                tfd:        5 events:       1 data: 5  pos:0 ino:a sdev:9\n";
    let w = parse_epoll_fdinfo(text);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].id.ino, 10);
}

#[test]
fn syscall_files_name_the_call_and_its_arguments() {
    // A thread in accept4(6, ...) on x86_64 (nr 288).
    let blocked =
        "288 0x6 0x7f027b3fca10 0x7f027b3fca04 0x80000 0x0 0x0 0x7f027b3fc9b0 0x7f027bb28fa8\n";
    assert_eq!(
        parse_syscall(blocked),
        Some(Syscall::In {
            nr: 288,
            args: vec![6, 0x7f02_7b3f_ca10, 0x7f02_7b3f_ca04, 0x80000, 0, 0],
        })
    );
    assert_eq!(parse_syscall("running\n"), Some(Syscall::Running));
    assert_eq!(
        parse_syscall("-1 0x7ffcb7ecba80 0x7f027bb162ec\n"),
        Some(Syscall::None)
    );
    assert_eq!(parse_syscall(""), None);
    assert_eq!(parse_syscall("7 0xzz"), None);
}

#[test]
fn children_and_links() {
    assert_eq!(parse_children("19023 19024 \n"), vec![19023, 19024]);
    assert_eq!(parse_children(""), Vec::<u32>::new());
    assert_eq!(socket_inode("socket:[5152677]"), Some(5_152_677));
    assert_eq!(socket_inode("pipe:[5152677]"), None);
    assert_eq!(socket_inode("socket:[x]"), None);
    assert!(is_epoll("anon_inode:[eventpoll]"));
    assert!(!is_epoll("anon_inode:[eventfd]"));
}

#[test]
fn stat_device_numbers_are_turned_into_the_kernel_encoding() {
    assert_eq!(kernel_dev(0, 9), 9);
    // A minor above 255 is where the two encodings differ.
    assert_eq!(kernel_dev(0, 300), 300);
    assert_eq!(kernel_dev(8, 1), 0x0080_0001);
}

/// A fake `/proc` in a temp dir: processes with tasks, fds (dangling
/// symlinks read like the real ones), fdinfo and syscall files.
struct FakeProc {
    dir: tempfile::TempDir,
}

impl FakeProc {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn process(&self, pid: u32, children: &[u32], syscall: &str) -> &Self {
        let task = self.dir.path().join(format!("{pid}/task/{pid}"));
        std::fs::create_dir_all(&task).expect("task dir");
        std::fs::create_dir_all(self.dir.path().join(format!("{pid}/fd"))).expect("fd dir");
        std::fs::create_dir_all(self.dir.path().join(format!("{pid}/fdinfo"))).expect("fdinfo");
        let kids: Vec<String> = children.iter().map(ToString::to_string).collect();
        std::fs::write(task.join("children"), kids.join(" ")).expect("children");
        std::fs::write(task.join("syscall"), syscall).expect("syscall");
        self
    }

    fn fd(&self, pid: u32, fd: i32, link: &str, fdinfo: Option<&str>) -> &Self {
        symlink(link, self.dir.path().join(format!("{pid}/fd/{fd}"))).expect("fd link");
        if let Some(info) = fdinfo {
            std::fs::write(self.dir.path().join(format!("{pid}/fdinfo/{fd}")), info)
                .expect("fdinfo");
        }
        self
    }

    /// Process `pid`'s memory: `bytes` at address `addr` (zeros before).
    fn mem(&self, pid: u32, addr: u64, bytes: &[u8]) -> &Self {
        use std::os::unix::fs::FileExt as _;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.path().join(format!("{pid}/mem")))
            .expect("mem");
        f.write_all_at(bytes, addr).expect("write mem");
        self
    }

    /// Process 100, one thread in `syscall`, the listener (inode
    /// 0x5247d0) at fd 3.
    fn holding_the_listener(syscall: &str) -> Self {
        let p = Self::new();
        p.process(100, &[], syscall)
            .fd(100, 3, "socket:[5392336]", None);
        p
    }

    fn scan(&self, pid: u32, listeners: &[Listener]) -> Seen {
        scan_in(self.dir.path(), pid, listeners)
    }
}

fn listener(ino: u64) -> Listener {
    Listener {
        id: SocketId { ino, sdev: 9 },
        display: "tcp://127.0.0.1:8080".into(),
        local: None,
    }
}

const IDLE: &str = "-1 0x7ffcb7ecba80 0x7f027bb162ec\n";

#[test]
fn a_pre_forking_masters_child_that_watches_the_listener_makes_the_worker_accepting() {
    let l = listener(0x0052_47d0);
    let p = FakeProc::new();
    p.process(100, &[101, 102], IDLE)
        .fd(100, 3, "socket:[5392336]", None)
        .process(101, &[], IDLE)
        .fd(101, 3, "socket:[5392336]", None)
        .process(102, &[], IDLE)
        .fd(102, 3, "socket:[5392336]", None)
        .fd(102, 5, "anon_inode:[eventpoll]", Some(EPOLL_FDINFO));
    let seen = p.scan(100, std::slice::from_ref(&l));
    assert_eq!(
        seen.accepting,
        Some(Accepting::Epoll {
            pid: 102,
            listener: l.display.clone()
        })
    );
    assert_eq!(seen.processes, 3);
}

#[test]
fn an_epoll_set_on_another_device_with_the_same_inode_does_not_count() {
    let l = listener(0x0052_47d0);
    let p = FakeProc::holding_the_listener(IDLE);
    let pipe_info = EPOLL_FDINFO.replace("sdev:9", "sdev:e");
    p.fd(100, 5, "anon_inode:[eventpoll]", Some(&pipe_info));
    let seen = p.scan(100, &[l]);
    assert_eq!(seen.accepting, None);
    assert_eq!((seen.epoll_sets, seen.other_watched), (1, 1));
}

#[test]
fn a_listener_watched_without_epollin_is_not_waited_on() {
    let l = listener(0x0052_47d0);
    let p = FakeProc::holding_the_listener(IDLE);
    // A disarmed EPOLLONESHOT entry keeps only the private bits.
    let disarmed = EPOLL_FDINFO.replace("events:       19", "events: 40000000");
    p.fd(100, 5, "anon_inode:[eventpoll]", Some(&disarmed));
    assert_eq!(p.scan(100, &[l]).accepting, None);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn a_thread_in_accept_on_the_listener_makes_the_worker_accepting() {
    let l = listener(0x0052_47d0);
    let p = FakeProc::holding_the_listener("288 0x3 0x0 0x0 0x80000 0x0 0x0 0x7ffc 0x7f02\n");
    let seen = p.scan(100, std::slice::from_ref(&l));
    assert_eq!(
        seen.accepting,
        Some(Accepting::Accept {
            pid: 100,
            tid: 100,
            listener: l.display.clone()
        })
    );
}

/// `struct pollfd` entries, as the kernel lays them out.
fn pollfds(entries: &[(i32, i16)]) -> Vec<u8> {
    entries
        .iter()
        .flat_map(|&(fd, events)| {
            let mut e = fd.to_ne_bytes().to_vec();
            e.extend(events.to_ne_bytes());
            e.extend(0i16.to_ne_bytes());
            e
        })
        .collect()
}

/// A thread in poll(2) or select(2) (pselect6 under glibc) is accepting
/// when its set, read from the process's memory, holds the listener for
/// input; otherwise it is said to wait on other descriptors.
#[cfg(target_arch = "x86_64")]
#[test]
fn a_thread_in_poll_or_select_with_the_listener_in_its_set_is_accepting() {
    let l = listener(0x0052_47d0);
    // poll(fds = 0x1000, nfds = 2, -1): fd 5 for output, fd 3 for input.
    let p = FakeProc::holding_the_listener("7 0x1000 0x2 0xffffffff 0x0 0x0 0x0 0x7ffc 0x7f02\n");
    p.mem(100, 0x1000, &pollfds(&[(5, 0x4), (3, 0x1)]));
    let seen = p.scan(100, std::slice::from_ref(&l));
    assert_eq!(
        seen.accepting,
        Some(Accepting::Polls {
            pid: 100,
            tid: 100,
            call: "poll",
            listener: l.display.clone()
        })
    );
    assert_eq!(
        seen.accepting.expect("accepting").to_string(),
        "thread 100 of pid 100 waits in poll() for tcp://127.0.0.1:8080"
    );

    // The listener only for output: not waited on for connections.
    let p = FakeProc::holding_the_listener("7 0x1000 0x2 0xffffffff 0x0 0x0 0x0 0x7ffc 0x7f02\n");
    p.mem(100, 0x1000, &pollfds(&[(5, 0x1), (3, 0x4)]));
    let seen = p.scan(100, std::slice::from_ref(&l));
    assert_eq!(seen.accepting, None);
    assert_eq!(seen.polling_elsewhere, vec!["poll"]);
    let text = seen.describe(0, 100, std::slice::from_ref(&l));
    assert!(
        text.contains("a thread waits in poll() on other descriptors"),
        "{text}"
    );

    // pselect6(nfds = 4, readfds = 0x2000, ...): bit 3 set.
    let p = FakeProc::holding_the_listener("270 0x4 0x2000 0x0 0x0 0x0 0x0 0x7ffc 0x7f02\n");
    p.mem(100, 0x2000, &(1u64 << 3).to_ne_bytes());
    let seen = p.scan(100, std::slice::from_ref(&l));
    assert!(
        matches!(
            &seen.accepting,
            Some(Accepting::Polls {
                call: "pselect6",
                ..
            })
        ),
        "{seen:?}"
    );
    // ... bit 3 clear (fd 1 only); and bit 3 set but beyond nfds = 3.
    for (nfds, bits) in [(4, 1u64 << 1), (3, 1u64 << 3)] {
        let p = FakeProc::holding_the_listener(&format!(
            "270 {nfds:#x} 0x2000 0x0 0x0 0x0 0x0 0x7ffc 0x7f02\n"
        ));
        p.mem(100, 0x2000, &bits.to_ne_bytes());
        let seen = p.scan(100, std::slice::from_ref(&l));
        assert_eq!(seen.accepting, None, "nfds {nfds}, bits {bits:#b}");
        assert_eq!(seen.polling_elsewhere, vec!["pselect6"]);
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn what_cannot_be_seen_is_said() {
    let l = listener(0x0052_47d0);
    let p = FakeProc::holding_the_listener("426 0x5 0x0 0x1 0x1 0x0 0x0 0x7ffc 0x7f02\n");
    let seen = p.scan(100, std::slice::from_ref(&l));
    assert_eq!(seen.accepting, None);
    assert_eq!(seen.opaque, vec!["io_uring_enter"]);
    let text = seen.describe(0, 100, std::slice::from_ref(&l));
    assert!(
        text.starts_with(
            "worker 0 (pid 100) has no epoll set watching tcp://127.0.0.1:8080 and is not in accept on it"
        ),
        "{text}"
    );
    assert!(
        text.contains("a thread waits in io_uring_enter(), which baton cannot look into"),
        "{text}"
    );

    // accept(2) on a socket of its own, baton's closed.
    let q = FakeProc::new();
    q.process(200, &[], "43 0x4 0x0 0x0 0x0 0x0 0x0 0x7ffc 0x7f02\n")
        .fd(200, 4, "socket:[777]", None);
    let seen = q.scan(200, std::slice::from_ref(&l));
    assert_eq!(seen.accepting, None);
    assert_eq!(seen.accept_elsewhere, 1);
    assert!(!seen.holds_listener);
    let text = seen.describe(1, 200, &[l]);
    assert!(
        text.contains("a thread is in accept on another socket"),
        "{text}"
    );
    assert!(
        text.contains("none of its processes has the listener open"),
        "{text}"
    );
}

#[test]
fn a_worker_that_is_gone_is_said_to_be() {
    let p = FakeProc::new();
    let seen = p.scan(4242, &[listener(1)]);
    assert!(seen.gone);
    assert_eq!(seen.describe(0, 4242, &[]), "worker 0 (pid 4242) is gone");
}

#[test]
fn a_huge_tree_is_cut_at_max_processes() {
    let p = FakeProc::new();
    let kids: Vec<u32> = (1..=(MAX_PROCESSES as u32 + 10))
        .map(|i| 1000 + i)
        .collect();
    p.process(1000, &kids, IDLE);
    for k in &kids {
        p.process(*k, &[], IDLE);
    }
    let seen = p.scan(1000, &[listener(1)]);
    assert!(seen.truncated);
    assert_eq!(seen.processes, MAX_PROCESSES);
}

/// Scans `pid` until it is seen waiting on `id` (its thread may not be
/// blocked yet), for at most 20 s.
fn scan_until_seen(pid: u32, id: &Listener) -> Seen {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let seen = scan(pid, std::slice::from_ref(id));
        if seen.accepting.is_some() || std::time::Instant::now() > deadline {
            return seen;
        }
        std::thread::yield_now();
    }
}

/// The real thing, on this test process: a listener in an epoll set (added
/// as a dup), one a thread is blocked in accept on, one nobody waits on,
/// one a thread polls.
#[test]
fn this_process_is_seen_waiting_in_epoll_in_accept_and_in_poll() {
    use std::net::TcpListener;
    let pid = std::process::id();
    let listen = || TcpListener::bind("127.0.0.1:0").expect("bind");
    let named = |l: &TcpListener, what: &str| Listener {
        id: SocketId::of(l).expect("fstat"),
        display: what.into(),
        local: rustix::net::getsockname(l).ok(),
    };

    let polled = listen();
    let dup = polled.try_clone().expect("dup");
    let ep = rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC)
        .expect("epoll_create");
    rustix::event::epoll::add(
        &ep,
        &dup,
        rustix::event::epoll::EventData::new_u64(1),
        rustix::event::epoll::EventFlags::IN,
    )
    .expect("epoll_ctl");
    let seen = scan(pid, &[named(&polled, "polled")]);
    assert!(
        matches!(&seen.accepting, Some(Accepting::Epoll { pid: p, .. }) if *p == pid),
        "{seen:?}"
    );

    let nobody = listen();
    let seen = scan(pid, &[named(&nobody, "nobody")]);
    assert_eq!(seen.accepting, None, "{seen:?}");
    assert!(seen.holds_listener);
    assert!(seen.epoll_sets >= 1);

    let blocking = listen();
    let addr = blocking.local_addr().expect("addr");
    let id = named(&blocking, "blocking");
    let t = std::thread::spawn(move || blocking.accept().map(|_| ()));
    let seen = scan_until_seen(pid, &id);
    assert!(
        matches!(&seen.accepting, Some(Accepting::Accept { pid: p, .. }) if *p == pid),
        "{seen:?}"
    );
    // Let the thread go.
    let _ = std::net::TcpStream::connect(addr);
    let _ = t.join();

    // A thread in poll(2) on a listener: its set is read from this
    // process's memory.
    let in_poll = listen();
    let addr = in_poll.local_addr().expect("addr");
    let id = named(&in_poll, "in_poll");
    let t = std::thread::spawn(move || {
        let mut fds = [rustix::event::PollFd::new(
            &in_poll,
            rustix::event::PollFlags::IN,
        )];
        rustix::event::poll(&mut fds, None).map(|_| ())
    });
    let seen = scan_until_seen(pid, &id);
    assert!(
        matches!(&seen.accepting, Some(Accepting::Polls { pid: p, .. }) if *p == pid),
        "{seen:?}"
    );
    let _ = std::net::TcpStream::connect(addr);
    let _ = t.join();

    // Holding a connection accepted on a listener nobody waits on: serving
    // from it. Bound to the wildcard address, reached on 127.0.0.1.
    let busy = TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let id = named(&busy, "busy");
    let seen = scan(pid, std::slice::from_ref(&id));
    assert_eq!(seen.accepting, None, "nothing accepted yet: {seen:?}");
    let client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let (conn, _) = busy.accept().expect("accept");
    let seen = scan(pid, std::slice::from_ref(&id));
    assert!(
        matches!(&seen.accepting, Some(Accepting::Serves { pid: p, .. }) if *p == pid),
        "{seen:?}"
    );
    // The connection is untouched by the look.
    drop(client);
    let mut buf = [0u8; 1];
    assert_eq!(
        std::io::Read::read(&mut &conn, &mut buf).expect("read"),
        0,
        "EOF"
    );
}

#[test]
fn the_watcher_thread_answers_each_check() {
    let (tx, rx) = mpsc::channel();
    let w = Watcher::start(Box::new(move || {
        let _ = tx.send(());
    }))
    .expect("start");
    let now = Instant::now();
    let check = |generation, after| Check {
        generation,
        due: now + std::time::Duration::from_millis(after),
        workers: vec![(0, std::process::id()), (1, u32::MAX - 1)],
        listeners: vec![listener(1)],
    };
    // Sent in one order, due in the other.
    assert!(w.send(check(3, 200)));
    assert!(w.send(check(4, 0)));
    let mut done = Vec::new();
    while done.len() < 2 {
        rx.recv_timeout(std::time::Duration::from_secs(20))
            .expect("woken");
        done.extend(w.results());
    }
    assert!(
        now.elapsed() >= std::time::Duration::from_millis(200),
        "not before it was due"
    );
    assert_eq!(
        done[0].generation, 4,
        "the one due first is looked at first"
    );
    let done = &done[1..];
    assert_eq!(done[0].generation, 3);
    assert_eq!(done[0].workers.len(), 2);
    assert!(done[0].workers[1].seen.gone);
    assert!(done[0].workers[0].seen.accepting.is_none());
}
