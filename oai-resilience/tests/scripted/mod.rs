//! A mock server whose chat route answers a script first: the set-up most of the mock-backed
//! tests repeat. The `suite` binary includes it once (`tests/suite/main.rs`); a binary of its own
//! includes it with `mod scripted;`.

use oai_resilience::mock::{MockResponse, MockServer, Route};

/// A mock server that expects `key` (any key with `None`) and answers its chat-completions
/// route with `script` in turn, then normally.
pub(crate) async fn scripted(
    key: Option<&str>,
    script: impl IntoIterator<Item = MockResponse>,
) -> MockServer {
    let mut builder = MockServer::builder();
    if let Some(key) = key {
        builder = builder.api_key(key);
    }
    builder.script(Route::ChatCompletions, script).start().await
}
