//! # `errors`: what failed OpenAI calls look like through `oai-resilience`
//!
//! Starts the embedded mock OpenAI server (no key, no network), sends five failing calls
//! through [`ClassifyLayer`] over a hyper-util client, and prints each typed error: the
//! one-line `Display`, then its fields (kind, status, OpenAI `type`/`code`/`param`, request
//! id, retryability, hint).
//!
//! 1. a missing parameter (400 `missing_required_parameter`),
//! 2. a wrong API key (401, the key fragment the server echoes is redacted),
//! 3. an exhausted quota (429 `insufficient_quota`: not retryable),
//! 4. a rate limit (429 `rate_limit_exceeded`: retryable, with the server's delay),
//! 5. an overloaded server (503: retryable).
//!
//! Run it with `cargo run -p examples --bin errors`.

use std::fmt::Write as _;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use oai_resilience::mock::{MockResponse, MockServer, RateLimit, Route};
use oai_resilience::{BoxError, ClassifyLayer, Error};
use tower::{Service, ServiceBuilder, ServiceExt};

/// The key the mock expects. A test key: never put a real key in source.
const KEY: &str = oai_resilience::mock::TEST_KEY;
/// A wrong key, as if copied from the wrong project.
const WRONG_KEY: &str = "sk-proj-WRONGwrongWRONGwrongWRONG1111";

const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}"#;

/// Runs the five failing calls and returns each with a label.
///
/// # Errors
///
/// If a call that should fail succeeds, or the mock cannot start.
pub(crate) async fn run() -> Result<Vec<(&'static str, Error)>, BoxError> {
    let server = MockServer::builder()
        .api_key(KEY)
        // One request, refilled at one per second: the second call in a row is limited.
        .request_limit(RateLimit::bucket(1, 1.0))
        .try_start()
        .await?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut svc = ServiceBuilder::new()
        .layer(ClassifyLayer::new())
        .service(client);
    let url = server.endpoint(Route::ChatCompletions);
    let request = |key: &str, body: &'static str| -> Result<_, BoxError> {
        let mut auth = http::HeaderValue::from_str(&format!("Bearer {key}"))?;
        auth.set_sensitive(true);
        Ok(http::Request::post(url.as_str())
            .header("content-type", "application/json")
            .header("authorization", auth)
            .body(Full::new(Bytes::from_static(body.as_bytes())))?)
    };

    let mut errors = Vec::new();
    errors.push(
        expect_error(
            &mut svc,
            "missing parameter",
            request(KEY, r#"{"model":"gpt-4o-mini"}"#)?,
        )
        .await?,
    );
    errors.push(expect_error(&mut svc, "wrong API key", request(WRONG_KEY, CHAT)?).await?);

    server.set_quota_exhausted(true);
    errors.push(expect_error(&mut svc, "exhausted quota", request(KEY, CHAT)?).await?);
    server.set_quota_exhausted(false);

    // The first call takes the bucket's only request; the second is rate limited.
    svc.ready().await?.call(request(KEY, CHAT)?).await?;
    errors.push(expect_error(&mut svc, "rate limit", request(KEY, CHAT)?).await?);

    server.script(Route::ChatCompletions, [MockResponse::status(503)]);
    errors.push(expect_error(&mut svc, "overloaded server", request(KEY, CHAT)?).await?);

    server.shutdown().await;
    Ok(errors)
}

/// Sends `req` and returns the error it must end with.
async fn expect_error<S, B>(
    svc: &mut S,
    label: &'static str,
    req: http::Request<Full<Bytes>>,
) -> Result<(&'static str, Error), BoxError>
where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<B>, Error = Error>,
{
    match svc.ready().await?.call(req).await {
        Ok(res) => Err(format!("{label}: expected an error, got {}", res.status()).into()),
        Err(err) => Ok((label, err)),
    }
}

/// The one-line `Display` of `err`, then its fields, one per line.
pub(crate) fn describe(err: &Error) -> String {
    let mut out = format!("{err}\n");
    let status = err.status().map(|s| s.as_u16().to_string());
    let retry_after = err.retry_after().map(|d| format!("{d:?}"));
    let fields = [
        ("kind", Some(err.kind().to_string())),
        ("status", status),
        ("type", err.error_type().map(str::to_owned)),
        ("code", err.code().map(str::to_owned)),
        ("param", err.param().map(str::to_owned)),
        ("request id", err.request_id().map(str::to_owned)),
        ("retryable", Some(err.is_retryable().to_string())),
        ("retry after", retry_after),
        ("hint", Some(err.hint().into_owned())),
    ];
    for (name, value) in fields {
        let _ = writeln!(out, "    {name:<12} {}", value.as_deref().unwrap_or("-"));
    }
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    for (label, err) in run().await? {
        println!("== {label}");
        println!("{}", describe(&err));
    }
    Ok(())
}
