//! `hyper_client`: the resilience stack over a hyper-util client, built with
//! `tower::ServiceBuilder` layer by layer and with the one-call `OpenAiLayer`.
//!
//! ```sh
//! cargo run -p examples --bin hyper_client
//! ```
//!
//! It starts the embedded mock OpenAI server (no key, no network) with a 503 and a 429
//! scripted in front of the first calls, sends three chat completions and one request
//! without `messages` through each stack, and prints what came back and what the server
//! received: the transient failures were retried inside the stack, the invalid request never
//! left the process. The stacks themselves are in `examples/src/hyper_client.rs`.

use std::process::ExitCode;
use std::time::Duration;

use examples::hyper_client;
use oai_resilience::mock::{MockResponse, MockServer, Route};

/// A made-up key of OpenAI's shape, which the mock requires. Never put a real key in source.
const KEY: &str = oai_resilience::mock::TEST_KEY;

#[tokio::main]
async fn main() -> ExitCode {
    let flaky = || {
        [
            MockResponse::status(503),
            MockResponse::rate_limited(Duration::from_millis(200)),
        ]
    };
    let server = MockServer::builder()
        .api_key(KEY)
        .script(Route::ChatCompletions, flaky())
        .start()
        .await;
    println!("mock OpenAI server at {}", server.url());
    let runs = match hyper_client::run(&server.url(), KEY, 3).await {
        Ok(runs) => runs,
        Err(e) => {
            eprintln!("hyper_client failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    for run in &runs {
        println!("\nbuilt with {}:", run.built_with);
        for (i, answer) in run.answers.iter().enumerate() {
            println!("  call {}: {answer:?}", i + 1);
        }
        println!("  invalid request: {}", run.invalid);
    }
    let counts = server.counts();
    println!(
        "\nthe server received {} requests: {} answered 200, {} 503 and {} 429 (scripted, retried \
         inside the stack); the invalid requests never arrived",
        counts.total,
        counts.ok,
        counts.status(503),
        counts.status(429),
    );
    ExitCode::SUCCESS
}
