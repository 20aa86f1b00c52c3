//! The HTTP side: hyper through `baton_app::serve`, so the server drains
//! without failing a request when it is stopped or replaced as a process.
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /NAME/REST?Q` | module NAME's `handle("GET", "/REST?Q")`: its status and body |
//! | `GET /_status` | every module: version, fingerprint, calls in flight, last rejection |
//! | anything else | 404 |
//!
//! A module's answer carries `x-generation: VERSION` (the module version
//! that answered: the load client `baton-load` counts responses by it) and
//! `x-module-fingerprint`. A route without a valid version answers 503
//! with the reason; a failed call (trap, deadline, memory limit) 500 with
//! the reason. Calls run on tokio's blocking threads, so a slow module
//! never holds up the accept loop or other connections.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::{Context, bail};
use baton_app::serve::{DrainConfig, serve_with};
use baton_app::shutdown::{Shutdown, StopReason};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};

use crate::routes::{Answer, Routes};

/// Splits `/NAME/REST?Q` into `NAME` and `/REST?Q`.
fn split_route(path_and_query: &str) -> Option<(&str, String)> {
    let rest = path_and_query.strip_prefix('/')?;
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let (name, tail) = match path.split_once('/') {
        Some((n, t)) => (n, format!("/{t}")),
        None => (path, "/".to_owned()),
    };
    if name.is_empty() {
        return None;
    }
    let tail = match query {
        Some(q) => format!("{tail}?{q}"),
        None => tail,
    };
    Some((name, tail))
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Answers one request.
pub async fn respond(routes: &Routes, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", hyper::http::uri::PathAndQuery::as_str);
    if req.uri().path() == "/_status" {
        return text(StatusCode::OK, routes.status_text());
    }
    let Some((name, rest)) = split_route(pq) else {
        return text(
            StatusCode::NOT_FOUND,
            "no route: GET /NAME/... calls module NAME\n",
        );
    };
    let (routes2, name2, method) = (routes.clone(), name.to_owned(), req.method().to_string());
    let answer = tokio::task::spawn_blocking(move || routes2.call(&name2, &method, &rest)).await;
    match answer {
        Ok(Answer::Module(called)) => {
            let (status, body) = called.value;
            let mut resp = text(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                body,
            );
            let h = resp.headers_mut();
            h.insert("x-generation", HeaderValue::from(called.version));
            if let Ok(v) = HeaderValue::from_str(&called.fingerprint.to_string()) {
                h.insert("x-module-fingerprint", v);
            }
            resp
        }
        Ok(Answer::NotFound) => text(
            StatusCode::NOT_FOUND,
            format!("no module {name}: add {name}.wasm or {name}.wat to the modules directory\n"),
        ),
        Ok(Answer::Unavailable(reason)) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("module {name} has no valid version: {reason}\n"),
        ),
        Ok(Answer::Failed(e)) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("module {name}: {e}\n"),
        ),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("module {name}: the call's thread failed: {e}\n"),
        ),
    }
}

/// Takes the first inherited TCP listener (`baton run`, systemd), or
/// binds `bind`.
pub fn listener(bind: Option<SocketAddr>) -> anyhow::Result<tokio::net::TcpListener> {
    let mut inherited =
        baton_app::Inherited::from_env().context("cannot take the inherited sockets")?;
    for i in 0..inherited.len() {
        if let Some(baton_app::Listener::Tcp(l)) = inherited
            .take_at(i)
            .with_context(|| format!("inherited socket {i} (fd {})", 3 + i))?
        {
            l.set_nonblocking(true)
                .context("cannot make the inherited socket non-blocking")?;
            return tokio::net::TcpListener::from_std(l)
                .context("cannot register the inherited socket");
        }
    }
    let Some(addr) = bind else {
        bail!(
            "no listening socket: run me under `baton run -l 127.0.0.1:8080 -- hot-server ...`, \
             or pass --bind 127.0.0.1:8080 ({})",
            inherited.absent_reason().unwrap_or("no inherited socket")
        );
    };
    let l = std::net::TcpListener::bind(addr).with_context(|| format!("cannot bind {addr}"))?;
    l.set_nonblocking(true)
        .context("cannot make the socket non-blocking")?;
    tokio::net::TcpListener::from_std(l).context("cannot register the socket")
}

/// Serves `routes` on `listener` until `shutdown`, then drains. Reports
/// readiness to `notifier` once accepting.
pub async fn serve(
    routes: Routes,
    listener: tokio::net::TcpListener,
    notifier: &baton_app::Notifier,
    shutdown: &Shutdown,
    drain: DrainConfig,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().ok();
    notifier
        .ready()
        .context("cannot report readiness to the supervisor")?;
    eprintln!(
        "hot-server[{}]: ready, serving {}",
        std::process::id(),
        addr.map_or_else(|| "?".to_owned(), |a| format!("http://{a}"))
    );
    let service = service_fn(move |req| {
        let routes = routes.clone();
        async move { Ok::<_, Infallible>(respond(&routes, &req).await) }
    });
    let report = serve_with(listener, service, shutdown, drain, |_| {
        let _ = notifier.stopping();
    })
    .await;
    if report.reason == StopReason::Immediate {
        bail!(
            "second signal: exited at once, dropping {} connection(s)",
            report.abandoned
        );
    }
    eprintln!(
        "hot-server[{}]: drained in {} ms; exiting",
        std::process::id(),
        report.took.as_millis()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::split_route;

    #[test]
    fn routes_split_into_name_and_rest() {
        assert_eq!(split_route("/hello"), Some(("hello", "/".to_owned())));
        assert_eq!(
            split_route("/hello/a/b?x=1"),
            Some(("hello", "/a/b?x=1".to_owned()))
        );
        assert_eq!(
            split_route("/hello?x=1"),
            Some(("hello", "/?x=1".to_owned()))
        );
        assert_eq!(split_route("/"), None);
    }
}
