//! The usage layer under the pace layer: usage read from JSON answers and from event streams
//! (chat's `include_usage` chunk, the Responses API's `response.completed`) as the body passes,
//! never held back; the pacer's token charge settled with it (refund and charge); the
//! per-model ratios that correct the next estimate; bad input ignored; and the
//! `include_usage` option. Virtual time throughout.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use oai_resilience::pace::{CostEstimator, PaceKey, PaceLayer, PacerConfig, StaticLimits};
use oai_resilience::usage::{UsageBody, UsageLayer};
use oai_resilience::{ClassifyLayer, Error};
use tokio::sync::mpsc;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

const URL: &str = "https://api.example.test/v1/chat/completions";
const MODEL: &str = "gpt-4o-mini";
/// A JSON answer's usage of one prompt and one completion token.
const ONE_AND_ONE: &str = r#"{"usage":{"prompt_tokens":1,"completion_tokens":1}}"#;

/// A chat body with `chars` characters of prompt and `max_tokens`.
fn chat(chars: usize, max_tokens: u64, stream: bool) -> String {
    format!(
        r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"{}"}}],"max_tokens":{max_tokens},"stream":{stream}}}"#,
        "x".repeat(chars)
    )
}

fn key() -> PaceKey {
    PaceKey::new("api.example.test").with_model(MODEL)
}

/// A pace layer with a static budget of 10,000 tokens per minute.
fn pace() -> PaceLayer {
    let mut config = PacerConfig::default();
    config.static_limits = StaticLimits::new(None, Some(10_000));
    PaceLayer::with_config(config)
}

/// The key's token bucket level.
fn level(pace: &PaceLayer) -> f64 {
    pace.pacer().key_state(&key()).unwrap().tokens.unwrap().1
}

/// A response body fed by a channel: frames arrive when the test sends them.
struct ChannelBody(mpsc::UnboundedReceiver<Result<Bytes, std::io::Error>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

type Sender = mpsc::UnboundedSender<Result<Bytes, std::io::Error>>;

/// Sends `frame` down the body behind `tx`.
fn feed(tx: &Sender, frame: &'static [u8]) {
    tx.send(Ok(Bytes::from_static(frame))).unwrap();
}

/// An upstream that answers one response with `content_type` whose body is fed through the
/// returned sender; the requests it saw are recorded.
#[allow(clippy::type_complexity)]
fn streaming_upstream(
    content_type: &'static str,
) -> (
    impl Service<
            Request<Full<Bytes>>,
            Response = Response<ChannelBody>,
            Error = Error,
            Future = impl Send,
        > + Clone,
    Arc<Mutex<Option<mpsc::UnboundedReceiver<Result<Bytes, std::io::Error>>>>>,
    Sender,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let rx = Arc::new(Mutex::new(Some(rx)));
    let slot = rx.clone();
    let svc = service_fn(move |_req: Request<Full<Bytes>>| {
        let rx = slot.lock().unwrap().take();
        async move {
            let rx = rx.ok_or_else(|| Error::new(oai_resilience::ErrorKind::Internal))?;
            Ok(Response::builder()
                .header("content-type", content_type)
                .body(ChannelBody(rx))
                .unwrap())
        }
    });
    (svc, rx, tx)
}

/// An upstream that answers every request with `body` as `content_type` and records the
/// request bodies.
#[allow(clippy::type_complexity)]
fn fixed_upstream(
    content_type: &'static str,
    body: &'static str,
    seen: Arc<Mutex<Vec<Bytes>>>,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Error,
    Future = impl Send,
> + Clone {
    service_fn(move |req: Request<Full<Bytes>>| {
        let seen = seen.clone();
        async move {
            let bytes = req.into_body().collect().await.unwrap().to_bytes();
            seen.lock().unwrap().push(bytes);
            Ok(Response::builder()
                .header("content-type", content_type)
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap())
        }
    })
}

fn post(body: String) -> Request<Full<Bytes>> {
    Request::post(URL)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// A fresh [`pace`] and, over it, the usage layer over a [`streaming_upstream`] answering as
/// `content_type`, and the sender of its body's frames.
fn streamed_through_usage(
    content_type: &'static str,
) -> (
    PaceLayer,
    impl Service<
            Request<Full<Bytes>>,
            Response = Response<UsageBody<ChannelBody>>,
            Error = Error,
            Future = impl Send,
        > + Clone,
    Sender,
) {
    let pace = pace();
    let (upstream, _rx, tx) = streaming_upstream(content_type);
    let svc = ServiceBuilder::new()
        .layer(pace.clone())
        .layer(UsageLayer::new())
        .service(upstream);
    (pace, svc, tx)
}

/// Sends `body` through `pace` and the usage layer to `upstream`; the response's body is left
/// unread.
async fn through_usage_to<S>(
    pace: &PaceLayer,
    upstream: S,
    body: String,
) -> Response<UsageBody<Full<Bytes>>>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Error>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    ServiceBuilder::new()
        .layer(pace.clone())
        .layer(UsageLayer::new())
        .service(upstream)
        .oneshot(post(body))
        .await
        .unwrap()
}

/// Sends `body` through `pace` and the usage layer to an upstream that answers `answer` as
/// `content_type`; the response's body is left unread.
async fn through_usage(
    pace: &PaceLayer,
    content_type: &'static str,
    answer: &'static str,
    body: String,
) -> Response<UsageBody<Full<Bytes>>> {
    through_usage_to(
        pace,
        fixed_upstream(content_type, answer, Arc::default()),
        body,
    )
    .await
}

/// A fresh [`pace`] and the response to a chat body of 72 characters and 400 `max_tokens`
/// sent through it and the usage layer to an upstream that answers `answer` as
/// `content_type`; the response's body is left unread.
async fn answered(
    content_type: &'static str,
    answer: &'static str,
) -> (PaceLayer, Response<UsageBody<Full<Bytes>>>) {
    let pace = pace();
    let resp = through_usage(&pace, content_type, answer, chat(72, 400, false)).await;
    (pace, resp)
}

#[tokio::test(start_paused = true)]
async fn json_usage_refunds_the_charge_and_corrects_the_next_estimate() {
    let pace = pace();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = fixed_upstream(
        "application/json",
        r#"{"id":"c","usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30}}"#,
        seen,
    );
    let svc = ServiceBuilder::new()
        .layer(pace.clone())
        .layer(ClassifyLayer::new())
        .layer(UsageLayer::new())
        .service(upstream);
    let body = chat(72, 400, false);
    let cost = CostEstimator::default().estimate(Some(body.as_bytes()));
    assert_eq!((cost.prompt(), cost.completion), (25, 400));
    let resp = svc.clone().oneshot(post(body.clone())).await.unwrap();
    // Charged the estimate until the body has been read.
    assert_eq!(level(&pace), 10_000.0 - 425.0);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(bytes.starts_with(b"{\"id\""));
    // The true 30 tokens replace the 425 estimated.
    assert_eq!(level(&pace), 10_000.0 - 30.0);
    let ratios = pace
        .pacer()
        .key_state(&key())
        .unwrap()
        .usage_ratios
        .unwrap();
    assert_eq!(ratios, (10.0 / 25.0, 20.0 / 400.0));
    // The next call of the model is estimated from the ratios (with the 2 % margin).
    let permit = pace.pacer().acquire(&key(), cost, None).await.unwrap();
    assert_eq!(permit.tokens(), ((10.0 + 20.0) * 1.02f64).ceil() as u64);
    // Another model keeps its own (no) correction.
    let other = PaceKey::new("api.example.test").with_model("gpt-4o");
    let permit = pace.pacer().acquire(&other, cost, None).await.unwrap();
    assert_eq!(permit.tokens(), 425);
}

#[tokio::test(start_paused = true)]
async fn usage_above_the_estimate_is_charged() {
    let (pace, resp) = answered(
        "application/json; charset=utf-8",
        r#"{"usage":{"prompt_tokens":1000,"completion_tokens":1000}}"#,
    )
    .await;
    resp.into_body().collect().await.unwrap();
    assert_eq!(level(&pace), 10_000.0 - 2_000.0);
    let (prompt, completion) = pace
        .pacer()
        .key_state(&key())
        .unwrap()
        .usage_ratios
        .unwrap();
    // 1,000 / 25 is clamped to the largest ratio, 4; 1,000 / 400 is 2.5.
    assert_eq!((prompt, completion), (4.0, 2.5));
}

/// Polls `body` for its next data frame.
async fn next_data<B: Body<Data = Bytes> + Unpin>(body: &mut B) -> Option<Bytes>
where
    B::Error: std::fmt::Debug,
{
    let frame = body.frame().await?.unwrap();
    frame.into_data().ok()
}

#[tokio::test(start_paused = true)]
async fn chat_stream_usage_is_read_as_the_stream_passes() {
    let pace = pace();
    let (upstream, _rx, tx) = streaming_upstream("text/event-stream");
    let svc = ServiceBuilder::new()
        .layer(pace.clone())
        .layer(ClassifyLayer::new())
        .layer(UsageLayer::new())
        .service(upstream);
    let first = Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n");
    tx.send(Ok(first.clone())).unwrap();
    let resp = svc.oneshot(post(chat(72, 400, true))).await.unwrap();
    let mut body: UsageBody<ChannelBody> = resp.into_body();
    // The first chunk reaches the caller while the upstream has not sent the rest.
    assert_eq!(next_data(&mut body).await, Some(first));
    assert_eq!(level(&pace), 10_000.0 - 425.0);
    // The usage chunk arrives split across frames.
    feed(&tx, b"data: {\"choices\":[],\"usage\":{\"prompt_");
    feed(
        &tx,
        b"tokens\":20,\"completion_tokens\":40}}\n\ndata: [DONE]\n\n",
    );
    drop(tx);
    let mut rest = Vec::new();
    while let Some(d) = next_data(&mut body).await {
        rest.extend_from_slice(&d);
    }
    assert!(rest.ends_with(b"data: [DONE]\n\n"));
    assert_eq!(level(&pace), 10_000.0 - 60.0);
}

#[tokio::test(start_paused = true)]
async fn responses_stream_usage_comes_from_response_completed() {
    let (pace, svc, tx) = streamed_through_usage("text/event-stream; charset=utf-8");
    feed(&tx, b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"usage\":null}}\n\n");
    let req = Request::post("https://api.example.test/v1/responses")
        .body(Full::new(Bytes::from(format!(
            r#"{{"model":"{MODEL}","input":"{}","max_output_tokens":100,"stream":true}}"#,
            "y".repeat(40)
        ))))
        .unwrap();
    let resp = svc.oneshot(req).await.unwrap();
    let mut body = resp.into_body();
    assert!(next_data(&mut body).await.is_some());
    let charged = 10_000.0 - level(&pace);
    feed(&tx, b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"status\":\"completed\",\"usage\":{\"input_tokens\":7,\"output_tokens\":13,\"total_tokens\":20}}}\n\n");
    drop(tx);
    while next_data(&mut body).await.is_some() {}
    assert!(charged > 100.0, "{charged}");
    assert_eq!(level(&pace), 10_000.0 - 20.0);
}

/// Sends one streamed call whose body carries `events` and then ends with `end` (an error
/// frame if `Some`); returns the pace layer after the body was read as far as it goes.
async fn stream_with(events: &'static [u8], error: bool) -> PaceLayer {
    let (pace, svc, tx) = streamed_through_usage("text/event-stream");
    feed(&tx, events);
    if error {
        tx.send(Err(std::io::Error::other("connection reset")))
            .unwrap();
    }
    drop(tx);
    let resp = svc.oneshot(post(chat(72, 400, true))).await.unwrap();
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
    pace
}

#[tokio::test(start_paused = true)]
async fn bad_or_missing_usage_leaves_the_estimate() {
    let cases: [(&[u8], bool); 6] = [
        // Malformed usage.
        (b"data: {\"usage\":{\"prompt_tokens\":\"many\"}}\n\n", false),
        (
            b"data: {\"usage\":{\"prompt_tokens\":-3,\"completion_tokens\":1}}\n\n",
            false,
        ),
        // Absurd numbers.
        (
            b"data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":900000000000}}\n\n",
            false,
        ),
        // Not JSON at all.
        (b"data: usage usage\n\n", false),
        // The stream ends before the usage event is complete.
        (
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n",
            false,
        ),
        // The stream fails after an incomplete usage event.
        (
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,",
            true,
        ),
    ];
    for (events, error) in cases {
        let pace = stream_with(events, error).await;
        let state = pace.pacer().key_state(&key()).unwrap();
        assert_eq!(
            state.usage_ratios,
            None,
            "{}",
            String::from_utf8_lossy(events)
        );
        assert_eq!(state.tokens.unwrap().1, 10_000.0 - 425.0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_json_body_that_ends_early_or_is_dropped_reports_nothing() {
    // A JSON answer cut by an error frame.
    let (pace, svc, tx) = streamed_through_usage("application/json");
    feed(
        &tx,
        b"{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}",
    );
    tx.send(Err(std::io::Error::other("reset"))).unwrap();
    let resp = svc
        .clone()
        .oneshot(post(chat(72, 400, false)))
        .await
        .unwrap();
    let mut body = resp.into_body();
    assert!(body.frame().await.unwrap().is_ok());
    assert!(body.frame().await.unwrap().is_err());
    assert_eq!(level(&pace), 10_000.0 - 425.0);
    // A body dropped unread.
    let pace = pace_layer_with_dropped_body().await;
    assert_eq!(pace.pacer().key_state(&key()).unwrap().usage_ratios, None);
}

async fn pace_layer_with_dropped_body() -> PaceLayer {
    let (pace, resp) = answered("application/json", ONE_AND_ONE).await;
    drop(resp);
    pace
}

#[tokio::test(start_paused = true)]
async fn other_answers_pass_through_unscanned() {
    let (pace, resp) = answered("text/plain", ONE_AND_ONE).await;
    assert!(resp
        .extensions()
        .get::<oai_resilience::usage::UsageSlot>()
        .is_none());
    resp.into_body().collect().await.unwrap();
    assert_eq!(pace.pacer().key_state(&key()).unwrap().usage_ratios, None);
}

/// The request bodies the upstream received for `req`, through a usage layer with
/// `include_usage(on)`.
async fn sent(on: bool, req: Request<Full<Bytes>>) -> serde_json::Value {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let svc = UsageLayer::new()
        .include_usage(on)
        .layer_service(fixed_upstream("application/json", "{}", seen.clone()));
    svc.oneshot(req).await.unwrap();
    let bytes = seen.lock().unwrap().pop().unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

trait LayerService {
    fn layer_service<S>(self, s: S) -> oai_resilience::usage::Usage<S>;
}

impl LayerService for UsageLayer {
    fn layer_service<S>(self, s: S) -> oai_resilience::usage::Usage<S> {
        tower::Layer::layer(&self, s)
    }
}

#[tokio::test(start_paused = true)]
async fn include_usage_is_added_only_when_asked_and_only_to_streaming_chat() {
    let v = sent(true, post(chat(4, 10, true))).await;
    assert_eq!(v["stream_options"]["include_usage"], true);
    assert_eq!(v["messages"][0]["content"], "xxxx");
    // Off: unchanged.
    let v = sent(false, post(chat(4, 10, true))).await;
    assert!(v.get("stream_options").is_none());
    // Not streaming: unchanged.
    let v = sent(true, post(chat(4, 10, false))).await;
    assert!(v.get("stream_options").is_none());
    // Another route: unchanged.
    let req = Request::post("https://api.example.test/v1/responses")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"m","input":"x","stream":true}"#,
        )))
        .unwrap();
    let v = sent(true, req).await;
    assert!(v.get("stream_options").is_none());
    // The caller's own stream options are kept, an explicit `false` too.
    let body = r#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_obfuscation":false}}"#;
    let v = sent(true, post(body.to_owned())).await;
    assert_eq!(
        v["stream_options"],
        serde_json::json!({"include_obfuscation": false, "include_usage": true})
    );
    let body =
        r#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":false}}"#;
    let v = sent(true, post(body.to_owned())).await;
    assert_eq!(v["stream_options"]["include_usage"], false);
}

#[test]
fn include_usage_refuses_what_it_cannot_rewrite() {
    use oai_resilience::usage::include_usage;
    assert!(include_usage(b"not json").is_none());
    assert!(include_usage(b"[true]").is_none());
    assert!(include_usage(br#"{"stream":"yes"}"#).is_none());
    assert!(include_usage(br#"{"stream":true,"stream_options":7}"#).is_none());
}

#[cfg(feature = "mock")]
#[tokio::test(start_paused = true)]
async fn the_mock_reports_true_usage_that_settles_the_charge() {
    use oai_resilience::mock::{MockServer, RateLimit, TrueUsage};
    use oai_resilience::stack::{ClientBody, OpenAiLayer};
    use oai_resilience::AuthLayer;
    use test_support::KEY;
    let server = MockServer::builder()
        .token_limit(RateLimit::per_minute(40_000))
        .true_usage(TrueUsage::new(0.5, 0.25))
        .start()
        .await;
    let client = test_support::http_client::<ClientBody>();
    let pace = pace();
    let stack = OpenAiLayer::new()
        .auth(AuthLayer::from_key(KEY))
        .base_url(server.url().parse().unwrap())
        .pace(pace.clone());
    let svc = tower::Layer::layer(
        &stack,
        UsageLayer::new().include_usage(true).layer_service(client),
    );
    let body = chat(400, 400, true);
    let (prompt, completion) = TrueUsage::new(0.5, 0.25).counts(body.as_bytes()).unwrap();
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = svc.oneshot(req).await.unwrap();
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("\"usage\""), "{text}");
    let state = pace
        .pacer()
        .key_state(
            &PaceKey::new(server.addr().to_string())
                .with_credential(format!("Bearer {KEY}").as_bytes())
                .with_model(MODEL),
        )
        .unwrap();
    let ratios = state.usage_ratios;
    let cost = CostEstimator::default().estimate(Some(chat(400, 400, true).as_bytes()));
    let want = (
        prompt as f64 / cost.prompt() as f64,
        completion as f64 / cost.completion as f64,
    );
    assert_eq!(ratios, Some(want));
}

#[tokio::test(start_paused = true)]
async fn error_and_compressed_answers_pass_through_unscanned() {
    for (status, encoding) in [(500, None), (200, Some("gzip"))] {
        let pace = pace();
        let upstream = service_fn(move |_req: Request<Full<Bytes>>| async move {
            let mut b = Response::builder()
                .status(status)
                .header("content-type", "application/json");
            if let Some(e) = encoding {
                b = b.header("content-encoding", e);
            }
            Ok::<_, Error>(
                b.body(Full::new(Bytes::from_static(ONE_AND_ONE.as_bytes())))
                    .unwrap(),
            )
        });
        let resp = through_usage_to(&pace, upstream, chat(72, 400, false)).await;
        assert!(resp
            .extensions()
            .get::<oai_resilience::usage::UsageSlot>()
            .is_none());
        resp.into_body().collect().await.unwrap();
        let state = pace.pacer().key_state(&key()).unwrap();
        assert_eq!(state.usage_ratios, None, "{status} {encoding:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_paced_through_a_store_reports_usage_to_the_observer_only() {
    use oai_resilience::observe::{Observer, TokensUsed};
    use oai_resilience::pace::InProcessStore;
    /// input, output, estimate, model
    type Used = (u64, u64, Option<u64>, Option<String>);
    #[derive(Debug, Default)]
    struct Seen(Mutex<Vec<Used>>);
    impl Observer for Seen {
        fn tokens_used(&self, e: &TokensUsed<'_>) {
            self.0.lock().unwrap().push((
                e.input_tokens,
                e.output_tokens,
                e.estimated,
                e.model.map(str::to_owned),
            ));
        }
    }
    let seen = Arc::new(Seen::default());
    let pace = PaceLayer::new()
        .pacing_store(InProcessStore::new())
        .observer(seen.clone());
    let resp = through_usage(
        &pace,
        "application/json",
        r#"{"usage":{"input_tokens":4,"output_tokens":5}}"#,
        chat(8, 50, false),
    )
    .await;
    resp.into_body().collect().await.unwrap();
    // No estimate to settle (the store keeps no per-call charge); the model from the key.
    assert_eq!(
        *seen.0.lock().unwrap(),
        vec![(4, 5, None, Some(MODEL.to_owned()))]
    );
    assert!(pace.pacer().key_state(&key()).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_that_counted_the_call_is_not_corrected_twice() {
    let pace = pace();
    let upstream = service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Error>(
            Response::builder()
                .header("content-type", "application/json")
                .header("x-ratelimit-limit-tokens", "10000")
                .header("x-ratelimit-remaining-tokens", "9970")
                .header("x-ratelimit-reset-tokens", "180ms")
                .body(Full::new(Bytes::from_static(
                    br#"{"usage":{"prompt_tokens":10,"completion_tokens":20}}"#,
                )))
                .unwrap(),
        )
    });
    let resp = through_usage_to(&pace, upstream, chat(72, 400, false)).await;
    // The server's remaining tokens counted this call's true 30 tokens: the level is theirs
    // (less the 2 % headroom), not the estimate's.
    let learned = level(&pace);
    assert_eq!(learned, 9970.0 - (9970.0f64 * 0.02).floor());
    resp.into_body().collect().await.unwrap();
    // The usage corrects the ratios but gives nothing back a second time.
    assert_eq!(level(&pace), learned);
    assert!(pace
        .pacer()
        .key_state(&key())
        .unwrap()
        .usage_ratios
        .is_some());
}
