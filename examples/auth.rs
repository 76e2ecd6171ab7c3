//! # `auth`: key problems caught before anything is sent, and 401s that say why
//!
//! Starts the embedded mock OpenAI server (it accepts one key), and sends calls through
//! `AuthLayer` → `ClassifyLayer` → a hyper-util client:
//!
//! 1. a key read from the environment with the trailing line break of a copy-paste: rejected
//!    locally, the server gets nothing;
//! 2. a documentation placeholder (`sk-...`): rejected locally;
//! 3. a well-formed but wrong key: the server's 401, cause "incorrect key", the key fragment it
//!    echoes redacted;
//! 4. a key provider whose cached key was revoked: one 401, then a fresh key and a success
//!    (`refresh_on_unauthorized`);
//! 5. the right key: a success.
//!
//! After each call it prints the outcome and how many requests the server has received.
//! Keys print masked (`sk-proj-…0000`).
//!
//! Run it with `cargo run -p examples --bin auth`.

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use oai_resilience::auth::{AuthLayer, EnvSource, FetchMode};
use oai_resilience::mock::{MockServer, Route};
use oai_resilience::{ApiKey, BoxError, ClassifyLayer, Error};
use tower::{ServiceBuilder, ServiceExt};

/// The key the mock accepts. A test key: never put a real key in source.
const KEY: &str = oai_resilience::mock::TEST_KEY;
/// A revoked key, well-formed.
const OLD_KEY: &str = "sk-proj-OLDoldOLDoldOLDoldOLDoldOLDoldOLD1111";

const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}"#;

/// One call's outcome: a label, the status or the error, and the server's request count after it.
pub(crate) struct Step {
    pub(crate) label: &'static str,
    pub(crate) result: Result<u16, Error>,
    pub(crate) server_total: u64,
}

/// Runs the five calls.
///
/// # Errors
///
/// If the mock cannot start or a request cannot be built.
pub(crate) async fn run() -> Result<Vec<Step>, BoxError> {
    let server = MockServer::builder().api_key(KEY).try_start().await?;
    let url = server.endpoint(Route::ChatCompletions);
    let request = || {
        http::Request::post(url.as_str())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
    };
    let send = |layer: AuthLayer, req| async move {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let svc = ServiceBuilder::new()
            .layer(layer)
            .layer(ClassifyLayer::new())
            .service(client);
        svc.oneshot(req).await.map(|res| res.status().as_u16())
    };
    let mut steps = Vec::new();
    let mut record = |label, result| {
        steps.push(Step {
            label,
            result,
            server_total: server.counts().total,
        })
    };

    // 1. The environment holds the key and a line break (a fake environment here).
    let env = EnvSource::with_lookup(|name| (name == "OPENAI_API_KEY").then(|| format!("{KEY}\n")));
    record(
        "key with a trailing line break",
        send(AuthLayer::new(env), request()?).await,
    );

    // 2. A placeholder from the docs.
    record(
        "placeholder key",
        send(AuthLayer::from_key("sk-..."), request()?).await,
    );

    // 3. A wrong key.
    record(
        "wrong key",
        send(AuthLayer::from_key(OLD_KEY), request()?).await,
    );

    // 4. A provider whose cached key was revoked; asked to refresh, it has the new one.
    let provider = |mode: FetchMode| async move {
        Ok::<_, std::io::Error>(ApiKey::new(match mode {
            FetchMode::Refresh => KEY,
            _ => OLD_KEY,
        }))
    };
    let layer = AuthLayer::from_provider(provider).refresh_on_unauthorized();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .layer(ClassifyLayer::new())
        .service(client);
    let result = svc.oneshot(request()?).await.map(|r| r.status().as_u16());
    record("revoked key, refreshed once", result);

    // 5. The right key.
    record(
        "right key",
        send(AuthLayer::from_key(KEY), request()?).await,
    );
    Ok(steps)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    println!(
        "keys print masked: {} and {}\n",
        ApiKey::new(KEY),
        ApiKey::new(OLD_KEY)
    );
    for step in run().await? {
        match &step.result {
            Ok(status) => println!("{}: {status} OK", step.label),
            Err(err) => println!("{}: {err}", step.label),
        }
        println!(
            "    requests the server has received so far: {}\n",
            step.server_total
        );
    }
    Ok(())
}
