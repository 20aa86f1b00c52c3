//! The app side of baton: what a server links to take part in zero-downtime
//! reloads, under `baton run`, under systemd, or on its own by upgrading
//! itself.
//!
//! A complete HTTP server that hands itself over to a new copy of its
//! binary on `SIGHUP` and drains without failing a request (features
//! `hyper`; `examples/upgrade-server` is the same with axum):
//!
//! ```no_run
//! # #[cfg(feature = "hyper")]
//! # mod example {
//! use std::convert::Infallible;
//!
//! use baton_app::serve::{serve, DrainConfig};
//! use baton_app::shutdown::Shutdown;
//! use baton_app::trigger::upgrade_on_signals;
//! use baton_app::upgrade::Upgrader;
//! use http_body_util::Full;
//! use hyper::body::Bytes;
//! use tokio::signal::unix::SignalKind;
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Signal handlers first: a signal during start-up must not be lost.
//!     let shutdown = Shutdown::new();
//!     shutdown.on_signals()?; // SIGTERM/SIGINT: drain, then exit
//!     let upgrader = Upgrader::builder().pid_file("/tmp/hello.pid").build()?;
//!     upgrade_on_signals(&upgrader, &shutdown, &[SignalKind::hangup()], || None)?;
//!
//!     // Inherited from the previous process, or bound on first start.
//!     let listener = upgrader.tcp_listener("web", "127.0.0.1:8080")?;
//!     listener.set_nonblocking(true)?;
//!     let listener = tokio::net::TcpListener::from_std(listener)?;
//!
//!     upgrader.ready()?; // the previous process, if any, drains now
//!     let service = hyper::service::service_fn(|_req| async {
//!         Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from("hello\n"))))
//!     });
//!     let report = serve(listener, service, &shutdown, DrainConfig::default()).await;
//!     eprintln!("stopped ({}), {} connection(s) abandoned", report.reason, report.abandoned);
//!     Ok(())
//! }
//! # }
//! # fn main() {}
//! ```
//!
//! Run it, then `kill -HUP $(cat /tmp/hello.pid)`: a new process starts,
//! takes over the listening socket, reports ready, and the old one stops
//! accepting, finishes its requests and exits.
//!
//! # The pieces
//!
//! * [`listeners`]: sockets inherited with systemd's `LISTEN_FDS` protocol
//!   ([`Inherited`]), as `baton run`, systemd and systemfd pass them;
//! * [`notify`]: readiness and status ([`Notifier`]) over `NOTIFY_SOCKET`
//!   or a readiness fd; no-ops (with a debug log) when no parent listens;
//! * [`dispatch`]: connections handed over by `baton run --dispatch`
//!   ([`dispatch::Channel`]; with feature `tokio`, `dispatch::Incoming`,
//!   which [`serve`] takes like a listener);
//! * [`upgrade`]: self-upgrade without a supervisor ([`upgrade::Upgrader`]),
//!   with an optional, versioned state hand-off;
//! * [`shutdown`] (feature `tokio`): the stop flag and `SIGTERM`/`SIGINT`;
//! * [`trigger`] (feature `tokio`): upgrades on `SIGHUP`/`SIGUSR2`;
//! * [`serve`] (feature `hyper`): serve a hyper service (or an axum
//!   router) over HTTP/1.1 and HTTP/2 on one socket, and drain it without
//!   failing a request.
//!
//! # Features
//!
//! * none by default: inheriting sockets, readiness and self-upgrades need
//!   no async runtime;
//! * `tokio`: tokio listeners, [`shutdown`] and [`trigger`];
//! * `hyper` (implies `tokio`): [`serve`], for hyper and axum servers.
//!
//! # Invariants
//!
//! * The process environment is read once, by [`Inherited::from_env`],
//!   [`Notifier::from_env`] and [`upgrade::UpgraderBuilder::build`], and
//!   never modified.
//! * Nothing is adopted unless `LISTEN_PID` equals this process's pid (so a
//!   child that merely inherited the variables does not steal the sockets).
//! * Each inherited descriptor is validated (a socket, of the requested
//!   type and family, listening) before it is handed out, marked
//!   close-on-exec, and handed out at most once.
//! * A self-upgrade never leaves two processes accepting for good, nor none:
//!   the old process stops accepting only after the new one reported ready,
//!   and a new one that fails is killed and reaped while the old one serves
//!   on (see [`upgrade`] for the full list).
//! * A drain ([`serve()`]) tells clients in band before it closes a
//!   connection (`Connection: close` on HTTP/1, `GOAWAY` on HTTP/2), and
//!   ends by its deadline.
//!
// The feature-gated modules are linked when they are built; otherwise the
// links lead to the section above that says which feature builds them.
#![cfg_attr(feature = "tokio", doc = "[`shutdown`]: crate::shutdown")]
#![cfg_attr(feature = "tokio", doc = "[`trigger`]: crate::trigger")]
#![cfg_attr(feature = "hyper", doc = "[`serve`]: crate::serve")]
#![cfg_attr(feature = "hyper", doc = "[`serve()`]: crate::serve::serve")]
#![cfg_attr(not(feature = "tokio"), doc = "[`shutdown`]: #features")]
#![cfg_attr(not(feature = "tokio"), doc = "[`trigger`]: #features")]
#![cfg_attr(not(feature = "hyper"), doc = "[`serve`]: #features")]
#![cfg_attr(not(feature = "hyper"), doc = "[`serve()`]: #features")]
// On docs.rs (all features, `--cfg docsrs`), each feature-gated item says
// which feature it needs (`doc_cfg`, which took in `doc_auto_cfg`).
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod dispatch;
pub mod listeners;
pub mod notify;
#[cfg(feature = "hyper")]
pub mod serve;
#[cfg(feature = "tokio")]
pub mod shutdown;
#[cfg(feature = "tokio")]
pub mod trigger;
pub mod upgrade;

pub use listeners::{InheritError, Inherited, Listener};
pub use notify::{Notifier, NotifyError};
