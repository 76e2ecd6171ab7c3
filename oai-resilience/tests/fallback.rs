//! Fallback routes in virtual time: each trigger moves the call on (an open circuit, an
//! exhausted quota, a closed retry budget, the pacer's wait beyond `max_wait`), a 400, local
//! validation and a 401 never do; the served-by extension; the error of a call that failed
//! everywhere lists each route; the body goes whole to the next route, with the model a route
//! declares.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use oai_resilience::breaker::{BreakerConfig, CircuitBreakerLayer};
use oai_resilience::fallback::{Fallback, FallbackLayer, Route, ServedBy};
use oai_resilience::pace::{is_paced_locally, PaceBody, PacerConfig, StaticLimits};
use oai_resilience::retry::{OpenAiPolicy, RetryConfig, RetryLayer, TokenBudget};
use oai_resilience::stack::ClientBody;
use oai_resilience::{AuthLayer, Error, ErrorKind, OpenAiLayer, PaceLayer, StopReason};
use tokio::time::Instant;
use tower::{service_fn, Layer, ServiceExt};

const KEY: &str = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789";
const AZURE_KEY: &str = "0123456789abcdef0123456789abcdef";
const CHAT: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"n":1}"#;
const QUOTA: &str = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
const BAD: &str = r#"{"error":{"message":"Invalid value for 'n'.","type":"invalid_request_error","param":"n","code":null}}"#;

/// What one host received: the path, the headers and the body of each request.
type Seen = Vec<(String, http::HeaderMap, Bytes)>;

/// A host's scripted answers: (status, body), in turn.
type Script = VecDeque<(u16, &'static str)>;

/// Upstreams by host: each answers from its script, then with its default status.
#[derive(Clone, Default)]
struct Hosts {
    script: Arc<Mutex<HashMap<String, Script>>>,
    default: Arc<Mutex<HashMap<String, u16>>>,
    seen: Arc<Mutex<HashMap<String, Seen>>>,
}

impl Hosts {
    fn answer(&self, host: &str, status: u16) -> &Self {
        self.default.lock().unwrap().insert(host.into(), status);
        self
    }

    fn push(&self, host: &str, steps: impl IntoIterator<Item = (u16, &'static str)>) -> &Self {
        self.script
            .lock()
            .unwrap()
            .entry(host.into())
            .or_default()
            .extend(steps);
        self
    }

    fn seen(&self, host: &str) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .get(host)
            .cloned()
            .unwrap_or_default()
    }

    fn count(&self, host: &str) -> usize {
        self.seen(host).len()
    }

    /// `primary` as route "primary" and the backup host's [`stack`] as route "backup", both
    /// over [`Hosts::client`].
    fn primary_then_backup(
        &self,
        primary: OpenAiLayer,
    ) -> impl tower::Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Error,
        Future = impl Send,
    > + Clone {
        FallbackLayer::new()
            .route(Route::new("primary", primary))
            .route(Route::new("backup", stack("backup.test")))
            .layer(self.client())
    }

    /// The client every route shares: dispatches on the URI's host.
    fn client(
        &self,
    ) -> impl tower::Service<
        Request<ClientBody>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone {
        let this = self.clone();
        service_fn(move |mut req: Request<ClientBody>| {
            let host = req.uri().host().unwrap_or("").to_owned();
            let body = req
                .body_mut()
                .with_bytes(|b| b.map(Bytes::copy_from_slice))
                .unwrap_or_default();
            this.seen
                .lock()
                .unwrap()
                .entry(host.clone())
                .or_default()
                .push((req.uri().path().to_owned(), req.headers().clone(), body));
            let step = this
                .script
                .lock()
                .unwrap()
                .get_mut(&host)
                .and_then(VecDeque::pop_front);
            let default = this.default.lock().unwrap().get(&host).copied();
            let (status, body) = step.unwrap_or((default.unwrap_or(200), ""));
            let body = if body.is_empty() && status == 200 {
                r#"{"object":"chat.completion"}"#
            } else {
                body
            };
            async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from_static(body.as_bytes())))
                        .unwrap(),
                )
            }
        })
    }
}

/// A route's stack for `host`: the key in `Authorization`, 2 attempts, fast backoff.
fn stack(host: &str) -> OpenAiLayer {
    OpenAiLayer::new()
        .base_url(format!("https://{host}/v1").parse().unwrap())
        .auth(AuthLayer::from_key(KEY))
        .retry(RetryLayer::with_config(
            RetryConfig::new().max_attempts(2).seed(1),
        ))
}

fn chat(body: &'static str) -> Request<Full<Bytes>> {
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

fn served_by(res: &Response<Full<Bytes>>) -> (String, usize) {
    let s = res.extensions().get::<ServedBy>().unwrap();
    (s.route().to_owned(), s.index())
}

#[tokio::test(start_paused = true)]
async fn the_first_route_serves_while_it_is_healthy() {
    let hosts = Hosts::default();
    let svc = hosts.primary_then_backup(stack("primary.test"));
    for _ in 0..3 {
        let res = svc.clone().oneshot(chat(CHAT)).await.unwrap();
        assert_eq!(served_by(&res), ("primary".into(), 0));
        assert!(!res.extensions().get::<ServedBy>().unwrap().is_fallback());
    }
    assert_eq!(
        (hosts.count("primary.test"), hosts.count("backup.test")),
        (3, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn an_open_circuit_moves_on_without_sending() {
    let hosts = Hosts::default();
    hosts.answer("primary.test", 503);
    let breaker = CircuitBreakerLayer::with_config(
        BreakerConfig::new()
            .consecutive_failures(2)
            .open_for(Duration::from_secs(30)),
    );
    let svc = FallbackLayer::new()
        .route(Route::new(
            "primary",
            stack("primary.test").breaker(breaker),
        ))
        .route(Route::new("backup", stack("backup.test")))
        .layer(hosts.client());

    // Call 1: two 503s (the route's retries) open the primary's circuit; the backup serves.
    let res = svc.clone().oneshot(chat(CHAT)).await.unwrap();
    assert_eq!(served_by(&res), ("backup".into(), 1));
    assert_eq!(hosts.count("primary.test"), 2);

    // While it is open: straight to the backup, nothing sent to the primary, no wait.
    let start = Instant::now();
    for _ in 0..10 {
        let res = svc.clone().oneshot(chat(CHAT)).await.unwrap();
        assert_eq!(served_by(&res), ("backup".into(), 1));
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(hosts.count("primary.test"), 2);
    assert_eq!(hosts.count("backup.test"), 11);

    // After the open time the primary is probed, and serves again once it recovered.
    hosts.answer("primary.test", 200);
    tokio::time::advance(Duration::from_secs(30)).await;
    let res = svc.clone().oneshot(chat(CHAT)).await.unwrap();
    assert_eq!(served_by(&res), ("primary".into(), 0));
}

#[tokio::test(start_paused = true)]
async fn an_exhausted_quota_moves_on_after_one_request() {
    let hosts = Hosts::default();
    hosts.push("primary.test", [(429, QUOTA)]);
    let svc = hosts.primary_then_backup(stack("primary.test"));
    let res = svc.oneshot(chat(CHAT)).await.unwrap();
    assert_eq!(served_by(&res), ("backup".into(), 1));
    assert_eq!(hosts.count("primary.test"), 1, "a quota 429 is not retried");
}

#[tokio::test(start_paused = true)]
async fn a_closed_retry_budget_moves_on() {
    // A 418 is not a trigger by its kind; a policy retries it here, and an empty budget
    // refuses the retry: the stop reason alone moves the call on.
    let hosts = Hosts::default();
    hosts.answer("primary.test", 418);
    // The primary: its policy retries a 418, `attempts` times at most, against `budget`.
    let retrying_418 = |attempts: u32, budget: TokenBudget| {
        stack("primary.test").retry(RetryLayer::with_config(
            RetryConfig::new()
                .max_attempts(attempts)
                .policy(
                    OpenAiPolicy::new().retry_if(|e: &Error| e.kind() == ErrorKind::OtherStatus),
                )
                .budget(budget),
        ))
    };
    let closed = retrying_418(3, TokenBudget::new(0.0, 0.0));
    let svc = hosts.primary_then_backup(closed);
    let res = svc.oneshot(chat(CHAT)).await.unwrap();
    assert_eq!(served_by(&res), ("backup".into(), 1));
    assert_eq!(hosts.count("primary.test"), 1);

    // The same 418 with an open budget: the retries end on the maximum, and it stays.
    let open = retrying_418(2, TokenBudget::new(1.0, 1000.0));
    let svc = hosts.primary_then_backup(open);
    let err = svc.oneshot(chat(CHAT)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OtherStatus);
    assert_eq!(err.retry_context().unwrap().stop, StopReason::MaxAttempts);
    assert!(err.routes().is_empty(), "one route tried");
    assert_eq!(hosts.count("backup.test"), 1);
}

#[tokio::test(start_paused = true)]
async fn the_pacers_wait_beyond_max_wait_moves_on() {
    // One request per minute on the primary, a max wait of 1 s, and a retry policy that does
    // not wait out the pacer's refusal: the second call cannot get a slot in time.
    let hosts = Hosts::default();
    let mut config = PacerConfig::default();
    config.max_wait = Some(Duration::from_secs(1));
    config.static_limits = StaticLimits::new(Some(1), None);
    let primary = stack("primary.test")
        .pace(PaceLayer::with_config(config))
        .retry(RetryLayer::with_config(
            RetryConfig::new().policy(OpenAiPolicy::new().never_retry_if(is_paced_locally)),
        ));
    let svc = hosts.primary_then_backup(primary);
    let res = svc.clone().oneshot(chat(CHAT)).await.unwrap();
    assert_eq!(served_by(&res), ("primary".into(), 0));
    let start = Instant::now();
    let res = svc.clone().oneshot(chat(CHAT)).await.unwrap();
    assert_eq!(served_by(&res), ("backup".into(), 1));
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "refused at once, not after 1 s"
    );
    assert_eq!(hosts.count("primary.test"), 1);

    // Were the backup to fail too, the primary's entry is the pacer's refusal.
    hosts.push("backup.test", [(400, BAD)]);
    let err = svc.oneshot(chat(CHAT)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
    assert!(is_paced_locally(&err.routes()[0].error), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_400_local_validation_and_a_401_never_move_on() {
    let hosts = Hosts::default();
    hosts.push("primary.test", [(400, BAD), (401, "")]);
    let svc = hosts.primary_then_backup(stack("primary.test"));

    let err = svc.clone().oneshot(chat(CHAT)).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.param()),
        (ErrorKind::InvalidRequest, Some("n"))
    );
    assert!(err.routes().is_empty());

    // A body without `messages` is refused by the first route's validation: nothing sent.
    let err = svc
        .clone()
        .oneshot(chat(r#"{"model":"gpt-4o"}"#))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidParameter);

    let err = svc.clone().oneshot(chat(CHAT)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Authentication);
    assert_eq!(hosts.count("primary.test"), 2);
    assert_eq!(hosts.count("backup.test"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_call_that_failed_everywhere_lists_each_route() {
    let hosts = Hosts::default();
    hosts.answer("a.test", 503).push("b.test", [(429, QUOTA)]);
    hosts.answer("c.test", 502);
    let svc = FallbackLayer::new()
        .route(Route::new("a", stack("a.test")))
        .route(Route::new("b", stack("b.test")))
        .route(Route::new("c", stack("c.test")))
        .layer(hosts.client());
    let err = svc.oneshot(chat(CHAT)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServerError, "the last route's error");
    let routes: Vec<(&str, ErrorKind)> = err
        .routes()
        .iter()
        .map(|r| (&*r.route, r.error.kind()))
        .collect();
    assert_eq!(
        routes,
        [
            ("a", ErrorKind::ServerError),
            ("b", ErrorKind::QuotaExceeded),
            ("c", ErrorKind::ServerError)
        ]
    );
    let shown = err.to_string();
    assert!(
        shown.contains("(routes: a: 503 server_error; b: 429 quota_exceeded; c: 502 server_error)"),
        "{shown}"
    );
    for text in [shown, format!("{err:?}")] {
        assert!(!text.contains(KEY), "{text}");
        assert!(!text.contains("6789"), "{text}");
    }
    assert_eq!(
        (
            hosts.count("a.test"),
            hosts.count("b.test"),
            hosts.count("c.test")
        ),
        (2, 1, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn the_body_goes_whole_to_the_next_route_with_its_model_and_key() {
    let hosts = Hosts::default();
    hosts.answer("primary.test", 500);
    let azure = OpenAiLayer::new()
        .base_url("https://azure.test/openai/v1".parse().unwrap())
        .auth(AuthLayer::from_key(AZURE_KEY).azure());
    let svc = FallbackLayer::new()
        .route(Route::new("primary", stack("primary.test")))
        .route(Route::new("azure-mini", azure).model("gpt-4o-mini"))
        .layer(hosts.client());
    let res = svc.oneshot(chat(CHAT)).await.unwrap();
    assert_eq!(served_by(&res), ("azure-mini".into(), 1));

    let primary = hosts.seen("primary.test");
    assert_eq!(primary.len(), 2);
    for (_, headers, body) in &primary {
        assert_eq!(body, CHAT.as_bytes(), "every attempt the same bytes");
        assert!(headers["authorization"].to_str().unwrap().ends_with("6789"));
    }
    let azure = hosts.seen("azure.test");
    let (path, headers, body) = &azure[0];
    assert_eq!(path, "/openai/v1/chat/completions");
    assert_eq!(headers["api-key"], AZURE_KEY);
    assert!(headers.get("authorization").is_none());
    let sent: serde_json::Value = serde_json::from_slice(body).unwrap();
    let mut want: serde_json::Value = serde_json::from_str(CHAT).unwrap();
    want["model"] = "gpt-4o-mini".into();
    assert_eq!(sent, want, "the whole body, only the model replaced");
}

/// A route of any service: fails with `kind`, counting its calls.
fn failing(
    kind: ErrorKind,
    calls: &Arc<Mutex<u32>>,
) -> tower::util::BoxCloneService<Request<String>, Response<String>, Error> {
    let calls = calls.clone();
    tower::util::BoxCloneService::new(service_fn(move |_req: Request<String>| {
        *calls.lock().unwrap() += 1;
        async move { Err::<Response<String>, _>(Error::new(kind)) }
    }))
}

#[tokio::test(start_paused = true)]
async fn routes_of_any_service_and_bodies_that_cannot_be_rewritten() {
    let (a, b) = (Arc::new(Mutex::new(0)), Arc::new(Mutex::new(0)));
    let ok = tower::util::BoxCloneService::new(service_fn(|req: Request<String>| async move {
        Ok::<_, Error>(Response::new(req.into_body()))
    }));
    // A route that declares a model cannot rewrite a body that is not JSON: it is skipped
    // with a typed entry, nothing sent, and the next route gets the body as it was.
    let svc = Fallback::new([
        Route::new("a", failing(ErrorKind::Connection, &a)),
        Route::new("mini", failing(ErrorKind::ServerError, &b)).model("gpt-4o-mini"),
        Route::new("c", ok),
    ]);
    let req = Request::post("/v1/audio/transcriptions")
        .body("not json".to_owned())
        .unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.extensions().get::<ServedBy>().unwrap().index(), 2);
    assert_eq!(res.body(), "not json");
    assert_eq!((*a.lock().unwrap(), *b.lock().unwrap()), (1, 0));

    // Without routes: a typed error.
    let none: Fallback<tower::util::BoxCloneService<Request<String>, Response<String>, Error>> =
        Fallback::new([]);
    let err = none.oneshot(Request::new(String::new())).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal);
}

#[tokio::test(start_paused = true)]
async fn a_body_that_cannot_be_replayed_goes_to_the_first_route_only() {
    type Streamed = http_body_util::combinators::BoxBody<Bytes, Infallible>;
    let calls = Arc::new(Mutex::new(Vec::new()));
    let route = |name: &'static str| {
        let calls = calls.clone();
        tower::util::BoxCloneService::new(service_fn(move |_req: Request<Streamed>| {
            calls.lock().unwrap().push(name);
            async move { Err::<Response<()>, _>(Error::new(ErrorKind::ServerError)) }
        }))
    };
    let svc = Fallback::new([Route::new("a", route("a")), Route::new("b", route("b"))]);
    let body = Streamed::new(Full::new(Bytes::from_static(b"{}")));
    let err = svc.oneshot(Request::new(body)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServerError);
    let kinds: Vec<ErrorKind> = err.routes().iter().map(|r| r.error.kind()).collect();
    assert_eq!(kinds, [ErrorKind::ServerError, ErrorKind::NotReplayable]);
    assert_eq!(*calls.lock().unwrap(), ["a"]);
}
