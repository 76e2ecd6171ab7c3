//! `fallback`: two routes for one call, a primary deployment and a backup with a cheaper model.
//!
//! ```sh
//! cargo run -p examples --bin fallback
//! ```
//!
//! Two embedded mock servers: the primary fails every request with a 503, the backup is
//! healthy. The first calls exhaust the primary's retries and open its circuit; from then on
//! each call goes to the backup at once, without a request to the primary. Each response
//! says which route served it (`ServedBy`); the backup received `gpt-4o-mini`.

use std::process::ExitCode;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use oai_resilience::breaker::CircuitBreakerLayer;
use oai_resilience::fallback::{FallbackLayer, Route, ServedBy};
use oai_resilience::mock::{MockServer, TEST_KEY};
use oai_resilience::stack::ClientBody;
use oai_resilience::{AuthLayer, OpenAiLayer};
use tower::{Layer, ServiceExt};

const CHAT: &[u8] = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}]}"#;

#[tokio::main]
async fn main() -> ExitCode {
    let primary = MockServer::builder()
        .random_server_errors(1.0, 7)
        .start()
        .await;
    let backup = MockServer::start().await;
    // Each route is a full stack: its own base URL, key, retries, breaker and pacer. The
    // breaker (off by default) is what sends calls to the backup at once, without a request
    // to the primary, once the primary's circuit is open.
    let stack = |server: &MockServer| {
        OpenAiLayer::new()
            .base_url(server.url().parse().expect("the mock's URL"))
            .auth(AuthLayer::from_key(TEST_KEY))
            .breaker(CircuitBreakerLayer::new())
    };
    let client = Client::builder(TokioExecutor::new()).build_http::<ClientBody>();
    let svc = FallbackLayer::new()
        .route(Route::new("primary", stack(&primary)))
        .route(Route::new("backup", stack(&backup)).model("gpt-4o-mini"))
        .layer(client);

    for call in 1..=6 {
        let req = http::Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(CHAT)))
            .expect("a valid request");
        let before = primary.counts().total;
        match svc.clone().oneshot(req).await {
            Ok(res) => {
                let route = res
                    .extensions()
                    .get::<ServedBy>()
                    .map_or("?", ServedBy::route);
                let sent = primary.counts().total - before;
                println!(
                    "call {call}: {} from {route:?} ({sent} requests to the primary)",
                    res.status()
                );
            }
            Err(e) => {
                eprintln!("call {call} failed: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let model = backup.requests().first().and_then(|r| {
        let json: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
        json["model"].as_str().map(str::to_owned)
    });
    println!(
        "the backup was asked for {model:?}; the primary received {} requests",
        primary.counts().total
    );
    let ok = model.as_deref() == Some("gpt-4o-mini") && primary.counts().total <= 5;
    ExitCode::from(if ok { 0 } else { 1 })
}
