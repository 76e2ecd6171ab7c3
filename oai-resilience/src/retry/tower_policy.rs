//! [`TowerPolicy`]: the same decisions for plain `tower::retry::RetryLayer`.

use http::Request;

use super::config::RetryConfig;
use super::policy::{is_idempotent, Decision};
use super::replay::{clone_request, ReplayBody};
use super::retrier::Retrier;
use crate::error::Error;

/// A [`tower::retry::Policy`] that runs a [`RetryConfig`] (policy, backoff, hint ceiling,
/// budget, retry-count header) for users who already stack `tower::retry::RetryLayer`.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use oai_resilience::retry::{RetryConfig, TowerPolicy};
/// use oai_resilience::{ClassifyLayer, Error};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let policy = TowerPolicy::new(RetryConfig::new().seed(3));
/// let svc = ServiceBuilder::new()
///     .layer(tower::retry::RetryLayer::new(policy))
///     .layer(ClassifyLayer::new())
///     .service(service_fn(|_req: http::Request<Full<Bytes>>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::builder().status(503).body(Full::new(Bytes::new())).unwrap())
///     }));
/// let err: Error = svc.oneshot(http::Request::new(Full::new(Bytes::new()))).await.unwrap_err();
/// assert_eq!(err.attempts(), 5);
/// # }
/// ```
///
/// Differences from [`Retry`](super::Retry), which tower's design imposes: the first attempt
/// goes out without the retry-count header (tower sends the caller's request untouched); the
/// deadline is checked between attempts only (add a `tower::timeout` layer for the attempt in
/// flight); and a request whose body cannot be replayed needs `B: Default`, because tower only
/// consults the policy for requests it holds a copy of: the stand-in empty body is never sent,
/// the call fails with [`ErrorKind::NotReplayable`](crate::ErrorKind::NotReplayable) instead.
#[derive(Clone)]
pub struct TowerPolicy {
    config: RetryConfig,
    state: Option<State>,
}

#[derive(Clone)]
struct State {
    retrier: Retrier,
    replayable: bool,
}

impl TowerPolicy {
    /// A policy that runs `config`.
    pub fn new(config: RetryConfig) -> Self {
        TowerPolicy {
            config,
            state: None,
        }
    }
}

impl Default for TowerPolicy {
    fn default() -> Self {
        TowerPolicy::new(RetryConfig::default())
    }
}

impl<B, Res> tower::retry::Policy<Request<B>, Res, Error> for TowerPolicy
where
    B: ReplayBody + Default,
{
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        req: &mut Request<B>,
        result: &mut Result<Res, Error>,
    ) -> Option<Self::Future> {
        let state = self.state.as_mut()?;
        let retrier = &mut state.retrier;
        let err = match result {
            Ok(_) => {
                retrier.on_success();
                return None;
            }
            Err(e) => e,
        };
        match retrier.on_error(err, state.replayable) {
            Decision::Retry { delay, .. } => {
                retrier.start_attempt_for(req);
                if let Some(name) = self.config.settings().retry_count_header.as_ref() {
                    req.headers_mut()
                        .insert(name.clone(), retrier.retry_count_value());
                }
                Some(tokio::time::sleep(delay))
            }
            Decision::Stop(reason) => {
                *err = retrier.finish(err.clone(), reason);
                None
            }
        }
    }

    fn clone_request(&mut self, req: &Request<B>) -> Option<Request<B>> {
        // tower calls this on the service's template before the first attempt (then clones the
        // template into the call's future), and on the future's copy before each retry. The
        // template never sees `retry`, so its retrier is still at attempt 1: start afresh.
        let fresh = match &self.state {
            None => true,
            Some(s) => s.retrier.attempts() <= 1,
        };
        let copy = clone_request(req);
        if fresh {
            let mut retrier = Retrier::new(&self.config, is_idempotent(req.method()));
            retrier.start_attempt_for(req);
            self.state = Some(State {
                retrier,
                replayable: copy.is_some(),
            });
        } else if let Some(s) = &mut self.state {
            s.replayable = copy.is_some();
        }
        Some(copy.unwrap_or_else(|| {
            let mut stand_in = Request::new(B::default());
            *stand_in.method_mut() = req.method().clone();
            *stand_in.uri_mut() = req.uri().clone();
            stand_in
        }))
    }
}

crate::macros::debug_struct!(TowerPolicy, |s| "TowerPolicy" {
    "config": s.config,
} finish_non_exhaustive);
