//! The pacer's `tracing` events, captured by a global subscriber (one test in this binary, so
//! no other test thread can cache the callsites' interest before the subscriber is set).

use std::time::Duration;

use oai_resilience::pace::{is_paced_locally, Cost, PaceKey, Pacer};
use tokio::time::Instant;

use test_support::capture;

use capture::Captured;

#[tokio::test(start_paused = true)]
async fn waits_pauses_and_local_failures_are_traced_without_the_key() {
    let captured = Captured::install_global(tracing::Level::DEBUG);
    let pacer = Pacer::default();
    let k = PaceKey::new("api.test").with_credential(b"Bearer sk-proj-SECRETsecret");
    pacer
        .acquire(&k, Cost::tokens(1), None)
        .await
        .unwrap()
        .on_rate_limited(Some(Duration::from_secs(2)), None);
    let _ = pacer.acquire(&k, Cost::tokens(1), None).await.unwrap();
    let err = pacer
        .acquire(&k, Cost::tokens(1), Some(Instant::now()))
        .await
        .unwrap_err();
    assert!(is_paced_locally(&err));
    let text = captured.text();
    assert!(text.contains("rate limited: key paused"), "{text}");
    assert!(text.contains("pause_ms=2000"), "{text}");
    assert!(text.contains("pacing: waiting for a slot"), "{text}");
    assert!(text.contains("pacing slot granted after wait"), "{text}");
    assert!(text.contains("paced locally"), "{text}");
    assert!(!text.contains("SECRET"), "{text}");
}
