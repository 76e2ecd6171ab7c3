//! The validator's deprecation warnings, captured by a global subscriber (one test in this
//! binary, so no other test thread can cache the callsites' interest first).

use std::io;
use std::sync::{Arc, Mutex};

use oai_resilience::validate::{self, Endpoint};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn deprecated_parameters_pass_with_a_tracing_warning() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"x"}],"max_tokens":5,"functions":[{"name":"f"}]}"#;
    // A global subscriber in a binary of its own (see the module docs).
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let result = validate::validate(Endpoint::ChatCompletions, body);
    result.unwrap();
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("WARN"), "{log}");
    assert!(
        log.contains("deprecated parameter `max_tokens` (use `max_completion_tokens`"),
        "{log}"
    );
    assert!(
        log.contains("deprecated parameter `functions` (use `tools`)"),
        "{log}"
    );
}
