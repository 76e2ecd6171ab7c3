//! The listener: connection limits and the graceful drain.
//!
//! Each connection is served over HTTP/1.1 by hyper with a header-read timeout (a client that
//! does not finish a request's headers in time, including one that sends nothing after
//! connecting or idles on a kept-alive connection, is disconnected). At most
//! `max_connections` are served at once: the accept loop waits for a free slot, so further
//! connections wait in the kernel's listen backlog.
//!
//! [`serve`] runs until `shutdown` completes; then it stops accepting (the listener is closed),
//! marks the gateway as draining (`/readyz` answers 503), asks every connection to close after
//! its request in flight, and waits for them up to `drain_timeout`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::gateway::Gateway;

/// The limits of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// How long the drain waits for requests in flight.
    pub drain_timeout: Duration,
}

impl From<&Config> for Limits {
    fn from(c: &Config) -> Self {
        Limits {
            header_read_timeout: c.header_read_timeout,
            max_connections: c.max_connections,
            drain_timeout: c.drain_timeout,
        }
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every connection finished its request in flight and closed.
    Complete,
    /// The drain timeout passed with connections still open (they are cut when the process
    /// exits).
    TimedOut,
}

/// Serves `gateway` on `listener` until `shutdown` completes, then drains.
///
/// # Errors
///
/// An accept error other than a transient one (too many open files and the like are logged
/// and retried after a short pause).
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<Drained> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = slots.clone().acquire_owned() => p.map_err(std::io::Error::other)?,
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let gw = gateway.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let gw = gw.clone();
            async move { Ok::<_, Infallible>(gw.handle(req, Some(peer)).await) }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    gateway.set_draining();
    tracing::info!("draining: no new connections; waiting for requests in flight");
    match tokio::time::timeout(limits.drain_timeout, graceful.shutdown()).await {
        Ok(()) => {
            tracing::info!("drained");
            Ok(Drained::Complete)
        }
        Err(_) => {
            tracing::warn!(
                open = limits.max_connections - slots.available_permits(),
                "drain timeout: closing the connections still open"
            );
            Ok(Drained::TimedOut)
        }
    }
}

/// Serves `GET /metrics` of `gateway` on `listener` (`--metrics-listen`), and 404 for
/// anything else, until the process exits. Connections get the default header-read timeout.
pub async fn serve_metrics(listener: TcpListener, gateway: Gateway) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let slots = Arc::new(Semaphore::new(64));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let gw = gateway.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let res = if req.method() == http::Method::GET && req.uri().path() == "/metrics" {
                gw.metrics_response()
            } else {
                let mut res =
                    http::Response::new(http_body_util::Either::Right(http_body_util::Full::new(
                        bytes::Bytes::from_static(b"only GET /metrics here\n"),
                    )));
                *res.status_mut() = http::StatusCode::NOT_FOUND;
                res
            };
            std::future::ready(Ok::<_, Infallible>(res))
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
}

/// A future that completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn termination_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
