//! The gateway end to end: an OpenAI-shaped request over loopback, through the gateway's
//! stack, to the mock server; errors come back as OpenAI's error JSON. (Moved from the
//! `examples` gateway's tests, `tests/tests/gateway_proxy.rs`.)

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use oai_gateway::gateway::{ATTEMPTS_HEADER, HINT_HEADER};
use oai_resilience::mock::{MockResponse, MockServer, Route};
use oai_resilience::RetryConfig;
use serde_json::Value;
use support::{CHAT, KEY};

/// Starts a gateway in front of `upstream`; `env_key` plays `OPENAI_API_KEY` (which a
/// gateway without access keys never uses).
async fn gateway(upstream: &MockServer, env_key: Option<&'static str>) -> SocketAddr {
    let url = upstream.url();
    let env: Vec<(&str, &str)> = env_key.map(|k| ("OPENAI_API_KEY", k)).into_iter().collect();
    let mut c = support::config(&["--upstream", &url, "--allow-route", "/v1/unknown"], &env);
    c.retry = RetryConfig::new().seed(7);
    support::start(c).await
}

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    json: Value,
}

async fn post(addr: SocketAddr, path: &str, auth: Option<&str>, body: &str) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    let res = client
        .request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
        .await
        .unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    Answer {
        status,
        headers,
        json,
    }
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// The four fields of OpenAI's error object are all there, with the right JSON types.
fn assert_openai_error_shape(a: &Answer) {
    let e = &a.json["error"];
    assert!(e["message"].is_string(), "{}", a.json);
    assert!(e["type"].is_string(), "{}", a.json);
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "{}",
        a.json
    );
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(a.headers["x-should-retry"], "false");
    let hint = e["hint"].as_str().unwrap();
    assert!(!hint.is_empty());
    assert!(e["message"].as_str().unwrap().contains(hint), "{}", a.json);
    assert_eq!(a.headers[HINT_HEADER], hint);
}

#[tokio::test]
async fn success_streams_through_with_upstream_headers() {
    let server = MockServer::start().await;
    let addr = gateway(&server, None).await;
    let a = post(addr, "/v1/chat/completions", Some(&bearer(KEY)), CHAT).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["object"], "chat.completion");
    let id = a.headers["x-request-id"].to_str().unwrap();
    assert_eq!(server.requests()[0].request_id, id);
    assert!(a.headers.contains_key("x-ratelimit-remaining-requests"));
    let counts = server.counts();
    assert_eq!((counts.total, counts.ok), (1, 1));
    // The key reached the upstream unchanged, and the retry count header was added.
    let sent = &server.requests()[0].headers;
    assert_eq!(sent["authorization"], bearer(KEY).as_str());
    assert_eq!(sent["x-stainless-retry-count"], "0");
}

#[tokio::test(start_paused = true)]
async fn transient_503_is_retried_inside_the_gateway() {
    let server = MockServer::builder()
        .script(
            Route::ChatCompletions,
            [MockResponse::status(503), MockResponse::status(503)],
        )
        .start()
        .await;
    let addr = gateway(&server, None).await;
    let a = post(addr, "/v1/chat/completions", Some(&bearer(KEY)), CHAT).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["object"], "chat.completion");
    let counts = server.counts();
    assert_eq!((counts.total, counts.status(503), counts.ok), (3, 2, 1));
    let retry_counts: Vec<String> = server
        .requests()
        .iter()
        .map(|r| {
            r.headers["x-stainless-retry-count"]
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(retry_counts, ["0", "1", "2"]);
}

#[tokio::test]
async fn quota_error_is_openai_json_429_and_not_retried() {
    let server = MockServer::builder().quota_exhausted(true).start().await;
    let addr = gateway(&server, None).await;
    let a = post(addr, "/v1/chat/completions", Some(&bearer(KEY)), CHAT).await;
    assert_eq!(a.status, 429, "{}", a.json);
    assert_openai_error_shape(&a);
    let e = &a.json["error"];
    assert_eq!(e["type"], "insufficient_quota");
    assert_eq!(e["code"], "insufficient_quota");
    assert!(e["message"]
        .as_str()
        .unwrap()
        .starts_with("You exceeded your current quota"));
    assert!(e["hint"]
        .as_str()
        .unwrap()
        .contains("retrying will not help"));
    assert_eq!(e["attempts"], 1);
    assert_eq!(a.headers[ATTEMPTS_HEADER], "1");
    // The upstream's request id is handed on.
    let id = server.requests()[0].request_id.clone();
    assert_eq!(e["request_id"], id.as_str());
    assert_eq!(a.headers["x-request-id"], id.as_str());
    assert_eq!(server.counts().total, 1, "a quota error is never retried");
}

#[tokio::test]
async fn malformed_keys_get_401_and_nothing_reaches_the_upstream() {
    let server = MockServer::start().await;
    let addr = gateway(&server, Some(KEY)).await;
    let cases = [
        (bearer("your-api-key"), "documentation placeholder"),
        (bearer("sk-..."), "documentation placeholder"),
        (bearer(&format!("\"{KEY}\"")), "wrapped in quotes"),
        (format!("Bearer Bearer {KEY}"), "second `Bearer `"),
    ];
    for (auth, what) in &cases {
        let a = post(addr, "/v1/chat/completions", Some(auth), CHAT).await;
        assert_eq!(a.status, 401, "{auth}: {}", a.json);
        assert_openai_error_shape(&a);
        let e = &a.json["error"];
        assert_eq!(e["type"], "invalid_request_error");
        assert_eq!(e["code"], "invalid_api_key");
        assert_eq!(e["attempts"], 0);
        let message = e["message"].as_str().unwrap();
        assert!(message.contains(what), "{auth}: {message}");
        // The key never appears in the answer.
        assert!(!a.json.to_string().contains(&KEY[8..]), "{}", a.json);
    }
    assert_eq!(server.counts().total, 0);
}

#[tokio::test]
async fn the_server_key_is_used_only_with_an_access_key() {
    // Before #20 the gateway sent OPENAI_API_KEY for any request without a key. Now it does
    // so only for a request that presented an access key.
    let server = MockServer::builder().api_key(KEY).start().await;
    let url = server.url();
    let access = "gw-team-0123456789abcdef";
    let with_access = support::start(support::config(
        &[
            "--upstream",
            &url,
            "--access-key",
            &format!("team={access}"),
        ],
        &[("OPENAI_API_KEY", KEY)],
    ))
    .await;
    let a = post(
        with_access,
        "/v1/chat/completions",
        Some(&bearer(access)),
        CHAT,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(server.counts().ok, 1);
    let a = post(with_access, "/v1/chat/completions", None, CHAT).await;
    assert_eq!(a.status, 401, "{}", a.json);
    assert_openai_error_shape(&a);

    // Without access keys, a request without a key gets 401 locally even with
    // OPENAI_API_KEY set.
    let without = gateway(&server, Some(KEY)).await;
    let a = post(without, "/v1/chat/completions", None, CHAT).await;
    assert_eq!(a.status, 401, "{}", a.json);
    assert_openai_error_shape(&a);
    assert!(a.json["error"]["hint"]
        .as_str()
        .unwrap()
        .contains("own OpenAI key"));
    assert_eq!(server.counts().total, 1);
}

#[tokio::test]
async fn upstream_401_is_passed_on_with_its_message_and_not_retried() {
    let server = MockServer::builder().api_key(KEY).start().await;
    let addr = gateway(&server, None).await;
    let other = "sk-proj-ZyXwVuTsRqPoNmLkJiHgFeDcBa9876543210";
    let a = post(addr, "/v1/chat/completions", Some(&bearer(other)), CHAT).await;
    assert_eq!(a.status, 401, "{}", a.json);
    assert_openai_error_shape(&a);
    let e = &a.json["error"];
    assert_eq!(e["code"], "invalid_api_key");
    assert!(e["message"]
        .as_str()
        .unwrap()
        .starts_with("Incorrect API key provided"));
    assert!(!a.json.to_string().contains(&other[8..]), "{}", a.json);
    assert_eq!(server.counts().total, 1);
}

#[tokio::test]
async fn bad_parameters_get_400_naming_the_parameter_and_nothing_is_sent() {
    let server = MockServer::start().await;
    let addr = gateway(&server, None).await;
    let cases = [
        (
            r#"{"model":"gpt-4o-mini"}"#,
            "messages",
            "missing_required_parameter",
        ),
        (
            r#"{"model":"gpt-4o-mini","temperature":3,"messages":[{"role":"user","content":"Hi"}]}"#,
            "temperature",
            "invalid_value",
        ),
        (
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user"}]}"#,
            "messages[0].content",
            "missing_required_parameter",
        ),
    ];
    for (body, param, code) in cases {
        let a = post(addr, "/v1/chat/completions", Some(&bearer(KEY)), body).await;
        assert_eq!(a.status, 400, "{body}: {}", a.json);
        assert_openai_error_shape(&a);
        let e = &a.json["error"];
        assert_eq!(e["type"], "invalid_request_error");
        assert_eq!(e["param"], param, "{}", a.json);
        assert_eq!(e["code"], code, "{}", a.json);
        assert!(e["message"].as_str().unwrap().contains(param), "{}", a.json);
        assert!(e["hint"].as_str().unwrap().contains(param), "{}", a.json);
        assert_eq!(e["attempts"], 0);
    }
    assert_eq!(server.counts().total, 0);
}

#[tokio::test]
async fn validation_runs_before_the_key_check_and_a_good_call_still_passes() {
    // The bad parameter and the bad key: the parameter is reported (validation is outermost).
    let server = MockServer::start().await;
    let addr = gateway(&server, None).await;
    let a = post(
        addr,
        "/v1/chat/completions",
        Some(&bearer("your-api-key")),
        r#"{"model":"gpt-4o-mini"}"#,
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.json);
    assert_eq!(server.counts().total, 0);
    // A route allowed with --allow-route that the upstream does not know: its 404.
    let a = post(addr, "/v1/unknown", Some(&bearer(KEY)), "{}").await;
    assert_eq!(a.status, 404, "{}", a.json);
    assert_openai_error_shape(&a);
    assert_eq!(server.counts().total, 1);
}

#[tokio::test(start_paused = true)]
async fn unreachable_upstream_is_502_after_retries() {
    // A port that was bound and released: connections are refused.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let mut c = support::config(&["--upstream", &dead], &[]);
    c.retry = RetryConfig::new().max_attempts(3).seed(1);
    let addr = support::start(c).await;
    let a = post(addr, "/v1/chat/completions", Some(&bearer(KEY)), CHAT).await;
    assert_eq!(a.status, 502, "{}", a.json);
    assert_openai_error_shape(&a);
    assert_eq!(a.json["error"]["type"], "server_error");
    assert_eq!(a.json["error"]["attempts"], 3);
    assert!(a.json["error"]["hint"]
        .as_str()
        .unwrap()
        .contains("could not reach the server"));
}

#[tokio::test(start_paused = true)]
async fn five_concurrent_calls_on_a_cold_key_with_a_3_s_upstream_finish_together() {
    // The mock answers after 3 s and reports a request limit far above five calls: nothing
    // about the key is known before the first answer, and nothing should hold the calls back.
    let upstream = MockServer::builder()
        .latency(std::time::Duration::from_secs(3))
        .start()
        .await;
    let addr = gateway(&upstream, None).await;
    let start = tokio::time::Instant::now();
    let auth = bearer(KEY);
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let auth = auth.clone();
            tokio::spawn(async move {
                let a = post(addr, "/v1/chat/completions", Some(&auth), CHAT).await;
                (a.status, start.elapsed())
            })
        })
        .collect();
    let mut done = Vec::new();
    for c in calls {
        done.push(c.await.unwrap());
    }
    for (status, elapsed) in &done {
        assert_eq!(*status, 200);
        let s = elapsed.as_secs_f64();
        assert!((3.0..3.5).contains(&s), "finished at {s} s: {done:?}");
    }
    assert_eq!(upstream.counts().total, 5);
}

#[tokio::test(start_paused = true)]
async fn one_circuit_for_the_upstream_whichever_caller_key_fails_on_it() {
    let server = MockServer::builder()
        .random_server_errors(1.0, 1)
        .start()
        .await;
    let gw = gateway(&server, None).await;
    // Caller A's calls fail on the upstream until its circuit opens.
    let a = bearer(KEY);
    let mut opened = false;
    for _ in 0..10 {
        let res = post(gw, "/v1/chat/completions", Some(&a), CHAT).await;
        assert!(res.status >= 500, "{}", res.json);
        if res.json["error"]["code"] == "circuit_open" {
            opened = true;
            break;
        }
    }
    assert!(opened, "the circuit never opened");
    let sent = server.counts().total;
    // Caller B, another key: refused at once by the same circuit, nothing sent.
    let b = bearer("sk-proj-ZyXwVuTsRqPoNmLkJiHgFeDcBa9876543210");
    let res = post(gw, "/v1/chat/completions", Some(&b), CHAT).await;
    assert_eq!(res.status, 503, "{}", res.json);
    assert_eq!(res.json["error"]["code"], "circuit_open", "{}", res.json);
    assert_eq!(server.counts().total, sent, "nothing reached the upstream");
}
