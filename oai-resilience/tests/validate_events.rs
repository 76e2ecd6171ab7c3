//! The validator's deprecation warnings, captured by a global subscriber (one test in this
//! binary, so no other test thread can cache the callsites' interest first).

use test_support::capture;

use capture::Captured;
use oai_resilience::validate::{self, Endpoint};

#[test]
fn deprecated_parameters_pass_with_a_tracing_warning() {
    let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"x"}],"max_tokens":5,"functions":[{"name":"f"}]}"#;
    // A global subscriber in a binary of its own (see the module docs).
    let captured = Captured::install_global(tracing::Level::INFO);
    let result = validate::validate(Endpoint::ChatCompletions, body);
    result.unwrap();
    let log = captured.text();
    for want in [
        "WARN",
        "deprecated parameter `max_tokens` (use `max_completion_tokens`",
        "deprecated parameter `functions` (use `tools`)",
    ] {
        assert!(log.contains(want), "{log}");
    }
}
