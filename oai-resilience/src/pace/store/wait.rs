//! How the pace service paces through a store: wait until it admits a request, then report
//! what the call's answer taught.

use std::time::Duration;

use tokio::time::Instant;

use super::{Admission, LearnedLimits, PacingStore};
use crate::error::Error;
use crate::pace::{wait_limit, Cost, PaceKey, WaitBound};

pub(crate) fn paced_locally(key: &PaceKey, why: &str, waited: Duration) -> Error {
    Error::new(crate::ErrorKind::RateLimited).with_detail(format!(
        "{}: no slot on {key} in the shared store before {why} (waited {} ms)",
        crate::pace::pacer::PACED_LOCALLY,
        waited.as_millis()
    ))
}

/// When a wait that started at `start` must end ([`wait_limit`]), and why, in words.
pub(crate) fn deadline_limit(
    start: Instant,
    max_wait: Option<Duration>,
    deadline: Option<Instant>,
) -> (Option<Instant>, &'static str) {
    match wait_limit(start, max_wait, deadline) {
        Some((limit, WaitBound::Deadline)) => (Some(limit), "the call's deadline"),
        Some((limit, WaitBound::MaxWait)) => (Some(limit), "max_wait"),
        None => (None, "max_wait"),
    }
}

/// Waits until `store` admits a request of `cost` on `key`, at most `max_wait` and never past
/// `deadline`; returns how long it waited.
pub(crate) async fn admit_until(
    store: &dyn PacingStore,
    key: &PaceKey,
    cost: Cost,
    max_wait: Option<Duration>,
    deadline: Option<Instant>,
) -> Result<Duration, Error> {
    let start = Instant::now();
    let (limit, why) = deadline_limit(start, max_wait, deadline);
    // Bounded: every round either admits, fails, or sleeps a positive wait (a zero wait is
    // rounded up to 1 ms), and the total sleep is bounded by `limit` (or, without any limit,
    // by the store's longest wait per round, as the caller asked for no bound).
    loop {
        match store.admit(key, cost).await? {
            Admission::Admitted => return Ok(start.elapsed()),
            Admission::Blocked => {
                return Err(paced_locally(
                    key,
                    "a refill (none at this limit)",
                    start.elapsed(),
                ))
            }
            Admission::Wait(d) => {
                let d = d.max(Duration::from_millis(1));
                if limit.is_some_and(|l| Instant::now() + d > l) {
                    return Err(paced_locally(key, why, start.elapsed()));
                }
                tracing::trace!(key = %key, wait_ms = d.as_millis() as u64, "shared pace: waiting for the store");
                tokio::time::sleep(d).await;
            }
        }
    }
}

/// A response's rate-limit snapshot: the one the classify layer attached, else read from its
/// headers.
pub(crate) fn response_snapshot<ResB>(r: &http::Response<ResB>) -> crate::parse::RateLimitSnapshot {
    r.extensions()
        .get::<crate::parse::RateLimitSnapshot>()
        .copied()
        .unwrap_or_else(|| crate::parse::RateLimitSnapshot::from_headers(r.headers()))
}

/// What a call's result tells the store: the rate-limit snapshot, and `Some(hint)` for a
/// server 429.
pub(crate) fn outcome<ResB>(
    res: &Result<http::Response<ResB>, Error>,
) -> (
    Option<crate::parse::RateLimitSnapshot>,
    Option<Option<Duration>>,
) {
    match res {
        Ok(r) => (Some(response_snapshot(r)), None),
        Err(e) => (
            e.rate_limit().copied(),
            (e.kind() == crate::ErrorKind::RateLimited && e.status().is_some())
                .then(|| e.retry_after()),
        ),
    }
}

/// Reports a call's outcome to the store: limits learned from the snapshot, and a pause for a
/// server 429 (its hint, else `default_pause`). A store that fails closed fails this report,
/// not the call that was made: its errors are logged and dropped.
pub(crate) async fn report_to_store(
    store: &dyn PacingStore,
    key: &PaceKey,
    snap: Option<crate::parse::RateLimitSnapshot>,
    rate_limited: Option<Option<Duration>>,
    default_pause: Duration,
) {
    if let Some(snap) = snap.filter(|s| !s.is_empty()) {
        if let Err(e) = store.learn(key, LearnedLimits::from(&snap)).await {
            tracing::debug!(error = %e, "shared pace: could not record limits");
        }
    }
    if let Some(hint) = rate_limited {
        let pause = hint.unwrap_or(default_pause);
        if let Err(e) = store.pause(key, pause).await {
            tracing::debug!(error = %e, "shared pace: could not record a pause");
        }
    }
}

#[cfg(test)]
mod pacing_store_tests {
    use std::sync::Arc;

    use super::*;
    use crate::pace::store::{test_limits as limits, InProcessStore, StoreFuture};

    use crate::pace::test_upstream::{chat_key, chat_request, upstream};
    use crate::pace::{PaceLayer, PacerConfig};

    /// A pace layer that paces through `store`, with `edit` applied to its pacer's config.
    fn store_layer(store: impl PacingStore, edit: impl FnOnce(&mut PacerConfig)) -> PaceLayer {
        let mut config = PacerConfig::default();
        edit(&mut config);
        PaceLayer::with_config(config).pacing_store(store)
    }

    const AUTH: &str = "Bearer sk-test-layer";

    fn request() -> http::Request<http_body_util::Full<bytes::Bytes>> {
        chat_request(AUTH)
    }

    fn request_key() -> PaceKey {
        chat_key(AUTH)
    }

    #[tokio::test(start_paused = true)]
    async fn layer_waits_for_the_store_and_learns_from_headers() {
        use tower::{Layer, ServiceExt};
        let store = InProcessStore::new();
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let svc = store_layer(store.clone(), |_| {}).layer(upstream(
            200,
            &[
                ("x-ratelimit-limit-requests", "2"),
                ("x-ratelimit-remaining-requests", "1"),
                ("x-ratelimit-reset-requests", "500ms"),
            ],
            sent.clone(),
        ));
        let start = Instant::now();
        for _ in 0..3 {
            svc.clone().oneshot(request()).await.unwrap();
        }
        // Learned: capacity 2, refill 2/s; the first response set the level to 1, the second
        // emptied it, the third waited 500 ms.
        assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert_eq!(start.elapsed(), Duration::from_millis(500));
        let m = store.key_model(&request_key()).unwrap();
        assert_eq!(m.requests.map(|b| (b.capacity, b.refill)), Some((2.0, 2.0)));
    }

    #[tokio::test(start_paused = true)]
    async fn layer_fails_as_paced_locally_past_max_wait_or_deadline_or_when_blocked() {
        use tower::{Layer, ServiceExt};
        let store = InProcessStore::new();
        let key = request_key();
        store.learn(&key, limits(1.0, 1.0)).await.unwrap();
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let layer = store_layer(store.clone(), |c| {
            c.max_wait = Some(Duration::from_millis(100))
        });
        let svc = layer.layer(upstream(200, &[], sent.clone()));
        svc.clone().oneshot(request()).await.unwrap();
        let err = svc.clone().oneshot(request()).await.unwrap_err();
        assert!(crate::pace::is_paced_locally(&err), "{err}");
        assert!(
            err.detail().is_some_and(|d| d.contains("max_wait")),
            "{err}"
        );
        assert!(!err.to_string().contains("sk-test"), "{err}");
        // A deadline sooner than max_wait.
        let svc = store_layer(store.clone(), |_| {}).layer(upstream(200, &[], sent.clone()));
        let mut req = request();
        req.extensions_mut().insert(crate::pace::CallDeadline(
            Instant::now() + Duration::from_millis(10),
        ));
        let err = svc.clone().oneshot(req).await.unwrap_err();
        assert!(
            err.detail().is_some_and(|d| d.contains("deadline")),
            "{err}"
        );
        // No refill: blocked at once.
        store.learn(&key, limits(1.0, 0.0)).await.unwrap();
        let err = svc.clone().oneshot(request()).await.unwrap_err();
        assert!(crate::pace::is_paced_locally(&err), "{err}");
        assert!(err.detail().is_some_and(|d| d.contains("refill")), "{err}");
        assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn layer_pauses_the_key_on_a_server_429() {
        use tower::{Layer, ServiceExt};
        let store = InProcessStore::new();
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let svc = store_layer(store.clone(), |c| c.default_pause = Duration::from_secs(3))
            .layer(upstream(429, &[], sent.clone()));
        let err = svc.clone().oneshot(request()).await.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::RateLimited);
        assert!(!crate::pace::is_paced_locally(&err));
        let pause = store.key_model(&request_key()).and_then(|m| m.paused_until);
        let hint_us = u64::try_from(
            err.retry_after()
                .unwrap_or(Duration::from_secs(3))
                .as_micros(),
        )
        .unwrap();
        assert_eq!(pause, Some(hint_us));
        assert!(matches!(
            store.admit(&request_key(), Cost::tokens(1)).await.unwrap(),
            Admission::Wait(_)
        ));
    }

    #[derive(Debug)]
    struct Broken;

    impl PacingStore for Broken {
        fn admit<'a>(&'a self, _: &'a PaceKey, _: Cost) -> StoreFuture<'a, Admission> {
            Box::pin(async { Err(Error::new(crate::ErrorKind::Connection).with_detail("down")) })
        }
        fn learn<'a>(&'a self, _: &'a PaceKey, _: LearnedLimits) -> StoreFuture<'a, ()> {
            Box::pin(async { Ok(()) })
        }
        fn pause<'a>(&'a self, _: &'a PaceKey, _: Duration) -> StoreFuture<'a, ()> {
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn layer_passes_a_failing_store_error_through_and_sends_nothing() {
        use tower::{Layer, ServiceExt};
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let svc = store_layer(Broken, |_| {}).layer(upstream(200, &[], sent.clone()));
        let err = svc.oneshot(request()).await.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Connection);
        assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}
