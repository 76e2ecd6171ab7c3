//! The stalled-stream watchdog: first-byte and idle bounds in virtual time, the typed errors,
//! healthy slow streams, how it composes with retries, the SSE error event for proxies.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use oai_resilience::retry::{Backoff, Jitter, RetryConfig, RetryLayer};
use oai_resilience::watchdog::{
    sse_error_event, SseErrorBody, Stall, StallBounds, WatchdogBody, WatchdogLayer, DEFAULT_IDLE,
};
use oai_resilience::{ClassifyLayer, ErrorKind};
use tokio::time::Instant;
use tower::{service_fn, ServiceBuilder, ServiceExt};

type Body = UnsyncBoxBody<Bytes, Infallible>;

const SEC: Duration = Duration::from_secs(1);

/// A body that sends each `(delay, bytes)` after its delay, then ends or, with `stall`, sends
/// nothing more and never ends.
fn scripted(steps: Vec<(Duration, &'static str)>, stall: bool) -> Body {
    let frames = futures_util::stream::iter(steps).then(|(delay, text)| async move {
        tokio::time::sleep(delay).await;
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(text.as_bytes())))
    });
    if stall {
        StreamBody::new(frames.chain(futures_util::stream::pending())).boxed_unsync()
    } else {
        StreamBody::new(frames).boxed_unsync()
    }
}

fn post() -> Request<Full<Bytes>> {
    Request::post("http://upstream.test/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"stream":true}"#)))
        .unwrap()
}

fn event_stream(body: Body) -> Response<Body> {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap()
}

fn retry_config() -> RetryConfig {
    RetryConfig::new()
        .backoff(Backoff::new(Duration::from_millis(100), SEC).with_jitter(Jitter::None))
        .seed(1)
        .no_budget()
}

#[tokio::test(start_paused = true)]
async fn a_stall_before_the_first_byte_fails_the_call_with_a_typed_timeout() {
    let upstream = service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(event_stream(scripted(vec![], true)))
    });
    let svc = WatchdogLayer::new().layer_for_test(upstream);
    let start = Instant::now();
    let err = svc.oneshot(post()).await.unwrap_err();
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(60),
        "the default first-byte bound"
    );
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(err.detail(), Some("no first byte within 60 s"));
    assert_eq!(
        Stall::of(&err),
        Some(Stall::FirstByte(Duration::from_secs(60)))
    );
    assert!(
        err.to_string()
            .starts_with("timeout: no first byte within 60 s"),
        "{err}"
    );
    // The attempt's error says "retry me": nothing reached the caller.
    assert_eq!(err.should_retry(), Some(true));
    assert!(err.is_retryable());
}

#[tokio::test(start_paused = true)]
async fn a_stall_after_the_first_byte_ends_the_body_with_a_typed_timeout() {
    let upstream = service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(event_stream(scripted(
            vec![(SEC, "data: {\"n\":1}\n\n"), (SEC, "data: {\"n\":2}\n\n")],
            true,
        )))
    });
    let svc = WatchdogLayer::new()
        .idle(Duration::from_secs(5))
        .layer_for_test(upstream);
    let start = Instant::now();
    let res = svc.oneshot(post()).await.unwrap();
    // The response is returned once its first frame arrived.
    assert_eq!(start.elapsed(), SEC);
    let mut body = res.into_body();
    assert_eq!(
        body.frame().await.unwrap().unwrap().into_data().unwrap(),
        "data: {\"n\":1}\n\n"
    );
    assert_eq!(
        body.frame().await.unwrap().unwrap().into_data().unwrap(),
        "data: {\"n\":2}\n\n"
    );
    let t = Instant::now();
    let err = body.frame().await.unwrap().unwrap_err();
    assert_eq!(t.elapsed(), Duration::from_secs(5));
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(err.detail(), Some("stream idle for 5 s"));
    assert_eq!(Stall::of(&err), Some(Stall::Idle(Duration::from_secs(5))));
    // Not a verdict to retry: part of the answer was handed over.
    assert_eq!(err.should_retry(), None);
    assert!(
        body.frame().await.is_none(),
        "the body ends after the error"
    );
}

#[tokio::test(start_paused = true)]
async fn a_healthy_slow_stream_is_never_cut() {
    // 20 events, each 29 s after the previous one: 9 minutes 40 s in all, under a 30 s bound.
    let steps: Vec<_> = (0..20)
        .map(|_| (Duration::from_secs(29), "data: {}\n\n"))
        .collect();
    let mut body = WatchdogBody::new(
        scripted(steps, false),
        StallBounds::new(Some(Duration::from_secs(30)), Some(DEFAULT_IDLE)),
    );
    let start = Instant::now();
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        frame.unwrap();
        n += 1;
    }
    assert_eq!(n, 20);
    assert_eq!(start.elapsed(), Duration::from_secs(29 * 20));
}

#[tokio::test(start_paused = true)]
async fn a_slow_reader_is_not_an_idle_upstream() {
    // The upstream has everything ready; the caller reads one frame a minute.
    let steps: Vec<_> = (0..5).map(|_| (Duration::ZERO, "data: {}\n\n")).collect();
    let mut body = WatchdogBody::new(scripted(steps, false), StallBounds::default());
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        frame.unwrap();
        n += 1;
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    assert_eq!(n, 5);
}

#[tokio::test(start_paused = true)]
async fn disabled_bounds_never_fire() {
    let mut body = WatchdogBody::new(
        scripted(vec![(Duration::from_secs(3600), "data: {}\n\n")], false),
        StallBounds::new(None, None),
    );
    assert!(body.frame().await.unwrap().is_ok());
    assert!(body.frame().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn inner_body_errors_pass_through_typed() {
    let failing = StreamBody::new(futures_util::stream::iter([
        Ok(Frame::data(Bytes::from_static(b"data: {}\n\n"))),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        )),
    ]));
    let mut body = WatchdogBody::new(failing, StallBounds::default());
    assert!(body.frame().await.unwrap().is_ok());
    let err = body.frame().await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ResponseBody);
    assert_eq!(Stall::of(&err), None);
}

/// An upstream that logs its calls and answers the n-th with `answer(n)`.
fn counting(
    answer: fn(usize) -> Body,
) -> (
    Arc<AtomicUsize>,
    impl tower::Service<
            Request<Full<Bytes>>,
            Response = Response<Body>,
            Error = Infallible,
            Future = impl Send,
        > + Clone,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let svc = service_fn(move |_req: Request<Full<Bytes>>| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, Infallible>(event_stream(answer(n))) }
    });
    (calls, svc)
}

#[tokio::test(start_paused = true)]
async fn under_retry_a_first_byte_stall_is_retried() {
    // The first attempt stalls before its first byte, the second streams normally.
    let (calls, upstream) = counting(|n| {
        if n == 0 {
            scripted(vec![], true)
        } else {
            scripted(
                vec![(SEC, "data: {\"ok\":true}\n\n"), (SEC, "data: [DONE]\n\n")],
                false,
            )
        }
    });
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::with_config(retry_config()))
        .layer(ClassifyLayer::new())
        .layer(WatchdogLayer::new().first_byte(Duration::from_secs(10)))
        .service(upstream);
    let start = Instant::now();
    let res = svc.oneshot(post()).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "data: {\"ok\":true}\n\ndata: [DONE]\n\n");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "two requests");
    // 10 s of stall, 100 ms of backoff, 2 s of stream.
    assert_eq!(start.elapsed(), Duration::from_millis(12_100));
}

#[tokio::test(start_paused = true)]
async fn under_retry_a_mid_stream_stall_is_a_body_error_and_not_retried() {
    let (calls, upstream) = counting(|_| scripted(vec![(SEC, "data: {\"n\":1}\n\n")], true));
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::with_config(retry_config()))
        .layer(ClassifyLayer::new())
        .layer(WatchdogLayer::new().idle(Duration::from_secs(10)))
        .service(upstream);
    let res = svc.oneshot(post()).await.unwrap();
    let err = res.into_body().collect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(Stall::of(&err), Some(Stall::Idle(Duration::from_secs(10))));
    assert_eq!(err.attempts(), 1);
    // Let any retry machinery run: there is none left, the call was over.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one request");
}

#[tokio::test(start_paused = true)]
async fn without_the_retry_verdict_the_policy_decides_and_a_post_timeout_is_not_retried() {
    let (calls, upstream) = counting(|_| scripted(vec![], true));
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::with_config(retry_config()))
        .layer(ClassifyLayer::new())
        .layer(
            WatchdogLayer::new()
                .first_byte(Duration::from_secs(10))
                .retry_first_byte(false),
        )
        .service(upstream);
    let err = svc.oneshot(post()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(err.attempts(), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_proxy_turns_a_stall_into_an_sse_error_event() {
    // The upstream stopped inside an event: a blank line ends it before the error event.
    let upstream = scripted(
        vec![(SEC, "data: {\"n\":1}\n\n"), (SEC, "data: {\"n\":")],
        true,
    );
    let bounds = StallBounds::new(Some(Duration::from_secs(60)), Some(Duration::from_secs(5)));
    let body = SseErrorBody::new(WatchdogBody::new(upstream, bounds));
    let start = Instant::now();
    let all = body.collect().await.unwrap().to_bytes();
    assert_eq!(start.elapsed(), Duration::from_secs(7));
    let text = std::str::from_utf8(&all).unwrap();
    let at = text.find("event: error").expect(text);
    let (head, event) = text.split_at(at);
    assert_eq!(head, "data: {\"n\":1}\n\ndata: {\"n\":\n\n");
    let json = event
        .strip_prefix("event: error\ndata: ")
        .and_then(|e| e.strip_suffix("\n\n"))
        .expect(event);
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["error"]["code"], "timeout");
    assert_eq!(v["error"]["type"], "server_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stream idle for 5 s"),
        "{v}"
    );
    // The event is the same as the helper's.
    let stall = Stall::Idle(Duration::from_secs(5)).into_error();
    assert_eq!(event.as_bytes(), &sse_error_event(&stall)[..]);
}

#[cfg(feature = "mock")]
mod with_the_mock {
    use super::*;
    use oai_resilience::mock::{MockServer, Route};

    // Real time (loopback I/O and a paused clock race): the mock spreads the stream's events
    // over 20 s, so its gaps (over a second) exceed a 300 ms idle bound after the first event.
    #[tokio::test]
    async fn a_mock_stream_slower_than_the_idle_bound_ends_with_the_error_event() {
        let server = MockServer::builder()
            .stream_duration(Duration::from_secs(20))
            .start()
            .await;
        let client = test_support::http_client::<Full<Bytes>>();
        let svc = ServiceBuilder::new()
            .layer(ClassifyLayer::new())
            .layer(
                WatchdogLayer::new()
                    .first_byte(Duration::from_secs(5))
                    .idle(Duration::from_millis(300)),
            )
            .service(client);
        let req = Request::post(server.endpoint(Route::ChatCompletions))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Hi"}]}"#,
            )))
            .unwrap();
        let start = std::time::Instant::now();
        let res = svc.oneshot(req).await.unwrap();
        let all = SseErrorBody::new(res.into_body())
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        let text = std::str::from_utf8(&all).unwrap();
        assert!(text.starts_with("data: {"), "{text}");
        assert!(text.contains("event: error\ndata: {\"error\":"), "{text}");
        assert!(text.contains("stream idle for 0.3 s"), "{text}");
        assert!(!text.contains("[DONE]"), "{text}");
        assert_eq!(server.counts().total, 1);
    }
}

/// `Layer::layer` under a name that reads well in the tests above.
trait LayerForTest {
    fn layer_for_test<S>(self, inner: S) -> oai_resilience::Watchdog<S>;
}

impl LayerForTest for WatchdogLayer {
    fn layer_for_test<S>(self, inner: S) -> oai_resilience::Watchdog<S> {
        tower::Layer::layer(&self, inner)
    }
}
