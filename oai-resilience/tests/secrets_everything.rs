//! Secrets: everything the full stack can print, searched for the key's secret part.
//!
//! One test in its own binary, with a *global* TRACE subscriber writing to memory (no
//! thread-local subscriber, no callsite-interest races with other tests). It drives the
//! `OpenAiLayer` stack against the mock through a success, a 401 that echoes the key, a
//! retried 503, a 429 with rate-limit headers, a mid-stream error event, and an
//! `#[openai_call]` function whose arguments carry the key; then formats every public value it
//! touched with `{:?}`, `{:#?}` and `{}`. No 8 consecutive characters of the secret may appear.
#![cfg(feature = "mock")]

mod scripted;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use oai_resilience::classify::classify_sse_event;
use oai_resilience::mock::{MockResponse, MockServer};
use oai_resilience::pace::PaceKey;
use oai_resilience::stack::{OpenAiLayer, OpenAiService};
use oai_resilience::validate::ValidateBody;
use oai_resilience::{openai_call, ApiKey, AuthLayer, Error, RetryConfig, RetryLayer};
use scripted::scripted;
use tower::{Layer, ServiceExt};

use test_support::capture;

use capture::Captured;

const SECRET: &str = "Xq7LmN2pR8sT4vW9yZ3bC6dF1gH5jK0aUeIoPbVnMzQw";

fn key() -> String {
    format!("sk-proj-{SECRET}")
}

type Http = Client<HttpConnector, ValidateBody<Full<Bytes>>>;

/// Every printed form of `value`, appended to `out`.
fn print_all<T: std::fmt::Debug + std::fmt::Display>(out: &mut String, value: &T) {
    out.push_str(&format!("{value:?}\n{value:#?}\n{value}\n"));
}

fn print_debug<T: std::fmt::Debug>(out: &mut String, value: &T) {
    out.push_str(&format!("{value:?}\n{value:#?}\n"));
}

/// Every error, its sources included.
fn print_error(out: &mut String, err: &Error) {
    print_all(out, err);
    out.push_str(&err.hint());
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        out.push_str(&format!("{s:?}\n{s}\n"));
        source = s.source();
    }
}

fn chat() -> http::Request<Full<Bytes>> {
    http::Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}"#,
        )))
        .unwrap()
}

/// An annotated call whose arguments carry the key: by name, inside text, and at the point
/// where long arguments are cut.
#[openai_call(max_attempts = 2)]
async fn annotated(
    svc: &OpenAiService<Http>,
    api_key: &str,
    note: &str,
    long: &str,
) -> Result<u16, Error> {
    let _ = (api_key, note, long);
    let res = svc.clone().oneshot(chat()).await?;
    Ok(res.status().as_u16())
}

fn find_leak(haystack: &str) -> Option<String> {
    let chars: Vec<char> = SECRET.chars().collect();
    chars
        .windows(8)
        .map(|w| w.iter().collect::<String>())
        .find(|needle| haystack.contains(needle.as_str()))
}

#[tokio::test(start_paused = true)]
async fn nothing_the_stack_prints_contains_the_secret() {
    let captured = Captured::install_global(tracing::Level::TRACE);

    let key = key();
    let mut out = String::new();

    // The mock expects another key: every call with ours is a 401 that echoes part of it.
    let server = MockServer::builder()
        .api_key("sk-proj-SomeOtherKey0123456789abcdefghijklmnopqrstuv")
        .start()
        .await;
    let layer = OpenAiLayer::new()
        .base_url(server.url().parse().unwrap())
        .auth(AuthLayer::from_key(key.as_str()))
        .retry(RetryLayer::with_config(RetryConfig::new().seed(1)));
    let client = test_support::http_client();
    let svc: OpenAiService<Http> = layer.layer(client);
    print_debug(&mut out, &layer);
    print_debug(&mut out, &svc);

    let err = svc.clone().oneshot(chat()).await.unwrap_err();
    assert_eq!(err.kind(), oai_resilience::ErrorKind::Authentication);
    print_error(&mut out, &err);

    // A server that takes our key: a success, a retried 503, a 429 with headers, an SSE error.
    let good = scripted(
        Some(key.as_str()),
        [
            MockResponse::status(503),
            MockResponse::rate_limited(std::time::Duration::from_millis(200)),
            MockResponse::stream_error_after(1),
        ],
    )
    .await;
    let layer = OpenAiLayer::new()
        .base_url(good.url().parse().unwrap())
        .auth(AuthLayer::from_key(key.as_str()))
        .retry(RetryLayer::with_config(RetryConfig::new().seed(1)));
    let svc: OpenAiService<Http> = layer.layer(test_support::http_client());
    // 503, 429, then the stream: one call, three attempts.
    let res = svc.clone().oneshot(chat()).await.unwrap();
    print_debug(&mut out, &res);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    let sse = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .find_map(|d| classify_sse_event(d.as_bytes()))
        .expect("the error event");
    print_error(&mut out, &sse);
    let ok = svc.clone().oneshot(chat()).await.unwrap();
    print_debug(&mut out, &ok);
    assert!(good.counts().total >= 4);

    // The pacer, its key and metrics; the retry layer; the mock and what it recorded.
    let pacer = layer.pace_layer().pacer();
    print_debug(&mut out, pacer);
    print_debug(&mut out, &pacer.metrics());
    let pace_key = PaceKey::new(good.addr().to_string())
        .with_credential(format!("Bearer {key}").as_bytes())
        .with_model("gpt-4o-mini");
    print_all(&mut out, &pace_key);
    print_debug(&mut out, &pacer.key_state(&pace_key));
    print_debug(&mut out, layer.retry_layer());
    print_debug(&mut out, &server);
    print_debug(&mut out, &good);
    print_debug(&mut out, &good.requests());
    print_debug(&mut out, &server.requests());

    // The key types themselves.
    let api_key = ApiKey::new(key.as_str());
    print_debug(&mut out, &api_key);
    print_debug(&mut out, &AuthLayer::from_key(key.as_str()));

    // The macro's error context: the key as a secret-named argument, inside a note, and cut
    // at the argument length limit.
    let note = format!("user pasted {key} by mistake");
    let long = format!("{}{key}", "x".repeat(240));
    // Against the server that rejects the key, so the call fails with a context.
    let bad: OpenAiService<Http> = OpenAiLayer::new()
        .base_url(server.url().parse().unwrap())
        .auth(AuthLayer::from_key(key.as_str()))
        .layer(test_support::http_client());
    let err = annotated(&bad, &key, &note, &long).await.unwrap_err();
    assert!(err.call_context().is_some(), "{err:?}");
    print_error(&mut out, &err);
    print_debug(&mut out, &err.call_context());

    let logs = captured.text();
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "the subscriber captured nothing"
    );
    // The test must be able to fail: the secret is findable when it is there.
    assert!(find_leak(&note).is_some());
    if let Some(leak) = find_leak(&logs) {
        let at = logs.find(&leak).unwrap();
        panic!(
            "secret in logs: …{}…",
            &logs[at.saturating_sub(200)..(at + 50).min(logs.len())]
        );
    }
    if let Some(leak) = find_leak(&out) {
        let at = out.find(&leak).unwrap();
        panic!(
            "secret in printed values: …{}…",
            &out[at.saturating_sub(200)..(at + 50).min(out.len())]
        );
    }
}
