//! The negative control: the reload-under-load harness must SEE failed
//! requests when there are some, or its "0 failed" elsewhere proves
//! nothing.
//!
//! The failure class is the one baton's design avoids: a port split with
//! `SO_REUSEPORT`, where each generation has its own accept queue and
//! connections the kernel queued on the old socket are reset when it
//! closes. baton does not set `SO_REUSEPORT` on its listeners (checked
//! below: a second `SO_REUSEPORT` bind on baton's port is refused), so the
//! misbehaving probe (`--rebind-reuseport ADDR`) closes the socket baton
//! passes and binds a port of its own, as rebinding tools do; the load
//! targets that port. Its drain stops accepting but keeps the socket open
//! for the drain window, so every reload leaves connections in a queue
//! that nobody accepts from and that is then closed.
//!
//! What it proves: the load client and `reloads_under_load` report such
//! failures (resets, end of connection before a response) instead of
//! retrying or hiding them. It does not prove more than that.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::panic::AssertUnwindSafe;

use baton_e2e::{BatonCmd, NetNs, Signal, WAIT};
use common::{Load, reloads_under_load};

/// The kernel must not move queued connections to the surviving socket
/// when one closes (`net.ipv4.tcp_migrate_req`, default 0 in a new
/// namespace), or the failure this control counts on cannot happen.
fn assert_no_request_migration() {
    let v = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").unwrap_or_default();
    assert!(
        matches!(v.trim(), "" | "0"),
        "net.ipv4.tcp_migrate_req is {v:?} in this namespace: the control would not fail"
    );
}

#[test]
fn harness_reports_the_failed_requests_of_an_app_that_rebinds_with_reuseport() {
    let _ns = NetNs::enter();
    assert_no_request_migration();
    // A port for the app's own sockets, free in this private namespace.
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("pick a free port")
        .port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let baton = BatonCmd::new()
        .args(["--workers", "2"])
        .probe(&["--drain-ms", "300", "--rebind-reuseport", &addr.to_string()])
        .spawn();
    baton.wait_for("generation 1 ready", WAIT);
    baton.wait_for(&format!("rebound tcp://{addr}"), WAIT);

    // baton's own listener is not SO_REUSEPORT: nothing can join it.
    let batons = baton.port();
    let joined = (|| -> std::io::Result<()> {
        use rustix::net::{AddressFamily, SocketType, sockopt};
        let fd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None)?;
        sockopt::set_socket_reuseport(&fd, true)?;
        rustix::net::bind(&fd, &SocketAddr::from((Ipv4Addr::LOCALHOST, batons)))?;
        Ok(())
    })();
    assert!(
        joined.is_err(),
        "an SO_REUSEPORT socket could bind baton's port {batons}: baton's listener allows port splitting"
    );

    let load = Load {
        reloads: 20,
        keep_alive: false,
        ..Load::default()
    };
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        reloads_under_load(&baton, port, &load, || baton.signal(Signal::HUP), |_| {})
    }));
    let Err(panic) = outcome else {
        panic!(
            "the harness reported no failed request across 20 reloads of an app that splits its \
             port with SO_REUSEPORT: it cannot see the failures the other tests say are absent"
        );
    };
    let message = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default();
    eprintln!("[e2e] the harness reported, as it must:\n{message}");
    let failed: u64 = message
        .lines()
        .find_map(|l| l.trim().strip_prefix("failed")?.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        message.contains("requests failed by reload")
            || message.contains("assertion `left == right` failed"),
        "the harness failed for another reason than failed requests: {message}"
    );
    assert!(
        failed > 0,
        "no failed count in the harness's report: {message}"
    );
    assert!(
        message.contains("reset") || message.contains("eof before response"),
        "the failures are not of the expected kind (reset / end of connection): {message}"
    );
    let mut baton = baton;
    baton.stop(Signal::TERM, WAIT);
}
