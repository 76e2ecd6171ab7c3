//! The stack over a hyper-util client, built two ways: layer by layer with
//! [`ServiceBuilder`], and with the one-call builder [`OpenAiLayer`].
//!
//! Both give the same service: `Validate -> Auth -> Retry -> Pace -> Classify -> client`.
//! [`run`] sends the same calls through each against an OpenAI-compatible base URL (the
//! binary starts the embedded mock, with a 503 and a 429 scripted first): the
//! transient failures are retried inside the stack and the caller sees answers; a request
//! without `messages` fails locally, with the parameter named and nothing sent.

use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::Request;
use http_body_util::{BodyExt, Full};
use oai_resilience::pace::PaceLayer;
use oai_resilience::validate::{ValidateBody, ValidateLayer};
use oai_resilience::{
    AuthLayer, BoxError, ClassifyLayer, Error, OpenAiLayer, RetryConfig, RetryLayer,
};
use serde_json::Value;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

use crate::stack::http_client;

/// What the calls of one stack returned.
#[derive(Debug, Clone)]
pub struct StackRun {
    /// How the stack was built.
    pub built_with: &'static str,
    /// The assistant's answers of the good calls.
    pub answers: Vec<String>,
    /// The error of the call without `messages`.
    pub invalid: Error,
}

/// Sends `calls` chat completions and one invalid request through `svc`.
async fn exercise<S>(
    built_with: &'static str,
    mut svc: S,
    base_url: &str,
    calls: usize,
) -> Result<StackRun, BoxError>
where
    S: Service<
        Request<Full<Bytes>>,
        Response = http::Response<hyper::body::Incoming>,
        Error = Error,
    >,
{
    let request = |body: String| {
        Request::post(format!("{base_url}/v1/chat/completions"))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
    };
    let mut answers = Vec::with_capacity(calls);
    for i in 0..calls {
        let body = serde_json::json!({
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": format!("Say hello #{i}")}],
            "max_completion_tokens": 5,
        });
        // The tower contract: wait for readiness, then call.
        let res = svc.ready().await?.call(request(body.to_string())?).await?;
        let bytes = res.into_body().collect().await?.to_bytes();
        let json: Value = serde_json::from_slice(&bytes)?;
        let text = json["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        answers.push(text);
    }
    let invalid = match svc
        .ready()
        .await?
        .call(request(r#"{"model":"gpt-4o-mini"}"#.to_owned())?)
        .await
    {
        Ok(_) => return Err("a request without `messages` was sent and answered".into()),
        Err(e) => e,
    };
    Ok(StackRun {
        built_with,
        answers,
        invalid,
    })
}

/// Builds the stack both ways over a hyper-util client and sends `calls` calls plus one
/// invalid request through each. `api_key` goes to the auth layer (a fixed key here; the
/// default is `OPENAI_API_KEY`).
///
/// # Errors
///
/// The first call that fails other than as planned.
pub async fn run(base_url: &str, api_key: &str, calls: usize) -> Result<Vec<StackRun>, BoxError> {
    // 1. Layer by layer, outermost first. Each layer is configured where it is added.
    let by_hand = ServiceBuilder::new()
        .layer(ValidateLayer::new())
        .layer(AuthLayer::from_key(api_key))
        .layer(RetryLayer::with_config(
            RetryConfig::new()
                .max_attempts(4)
                .deadline(Duration::from_secs(30)),
        ))
        .layer(PaceLayer::new())
        .layer(ClassifyLayer::new())
        .service(http_client::<ValidateBody<Full<Bytes>>>());
    let first = exercise("ServiceBuilder", by_hand, base_url, calls).await?;

    // 2. The one-call builder: the same order, the defaults for what is not set.
    let built = OpenAiLayer::new()
        .auth(AuthLayer::from_key(api_key))
        .retry(RetryLayer::with_config(
            RetryConfig::new()
                .max_attempts(4)
                .deadline(Duration::from_secs(30)),
        ))
        .layer(http_client::<ValidateBody<Full<Bytes>>>());
    let second = exercise("OpenAiLayer", built, base_url, calls).await?;
    Ok(vec![first, second])
}
