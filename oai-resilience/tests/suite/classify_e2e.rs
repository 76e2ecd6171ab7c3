//! End to end over loopback HTTP: hyper-util client → `ClassifyLayer` → the mock server, for
//! every failure of OpenAI's troubleshooting guide (and a connection refusal and a timeout).
#![cfg(feature = "mock")]

use crate::scripted;

use super::mock_server::{request_limited, token_limited};

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use oai_resilience::mock::{AuthFailure, MockResponse, MockServer, RateLimit, Route};
use oai_resilience::{
    AuthCause, Classify, ClassifyLayer, DelaySource, Error, ErrorKind, RateLimitSnapshot,
};
use scripted::scripted;
use tower::{Service, ServiceBuilder, ServiceExt};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

use test_support::CHAT;
use test_support::KEY;

fn stack() -> Classify<HttpClient> {
    let client = test_support::http_client();
    ServiceBuilder::new()
        .layer(ClassifyLayer::new())
        .service(client)
}

fn request(url: String, key: Option<&str>, body: &str) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::post(url).header("content-type", "application/json");
    if let Some(key) = key {
        let mut v = http::HeaderValue::from_str(&format!("Bearer {key}")).unwrap();
        v.set_sensitive(true);
        b = b.header("authorization", v);
    }
    b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

async fn call<S>(
    svc: &mut S,
    req: http::Request<Full<Bytes>>,
) -> Result<http::Response<Incoming>, Error>
where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<Incoming>, Error = Error>,
{
    svc.ready().await?.call(req).await
}

async fn chat_err(server: &MockServer) -> Error {
    let mut svc = stack();
    call(
        &mut svc,
        request(server.endpoint(Route::ChatCompletions), None, CHAT),
    )
    .await
    .expect_err("an error response")
}

/// What a classified error must say.
struct Expect {
    kind: ErrorKind,
    retryable: bool,
    status: u16,
    message: &'static str,
    error_type: Option<&'static str>,
    param: Option<&'static str>,
    code: Option<&'static str>,
    hint: &'static str,
}

/// Checks every fact of `err`, and that its request id is the one the server sent.
fn check(err: &Error, server: &MockServer, e: &Expect) {
    let ctx = format!("{err:?}");
    assert_eq!(err.kind(), e.kind, "{ctx}");
    assert_eq!(err.is_retryable(), e.retryable, "{ctx}");
    assert_eq!(err.status().map(|s| s.as_u16()), Some(e.status), "{ctx}");
    assert_eq!(err.message(), Some(e.message), "{ctx}");
    assert_eq!(err.error_type(), e.error_type, "{ctx}");
    assert_eq!(err.param(), e.param, "{ctx}");
    assert_eq!(err.code(), e.code, "{ctx}");
    assert_eq!(err.hint(), e.hint, "{ctx}");
    let sent = server
        .requests()
        .last()
        .expect("the server answered")
        .request_id
        .clone();
    assert!(sent.starts_with("req_"));
    assert_eq!(err.request_id(), Some(sent.as_str()), "{ctx}");
    let display = err.to_string();
    assert!(
        display.starts_with(&format!("{} {}", e.status, e.kind)),
        "{display}"
    );
    assert!(display.contains(&format!("[request {sent}]")), "{display}");
    assert!(display.ends_with(&format!("hint: {}", e.hint)), "{display}");
    assert!(!display.contains('\n'));
}

const SERVER_HINT: &str =
    "server-side error: retry with backoff; if it persists, check status.openai.com";

#[tokio::test]
async fn e400_missing_parameter() {
    let server = MockServer::start().await;
    let mut svc = stack();
    let err = call(
        &mut svc,
        request(
            server.endpoint(Route::ChatCompletions),
            None,
            r#"{"model":"gpt-4o"}"#,
        ),
    )
    .await
    .unwrap_err();
    check(
        &err,
        &server,
        &Expect {
            kind: ErrorKind::InvalidRequest,
            retryable: false,
            status: 400,
            message: "Missing required parameter: 'messages'.",
            error_type: Some("invalid_request_error"),
            param: Some("messages"),
            code: Some("missing_required_parameter"),
            hint: "add the missing parameter `messages`",
        },
    );
}

#[tokio::test]
async fn e400_invalid_json() {
    let server = MockServer::start().await;
    let mut svc = stack();
    let err = call(
        &mut svc,
        request(server.endpoint(Route::Embeddings), None, "{oops"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
    assert!(!err.is_retryable());
    assert!(err
        .message()
        .unwrap()
        .starts_with("We could not parse the JSON body"));
    assert_eq!(err.param(), None);
    assert_eq!(
        err.hint(),
        "check the request's parameters against the API reference"
    );
}

#[tokio::test]
async fn e401_incorrect_key_is_redacted() {
    let server = MockServer::builder().api_key(KEY).start().await;
    let wrong = "sk-abc1234567890123456789012345678wxyz";
    let mut svc = stack();
    let err = call(
        &mut svc,
        request(server.endpoint(Route::ChatCompletions), Some(wrong), CHAT),
    )
    .await
    .unwrap_err();
    check(
        &err,
        &server,
        &Expect {
            kind: ErrorKind::Authentication,
            retryable: false,
            status: 401,
            message: "Incorrect API key provided: [redacted]. You can find your API key at https://platform.openai.com/account/api-keys.",
            error_type: Some("invalid_request_error"),
            param: None,
            code: Some("invalid_api_key"),
            hint: "check that OPENAI_API_KEY holds a valid, current key (keys are at https://platform.openai.com/api-keys)",
        },
    );
    assert_eq!(err.auth_cause(), Some(AuthCause::IncorrectKey));
    // The server echoed a masked fragment of the key; none of it survives.
    assert!(server.requests()[0].status == 401);
    for text in [err.to_string(), format!("{err:?}")] {
        for fragment in [wrong, "sk-abc1", "wxyz", "****"] {
            assert!(!text.contains(fragment), "{fragment} in {text}");
        }
        assert!(text.contains("[redacted]"), "{text}");
    }
}

#[tokio::test]
async fn e401_missing_key() {
    let server = MockServer::builder().api_key(KEY).start().await;
    let err = chat_err(&server).await;
    assert_eq!(err.kind(), ErrorKind::Authentication);
    assert_eq!(err.auth_cause(), Some(AuthCause::MissingKey));
    assert!(!err.is_retryable());
    assert!(err
        .message()
        .unwrap()
        .starts_with("You didn't provide an API key."));
    // The exact wording belongs to the error model; the test pins what must be in it.
    let hint = err.hint();
    assert!(hint.starts_with("set OPENAI_API_KEY"), "{hint}");
    assert!(
        hint.ends_with("configure a key source on the auth layer"),
        "{hint}"
    );
}

#[tokio::test]
async fn e401_e403_scripted_causes() {
    let cases = [
        (
            AuthFailure::NotOrgMember,
            ErrorKind::Authentication,
            AuthCause::NotOrgMember,
        ),
        (
            AuthFailure::IpNotAuthorized,
            ErrorKind::Authentication,
            AuthCause::IpNotAllowed,
        ),
        (
            AuthFailure::MissingScope,
            ErrorKind::Authentication,
            AuthCause::MissingScope,
        ),
        (
            AuthFailure::UnsupportedRegion,
            ErrorKind::PermissionDenied,
            AuthCause::UnsupportedRegion,
        ),
    ];
    let server = scripted(None, cases.iter().map(|c| MockResponse::auth_failure(c.0))).await;
    for (failure, kind, cause) in cases {
        let err = chat_err(&server).await;
        assert_eq!(err.kind(), kind, "{failure:?}");
        assert_eq!(err.auth_cause(), Some(cause), "{failure:?}: {err}");
        assert!(!err.is_retryable());
    }
}

#[tokio::test]
async fn e403_unsupported_region() {
    let server = scripted(
        None,
        [MockResponse::auth_failure(AuthFailure::UnsupportedRegion)],
    )
    .await;
    let err = chat_err(&server).await;
    check(
        &err,
        &server,
        &Expect {
            kind: ErrorKind::PermissionDenied,
            retryable: false,
            status: 403,
            message: "Country, region, or territory not supported",
            error_type: Some("request_forbidden"),
            param: None,
            code: Some("unsupported_country_region_territory"),
            hint: "the API is not available from this region; see OpenAI's supported countries",
        },
    );
}

#[tokio::test]
async fn e404_unknown_path_and_model() {
    let server = scripted(None, [MockResponse::status(404)]).await;
    let hint = "check the model name or resource id, and that this key's organization/project can access it";
    let mut svc = stack();
    let err = call(
        &mut svc,
        request(format!("{}/v1/chat/complete", server.url()), None, CHAT),
    )
    .await
    .unwrap_err();
    check(
        &err,
        &server,
        &Expect {
            kind: ErrorKind::NotFound,
            retryable: false,
            status: 404,
            message: "Invalid URL (POST /v1/chat/complete)",
            error_type: Some("invalid_request_error"),
            param: None,
            code: None,
            hint,
        },
    );
    let err = chat_err(&server).await;
    check(
        &err,
        &server,
        &Expect {
            kind: ErrorKind::NotFound,
            retryable: false,
            status: 404,
            message: "The model `gpt-4o-mini` does not exist or you do not have access to it.",
            error_type: Some("invalid_request_error"),
            param: None,
            code: Some("model_not_found"),
            hint,
        },
    );
}

/// The scripted statuses: the mock's default body for each.
#[tokio::test]
async fn scripted_statuses() {
    let cases = [
        Expect {
            kind: ErrorKind::RequestTimeout,
            retryable: true,
            status: 408,
            message: "Request timed out.",
            error_type: Some("invalid_request_error"),
            param: None,
            code: Some("request_timeout"),
            hint: "transient: retry after a short backoff",
        },
        Expect {
            kind: ErrorKind::Conflict,
            retryable: true,
            status: 409,
            message:
                "The request conflicted with another request (lock timeout). Please try again.",
            error_type: Some("invalid_request_error"),
            param: None,
            code: Some("conflict"),
            hint: "transient: retry after a short backoff",
        },
        Expect {
            kind: ErrorKind::Unprocessable,
            retryable: false,
            status: 422,
            message: "The request was well-formed but could not be processed.",
            error_type: Some("invalid_request_error"),
            param: None,
            code: Some("unprocessable_entity"),
            hint: "the request was understood but cannot be processed: check its content",
        },
        Expect {
            kind: ErrorKind::ServerError,
            retryable: true,
            status: 500,
            message: "The server had an error while processing your request. Sorry about that!",
            error_type: Some("server_error"),
            param: None,
            code: None,
            hint: SERVER_HINT,
        },
        Expect {
            kind: ErrorKind::ServerError,
            retryable: true,
            status: 502,
            message: "Bad gateway.",
            error_type: Some("server_error"),
            param: None,
            code: Some("bad_gateway"),
            hint: SERVER_HINT,
        },
        Expect {
            kind: ErrorKind::ServerError,
            retryable: true,
            status: 503,
            message: "The server is overloaded or not ready yet.",
            error_type: Some("server_error"),
            param: None,
            code: Some("server_is_overloaded"),
            hint: SERVER_HINT,
        },
        Expect {
            kind: ErrorKind::ServerError,
            retryable: true,
            status: 504,
            message: "Gateway timeout.",
            error_type: Some("server_error"),
            param: None,
            code: Some("gateway_timeout"),
            hint: SERVER_HINT,
        },
    ];
    let server = scripted(None, cases.iter().map(|e| MockResponse::status(e.status))).await;
    for e in &cases {
        let err = chat_err(&server).await;
        check(&err, &server, e);
    }
    assert_eq!(server.counts().scripted, cases.len() as u64);
}

#[tokio::test]
async fn e502_html_from_a_gateway() {
    let server = scripted(
        None,
        [MockResponse::status(502)
            .with_body("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n</html>")
            .with_header("content-type", "text/html")],
    )
    .await;
    let err = chat_err(&server).await;
    assert_eq!(err.kind(), ErrorKind::ServerError);
    assert!(err.is_retryable());
    assert_eq!(err.message(), None);
    assert!(err.detail().unwrap().contains("502 Bad Gateway"));
    assert!(err.request_id().is_some());
    assert_eq!(err.hint(), SERVER_HINT);
}

#[tokio::test]
async fn e503_should_retry_false_wins() {
    let server = scripted(
        None,
        [MockResponse::status(503).with_header("x-should-retry", "false")],
    )
    .await;
    let err = chat_err(&server).await;
    assert_eq!(err.kind(), ErrorKind::ServerError);
    assert_eq!(err.should_retry(), Some(false));
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn e413_body_too_large() {
    let server = MockServer::builder().max_request_bytes(256).start().await;
    let big = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(1000)
    );
    let mut svc = stack();
    let err = call(
        &mut svc,
        request(server.endpoint(Route::ChatCompletions), None, &big),
    )
    .await
    .unwrap_err();
    check(
        &err,
        &server,
        &Expect {
            kind: ErrorKind::RequestTooLarge,
            retryable: false,
            status: 413,
            message: "Request body too large: the limit is 256 bytes.",
            error_type: Some("invalid_request_error"),
            param: None,
            code: Some("request_too_large"),
            hint: "the request is larger than the limit allows: shorten the prompt or lower max tokens; retrying will not help",
        },
    );
}

#[tokio::test(start_paused = true)]
async fn e429_rate_limit() {
    let server = request_limited(RateLimit::bucket(2, 20.0)).await;
    let mut svc = stack();
    for _ in 0..2 {
        call(
            &mut svc,
            request(server.endpoint(Route::ChatCompletions), None, CHAT),
        )
        .await
        .unwrap();
    }
    let err = chat_err(&server).await;
    check(
        &err,
        &server,
        &Expect {
            kind: ErrorKind::RateLimited,
            retryable: true,
            status: 429,
            message: "Rate limit reached for gpt-4o-mini in organization org-mock on requests per min (RPM): Limit 2, Used 2, Requested 1. Please try again in 50ms. Visit https://platform.openai.com/account/rate-limits to learn more.",
            error_type: Some("requests"),
            param: None,
            code: Some("rate_limit_exceeded"),
            hint: "rate limited: retry after 0.05 s or lower your request rate",
        },
    );
    assert_eq!(err.retry_after(), Some(Duration::from_millis(50)));
    assert_eq!(err.retry_after_source(), Some(DelaySource::RetryAfterMs));
    let rl = err.rate_limit().unwrap();
    assert_eq!(
        (rl.limit_requests, rl.remaining_requests),
        (Some(2), Some(0))
    );
    assert_eq!(rl.reset_requests, Some(Duration::from_millis(100)));
}

#[tokio::test(start_paused = true)]
async fn e429_request_too_large_for_tpm() {
    let server = token_limited(RateLimit::per_minute(100)).await;
    let body =
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"max_tokens":1000}"#;
    let mut svc = stack();
    let err = call(
        &mut svc,
        request(server.endpoint(Route::ChatCompletions), None, body),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RequestTooLarge);
    assert_eq!(err.status().unwrap(), 429);
    assert!(!err.is_retryable());
    assert_eq!(err.code(), Some("rate_limit_exceeded"));
}

#[tokio::test]
async fn e429_quota() {
    let server = MockServer::builder().quota_exhausted(true).start().await;
    let err = chat_err(&server).await;
    check(
        &err,
        &server,
        &Expect {
            kind: ErrorKind::QuotaExceeded,
            retryable: false,
            status: 429,
            message: "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
            error_type: Some("insufficient_quota"),
            param: None,
            code: Some("insufficient_quota"),
            hint: "you exceeded your quota: check plan and billing; retrying will not help",
        },
    );
    assert_eq!(err.retry_after(), None);
}

#[tokio::test]
async fn connection_refused() {
    // A port with nothing listening: bind, take the port, close.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut svc = stack();
    let err = call(
        &mut svc,
        request(format!("http://{addr}/v1/chat/completions"), None, CHAT),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection);
    assert!(err.is_retryable());
    assert_eq!(err.status(), None);
    assert_eq!(err.request_id(), None);
    assert_eq!(err.message(), None);
    assert!(std::error::Error::source(&err).is_some());
    assert_eq!(
        err.hint(),
        "could not reach the server: check the base URL, network and proxy; retry with backoff"
    );
    assert!(err.to_string().starts_with("connection: "), "{err}");
}

#[tokio::test(start_paused = true)]
async fn timeout_under_paused_time() {
    let server = MockServer::builder()
        .route_latency(Route::ChatCompletions, Duration::from_secs(30))
        .start()
        .await;
    let client: HttpClient = test_support::http_client();
    let mut svc = ServiceBuilder::new()
        .layer(ClassifyLayer::new())
        .timeout(Duration::from_secs(5))
        .service(client);
    // Warm the connection on a route without latency.
    call(
        &mut svc,
        request(
            server.endpoint(Route::Embeddings),
            None,
            r#"{"model":"m","input":"x"}"#,
        ),
    )
    .await
    .unwrap();
    let started = tokio::time::Instant::now();
    let err = call(
        &mut svc,
        request(server.endpoint(Route::ChatCompletions), None, CHAT),
    )
    .await
    .unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.is_retryable());
    assert_eq!(err.status(), None);
    assert_eq!(
        err.hint(),
        "the call timed out: retry, raise the timeout, or request fewer tokens"
    );
    // The request did reach the server: it was still working on it.
    assert_eq!(server.counts().total, 2);
    assert_eq!(server.counts().answered, 1);
}

#[tokio::test]
async fn success_passes_with_snapshot_and_intact_body() {
    let server = MockServer::start().await;
    let mut svc = stack();
    let res = call(
        &mut svc,
        request(server.endpoint(Route::ChatCompletions), None, CHAT),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let snapshot = *res.extensions().get::<RateLimitSnapshot>().unwrap();
    assert_eq!(snapshot, RateLimitSnapshot::from_headers(res.headers()));
    assert_eq!(snapshot.limit_requests, Some(10_000));
    assert_eq!(snapshot.remaining_requests, Some(9_999));
    let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(server.requests()[0].request_id, id);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["object"], "chat.completion");
    assert_eq!(
        json["choices"][0]["message"]["content"],
        "Mock reply to: Hello"
    );
}

#[tokio::test]
async fn no_debug_or_display_shows_the_key() {
    let server = MockServer::builder().api_key(KEY).start().await;
    let mut svc = stack();
    // A request carrying the key (marked sensitive, as the auth layer does).
    let req = request(
        server.endpoint(Route::ChatCompletions),
        Some(KEY),
        r#"{"model":"gpt-4o"}"#,
    );
    let req_debug = format!("{req:?}");
    let err = call(&mut svc, req).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
    // A wrong key that the server echoes back.
    let wrong = format!("{}x", &KEY[..KEY.len() - 1]);
    let err401 = call(
        &mut svc,
        request(server.endpoint(Route::ChatCompletions), Some(&wrong), CHAT),
    )
    .await
    .unwrap_err();
    assert_eq!(err401.kind(), ErrorKind::Authentication);
    let boxed: oai_resilience::BoxError = err401.clone().into();
    let texts = [
        req_debug,
        format!("{err:?}"),
        err.to_string(),
        format!("{err401:?}"),
        err401.to_string(),
        format!("{boxed:?}"),
        boxed.to_string(),
        format!("{svc:?}"),
        format!("{:?}", ClassifyLayer::new()),
        format!("{server:?}"),
        format!("{:?}", server.requests()),
    ];
    for text in &texts {
        for secret in [
            KEY,
            wrong.as_str(),
            &KEY[..12],
            &wrong[wrong.len() - 8..],
            "****",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}

#[tokio::test]
async fn dropped_connection_after_the_request_is_a_connection_error() {
    let server = scripted(None, [MockResponse::disconnect()]).await;
    let err = chat_err(&server).await;
    assert_eq!(err.kind(), ErrorKind::Connection);
    assert!(err.is_retryable());
    assert_eq!(err.status(), None);
    assert_eq!(server.counts().disconnected, 1);
}
