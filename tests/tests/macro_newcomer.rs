//! What a newcomer meets first with `#[openai_call]` and the stack: the macro and the auth
//! layer agree on keys, decode and body-read errors are not retried, and the messages say
//! what happened (local rejections, JSON arguments, placeholder keys from an argument).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use oai_resilience::mock::TEST_KEY;
use oai_resilience::retry::{RetryConfig, RetryLayer};
use oai_resilience::{
    openai_call, AuthCause, AuthLayer, ClientBody, Error, ErrorKind, OpenAiLayer, StopReason,
};
use serde_json::json;
use tower::{service_fn, Layer, ServiceExt};

/// What the stack says about `key` for requests through `base`: sent, or refused locally.
async fn stack_verdict(base: &str, key: &str) -> Result<(), (ErrorKind, Option<AuthCause>)> {
    let upstream = service_fn(|_req: Request<ClientBody>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    });
    let stack = OpenAiLayer::new()
        .base_url(base.parse().unwrap())
        .auth(AuthLayer::from_key(key))
        .retry(RetryLayer::with_config(RetryConfig::new().max_attempts(1)))
        .layer(upstream);
    let req = Request::get("/v1/models")
        .body(Full::new(Bytes::new()))
        .unwrap();
    stack
        .oneshot(req)
        .await
        .map(drop)
        .map_err(|e| (e.kind(), e.auth_cause()))
}

#[openai_call(api_key = key, base_url = base, skip_all, max_attempts = 1)]
async fn checked(key: &str, base: &str) -> Result<(), Error> {
    let _ = (key, base);
    Ok(())
}

/// What the macro says about `key` for a call to `base`.
async fn macro_verdict(base: &str, key: &str) -> Result<(), (ErrorKind, Option<AuthCause>)> {
    checked(key, base)
        .await
        .map_err(|e| (e.kind(), e.auth_cause()))
}

#[tokio::test]
async fn the_macro_and_the_stack_agree_on_every_key_for_every_target() {
    let good = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";
    let keys = [
        TEST_KEY.to_owned(),
        good.to_owned(),
        "sk-test-123".to_owned(),
        "sk-...".to_owned(),
        "your-api-key".to_owned(),
        String::new(),
        " \n".to_owned(),
        format!("{good}\n"),
        format!("\"{good}\""),
        format!("Bearer {good}"),
        format!("sk-ant-api03-{}", &good[8..]),
        "0123456789abcdef0123456789abcdef".to_owned(),
        "sk-proj-short".to_owned(),
        format!("{}+{}", &good[..20], &good[21..]),
    ];
    let bases = [
        "http://127.0.0.1:9/v1",
        "http://localhost:8000",
        "https://api.openai.com/v1",
        "https://eu.api.openai.com",
    ];
    for base in bases {
        for key in &keys {
            let stack = stack_verdict(base, key).await;
            let from_macro = macro_verdict(base, key).await;
            assert_eq!(stack, from_macro, "{key:?} for {base}");
        }
    }
    // The key of the report: a short test key is fine for a local server, too short for
    // OpenAI's, in both.
    assert_eq!(
        macro_verdict("http://127.0.0.1:9", "sk-test-123").await,
        Ok(())
    );
    assert_eq!(
        macro_verdict("https://api.openai.com/v1", "sk-test-123").await,
        Err((ErrorKind::MalformedApiKey, Some(AuthCause::TooShort)))
    );
    // The mock's test key passes everywhere.
    for base in bases {
        assert_eq!(macro_verdict(base, TEST_KEY).await, Ok(()), "{base}");
    }
}

#[tokio::test]
async fn an_invalid_base_url_fails_the_call_before_the_first_attempt() {
    let err = checked(TEST_KEY, "localhost:8000/v1").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal);
    assert!(err.to_string().contains("invalid base URL"), "{err}");
    assert_eq!(err.attempts(), 0);
}

#[openai_call(max_attempts = 5)]
async fn decodes(sent: &AtomicU32, body: &[u8]) -> Result<Vec<u32>, Error> {
    sent.fetch_add(1, Ordering::SeqCst);
    serde_json::from_slice(body).map_err(Error::decode)
}

#[openai_call(max_attempts = 5, skip(reset_as_service_error))]
async fn reads(sent: &AtomicU32, reset_as_service_error: bool) -> Result<(), Error> {
    sent.fetch_add(1, Ordering::SeqCst);
    let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset mid-body");
    if reset_as_service_error {
        Err(Error::from_service_error(io))
    } else {
        Err(Error::body(io))
    }
}

#[tokio::test(start_paused = true)]
async fn decode_and_body_errors_are_not_retried_by_the_macro() {
    let sent = AtomicU32::new(0);
    let err = decodes(&sent, br#"{"object":"list"}"#).await.unwrap_err();
    assert_eq!(sent.load(Ordering::SeqCst), 1);
    assert_eq!(err.kind(), ErrorKind::Decode);
    assert_eq!(err.retry_context().unwrap().stop, StopReason::NotRetryable);
    assert!(std::error::Error::source(&err)
        .unwrap()
        .is::<serde_json::Error>());

    let sent = AtomicU32::new(0);
    let err = reads(&sent, false).await.unwrap_err();
    assert_eq!(sent.load(Ordering::SeqCst), 1);
    assert_eq!(err.kind(), ErrorKind::ResponseBody);
    assert_eq!(err.retry_context().unwrap().stop, StopReason::NotRetryable);

    // The same failure through `from_service_error` is a connection error, retried: the
    // mapping for errors that come instead of a response.
    let sent = AtomicU32::new(0);
    let err = reads(&sent, true).await.unwrap_err();
    assert_eq!(sent.load(Ordering::SeqCst), 5);
    assert_eq!(err.kind(), ErrorKind::Connection);
}

#[openai_call(max_attempts = 1, skip(key))]
async fn with_json(
    key: &str,
    body: &serde_json::Value,
    owned: serde_json::Value,
    n: u32,
) -> Result<(), Error> {
    let _ = (key, body, &owned, n);
    Err(Error::new(ErrorKind::ServerError))
}

#[tokio::test]
async fn json_arguments_are_shown_as_json() {
    let body = json!({"model": "gpt-4o-mini"});
    let err = with_json(TEST_KEY, &body, json!(["a", 1]), 3)
        .await
        .unwrap_err();
    let call = err.call_context().unwrap();
    assert_eq!(
        call.args,
        [
            ("body".to_owned(), r#"{"model":"gpt-4o-mini"}"#.to_owned()),
            ("owned".to_owned(), r#"["a",1]"#.to_owned()),
            ("n".to_owned(), "3".to_owned()),
        ]
    );
}

#[openai_call(api_key = key, skip_all)]
async fn with_key(key: &str) -> Result<(), Error> {
    let _ = key;
    Ok(())
}

#[tokio::test]
async fn a_local_rejection_says_so_and_the_hint_fits_a_key_from_an_argument() {
    let err = with_key("sk-...").await.unwrap_err();
    assert_eq!(err.auth_cause(), Some(AuthCause::Placeholder));
    let text = err.to_string();
    // No "after 0 attempts in 0 s": nothing was attempted.
    assert!(
        text.contains(", refused before the first attempt (nothing was sent) — hint:"),
        "{text}"
    );
    assert!(!text.contains("0 attempts"), "{text}");
    // The key came from an argument: the hint does not send the reader to OPENAI_API_KEY
    // alone.
    let hint = err.hint();
    assert!(!hint.starts_with("set OPENAI_API_KEY"), "{hint}");
    assert!(hint.contains("an argument"), "{hint}");
    assert_eq!(err.retry_context().unwrap().attempts, 0);
}
