//! The pace layer over `service_fn` fakes, with classify below it, in virtual time.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Empty, Full};
use oai_resilience::classify::{Classify, ClassifyLayer};
use oai_resilience::pace::{
    is_paced_locally, CallDeadline, Pace, PaceKey, PaceLayer, PacerConfig, StaticLimits,
};
use oai_resilience::{Error, ErrorKind};
use tokio::time::Instant;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

const URL: &str = "https://api.test/v1/chat/completions";

fn chat(model: &str, max_tokens: u64) -> String {
    format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"hello"}}],"max_tokens":{max_tokens}}}"#
    )
}

fn request(key: &str, body: String) -> http::Request<Full<Bytes>> {
    http::Request::post(URL)
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn ok() -> http::Response<Full<Bytes>> {
    http::Response::new(Full::new(Bytes::from_static(b"{}")))
}

fn too_many(retry_after_ms: u64) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .status(429)
        .header("retry-after-ms", retry_after_ms.to_string())
        .body(Full::new(Bytes::from_static(
            br#"{"error":{"message":"Rate limit reached for requests","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
        )))
        .unwrap()
}

/// `upstream` under classify under (a clone of) `pace`: the stack the tests here send through.
fn paced<S>(pace: &PaceLayer, upstream: S) -> Pace<Classify<S>> {
    pace.clone()
        .layer_on(ClassifyLayer::new().layer_on(upstream))
}

/// An upstream that counts its calls in `hits` and answers call number `limited_call`
/// (counting from 0) with `too_many(retry_after_ms)`, every other call with `ok()`.
fn limited_once(
    hits: Arc<AtomicUsize>,
    limited_call: usize,
    retry_after_ms: u64,
) -> impl Service<
    http::Request<Full<Bytes>>,
    Response = http::Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(move |_req: http::Request<Full<Bytes>>| {
        let n = hits.fetch_add(1, Ordering::SeqCst);
        let res = if n == limited_call {
            too_many(retry_after_ms)
        } else {
            ok()
        };
        async move { Ok::<_, Infallible>(res) }
    })
}

/// A server with a small bucket (capacity 20, refilled 20/s) and honest headers.
#[derive(Clone)]
struct BucketServer {
    state: Arc<Mutex<(f64, Instant)>>,
    sent: Arc<AtomicUsize>,
    limited: Arc<AtomicUsize>,
}

impl BucketServer {
    fn new() -> Self {
        BucketServer {
            state: Arc::new(Mutex::new((20.0, Instant::now()))),
            sent: Arc::default(),
            limited: Arc::default(),
        }
    }

    fn answer(&self) -> http::Response<Full<Bytes>> {
        self.sent.fetch_add(1, Ordering::SeqCst);
        let now = Instant::now();
        let mut st = self.state.lock().unwrap();
        st.0 = (st.0 + (now - st.1).as_secs_f64() * 20.0).min(20.0);
        st.1 = now;
        let granted = st.0 >= 1.0;
        if granted {
            st.0 -= 1.0;
        }
        let reset = Duration::from_secs_f64((20.0 - st.0) / 20.0);
        let mut res = if granted {
            ok()
        } else {
            self.limited.fetch_add(1, Ordering::SeqCst);
            too_many(((1.0 - st.0) / 20.0 * 1000.0).ceil() as u64)
        };
        let h = res.headers_mut();
        h.insert("x-ratelimit-limit-requests", "20".parse().unwrap());
        h.insert(
            "x-ratelimit-remaining-requests",
            (st.0.floor() as u64).to_string().parse().unwrap(),
        );
        h.insert(
            "x-ratelimit-reset-requests",
            format!("{}ms", reset.as_millis()).parse().unwrap(),
        );
        res
    }
}

#[tokio::test(start_paused = true)]
async fn burst_through_classify_against_a_small_fast_bucket() {
    let server = BucketServer::new();
    let srv = server.clone();
    let upstream = service_fn(move |_req: http::Request<Full<Bytes>>| {
        let srv = srv.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let res = srv.answer();
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok::<_, Infallible>(res)
        }
    });
    let pace = PaceLayer::new();
    let svc = paced(&pace, upstream);
    let start = Instant::now();
    let calls = 200;
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..50)
        .map(|_| {
            let (svc, next, failed) = (svc.clone(), next.clone(), failed.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::SeqCst) < calls {
                    let mut done = false;
                    for _ in 0..5 {
                        let res = svc
                            .clone()
                            .oneshot(request("sk-load", chat("gpt-4o-mini", 10)))
                            .await;
                        match res {
                            Ok(_) => {
                                done = true;
                                break;
                            }
                            Err(e) if e.kind() == ErrorKind::RateLimited => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    if !done {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let wall = start.elapsed().as_secs_f64();
    let sent = server.sent.load(Ordering::SeqCst);
    let min = (calls as f64 - 20.0) / 20.0;
    eprintln!(
        "sent {sent}, 429s {}, wall {wall:.3} s (minimum {min} s), {:?}",
        server.limited.load(Ordering::SeqCst),
        pace.pacer().metrics()
    );
    assert_eq!(failed.load(Ordering::SeqCst), 0);
    // The cold key's first wave (50 workers against a bucket of 20) goes out at once and
    // collects 30 429s; after that the headers pace the key and at most 2 more come.
    let cold_wave = 50 - 20;
    assert!(server.limited.load(Ordering::SeqCst) <= cold_wave + 2);
    assert!(sent <= calls + cold_wave + 2);
    assert!(wall <= min * 1.05, "{wall}");
}

#[tokio::test(start_paused = true)]
async fn a_429_pauses_the_key_for_every_request() {
    let upstream = limited_once(Arc::default(), 1, 1500);
    let pace = PaceLayer::new();
    let mut svc = paced(&pace, upstream);
    svc.ready().await.unwrap();
    svc.call(request("sk-a", chat("m", 1))).await.unwrap();
    let err = svc.call(request("sk-a", chat("m", 1))).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert!(!is_paced_locally(&err));
    // The next request on the same key waits for the hint; another key does not.
    let start = Instant::now();
    svc.call(request("sk-b", chat("m", 1))).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    svc.call(request("sk-a", chat("m", 1))).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(1500));
    let m = pace.pacer().metrics();
    assert_eq!(m.rate_limited, 1);
    assert_eq!(m.keys, 2);
}

#[tokio::test(start_paused = true)]
async fn token_cost_is_read_from_the_body_which_arrives_intact() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let upstream = service_fn(move |req: http::Request<Full<Bytes>>| {
        let s = s.clone();
        async move {
            use http_body_util::BodyExt;
            let body = req.into_body().collect().await.unwrap().to_bytes();
            s.lock().unwrap().push(body);
            Ok::<_, Infallible>(ok())
        }
    });
    let mut cfg = PacerConfig::default();
    cfg.static_limits = StaticLimits::new(None, Some(600));
    let pace = PaceLayer::with_config(cfg);
    let mut svc = paced(&pace, upstream);
    let start = Instant::now();
    // Each costs 2 (text) + 4 (message) + 3 + 290 = 299 tokens of a 600-token minute bucket.
    for _ in 0..3 {
        svc.ready()
            .await
            .unwrap()
            .call(request("sk-a", chat("m", 290)))
            .await
            .unwrap();
    }
    // Two leave 2 tokens; the third waited for the other 297, at 10 tokens per second.
    let waited = start.elapsed().as_secs_f64();
    assert!((waited - 29.7).abs() < 0.01, "{waited}");
    assert_eq!(seen.lock().unwrap()[2], Bytes::from(chat("m", 290)));
}

/// An upstream that answers every call with `ok()`.
fn always_ok() -> impl Service<
    http::Request<Full<Bytes>>,
    Response = http::Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(|_req: http::Request<Full<Bytes>>| async { Ok::<_, Infallible>(ok()) })
}

/// How many keys `pace` knows after one request on `sk-a` for each of `models`, in turn, to
/// [`always_ok`].
async fn keys_after(pace: &PaceLayer, models: &[&str]) -> usize {
    let mut svc = paced(pace, always_ok());
    for model in models {
        svc.ready()
            .await
            .unwrap()
            .call(request("sk-a", chat(model, 1)))
            .await
            .unwrap();
    }
    pace.pacer().metrics().keys
}

#[tokio::test(start_paused = true)]
async fn keys_are_per_model_unless_configured_otherwise() {
    assert_eq!(keys_after(&PaceLayer::new(), &["a", "b", "a"]).await, 2);
    assert_eq!(
        keys_after(&PaceLayer::new().per_model(false), &["a", "b"]).await,
        1
    );

    let pace = PaceLayer::new().key_fn(|_uri, headers, _body| {
        PaceKey::new(
            headers
                .get("x-tenant")
                .map_or("none", |v| v.to_str().unwrap_or("bad")),
        )
    });
    let mut svc = paced(&pace, always_ok());
    let mut req = request("sk-a", chat("a", 1));
    req.headers_mut()
        .insert("x-tenant", "blue".parse().unwrap());
    svc.ready().await.unwrap().call(req).await.unwrap();
    assert!(pace.pacer().key_state(&PaceKey::new("blue")).is_some());
}

#[tokio::test(start_paused = true)]
async fn the_call_deadline_bounds_the_wait_and_nothing_is_sent() {
    let hits = Arc::new(AtomicUsize::new(0));
    let upstream = limited_once(hits.clone(), 0, 10_000);
    let pace = PaceLayer::new();
    let mut svc = paced(&pace, upstream);
    let _ = svc.call(request("sk-a", chat("m", 1))).await.unwrap_err();
    let mut req = request("sk-a", chat("m", 1));
    req.extensions_mut()
        .insert(CallDeadline(Instant::now() + Duration::from_secs(2)));
    let err = svc.call(req).await.unwrap_err();
    assert!(is_paced_locally(&err), "{err}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(10)));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(pace.pacer().metrics().paced_errors, 1);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_gives_its_place_back() {
    let upstream = service_fn(|_req: http::Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(too_many(5_000))
    });
    let pace = PaceLayer::new();
    let mut svc = paced(&pace, upstream);
    let _ = svc.call(request("sk-a", chat("m", 1))).await.unwrap_err();
    let waiting = tokio::spawn(svc.call(request("sk-a", chat("m", 1))));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pace.pacer().metrics().queue_len, 1);
    waiting.abort();
    let _ = waiting.await;
    assert_eq!(pace.pacer().metrics().queue_len, 0);
    let key = PaceKey::new("api.test")
        .with_credential(b"Bearer sk-a")
        .with_model("m");
    let st = pace.pacer().key_state(&key).unwrap();
    assert_eq!((st.queue_len, st.in_flight), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn other_bodies_and_responses_without_classify() {
    // String bodies are read; Empty bodies cost the default; headers are read from a success
    // that did not go through classify.
    let upstream = service_fn(|_req: http::Request<String>| async {
        Ok::<_, Error>(
            http::Response::builder()
                .header("x-ratelimit-limit-requests", "10")
                .header("x-ratelimit-remaining-requests", "4")
                .header("x-ratelimit-reset-requests", "3s")
                .body(())
                .unwrap(),
        )
    });
    let pace = PaceLayer::new();
    let mut svc = pace.clone().layer_on(upstream);
    let req = http::Request::post(URL).body(chat("m", 1)).unwrap();
    svc.call(req).await.unwrap();
    let key = PaceKey::new("api.test").with_model("m");
    let (cap, level, refill) = pace.pacer().key_state(&key).unwrap().requests.unwrap();
    assert_eq!((cap, level), (10.0, 4.0));
    assert!((refill - 2.0).abs() < 1e-9);

    let mut cfg = PacerConfig::default();
    cfg.static_limits = StaticLimits::new(None, Some(60_000));
    let pace = PaceLayer::with_config(cfg);
    let upstream = service_fn(|_req: http::Request<Empty<Bytes>>| async {
        Ok::<_, Error>(http::Response::new(()))
    });
    let mut svc = pace.clone().layer_on(upstream);
    svc.call(http::Request::get(URL).body(Empty::new()).unwrap())
        .await
        .unwrap();
    let (_, level, _) = pace
        .pacer()
        .key_state(&PaceKey::new("api.test"))
        .unwrap()
        .tokens
        .unwrap();
    assert_eq!(level, 60_000.0 - 1_000.0);
}

/// A service that is never ready: its readiness error comes back, the permit is freed.
#[derive(Clone)]
struct Broken;

impl Service<http::Request<Full<Bytes>>> for Broken {
    type Response = http::Response<Full<Bytes>>;
    type Error = Error;
    type Future = std::future::Ready<Result<Self::Response, Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Err(
            Error::new(ErrorKind::Connection).with_detail("pool closed")
        ))
    }

    fn call(&mut self, _req: http::Request<Full<Bytes>>) -> Self::Future {
        unreachable!("never ready")
    }
}

#[tokio::test(start_paused = true)]
async fn an_inner_readiness_error_is_returned_and_frees_the_slot() {
    let pace = PaceLayer::new();
    let mut svc = pace.clone().layer_on(Broken);
    let err = svc.call(request("sk-a", chat("m", 1))).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection);
    let key = PaceKey::new("api.test")
        .with_credential(b"Bearer sk-a")
        .with_model("m");
    assert_eq!(pace.pacer().key_state(&key).unwrap().in_flight, 0);
    // The next call is not held behind a probe that never came back.
    let err = svc.call(request("sk-a", chat("m", 1))).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection);
}

trait LayerOn: Sized {
    fn layer_on<S>(self, inner: S) -> <Self as tower::Layer<S>>::Service
    where
        Self: tower::Layer<S>,
    {
        tower::Layer::layer(&self, inner)
    }
}

impl LayerOn for PaceLayer {}
impl LayerOn for ClassifyLayer {}

#[tokio::test(start_paused = true)]
async fn under_the_validation_layer_the_buffered_body_is_read() {
    use oai_resilience::validate::{ValidateBody, ValidateLayer};
    let upstream = service_fn(|_req: http::Request<ValidateBody<Full<Bytes>>>| async {
        Ok::<_, Error>(http::Response::new(()))
    });
    let mut cfg = PacerConfig::default();
    cfg.static_limits = StaticLimits::new(None, Some(60_000));
    let pace = PaceLayer::with_config(cfg);
    let svc = ServiceBuilder::new()
        .layer(ValidateLayer::new())
        .layer(pace.clone())
        .service(upstream);
    let mut req = request("sk-a", chat("gpt-4o-mini", 100));
    req.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    svc.oneshot(req).await.unwrap();
    let key = PaceKey::new("api.test")
        .with_credential(b"Bearer sk-a")
        .with_model("gpt-4o-mini");
    let (_, level, _) = pace.pacer().key_state(&key).unwrap().tokens.unwrap();
    // "hello": 2 tokens, + 4 for the message, + 3, + 100.
    assert_eq!(level, 60_000.0 - 109.0);
}
