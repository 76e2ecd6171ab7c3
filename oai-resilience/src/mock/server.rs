//! The running server: its accept loop, its connections, and what a test reads from it.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use super::config::Config;
use super::counts::{MockCounts, RecordedRequest};
use super::handler::{self, Shared};
use super::response::MockResponse;
use super::route::Route;

/// The running mock server. See the [module docs](super).
///
/// Dropping it stops the server: the accept loop and every connection are aborted.
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

crate::macros::debug_struct!(MockServer, |s| "MockServer" {
    "addr": s.addr,
    "state": s.shared,
    "running": s.task.is_some(),
} finish);

static NEXT_SEED: AtomicU64 = AtomicU64::new(0x6f61_692d_6d6f_636b);

impl MockServer {
    pub(crate) async fn spawn(config: Config) -> std::io::Result<MockServer> {
        // A deep accept queue (the kernel caps it at `somaxconn`): a load test's burst of a
        // thousand connects must not overflow it, or the kernel drops SYNs and retries them in
        // real time, which paused-time tests see as connections that hang.
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind((Ipv4Addr::LOCALHOST, 0).into())?;
        let listener = socket.listen(4096)?;
        let addr = listener.local_addr()?;
        let seed = config
            .seed
            .unwrap_or_else(|| NEXT_SEED.fetch_add(0x9E37_79B9, Ordering::Relaxed));
        let shared = Arc::new(Shared::new(config, seed));
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), stop_rx));
        tracing::debug!(%addr, "mock OpenAI server started");
        Ok(MockServer {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The base URL, without `/v1`: `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The full URL of `route`: `http://127.0.0.1:PORT/v1/chat/completions`.
    pub fn endpoint(&self, route: Route) -> String {
        format!("http://{}{}", self.addr, route.path())
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of the request counts.
    pub fn counts(&self) -> MockCounts {
        self.shared.counts()
    }

    /// The answered requests, oldest first (the newest 10,000 are kept).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests()
    }

    /// Clears the counts and the recorded requests (the buckets and scripts stay).
    pub fn reset_counts(&self) {
        self.shared.reset_counts();
    }

    /// The answered requests to `route`, oldest first.
    pub fn requests_to(&self, route: Route) -> Vec<RecordedRequest> {
        let mut all = self.shared.requests();
        all.retain(|r| r.route == Some(route));
        all
    }

    /// Appends responses to `route`'s script, as [`MockBuilder::script`](super::MockBuilder::script) does.
    pub fn script(&self, route: Route, responses: impl IntoIterator<Item = MockResponse>) {
        self.shared.push_script(route, responses);
    }

    /// Switches the exhausted-quota fault on or off.
    pub fn set_quota_exhausted(&self, exhausted: bool) {
        self.shared.set_quota_exhausted(exhausted);
    }

    /// Sets the probability of the random-server-error fault (clamped to `0..=1`; the seed
    /// stays), e.g. `1.0` for an outage and `0.0` when it ends.
    pub fn set_random_server_errors(&self, probability: f64) {
        self.shared.set_random_server_errors(probability);
    }

    /// Stops accepting, aborts every connection, and waits until all of the server's tasks
    /// have ended. Requests in flight fail on the client side.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // The loop ends on the signal; an abort is the fallback. Either way it is done.
            let _ = task.await;
        }
        tracing::debug!(addr = %self.addr, "mock OpenAI server stopped");
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Dropping the loop's future drops its JoinSet, which aborts every connection.
            task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(serve_connection(stream, Arc::clone(&shared)));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "mock: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |req| handler::handle(Arc::clone(&shared), req));
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %e, "mock: connection ended with an error");
    }
}
