//! Property tests of what baton parses from other processes: control
//! requests (`control::parse_request`, from any local client of baton's
//! user) and notify datagrams (`notify::NotifySocket::recv` and
//! `notify::Message`, from any process that can reach the socket). Through
//! the public API only. Coverage-guided fuzz targets for the same parsers
//! live in `fuzz/` (nightly toolchain; not part of the suite).

use std::fmt::Write as _;
use std::io::IoSlice;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;

use baton_supervisor::control::{Command, PROTOCOL_VERSION, Reply, Request, Status, parse_request};
use baton_supervisor::notify::{Message, NotifySocket};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        Just(Command::Reload),
        Just(Command::Status),
        any::<bool>().prop_map(|fast| Command::Stop { fast }),
        any::<usize>().prop_map(|workers| Command::Scale { workers }),
    ]
}

/// JSON values of every kind, nested a little.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        "\\PC{0,12}".prop_map(serde_json::Value::from),
        prop_oneof![
            Just("reload"),
            Just("status"),
            Just("stop"),
            Just("scale"),
            Just("upgrade")
        ]
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("v".to_owned()),
                    Just("cmd".to_owned()),
                    Just("fast".to_owned()),
                    Just("workers".to_owned()),
                    "[a-z]{1,6}"
                ],
                inner,
                0..5
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    /// Any bytes at all: an answer, never a panic.
    #[test]
    fn request_parser_never_panics_on_bytes(line in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_request(&line);
    }

    /// Any JSON document, shaped like a request or not: an answer, never a
    /// panic; and `Ok` only for version 1 with a known command.
    #[test]
    fn request_parser_accepts_only_version_1(value in json()) {
        let line = serde_json::to_vec(&value).expect("encode");
        if let Ok(req) = parse_request(&line) {
            prop_assert_eq!(req.v, PROTOCOL_VERSION);
            prop_assert_eq!(value.get("v").and_then(serde_json::Value::as_u64), Some(1));
        }
    }

    /// Every request `baton ctl` can send parses back to itself, with any
    /// whitespace around it.
    #[test]
    fn requests_round_trip(cmd in command(), pad in "[ \t\r\n]{0,3}") {
        let req = Request { v: PROTOCOL_VERSION, cmd };
        let mut line = pad.clone().into_bytes();
        line.extend(serde_json::to_vec(&req).expect("encode"));
        line.extend(pad.into_bytes());
        prop_assert_eq!(parse_request(&line), Ok(req));
    }

    /// Any other protocol version is refused, naming both versions, even
    /// with a command this baton does not know.
    #[test]
    fn other_versions_are_refused_by_name(v in any::<u64>().prop_filter("not 1", |v| *v != 1), cmd in "[a-z]{1,8}") {
        let line = format!(r#"{{"v":{v},"cmd":"{cmd}"}}"#);
        let e = parse_request(line.as_bytes()).expect_err("another version");
        prop_assert!(e.contains(&format!("protocol version {v} is not supported")), "{}", e);
        prop_assert!(e.contains("version 1"), "{}", e);
    }

    /// A request cut short (as by a client that died mid-write) is an
    /// error, never some other request.
    #[test]
    fn truncated_requests_are_errors(cmd in command(), cut in any::<prop::sample::Index>()) {
        let line = serde_json::to_vec(&Request { v: PROTOCOL_VERSION, cmd }).expect("encode");
        let cut = cut.index(line.len());
        prop_assert!(parse_request(&line[..cut]).is_err(), "{:?}", String::from_utf8_lossy(&line[..cut]));
    }

    /// Every reply is one line of JSON (its strings may hold newlines and
    /// anything else), and reads back as itself.
    #[test]
    fn replies_are_one_line_and_round_trip(
        message in "\\PC{0,40}|[\n\r\"\\\\]{0,8}",
        output in prop::collection::vec("\\PC{0,20}", 0..4),
        n in any::<u64>(),
    ) {
        let replies = [
            Reply::Progress { message: message.clone() },
            Reply::Reloaded { generation: n, took_ms: n / 2 },
            Reply::ReloadFailed { generation: n, serving: n.wrapping_sub(1), reason: message.clone(), output },
            Reply::Ok { message: message.clone() },
            Reply::Error { message },
        ];
        for reply in replies {
            let line = reply.to_line();
            prop_assert_eq!(line.last(), Some(&b'\n'));
            prop_assert!(!line[..line.len() - 1].contains(&b'\n'));
            let back: Reply = serde_json::from_slice(&line).expect("decode");
            prop_assert_eq!(back, reply);
        }
    }

    /// `READY=1` counts only as a whole line (surrounding blanks allowed),
    /// wherever it is in the message; `READY=10`, `XREADY=1` and the like
    /// never do.
    #[test]
    fn ready_is_a_whole_line(
        lines in prop::collection::vec(
            prop_oneof![
                Just("READY=1".to_owned()),
                Just(" READY=1\t".to_owned()),
                Just("READY=10".to_owned()),
                Just("XREADY=1".to_owned()),
                Just("READY=0".to_owned()),
                Just("ready=1".to_owned()),
                Just("READY=1 extra".to_owned()),
                Just("STATUS=READY=1".to_owned()),
                "[A-Z_]{1,8}=[^\n]{0,8}",
            ],
            0..6,
        ),
    ) {
        let text = lines.join("\n");
        let m = Message { pid: Some(1), text };
        prop_assert_eq!(m.is_ready(), lines.iter().any(|l| l.trim() == "READY=1"));
    }

    /// `get(KEY)` is the value of the first `KEY=` line, whatever follows.
    #[test]
    fn get_returns_the_first_value(key in "[A-Z]{1,8}", values in prop::collection::vec("[^\n\r]{0,10}", 1..4), noise in "[a-z=]{0,10}") {
        let mut text = format!("{noise}\n");
        for v in &values {
            let _ = writeln!(text, "{key}={v}");
        }
        let m = Message { pid: None, text };
        prop_assert_eq!(m.get(&key), Some(values[0].as_str()));
    }
}

/// Datagrams of any bytes and sizes, sent to a real notify socket: each
/// is read as one message (never merged with the next, never split),
/// attributed to the sender's pid by the kernel, its text the first 4 KiB
/// decoded lossily; nothing panics.
#[test]
fn notify_socket_reads_any_datagram_as_one_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let sock = NotifySocket::bind(&path).expect("bind a notify socket");
    let client = UnixDatagram::unbound().expect("a client socket");
    let me = std::process::id();
    let mut runner = TestRunner::new(Config {
        cases: 256,
        ..Config::default()
    });
    let datagrams = prop::collection::vec(prop::collection::vec(any::<u8>(), 0..6000), 1..4);
    runner
        .run(&datagrams, |datagrams| {
            for d in &datagrams {
                client.send_to(d, &path).expect("send");
            }
            for d in &datagrams {
                let m = sock
                    .recv()
                    .expect("recv")
                    .expect("a message for each datagram");
                prop_assert_eq!(m.pid, Some(me));
                let kept = &d[..d.len().min(4096)];
                prop_assert_eq!(&m.text, &String::from_utf8_lossy(kept).into_owned());
            }
            prop_assert_eq!(sock.recv().expect("recv"), None, "no message left over");
            Ok(())
        })
        .expect("every datagram read as one message");
}

/// The number of descriptors this process has open.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// A datagram that carries descriptors (`SCM_RIGHTS`, as `FDSTORE=1`
/// would) leaves none of them open in the receiver.
#[test]
fn descriptors_sent_with_a_notify_message_are_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let sock = NotifySocket::bind(&path).expect("bind a notify socket");
    let client = UnixDatagram::unbound().expect("a client socket");
    client.connect(&path).expect("connect");
    let files: Vec<std::fs::File> = (0..4)
        .map(|_| std::fs::File::open("/dev/null").expect("open /dev/null"))
        .collect();
    let before = open_fds();
    for round in 0..20 {
        let fds: Vec<_> = files.iter().map(AsFd::as_fd).collect();
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
        assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
        rustix::net::sendmsg(
            &client,
            &[IoSlice::new(b"FDSTORE=1\nREADY=1")],
            &mut control,
            rustix::net::SendFlags::empty(),
        )
        .expect("sendmsg with descriptors");
        let m = sock.recv().expect("recv").expect("a message");
        assert!(m.is_ready(), "round {round}: {m:?}");
        assert_eq!(
            open_fds(),
            before,
            "round {round}: descriptors were left open"
        );
    }
}

/// The status reply, with every field, is one line too.
#[test]
fn status_reply_is_one_line() {
    let status = Status {
        pid: 1,
        uptime_ms: 2,
        serving: Some(3),
        workers_per_generation: 4,
        strategy: "rolling".into(),
        max_surge: 1,
        max_draining: 1,
        quiet_boot: true,
        reloads: 5,
        reloads_attempted: 6,
        reloads_failed: 1,
        restarts: 7,
        upgrades: 1,
        version: "0.1.0".into(),
        last_reload: None,
        listeners: Vec::new(),
        generations: Vec::new(),
        ready: true,
        reloads_refused: 0,
        metrics: Some("http://127.0.0.1:9100".into()),
        events: 9,
        event_readers: 1,
        event_readers_dropped: 0,
        dispatch: None,
    };
    let line = Reply::Status(Box::new(status)).to_line();
    assert_eq!(line.last(), Some(&b'\n'));
    assert!(!line[..line.len() - 1].contains(&b'\n'));
}
