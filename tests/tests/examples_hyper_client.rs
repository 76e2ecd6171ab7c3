//! The hyper_client example against the mock: both stacks retry the scripted faults, answer
//! every call, and refuse the invalid request without sending it.

use std::time::Duration;

use examples::hyper_client;
use oai_resilience::mock::{MockResponse, MockServer, Route};
use oai_resilience::ErrorKind;

const KEY: &str = "sk-proj-HyPeRcLiEnTeXaMpLeKeY0123456789ab";

#[tokio::test(start_paused = true)]
async fn both_stacks_retry_and_validate() {
    let server = MockServer::builder()
        .api_key(KEY)
        .script(
            Route::ChatCompletions,
            [
                MockResponse::status(503),
                MockResponse::rate_limited(Duration::from_millis(200)),
            ],
        )
        .start()
        .await;
    let runs = hyper_client::run(&server.url(), KEY, 2).await.unwrap();
    let names: Vec<&str> = runs.iter().map(|r| r.built_with).collect();
    assert_eq!(names, ["ServiceBuilder", "OpenAiLayer"]);
    for run in &runs {
        assert_eq!(run.answers.len(), 2);
        assert!(run
            .answers
            .iter()
            .all(|a| a.starts_with("Mock reply to: Say hello")));
        assert_eq!(run.invalid.kind(), ErrorKind::InvalidParameter);
        assert_eq!(run.invalid.param(), Some("messages"));
    }
    let counts = server.counts();
    // 2 + 2 good calls, plus the scripted 503 and 429 retried by the first stack.
    assert_eq!(counts.ok, 4);
    assert_eq!((counts.status(503), counts.status(429)), (1, 1));
    assert_eq!(counts.total, 6, "the invalid requests were never sent");
}

#[tokio::test]
async fn a_wrong_key_is_reported_not_retried() {
    let server = MockServer::builder().api_key(KEY).start().await;
    let other = "sk-proj-SoMeOtHeRkEyThAtIsWrOnG0123456789";
    let err = hyper_client::run(&server.url(), other, 1)
        .await
        .unwrap_err();
    let err = err.downcast_ref::<oai_resilience::Error>().unwrap();
    assert_eq!(err.kind(), ErrorKind::Authentication);
    assert_eq!(server.counts().total, 1);
}
