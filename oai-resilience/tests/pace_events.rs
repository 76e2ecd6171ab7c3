//! The pacer's `tracing` events, captured by a global subscriber (one test in this binary, so
//! no other test thread can cache the callsites' interest before the subscriber is set).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use oai_resilience::pace::{is_paced_locally, Cost, PaceKey, Pacer};
use tokio::time::Instant;

/// Collects formatted `tracing` output.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn waits_pauses_and_local_failures_are_traced_without_the_key() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // A global subscriber in a binary of its own: a thread-local one loses events when another
    // test thread registers the same callsites first (tracing caches their interest).
    tracing::subscriber::set_global_default(subscriber).unwrap();
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
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("rate limited: key paused"), "{text}");
    assert!(text.contains("pause_ms=2000"), "{text}");
    assert!(text.contains("pacing: waiting for a slot"), "{text}");
    assert!(text.contains("pacing slot granted after wait"), "{text}");
    assert!(text.contains("paced locally"), "{text}");
    assert!(!text.contains("SECRET"), "{text}");
}
