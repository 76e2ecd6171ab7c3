//! The mock OpenAI server itself: routes, headers, every fault, counts, shutdown.
#![cfg(feature = "mock")]

use crate::scripted;

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use oai_resilience::mock::{
    estimate_tokens, AuthFailure, MockResponse, MockServer, RateLimit, Route, ECHOED_KEY_FRAGMENT,
};
use oai_resilience::parse::{parse_go_duration, RateLimitSnapshot};
use scripted::scripted;
use serde_json::{json, Value};

const CHAT: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello there"}]}"#;

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }
    fn message(&self) -> &str {
        self.json["error"]["message"].as_str().unwrap()
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    test_support::http_client()
}

async fn send(
    c: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: String,
    auth: Option<&str>,
    body: &str,
) -> Answer {
    let mut req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json");
    if let Some(key) = auth {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let res = c.request(req).await.expect("request reaches the mock");
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// A POST without a key of `body` to `route` of `server`.
async fn post(
    c: &Client<HttpConnector, Full<Bytes>>,
    server: &MockServer,
    route: Route,
    body: &str,
) -> Answer {
    send(c, "POST", server.endpoint(route), None, body).await
}

/// A small valid embeddings request.
const EMBED: &str = r#"{"model":"m","input":"x"}"#;

async fn chat(c: &Client<HttpConnector, Full<Bytes>>, server: &MockServer) -> Answer {
    post(c, server, Route::ChatCompletions, CHAT).await
}

/// A mock server whose only setting is `limit` on requests.
pub(super) async fn request_limited(limit: RateLimit) -> MockServer {
    MockServer::builder().request_limit(limit).start().await
}

/// A mock server whose only setting is `limit` on tokens.
pub(super) async fn token_limited(limit: RateLimit) -> MockServer {
    MockServer::builder().token_limit(limit).start().await
}

fn is_request_id(id: &str) -> bool {
    id.len() == 36
        && id.starts_with("req_")
        && id[4..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[tokio::test]
async fn routes_answer_openai_shapes_and_headers() {
    let server = MockServer::start().await;
    assert_eq!(server.url(), format!("http://{}", server.addr()));
    let c = client();

    let a = chat(&c, &server).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json["object"], "chat.completion");
    assert_eq!(a.json["model"], "gpt-4o-mini");
    assert!(a.json["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(a.json["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(a.json["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        a.json["choices"][0]["message"]["content"],
        "Mock reply to: Hello there"
    );
    assert_eq!(a.json["choices"][0]["finish_reason"], "stop");
    let usage = &a.json["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        )
    );
    assert!(
        is_request_id(a.header("x-request-id")),
        "{}",
        a.header("x-request-id")
    );
    assert_eq!(a.header("openai-version"), "2020-10-01");
    assert_eq!(a.header("openai-organization"), "org-mock");
    // Real time here: the exact value is checked under paused time below.
    assert!(a.header("openai-processing-ms").parse::<u64>().is_ok());
    assert_eq!(a.header("content-type"), "application/json");
    // Default limits: one request and its tokens were taken.
    let rl = RateLimitSnapshot::from_headers(&a.headers);
    assert_eq!(rl.limit_requests, Some(10_000));
    assert_eq!(rl.remaining_requests, Some(9_999));
    assert_eq!(rl.limit_tokens, Some(2_000_000));
    assert_eq!(
        rl.remaining_tokens,
        Some(2_000_000 - estimate_tokens(CHAT.as_bytes()))
    );

    let b = post(
        &c,
        &server,
        Route::Embeddings,
        r#"{"model":"text-embedding-3-small","input":["a","b","c"]}"#,
    )
    .await;
    assert_eq!(b.status, 200);
    assert_eq!(b.json["object"], "list");
    assert_eq!(b.json["data"].as_array().unwrap().len(), 3);
    assert_eq!(b.json["data"][2]["object"], "embedding");
    assert_eq!(b.json["data"][2]["index"], 2);

    // Without the /v1 prefix too.
    let r = send(
        &c,
        "POST",
        format!("{}/responses", server.url()),
        None,
        r#"{"model":"gpt-4o","input":"Say hi"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["object"], "response");
    assert_eq!(r.json["status"], "completed");
    assert_eq!(
        r.json["output"][0]["content"][0]["text"],
        "Mock reply to: Say hi"
    );

    let ids: std::collections::HashSet<String> = server
        .requests()
        .iter()
        .map(|r| r.request_id.clone())
        .collect();
    assert_eq!(ids.len(), 3, "request ids are unique");
    let counts = server.counts();
    assert_eq!((counts.total, counts.ok), (3, 3));
    assert_eq!(counts.route(Route::ChatCompletions), 1);
    assert_eq!(counts.route(Route::Embeddings), 1);
    assert_eq!(counts.route(Route::Responses), 1);
    assert_eq!(server.requests()[1].route, Some(Route::Embeddings));
    assert_eq!(server.requests()[2].path, "/responses");
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let server = MockServer::start().await;
    let c = client();
    let a = send(&c, "POST", format!("{}/v1/nope", server.url()), None, CHAT).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.message(), "Invalid URL (POST /v1/nope)");
    assert_eq!(a.json["error"]["type"], "invalid_request_error");
    assert!(a.json["error"]["param"].is_null() && a.json["error"]["code"].is_null());
    let b = send(&c, "GET", server.endpoint(Route::ChatCompletions), None, "").await;
    assert_eq!(b.status, 405);
    let counts = server.counts();
    assert_eq!((counts.total, counts.not_found, counts.ok), (2, 2, 0));
    assert_eq!(counts.status(404), 1);
    assert_eq!(counts.route(Route::ChatCompletions), 1);
}

#[tokio::test]
async fn scripts_play_in_order_then_normal_behaviour() {
    let server = MockServer::builder()
        .script(
            Route::ChatCompletions,
            [
                MockResponse::status(503),
                MockResponse::status(503).with_header("x-should-retry", "true"),
            ],
        )
        .script(
            Route::Embeddings,
            [MockResponse::status(502).with_body("<html>Bad Gateway</html>")],
        )
        .start()
        .await;
    let c = client();
    let first = chat(&c, &server).await;
    assert_eq!(first.status, 503);
    assert_eq!(
        first.message(),
        "The server is overloaded or not ready yet."
    );
    assert_eq!(first.json["error"]["code"], "server_is_overloaded");
    assert!(first.headers.get("x-should-retry").is_none());
    let second = chat(&c, &server).await;
    assert_eq!(second.status, 503);
    assert_eq!(second.header("x-should-retry"), "true");
    assert!(is_request_id(second.header("x-request-id")));
    assert_eq!(chat(&c, &server).await.status, 200);
    assert_eq!(chat(&c, &server).await.status, 200);

    // Scripts are per route, and can be added while running.
    server.script(Route::ChatCompletions, [MockResponse::status(500)]);
    assert_eq!(chat(&c, &server).await.status, 500);
    let e = post(&c, &server, Route::Embeddings, EMBED).await;
    assert_eq!(e.status, 502);
    assert_eq!(e.json, Value::Null, "raw body kept");

    let counts = server.counts();
    assert_eq!(counts.total, 6);
    assert_eq!(counts.scripted, 4);
    assert_eq!(counts.ok, 2);
    assert_eq!(counts.status(503), 2);
    assert_eq!(counts.server_errors(), 4);
}

#[tokio::test]
async fn scripted_success_and_custom_error_bodies() {
    let server = scripted(
        None,
        [
            MockResponse::error(
                409,
                "Lock timeout.",
                Some("invalid_request_error"),
                None,
                None,
            ),
            MockResponse::ok().with_json(&json!({"custom": true})),
            MockResponse::ok(),
        ],
    )
    .await;
    let c = client();
    let a = chat(&c, &server).await;
    assert_eq!((a.status.as_u16(), a.message()), (409, "Lock timeout."));
    assert_eq!(chat(&c, &server).await.json, json!({"custom": true}));
    assert_eq!(chat(&c, &server).await.json["object"], "chat.completion");
}

#[tokio::test(start_paused = true)]
async fn request_bucket_429_matches_the_api() {
    let server = request_limited(RateLimit::bucket(20, 20.0)).await;
    let c = client();
    for i in 0..20 {
        let a = chat(&c, &server).await;
        assert_eq!(a.status, 200, "request {i}");
        assert_eq!(
            a.header("x-ratelimit-remaining-requests"),
            (19 - i).to_string()
        );
    }
    let a = chat(&c, &server).await;
    assert_eq!(a.status, 429);
    assert_eq!(
        a.message(),
        "Rate limit reached for gpt-4o-mini in organization org-mock on requests per min (RPM): \
         Limit 20, Used 20, Requested 1. Please try again in 50ms. Visit \
         https://platform.openai.com/account/rate-limits to learn more."
    );
    assert_eq!(a.json["error"]["type"], "requests");
    assert_eq!(a.json["error"]["code"], "rate_limit_exceeded");
    assert!(a.json["error"]["param"].is_null());
    assert_eq!(a.header("retry-after"), "1");
    assert_eq!(a.header("retry-after-ms"), "50");
    assert_eq!(a.header("x-ratelimit-limit-requests"), "20");
    assert_eq!(a.header("x-ratelimit-remaining-requests"), "0");
    assert_eq!(a.header("x-ratelimit-reset-requests"), "1s");

    // The 429 took nothing; after 50 ms one request fits, and the headers stay truthful.
    tokio::time::advance(Duration::from_millis(50)).await;
    let a = chat(&c, &server).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-ratelimit-remaining-requests"), "0");
    assert_eq!(a.header("x-ratelimit-reset-requests"), "1s");
    tokio::time::advance(Duration::from_millis(500)).await;
    let a = chat(&c, &server).await;
    let rl = RateLimitSnapshot::from_headers(&a.headers);
    assert_eq!(rl.remaining_requests, Some(9));
    assert_eq!(rl.reset_requests, Some(Duration::from_millis(550)));
    // The implied refill rate is the real one: (limit − remaining) / reset ≈ 20/s.
    let rate = rl.request_refill_per_sec().unwrap();
    assert!((rate - 20.0).abs() < 0.5, "{rate}");

    let counts = server.counts();
    assert_eq!(
        (counts.ok, counts.rate_limited, counts.status(429)),
        (22, 1, 1)
    );
}

/// A server with `limit` on requests, `n` chat calls it answers with 200, and the answer to
/// the next one, a 429.
async fn past_request_limit(limit: RateLimit, n: usize) -> Answer {
    let server = request_limited(limit).await;
    let c = client();
    for _ in 0..n {
        assert_eq!(chat(&c, &server).await.status, 200);
    }
    let a = chat(&c, &server).await;
    assert_eq!(a.status, 429);
    a
}

#[tokio::test(start_paused = true)]
async fn minute_limit_resets_are_go_durations() {
    let a = past_request_limit(RateLimit::per_minute(3), 3).await;
    assert_eq!(a.header("retry-after"), "20");
    assert_eq!(a.header("retry-after-ms"), "20000");
    assert_eq!(a.header("x-ratelimit-reset-requests"), "1m0s");
    assert!(a.message().contains("Please try again in 20s."));
}

#[tokio::test(start_paused = true)]
async fn token_bucket_and_request_too_large() {
    let server = token_limited(RateLimit::bucket(100, 10.0)).await;
    let c = client();
    let body = |max: u64| {
        format!(
            r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"abcd"}}],"max_tokens":{max}}}"#
        )
    };
    // Each costs ceil(len("user" + "abcd") / 4) + 58 = 60 tokens.
    assert_eq!(estimate_tokens(body(58).as_bytes()), 60);
    let url = server.endpoint(Route::ChatCompletions);
    let a = send(&c, "POST", url.clone(), None, &body(58)).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-ratelimit-remaining-tokens"), "40");
    assert_eq!(a.header("x-ratelimit-reset-tokens"), "6s");
    let a = send(&c, "POST", url.clone(), None, &body(58)).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.json["error"]["type"], "tokens");
    assert_eq!(
        a.message(),
        "Rate limit reached for gpt-4o in organization org-mock on tokens per min (TPM): \
         Limit 100, Used 60, Requested 60. Please try again in 2s. Visit \
         https://platform.openai.com/account/rate-limits to learn more."
    );
    assert_eq!(a.header("retry-after-ms"), "2000");

    let a = send(&c, "POST", url, None, &body(500)).await;
    assert_eq!(a.status, 429);
    assert!(a.message().starts_with(
        "Request too large for gpt-4o in organization org-mock on tokens per min (TPM): Limit 100, Requested 502."
    ));
    assert!(a.headers.get("retry-after").is_none());
    assert_eq!(server.counts().rate_limited, 2);
}

#[tokio::test(start_paused = true)]
async fn quantized_limit_429s_while_headers_show_room() {
    let a = past_request_limit(RateLimit::quantized(600, Duration::from_secs(1)), 10).await;
    assert_eq!(a.header("x-ratelimit-limit-requests"), "600");
    assert_eq!(a.header("x-ratelimit-remaining-requests"), "590");
    assert_eq!(a.header("retry-after-ms"), "100");
    assert!(a
        .message()
        .contains("Limit 600, Used 10, Requested 1. Please try again in 100ms."));
    let reset = parse_go_duration(a.header("x-ratelimit-reset-requests")).unwrap();
    assert_eq!(reset, Duration::from_secs(1));
}

#[tokio::test]
async fn quota_switch() {
    let server = MockServer::builder().quota_exhausted(true).start().await;
    let c = client();
    let a = chat(&c, &server).await;
    assert_eq!(a.status, 429);
    assert!(a.message().starts_with(
        "You exceeded your current quota, please check your plan and billing details."
    ));
    assert_eq!(a.json["error"]["type"], "insufficient_quota");
    assert_eq!(a.json["error"]["code"], "insufficient_quota");
    assert!(a.headers.get("retry-after").is_none());
    server.set_quota_exhausted(false);
    assert_eq!(chat(&c, &server).await.status, 200);
    let counts = server.counts();
    assert_eq!(
        (counts.quota_exceeded, counts.ok, counts.rate_limited),
        (1, 1, 0)
    );
}

async fn statuses_with_seed(p: f64, seed: u64, n: usize) -> Vec<u16> {
    let server = MockServer::builder()
        .random_server_errors(p, seed)
        .start()
        .await;
    let c = client();
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(chat(&c, &server).await.status.as_u16());
    }
    assert_eq!(
        server.counts().random_failures,
        out.iter().filter(|s| **s >= 500).count() as u64
    );
    out
}

#[tokio::test]
async fn random_failures_are_seeded() {
    let a = statuses_with_seed(0.5, 7, 40).await;
    let b = statuses_with_seed(0.5, 7, 40).await;
    assert_eq!(a, b, "same seed, same faults");
    let failures = a.iter().filter(|s| **s >= 500).count();
    assert!((8..=32).contains(&failures), "{failures} of 40");
    assert!(a.iter().all(|s| [200, 500, 502, 503, 504].contains(s)));
    assert_ne!(a, statuses_with_seed(0.5, 8, 40).await);
    assert!(statuses_with_seed(0.0, 1, 10)
        .await
        .iter()
        .all(|s| *s == 200));
    assert!(statuses_with_seed(1.0, 1, 10)
        .await
        .iter()
        .all(|s| *s >= 500));
}

#[tokio::test(start_paused = true)]
async fn latency_runs_on_the_tokio_clock() {
    let server = MockServer::builder()
        .latency(Duration::from_secs(3))
        .route_latency(Route::Embeddings, Duration::from_secs(10))
        .script(
            Route::Responses,
            [MockResponse::status(500).with_delay(Duration::from_secs(1))],
        )
        .start()
        .await;
    let c = client();
    let t = tokio::time::Instant::now();
    let a = chat(&c, &server).await;
    assert_eq!(t.elapsed().as_secs(), 3);
    assert_eq!(a.header("openai-processing-ms"), "3000");
    let t = tokio::time::Instant::now();
    let e = post(&c, &server, Route::Embeddings, EMBED).await;
    assert_eq!(e.status, 200);
    assert_eq!(t.elapsed().as_secs(), 10);
    let t = tokio::time::Instant::now();
    let r = post(&c, &server, Route::Responses, r#"{"model":"m"}"#).await;
    assert_eq!(r.status, 500);
    assert_eq!(
        t.elapsed().as_secs(),
        4,
        "global latency plus the response's delay"
    );
}

#[tokio::test]
async fn key_check() {
    let key = "sk-proj-Zq3xV9mN2pL8rT5wY1kB7cD4fG6hJ0aS";
    let server = MockServer::builder().api_key(key).start().await;
    let c = client();
    let url = server.endpoint(Route::ChatCompletions);

    let a = send(&c, "POST", url.clone(), None, CHAT).await;
    assert_eq!(a.status, 401);
    assert!(a.message().starts_with("You didn't provide an API key."));
    assert_eq!(a.json["error"]["type"], "invalid_request_error");

    let wrong = "sk-abc1234567890123456789012345678wxyz";
    let a = send(&c, "POST", url.clone(), Some(wrong), CHAT).await;
    assert_eq!(a.status, 401);
    assert_eq!(
        a.message(),
        format!(
            "Incorrect API key provided: {ECHOED_KEY_FRAGMENT}. You can find your API key at \
             https://platform.openai.com/account/api-keys."
        )
    );
    assert_eq!(a.json["error"]["code"], "invalid_api_key");

    let a = send(&c, "POST", url, Some(key), CHAT).await;
    assert_eq!(a.status, 200);
    assert_eq!(server.counts().unauthorized, 2);

    // An Azure-style header is recorded as sensitive too.
    let req = http::Request::post(server.endpoint(Route::ChatCompletions))
        .header("api-key", "azure-secret-0123456789")
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
        .unwrap();
    c.request(req).await.unwrap();

    // The key never shows in Debug: not of the server, not of the recorded requests.
    let recorded = server.requests();
    assert!(!format!("{recorded:?}").contains("azure-secret"));
    assert!(recorded[2].headers.contains_key("authorization"));
    for text in [format!("{server:?}"), format!("{recorded:?}")] {
        assert!(!text.contains(key) && !text.contains(wrong), "{text}");
    }
    let builder = MockServer::builder().api_key(key);
    assert!(!format!("{builder:?}").contains(key));
}

#[tokio::test]
async fn scripted_auth_failures() {
    let cases = [
        (AuthFailure::IncorrectKey, 401, Some("invalid_api_key")),
        (AuthFailure::MissingKey, 401, None),
        (AuthFailure::NotOrgMember, 401, Some("no_organization")),
        (AuthFailure::IpNotAuthorized, 401, Some("ip_not_authorized")),
        (
            AuthFailure::UnsupportedRegion,
            403,
            Some("unsupported_country_region_territory"),
        ),
        (AuthFailure::MissingScope, 401, None),
    ];
    let server = scripted(
        None,
        cases.iter().map(|(f, _, _)| MockResponse::auth_failure(*f)),
    )
    .await;
    let c = client();
    for (failure, status, code) in cases {
        let a = chat(&c, &server).await;
        assert_eq!(a.status.as_u16(), status, "{failure:?}");
        assert_eq!(a.json["error"]["code"].as_str(), code, "{failure:?}");
    }
}

#[tokio::test]
async fn bad_bodies() {
    let server = MockServer::builder().max_request_bytes(1024).start().await;
    let c = client();
    let url = server.endpoint(Route::ChatCompletions);

    let a = send(&c, "POST", url.clone(), None, "{not json").await;
    assert_eq!(a.status, 400);
    assert!(a
        .message()
        .starts_with("We could not parse the JSON body of your request."));
    assert!(a.json["error"]["param"].is_null());

    let a = send(&c, "POST", url.clone(), None, r#"{"model":"gpt-4o"}"#).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.message(), "Missing required parameter: 'messages'.");
    assert_eq!(a.json["error"]["param"], "messages");
    assert_eq!(a.json["error"]["code"], "missing_required_parameter");
    assert_eq!(a.json["error"]["type"], "invalid_request_error");

    let a = send(&c, "POST", url.clone(), None, r#"{"messages":[]}"#).await;
    assert_eq!(a.json["error"]["param"], "model");

    let a = post(&c, &server, Route::Embeddings, r#"{"model":"m"}"#).await;
    assert_eq!(a.json["error"]["param"], "input");

    let big = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(2000)
    );
    let a = send(&c, "POST", url, None, &big).await;
    assert_eq!(a.status, 413);
    assert_eq!(a.json["error"]["code"], "request_too_large");

    let counts = server.counts();
    assert_eq!((counts.bad_request, counts.ok, counts.total), (5, 0, 5));
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let server = MockServer::start().await;
    let c = client();
    assert_eq!(chat(&c, &server).await.status, 200);
    let addr = server.addr();
    server.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    // The kept-alive connection was closed too.
    let req = http::Request::post(format!("http://{addr}/v1/chat/completions"))
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
        .unwrap();
    assert!(c.request(req).await.is_err());
}

#[tokio::test]
async fn drop_stops_serving() {
    let server = MockServer::start().await;
    let addr = server.addr();
    drop(server);
    // The abort takes effect when the runtime next runs the task: a bounded wait.
    let mut refused = false;
    for _ in 0..100 {
        tokio::task::yield_now().await;
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
    }
    assert!(refused);
}

#[tokio::test]
async fn reset_counts_clears_counts_and_log() {
    let server = MockServer::start().await;
    let c = client();
    chat(&c, &server).await;
    assert_eq!(server.requests().len(), 1);
    assert_eq!(
        server.requests()[0].body,
        Bytes::from_static(CHAT.as_bytes())
    );
    server.reset_counts();
    assert_eq!(server.counts().total, 0);
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn wrong_types_and_empty_messages() {
    let server = MockServer::start().await;
    let c = client();
    let url = server.endpoint(Route::ChatCompletions);
    let cases = [
        (
            r#"{"model":4,"messages":[{"role":"user","content":"x"}]}"#,
            "model",
            "invalid_type",
            "Invalid type for 'model': expected a string, but got an integer instead.",
        ),
        (
            r#"{"model":"gpt-4o","messages":"hi"}"#,
            "messages",
            "invalid_type",
            "Invalid type for 'messages': expected an array of objects, but got a string instead.",
        ),
        (
            r#"{"model":"gpt-4o","messages":[]}"#,
            "messages",
            "empty_array",
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
        ),
    ];
    for (body, param, code, message) in cases {
        let a = send(&c, "POST", url.clone(), None, body).await;
        assert_eq!(a.status, 400, "{body}");
        assert_eq!(a.json["error"]["param"], param);
        assert_eq!(a.json["error"]["code"], code);
        assert_eq!(a.message(), message);
    }
    assert_eq!(server.counts().bad_request, 3);
}

#[tokio::test(start_paused = true)]
async fn rejected_requests_can_count_against_the_limit() {
    for (charge, second_after_60ms) in [(false, 200), (true, 429)] {
        let server = MockServer::builder()
            .request_limit(RateLimit::bucket(1, 10.0))
            .charge_rejected_requests(charge)
            .start()
            .await;
        let c = client();
        assert_eq!(chat(&c, &server).await.status, 200);
        // 50 ms later the bucket holds 0.5: rejected.
        tokio::time::advance(Duration::from_millis(50)).await;
        assert_eq!(chat(&c, &server).await.status, 429);
        // Without the charge, 100 ms after the success a request fits again; with it, the
        // rejected request emptied the bucket and the wait starts over.
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(
            chat(&c, &server).await.status.as_u16(),
            second_after_60ms,
            "charge: {charge}"
        );
    }
}

#[tokio::test]
async fn requests_to_and_short_debug() {
    let server = MockServer::start().await;
    let c = client();
    chat(&c, &server).await;
    post(&c, &server, Route::Embeddings, EMBED).await;
    chat(&c, &server).await;
    let chats = server.requests_to(Route::ChatCompletions);
    assert_eq!(chats.len(), 2);
    assert!(chats
        .iter()
        .all(|r| r.route == Some(Route::ChatCompletions)));
    assert_eq!(server.requests_to(Route::Responses).len(), 0);
    let debug = format!("{server:?}");
    assert!(
        debug.contains("MockServer") && debug.contains("total: 3"),
        "{debug}"
    );
    assert!(
        !debug.contains("Hello there"),
        "no request log in Debug: {debug}"
    );
}

#[tokio::test]
async fn scripted_disconnect_closes_without_answer() {
    let server = scripted(None, [MockResponse::disconnect()]).await;
    let c = client();
    let req = http::Request::post(server.endpoint(Route::ChatCompletions))
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
        .unwrap();
    let err = c.request(req).await.expect_err("no answer");
    assert!(!err.is_connect(), "the request was sent: {err:?}");
    // The next request gets a new connection and a normal answer.
    assert_eq!(chat(&c, &server).await.status, 200);
    let counts = server.counts();
    assert_eq!(
        (
            counts.total,
            counts.disconnected,
            counts.scripted,
            counts.answered
        ),
        (2, 1, 1, 1)
    );
    assert_eq!(server.requests().len(), 1);
}

async fn raw(
    c: &Client<HttpConnector, Full<Bytes>>,
    url: String,
    body: &str,
) -> (HeaderMap, String) {
    let req = http::Request::post(url)
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let res = c.request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (parts.headers, String::from_utf8(bytes.to_vec()).unwrap())
}

/// The `data:` payloads of an event stream.
fn data_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect()
}

#[tokio::test]
async fn chat_streams_server_sent_events() {
    let server = MockServer::start().await;
    let c = client();
    let body = r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"one two"}]}"#;
    let (headers, text) = raw(&c, server.endpoint(Route::ChatCompletions), body).await;
    assert_eq!(headers["content-type"], "text/event-stream; charset=utf-8");
    assert!(headers.contains_key("x-ratelimit-remaining-requests"));
    let data = data_lines(&text);
    assert_eq!(*data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Mock reply to: one two");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["total_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn responses_stream_typed_events() {
    let server = MockServer::start().await;
    let c = client();
    let body = r#"{"model":"gpt-4o","stream":true,"input":"hi"}"#;
    let (_, text) = raw(&c, server.endpoint(Route::Responses), body).await;
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(events.first(), Some(&"response.created"));
    assert_eq!(events.last(), Some(&"response.completed"));
    assert!(events.contains(&"response.output_text.delta"));
    let data: Vec<Value> = data_lines(&text)
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["sequence_number"], i as u64);
        assert_eq!(d["type"], events[i]);
    }
    assert_eq!(data.last().unwrap()["response"]["status"], "completed");
}

#[tokio::test]
async fn scripted_stream_error_after_a_200() {
    let server = MockServer::builder()
        .script(
            Route::ChatCompletions,
            [MockResponse::stream_error_after(2)],
        )
        .script(Route::Responses, [MockResponse::stream_error_after(0)])
        .start()
        .await;
    let c = client();
    // Even without `"stream": true`.
    let (headers, text) = raw(&c, server.endpoint(Route::ChatCompletions), CHAT).await;
    assert_eq!(headers["content-type"], "text/event-stream; charset=utf-8");
    let data = data_lines(&text);
    // The role chunk, two content deltas, then the error; no [DONE].
    assert_eq!(data.len(), 4, "{text}");
    let last: Value = serde_json::from_str(data[3]).unwrap();
    assert_eq!(last["error"]["type"], "server_error");
    assert!(!text.contains("[DONE]"));

    let (_, text) = raw(
        &c,
        server.endpoint(Route::Responses),
        r#"{"model":"m","input":"x"}"#,
    )
    .await;
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(events, ["response.created", "error"]);
    // A later request streams normally.
    let (headers, _) = raw(&c, server.endpoint(Route::ChatCompletions), CHAT).await;
    assert_eq!(headers["content-type"], "application/json");
}
