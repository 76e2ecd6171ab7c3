//! Behaviour of `#[openai_call]` in virtual time: retries through the retry layer's loop,
//! fail-fast errors, local checks before the first attempt, and the context on the final error.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};
use oai_resilience::retry::{RetryConfig, RetryableError};
use oai_resilience::{
    call::CallError, openai_call, CallContext, Error, ErrorKind, RetryContext, StopReason,
};
use tokio::time::Instant;

const KEY: &str = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";

/// A response error as the classify layer builds it.
fn response_error(status: u16, request_id: &str, body: &str) -> Error {
    let mut headers = HeaderMap::new();
    headers.insert("x-request-id", HeaderValue::from_str(request_id).unwrap());
    Error::from_response_parts(
        StatusCode::from_u16(status).unwrap(),
        &headers,
        body.as_bytes(),
    )
}

const OVERLOADED: &str = r#"{"error":{"message":"The server is overloaded","type":"server_error","param":null,"code":null}}"#;
const QUOTA: &str = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;

fn seeded() -> RetryConfig {
    RetryConfig::new().seed(7).no_budget()
}

#[derive(Debug, Default)]
struct Server {
    calls: AtomicU32,
}

impl Server {
    /// Fails the first `failures` calls with a 503, then answers.
    fn answer(&self, failures: u32) -> Result<String, Error> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n <= failures {
            Err(response_error(503, &format!("req_{n}"), OVERLOADED))
        } else {
            Ok(format!("answer after {n}"))
        }
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

#[openai_call(retry = seeded(), skip(server))]
async fn flaky(server: &Server, failures: u32) -> Result<String, Error> {
    server.answer(failures)
}

#[tokio::test(start_paused = true)]
async fn retries_then_succeeds_with_the_policy_delays() {
    let server = Server::default();
    let start = Instant::now();
    let out = flaky(&server, 2).await.unwrap();
    assert_eq!(out, "answer after 3");
    assert_eq!(server.calls(), 3);
    // Two backoff delays were slept, in virtual time.
    assert!(start.elapsed() > Duration::ZERO);
    assert!(start.elapsed() <= Duration::from_millis(500 + 1000));
}

#[openai_call(retry = seeded(), max_attempts = 3, skip(server))]
async fn always_failing(server: &Server, prompt: &str) -> Result<String, Error> {
    let _ = prompt;
    server.answer(u32::MAX)
}

#[tokio::test(start_paused = true)]
async fn final_error_carries_the_whole_context() {
    let server = Server::default();
    let start = Instant::now();
    let err = always_failing(&server, "summarize this").await.unwrap_err();
    assert_eq!(server.calls(), 3);
    assert_eq!(err.kind(), ErrorKind::ServerError);
    // The request id of the last response.
    assert_eq!(err.request_id(), Some("req_3"));

    let call = err.call_context().expect("call context");
    assert_eq!(call.function, "macro_behaviour::always_failing");
    assert_eq!(
        call.args,
        vec![("prompt".to_owned(), "\"summarize this\"".to_owned())]
    );

    let retry = err.retry_context().expect("retry context");
    assert_eq!(retry.attempts, 3);
    assert_eq!(err.attempts(), 3);
    assert_eq!(retry.stop, StopReason::MaxAttempts);
    assert_eq!(retry.elapsed, start.elapsed());
    assert_eq!(retry.outcomes.len(), 3);
    let slept: Duration = retry.outcomes.iter().filter_map(|o| o.delay).sum();
    // Attempts take no virtual time; tokio rounds each sleep up to the millisecond.
    assert!(retry.elapsed >= slept, "{:?} < {slept:?}", retry.elapsed);
    assert!(
        retry.elapsed - slept < Duration::from_millis(2),
        "{:?}",
        retry.elapsed
    );
    for (i, o) in retry.outcomes.iter().enumerate() {
        assert_eq!(o.attempt, i as u32 + 1);
        assert_eq!(o.status, Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(o.kind, ErrorKind::ServerError);
        assert_eq!(o.delay.is_some(), i < 2, "no delay after the last attempt");
    }

    let line = err.to_string();
    assert!(!line.contains('\n'), "{line}");
    assert!(
        line.contains("in macro_behaviour::always_failing after 3 attempts"),
        "{line}"
    );
}

#[openai_call(retry = seeded(), skip(server))]
async fn over_quota(server: &Server) -> Result<(), Error> {
    server.calls.fetch_add(1, Ordering::SeqCst);
    Err(response_error(429, "req_q", QUOTA))
}

#[tokio::test(start_paused = true)]
async fn quota_error_fails_after_one_attempt() {
    let server = Server::default();
    let start = Instant::now();
    let err = over_quota(&server).await.unwrap_err();
    assert_eq!(server.calls(), 1);
    assert_eq!(err.kind(), ErrorKind::QuotaExceeded);
    assert_eq!(err.attempts(), 1);
    assert_eq!(err.retry_context().unwrap().stop, StopReason::NotRetryable);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(err.call_context().unwrap().args, vec![]);
}

#[derive(Debug)]
struct Client {
    base_url: String,
}

#[openai_call(retry = seeded(), max_attempts = 1, skip(client))]
async fn redacting(client: &Client, api_key: &str, prompt: &str, long: &str) -> Result<(), Error> {
    let _ = (client, api_key, prompt, long);
    Err(Error::new(ErrorKind::InvalidRequest))
}

#[tokio::test(start_paused = true)]
async fn skipped_arguments_are_absent_and_secrets_redacted() {
    let client = Client {
        base_url: "http://127.0.0.1:1".to_owned(),
    };
    let long = "x".repeat(1000);
    let prompt = format!("my key is {KEY}, keep it");
    let err = redacting(&client, "not-even-an-sk-key", &prompt, &long)
        .await
        .unwrap_err();
    let args = &err.call_context().unwrap().args;
    let names: Vec<&str> = args.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["api_key", "prompt", "long"]);
    assert_eq!(args[0].1, "[redacted]", "an argument named like a key");
    assert_eq!(args[1].1, "\"my key is [redacted], keep it\"");
    assert_eq!(args[2].1.chars().count(), 256 + 1);
    assert!(args[2].1.ends_with('…'));
    let debug = format!("{err:?}");
    let display = err.to_string();
    for text in [&debug, &display] {
        assert!(!text.contains("AbCdEf"), "{text}");
        assert!(!text.contains("not-even"), "{text}");
        assert!(!text.contains(&client.base_url), "{text}");
    }
}

#[openai_call(skip_all)]
async fn skip_everything(secret_ish: &str, n: u32) -> Result<(), Error> {
    let _ = (secret_ish, n);
    Err(Error::new(ErrorKind::NotFound))
}

#[tokio::test(start_paused = true)]
async fn skip_all_records_no_argument() {
    let err = skip_everything("a", 1).await.unwrap_err();
    let call = err.call_context().unwrap();
    assert!(call.args.is_empty());
    assert_eq!(call.function, "macro_behaviour::skip_everything");
}

#[openai_call(api_key = api_key, skip(server))]
async fn keyed(server: &Server, api_key: Option<&str>) -> Result<String, Error> {
    server.answer(0)
}

#[tokio::test(start_paused = true)]
async fn key_problems_run_the_body_zero_times() {
    let server = Server::default();
    let err = keyed(&server, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingApiKey);
    assert_eq!(err.attempts(), 0);
    let ctx = err.call_context().unwrap();
    assert_eq!(ctx.function, "macro_behaviour::keyed");
    assert_eq!(
        ctx.args,
        vec![("api_key".to_owned(), "[redacted]".to_owned())]
    );

    let pasted = format!("{KEY}\n");
    let err = keyed(&server, Some(&pasted)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MalformedApiKey);
    assert_eq!(
        err.auth_cause(),
        Some(oai_resilience::AuthCause::Whitespace)
    );
    assert!(!format!("{err:?}{err}").contains("AbCdEf"));
    assert_eq!(server.calls(), 0);

    assert_eq!(keyed(&server, Some(KEY)).await.unwrap(), "answer after 1");
    assert_eq!(server.calls(), 1);
}

#[openai_call(api_key = api_key, key_rules = oai_resilience::auth::KeyRules::lenient(), skip(server))]
async fn keyed_compatible(server: &Server, api_key: &str) -> Result<String, Error> {
    server.answer(0)
}

#[tokio::test(start_paused = true)]
async fn key_rules_let_other_key_shapes_through() {
    // An Azure OpenAI key: 32 hex characters, no `sk-`.
    let azure = "0123456789abcdef0123456789abcdef";
    let server = Server::default();
    let err = keyed(&server, Some(azure)).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::MalformedApiKey,
        "OpenAI's rules by default"
    );
    assert_eq!(server.calls(), 0);
    assert_eq!(
        keyed_compatible(&server, azure).await.unwrap(),
        "answer after 1"
    );
    // The universal checks still hold under lenient rules.
    let err = keyed_compatible(&server, "<your-api-key>")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MalformedApiKey);
    assert_eq!(server.calls(), 1);
}

#[openai_call(api_key = "OAI_RESILIENCE_TEST_SURELY_UNSET_VAR", skip(server))]
async fn keyed_from_env(server: &Server) -> Result<String, Error> {
    server.answer(0)
}

#[tokio::test(start_paused = true)]
async fn missing_environment_key_runs_the_body_zero_times() {
    let server = Server::default();
    let err = keyed_from_env(&server).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingApiKey);
    assert!(
        err.to_string()
            .contains("OAI_RESILIENCE_TEST_SURELY_UNSET_VAR"),
        "{err}"
    );
    assert_eq!(server.calls(), 0);
}

#[openai_call(timeout = "30s", retry = seeded(), skip(server))]
async fn hangs(server: &Server) -> Result<(), Error> {
    server.calls.fetch_add(1, Ordering::SeqCst);
    std::future::pending::<()>().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn timeout_bounds_the_whole_call() {
    let server = Server::default();
    let start = Instant::now();
    let err = hangs(&server).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(30));
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(err.retry_context().unwrap().stop, StopReason::Deadline);
    assert_eq!(
        err.retry_context().unwrap().deadline,
        Some(Duration::from_secs(30))
    );
    assert_eq!(server.calls(), 1);
    assert_eq!(
        err.call_context().unwrap().function,
        "macro_behaviour::hangs"
    );
}

/// A user's own error type: API errors are classified, parse errors are never retried.
#[derive(Debug)]
enum AppError {
    Api(Error),
    Parse(String),
}

impl RetryableError for AppError {
    fn classification(&self) -> Option<&Error> {
        match self {
            AppError::Api(e) => Some(e),
            AppError::Parse(_) => None,
        }
    }

    fn attach_retry_context(self, ctx: RetryContext) -> Self {
        match self {
            AppError::Api(e) => AppError::Api(e.with_retry_context(ctx)),
            other => other,
        }
    }

    fn from_error(err: Error) -> Self {
        AppError::Api(err)
    }
}

impl CallError for AppError {
    fn attach_call_context(self, ctx: CallContext) -> Self {
        match self {
            AppError::Api(e) => AppError::Api(e.with_call_context(ctx)),
            other => other,
        }
    }
}

#[openai_call(retry = seeded(), skip(server))]
async fn user_error(server: &Server, failures: u32, parse_fails: bool) -> Result<u32, AppError> {
    let text = server.answer(failures).map_err(AppError::Api)?;
    if parse_fails {
        return Err(AppError::Parse(text));
    }
    Ok(server.calls())
}

#[tokio::test(start_paused = true)]
async fn user_error_types_are_classified_like_the_layer() {
    let server = Arc::new(Server::default());
    assert_eq!(user_error(&server, 1, false).await.unwrap(), 2);

    let server = Server::default();
    match user_error(&server, 0, true).await.unwrap_err() {
        AppError::Parse(text) => assert_eq!(text, "answer after 1"),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.calls(), 1, "an unclassified error is not retried");

    let server = Server::default();
    match user_error(&server, u32::MAX, false).await.unwrap_err() {
        AppError::Api(e) => {
            assert_eq!(e.attempts(), 5, "the default maximum");
            assert_eq!(
                e.call_context().unwrap().function,
                "macro_behaviour::user_error"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[openai_call(validate(body = "POST /v1/chat/completions"), skip(server))]
async fn chat(server: &Server, body: &serde_json::Value) -> Result<String, Error> {
    server.answer(0)
}

#[tokio::test(start_paused = true)]
async fn validation_failure_runs_the_body_zero_times() {
    let server = Server::default();
    let bad = serde_json::json!({
        "model": "gpt-4o",
        "temperature": 3,
        "messages": [{"role": "user"}],
    });
    let err = chat(&server, &bad).await.unwrap_err();
    assert_eq!(server.calls(), 0);
    assert_eq!(err.kind(), ErrorKind::InvalidParameter);
    let params: Vec<&str> = err.violations().iter().map(|v| v.param.as_str()).collect();
    assert_eq!(params, ["messages[0].content", "temperature"]);
    assert_eq!(err.attempts(), 0);
    assert_eq!(err.retry_context().unwrap().outcomes, vec![]);
    let ctx = err.call_context().unwrap();
    assert_eq!(ctx.function, "macro_behaviour::chat");
    assert_eq!(ctx.args[0].0, "body");
    assert!(ctx.args[0].1.contains("temperature"), "{:?}", ctx.args);

    let good = serde_json::json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}],
    });
    assert_eq!(chat(&server, &good).await.unwrap(), "answer after 1");
    assert_eq!(server.calls(), 1);
}

#[openai_call(validate(body = "POST /v1/not/an/endpoint"), skip(server))]
async fn misnamed_endpoint(server: &Server, body: &serde_json::Value) -> Result<String, Error> {
    server.answer(0)
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_without_rules_is_an_error_not_a_silent_pass() {
    let server = Server::default();
    let err = misnamed_endpoint(&server, &serde_json::json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal);
    assert!(
        err.to_string().contains("POST /v1/not/an/endpoint"),
        "{err}"
    );
    assert_eq!(server.calls(), 0);
}

/// Times out locally on the first attempt, then answers.
fn time_out_once(server: &Server) -> Result<u32, Error> {
    let n = server.calls.fetch_add(1, Ordering::SeqCst) + 1;
    if n == 1 {
        Err(Error::new(ErrorKind::Timeout))
    } else {
        Ok(n)
    }
}

#[openai_call(retry = seeded(), skip(server))]
async fn post_like(server: &Server) -> Result<u32, Error> {
    time_out_once(server)
}

#[openai_call(retry = seeded(), idempotent, skip(server))]
async fn get_like(server: &Server) -> Result<u32, Error> {
    time_out_once(server)
}

#[tokio::test(start_paused = true)]
async fn idempotent_calls_may_retry_a_timeout() {
    let server = Server::default();
    assert_eq!(get_like(&server).await.unwrap(), 2);

    let server = Server::default();
    let err = post_like(&server).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(
        server.calls(),
        1,
        "a timed-out POST may have run: not repeated"
    );
}
