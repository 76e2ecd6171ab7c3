//! `#[openai_call]` opens one `tracing` span per call and emits an event per attempt; the retry
//! loop it rides opens its `call` span inside it, with one `attempt` span per attempt.

use std::sync::{Arc, Mutex};

use oai_resilience::retry::RetryConfig;
use oai_resilience::{openai_call, Error, ErrorKind};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

#[derive(Default, Clone)]
struct Recorder {
    lines: Arc<Mutex<Vec<String>>>,
}

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, _id: &Id, _ctx: Context<'_, S>) {
        let mut f = Fields(format!("span {}", attrs.metadata().name()));
        attrs.record(&mut f);
        self.lines.lock().unwrap().push(f.0);
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let scope = ctx
            .event_span(event)
            .map(|s| s.name().to_owned())
            .unwrap_or_default();
        let mut f = Fields(format!("event in {scope}:"));
        event.record(&mut f);
        self.lines.lock().unwrap().push(f.0);
    }
}

#[openai_call(retry = RetryConfig::new().seed(3).no_budget(), max_attempts = 3)]
async fn traced(fail_first: u32) -> Result<u32, Error> {
    // The attempt number is not visible to the body: count calls instead.
    thread_local!(static CALLS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
    let n = CALLS.with(|c| {
        c.set(c.get() + 1);
        c.get()
    });
    if n <= fail_first {
        Err(Error::new(ErrorKind::ServerError))
    } else {
        Ok(n)
    }
}

#[tokio::test(start_paused = true)]
async fn one_span_per_call_and_an_event_per_attempt() {
    let recorder = Recorder::default();
    let subscriber = tracing_subscriber::registry().with(recorder.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    assert_eq!(traced(2).await.unwrap(), 3);

    let lines = recorder.lines.lock().unwrap().clone();
    let spans: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("span openai_call"))
        .collect();
    assert_eq!(spans.len(), 1, "{lines:#?}");
    let count = |prefix: &str| lines.iter().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(count("span call "), 1, "{lines:#?}");
    assert_eq!(count("span attempt "), 3, "{lines:#?}");
    assert!(
        spans[0].contains("function=\"macro_tracing::traced\""),
        "{lines:#?}"
    );
    let attempts: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("event in call:") && l.contains("message=attempt"))
        .collect();
    assert_eq!(attempts.len(), 3, "{lines:#?}");
    for (i, line) in attempts.iter().enumerate() {
        assert!(line.contains(&format!("attempt={}", i + 1)), "{line}");
    }
    let retries = lines
        .iter()
        .filter(|l| l.starts_with("event in attempt:") && l.contains("message=retrying"))
        .count();
    assert_eq!(retries, 2, "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("message=succeeded") && l.contains("attempts=3")),
        "{lines:#?}"
    );
}
