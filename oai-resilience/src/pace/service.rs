//! [`Pace`]: the service that waits for a slot, then calls, then reports the outcome (its
//! future is in [`future`](super::future)).

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use crate::error::Error;
use crate::observe::{RequestModel, SharedObserver};

use super::cost::{scan, PaceBody};
use super::future::{Admit, ResponseFuture, StoreSlot};
use super::key::{Keying, PaceKey};
use super::pacer::Pacer;
use super::probe::StoreBackend;
use super::{CallDeadline, Priority};

/// The pacing middleware. See the [module docs](super).
///
/// It needs `S: Clone` (it calls a clone once the slot comes, so it holds no readiness while
/// it waits) and a body that implements [`PaceBody`].
#[derive(Clone)]
pub struct Pace<S> {
    pub(crate) inner: S,
    pub(crate) pacer: Pacer,
    pub(crate) keying: Arc<Keying>,
    /// `Some`: pace through this store instead of the pacer
    /// ([`PaceLayer::pacing_store`]).
    pub(crate) store: Option<Arc<StoreBackend>>,
    pub(crate) observer: Option<SharedObserver>,
}

crate::macros::debug_struct!(impl<S: fmt::Debug> Pace<S>, |s| "Pace" {
    "inner": s.inner,
    "pacer": s.pacer,
    "store": s.store,
} finish);

impl<S> Pace<S> {
    /// The shared pacer.
    pub fn pacer(&self) -> &Pacer {
        &self.pacer
    }

    crate::macros::inner_service_accessors!();
}

impl<S, B, ResB> Service<Request<B>> for Pace<S>
where
    S: Service<Request<B>, Response = Response<ResB>, Error = Error> + Clone,
    B: PaceBody,
{
    type Response = Response<ResB>;
    type Error = Error;
    type Future = ResponseFuture<S, B>;

    /// Always ready: the wait for a slot and for the inner service happens in the future.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (parts, mut body) = req.into_parts();
        let keying = &*self.keying;
        let (key, cost) = body.with_bytes(|bytes| match (&keying.key_fn, bytes) {
            (Some(f), _) => (
                f(&parts.uri, &parts.headers, bytes),
                keying.estimator.estimate(bytes),
            ),
            // One pass over the body for both the model and the token estimate.
            (None, Some(b)) => {
                let (model, cost) = match scan(b) {
                    Some(scan) => {
                        let cost = keying.estimator.estimate_scan(&scan);
                        (scan.model().filter(|_| keying.per_model), cost)
                    }
                    None => (None, keying.estimator.by_size(b.len())),
                };
                let key = PaceKey::from_parts_with_model(&parts.uri, &parts.headers, model);
                (key, cost)
            }
            (None, None) => (
                PaceKey::from_parts_with_model(&parts.uri, &parts.headers, None),
                keying.estimator.estimate(None),
            ),
        });
        let req = Request::from_parts(parts, body);
        let watch = self.observer.clone().map(|observer| {
            let model = req
                .extensions()
                .get::<RequestModel>()
                .map(|m| m.0.clone())
                .or_else(|| key.model().map(Arc::from));
            (observer, model)
        });
        let deadline = req.extensions().get::<CallDeadline>().map(|d| d.0);
        let priority = req
            .extensions()
            .get::<Priority>()
            .copied()
            .unwrap_or_default();
        let acquire = match &self.store {
            None => Admit::Local(self.pacer.acquire_in_lane(&key, cost, deadline, priority)),
            Some(store) => {
                let config = self.pacer.config();
                let (max_wait, default_pause) = (config.max_wait, config.default_pause);
                let cost = cost.with_reserve(config.reserve_below(priority));
                let backend = store.clone();
                Admit::Shared(Box::pin(async move {
                    let probe = backend
                        .clone()
                        .admit(&key, cost, max_wait, deadline)
                        .await?;
                    Ok(StoreSlot {
                        store: backend.store.clone(),
                        key,
                        default_pause,
                        probe,
                    })
                }))
            }
        };
        ResponseFuture::new(acquire, self.inner.clone(), req, watch)
    }
}

#[cfg(test)]
mod store_tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::Full;
    use tokio::time::Instant;
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::error::ErrorKind;
    use crate::pace::{
        is_paced_locally, Admission, BucketLimits, Cost, InProcessStore, LearnedLimits, PaceLayer,
        PacerConfig, PacingStore, StoreFuture,
    };

    use crate::pace::test_upstream::{chat_key, chat_request, upstream};

    const AUTH: &str = "Bearer sk-test-pace-store";

    fn request() -> Request<Full<Bytes>> {
        chat_request(AUTH)
    }

    fn key() -> PaceKey {
        chat_key(AUTH)
    }

    fn one_per_100ms() -> LearnedLimits {
        LearnedLimits {
            requests: Some(BucketLimits {
                capacity: 1.0,
                refill_per_sec: 10.0,
            }),
            ..LearnedLimits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn two_layers_share_one_store_bucket() {
        let store = InProcessStore::new();
        store.learn(&key(), one_per_100ms()).await.unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        // Two layers with their own pacers, as two processes would have.
        let a = PaceLayer::new().pacing_store(store.clone());
        let b = PaceLayer::new().pacing_store(store.clone());
        let svc_a = a.layer(upstream(200, &[], sent.clone()));
        let svc_b = b.layer(upstream(200, &[], sent.clone()));
        let start = Instant::now();
        for _ in 0..3 {
            svc_a.clone().oneshot(request()).await.unwrap();
            svc_b.clone().oneshot(request()).await.unwrap();
        }
        // One bucket of 1 refilled 10/s: six calls take 500 ms whichever layer sends them.
        assert_eq!(start.elapsed(), Duration::from_millis(500));
        assert_eq!(sent.load(Ordering::SeqCst), 6);
        // The pacers were not used.
        assert_eq!(a.pacer().metrics().granted, 0);
        assert_eq!(b.pacer().metrics().granted, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_default_layer_uses_its_pacer() {
        let sent = Arc::new(AtomicU64::new(0));
        let layer = PaceLayer::new();
        assert!(layer.store().is_none());
        layer
            .layer(upstream(200, &[], sent.clone()))
            .oneshot(request())
            .await
            .unwrap();
        assert_eq!(layer.pacer().metrics().granted, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn headers_are_learned_into_the_store() {
        let store = InProcessStore::new();
        let sent = Arc::new(AtomicU64::new(0));
        let svc = PaceLayer::new().pacing_store(store.clone()).layer(upstream(
            200,
            &[
                ("x-ratelimit-limit-requests", "2"),
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "1s"),
            ],
            sent.clone(),
        ));
        svc.clone().oneshot(request()).await.unwrap();
        let m = store.key_model(&key()).expect("learned");
        assert_eq!(m.requests.map(|b| (b.capacity, b.refill)), Some((2.0, 2.0)));
        // Empty after the headers: the next call waits half a second for its refill.
        let start = Instant::now();
        svc.oneshot(request()).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_429_pauses_the_key_for_every_layer_of_the_store() {
        let store = InProcessStore::new();
        let sent = Arc::new(AtomicU64::new(0));
        let config = PacerConfig {
            default_pause: Duration::from_secs(3),
            max_wait: Some(Duration::from_millis(200)),
            ..PacerConfig::default()
        };
        let limited = PaceLayer::with_config(config.clone())
            .pacing_store(store.clone())
            .layer(upstream(429, &[], sent.clone()));
        let err = limited.oneshot(request()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::RateLimited);
        assert!(!is_paced_locally(&err));
        assert!(matches!(
            store.admit(&key(), Cost::tokens(1)).await.unwrap(),
            Admission::Wait(_)
        ));
        // Another layer on the same store: paused longer than its max wait, so it fails
        // locally and sends nothing.
        let other = PaceLayer::with_config(config)
            .pacing_store(store.clone())
            .layer(upstream(200, &[], sent.clone()));
        let err = other.oneshot(request()).await.unwrap_err();
        assert!(is_paced_locally(&err), "{err}");
        assert!(
            err.detail().is_some_and(|d| d.contains("max_wait")),
            "{err}"
        );
        assert!(!err.to_string().contains("sk-test"), "{err}");
        assert_eq!(sent.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_bounds_the_wait_for_the_store() {
        let store = InProcessStore::new();
        store.learn(&key(), one_per_100ms()).await.unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        let svc =
            PaceLayer::new()
                .pacing_store(store.clone())
                .layer(upstream(200, &[], sent.clone()));
        svc.clone().oneshot(request()).await.unwrap();
        let mut req = request();
        req.extensions_mut()
            .insert(CallDeadline(Instant::now() + Duration::from_millis(10)));
        let err = svc.oneshot(req).await.unwrap_err();
        assert!(is_paced_locally(&err), "{err}");
        assert!(
            err.detail().is_some_and(|d| d.contains("deadline")),
            "{err}"
        );
        assert_eq!(sent.load(Ordering::SeqCst), 1);
    }

    /// A store whose reports (`learn`, `pause`) fail; it admits only if `admits`.
    #[derive(Debug)]
    struct Failing {
        admits: bool,
    }

    fn store_down<'a, T: Send + 'a>() -> StoreFuture<'a, T> {
        Box::pin(async { Err(Error::new(ErrorKind::Connection).with_detail("store down")) })
    }

    impl PacingStore for Failing {
        fn admit<'a>(&'a self, _: &'a PaceKey, _: Cost) -> StoreFuture<'a, Admission> {
            if self.admits {
                Box::pin(async { Ok(Admission::Admitted) })
            } else {
                store_down()
            }
        }
        fn learn<'a>(&'a self, _: &'a PaceKey, _: LearnedLimits) -> StoreFuture<'a, ()> {
            store_down()
        }
        fn pause<'a>(&'a self, _: &'a PaceKey, _: Duration) -> StoreFuture<'a, ()> {
            store_down()
        }
    }

    const DOWN: Failing = Failing { admits: false };
    /// Admits, but fails every report: the call that was made still succeeds.
    const REPORTS_FAIL: Failing = Failing { admits: true };

    #[tokio::test(start_paused = true)]
    async fn a_failing_store_fails_the_call_before_anything_is_sent() {
        let sent = Arc::new(AtomicU64::new(0));
        let svc = PaceLayer::new()
            .pacing_store(DOWN)
            .layer(upstream(200, &[], sent.clone()));
        let err = svc.oneshot(request()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Connection);
        assert_eq!(sent.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_report_does_not_fail_the_call() {
        let sent = Arc::new(AtomicU64::new(0));
        let ok = PaceLayer::new().pacing_store(REPORTS_FAIL).layer(upstream(
            200,
            &[
                ("x-ratelimit-limit-requests", "2"),
                ("x-ratelimit-remaining-requests", "1"),
                ("x-ratelimit-reset-requests", "500ms"),
            ],
            sent.clone(),
        ));
        ok.oneshot(request()).await.unwrap();
        let limited =
            PaceLayer::new()
                .pacing_store(REPORTS_FAIL)
                .layer(upstream(429, &[], sent.clone()));
        let err = limited.oneshot(request()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::RateLimited);
        assert!(err.status().is_some());
        assert_eq!(sent.load(Ordering::SeqCst), 2);
    }

    /// Answers after `latency` with a bucket of 2 (1 left, full in 500 ms), or, for the
    /// first `fail_first` calls, fails without a response; counts the calls.
    fn slow_upstream(
        latency: Duration,
        fail_first: u64,
        sent: Arc<AtomicU64>,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Error,
        Future = impl Send,
    > + Clone
           + Send
           + 'static {
        tower::service_fn(move |_req: Request<Full<Bytes>>| {
            let n = sent.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(latency).await;
                if n < fail_first {
                    return Err(Error::new(ErrorKind::Connection).with_detail("refused"));
                }
                Ok(Response::builder()
                    .header("x-ratelimit-limit-requests", "2")
                    .header("x-ratelimit-remaining-requests", "1")
                    .header("x-ratelimit-reset-requests", "500ms")
                    .body(Full::new(Bytes::from_static(b"{}")))
                    .unwrap())
            }
        })
    }

    /// A pace service with `config` over `slow_upstream(latency, fail_first)`, pacing
    /// through a new in-process store: `(store, sent, svc)`.
    macro_rules! probing_setup {
        ($config:expr, $latency:expr, $fail_first:expr) => {{
            let store = InProcessStore::new();
            let sent = Arc::new(AtomicU64::new(0));
            let svc = PaceLayer::with_config($config)
                .pacing_store(store.clone())
                .layer(slow_upstream($latency, $fail_first, sent.clone()));
            (store, sent, svc)
        }};
    }

    /// Spawns a first call (the probe) and, 10 ms later, a second: their join handles.
    macro_rules! probe_then_second {
        ($svc:ident) => {{
            let first = tokio::spawn($svc.clone().oneshot(request()));
            tokio::time::sleep(Duration::from_millis(10)).await;
            let second = tokio::spawn($svc.clone().oneshot(request()));
            (first, second)
        }};
    }

    /// Spawns `n` calls of `svc` at once: their join handles.
    macro_rules! spawn_calls {
        ($svc:ident, $n:expr) => {
            (0..$n)
                .map(|_| tokio::spawn($svc.clone().oneshot(request())))
                .collect::<Vec<_>>()
        };
    }

    /// Waits for each call and unwraps its success.
    async fn all_ok<T>(calls: Vec<tokio::task::JoinHandle<Result<T, Error>>>) {
        for c in calls {
            c.await.unwrap().unwrap();
        }
    }

    /// A cold window of one: a cold key is probed by one request.
    fn probing() -> PacerConfig {
        PacerConfig {
            cold_window: Some(1),
            ..PacerConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_cold_key_is_probed_by_one_request_while_the_others_wait() {
        let (store, sent, svc) = probing_setup!(probing(), Duration::from_millis(100), 0);
        let start = Instant::now();
        let calls = spawn_calls!(svc, 3);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(sent.load(Ordering::SeqCst), 1, "only the probe is out");
        all_ok(calls).await;
        // The probe's headers (1 left of 2, refilled 2/s) went to the store: the second call
        // went at 100 ms, the third waited for a refill.
        assert_eq!(sent.load(Ordering::SeqCst), 3);
        assert!(
            start.elapsed() >= Duration::from_millis(600),
            "{:?}",
            start.elapsed()
        );
        assert!(store
            .key_model(&key())
            .is_some_and(|m| m.requests.is_some()));
        // Known now, and the bucket full again: two later calls go out together, without a
        // probe first.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let later = spawn_calls!(svc, 2);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(sent.load(Ordering::SeqCst), 5);
        all_ok(later).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_gets_no_answer_hands_the_probe_to_the_next_request() {
        let (_store, sent, svc) = probing_setup!(probing(), Duration::from_millis(100), 1);
        let (first, second) = probe_then_second!(svc);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            sent.load(Ordering::SeqCst),
            1,
            "the second waits for the probe"
        );
        let err = first.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Connection);
        second.await.unwrap().unwrap();
        assert_eq!(sent.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_hands_the_probe_to_the_next_request() {
        let (_store, sent, svc) = probing_setup!(probing(), Duration::from_millis(100), 0);
        let (first, second) = probe_then_second!(svc);
        tokio::time::sleep(Duration::from_millis(10)).await;
        first.abort();
        second.await.unwrap().unwrap();
        assert_eq!(sent.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gives_up_at_its_max_wait_while_the_probe_is_slow() {
        let config = PacerConfig {
            max_wait: Some(Duration::from_millis(50)),
            ..probing()
        };
        let (_store, sent, svc) = probing_setup!(config, Duration::from_secs(1), 0);
        let probe = tokio::spawn(svc.clone().oneshot(request()));
        tokio::time::sleep(Duration::from_millis(1)).await;
        let err = svc.clone().oneshot(request()).await.unwrap_err();
        assert!(is_paced_locally(&err), "{err}");
        assert!(
            err.detail().is_some_and(|d| d.contains("first answer")),
            "{err}"
        );
        probe.await.unwrap().unwrap();
        assert_eq!(sent.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn by_default_a_cold_burst_goes_out_at_once_through_a_store() {
        let store = InProcessStore::new();
        let sent = Arc::new(AtomicU64::new(0));
        let svc = PaceLayer::new()
            .pacing_store(store.clone())
            .layer(slow_upstream(Duration::from_millis(100), 0, sent.clone()));
        let calls = spawn_calls!(svc, 3);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(sent.load(Ordering::SeqCst), 3);
        all_ok(calls).await;
    }
}
