//! The worker side of `baton run --dispatch`: connections handed to this
//! worker by baton, one at a time or many, instead of accepted from a
//! shared socket.
//!
//! Under `baton run --dispatch`, baton alone watches the listening
//! sockets and gives each new connection to an idle worker, so
//! connections spread evenly and a reload moves new connections to the new
//! generation the moment it is ready. Each worker gets a channel, a Unix
//! `SOCK_SEQPACKET` socket at the descriptor in `BATON_DISPATCH_FD`, and the
//! mode in `BATON_DISPATCH`:
//!
//! * `pass`: baton accepts, and sends each connection's descriptor over the
//!   channel (`SCM_RIGHTS`); the worker has no listener (`LISTEN_FDS=0`);
//! * `accept`: the worker has the listeners as usual (`LISTEN_FDS`) and
//!   accepts one connection, non-blocking, each time baton tells it to.
//!
//! A tokio server takes its connections from `Incoming` (feature
//! `tokio`), which `baton_app::serve::serve` (feature `hyper`) takes like
//! a listener (plain names here: the links would break in a build without
//! those features): the same server runs with and without `--dispatch`,
//! telling which from its environment.
//!
//! ```no_run
//! # #[cfg(feature = "hyper")]
//! # async fn f(service: impl hyper::service::Service<hyper::Request<hyper::body::Incoming>,
//! #     Response = hyper::Response<http_body_util::Full<bytes::Bytes>>, Error = std::convert::Infallible,
//! #     Future: Send + 'static> + Clone + Send + 'static) -> Result<(), Box<dyn std::error::Error>> {
//! use baton_app::dispatch::{Incoming, DEFAULT_CREDITS};
//! use baton_app::serve::{serve, DrainConfig};
//! use baton_app::shutdown::Shutdown;
//!
//! let shutdown = Shutdown::new();
//! shutdown.on_signals()?;
//! if let Some(incoming) = Incoming::from_env(DEFAULT_CREDITS)? {
//!     // Under `baton run --dispatch`: connections come from baton.
//!     serve(incoming, service, &shutdown, DrainConfig::default()).await;
//! } else {
//!     // Otherwise: the inherited listener, as always.
//!     let mut inherited = baton_app::Inherited::from_env()?;
//!     let l = inherited.take_tcp_at(0)?.ok_or("no socket")?;
//!     l.set_nonblocking(true)?;
//!     serve(tokio::net::TcpListener::from_std(l)?, service, &shutdown, DrainConfig::default()).await;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! A server without tokio (or in another language) speaks the protocol
//! itself: [`Channel`] is its blocking form, and [`proto`] its messages.
//! The repository's `docs/contract.md` ("The dispatch protocol") is the
//! reference, and `examples/python-dispatch` a worker in Python.
//!
//! # Invariants
//!
//! * `taken` (or `got`) is said for a connection before it is handed to
//!   the server, and `done` after its socket is closed, exactly once.
//! * A drain leaves no connection behind: after `stopping`, everything
//!   baton sent until its `end` is handed out.
//! * Every descriptor received is close-on-exec (`MSG_CMSG_CLOEXEC`).

mod channel;
#[cfg(feature = "tokio")]
mod incoming;
pub mod proto;

pub use channel::{Channel, DispatchError, Received, Stream};
#[cfg(feature = "tokio")]
pub use incoming::{Connection, DEFAULT_CREDITS, Incoming, TokioStream};
pub use proto::Mode;
