//! The `tracing` spans of the retry loop: one `call` span per call and, as its children, one
//! `attempt` span per attempt, with OpenTelemetry semantic-convention field names (the ones
//! the metrics use), so that a `tracing-opentelemetry` layer exports them as a trace.
//!
//! Both spans are `DEBUG` on the `oai_resilience::retry` target, as tower-http's request spans
//! are: an application logging at `INFO` does not pay for formatting them on every call (an
//! `INFO` span cost the gateway about 15 µs per request in its log formatter); a tracing
//! exporter enables them with `oai_resilience::retry=debug`. Without a subscriber that
//! enables them, creating one is a check of the callsite's cached interest and every record
//! below is skipped (`Span::is_disabled`): no allocation, no formatting.

use http::{Request, StatusCode};
use tracing::field::Empty;
use tracing::Span;

use crate::error::ErrorKind;
use crate::observe::stop_reason_name;
use crate::redact::redact_secrets;
use crate::StopReason;

/// Whether a subscriber wants the retry loop's spans (the validation layer then reads the
/// model for them, [`RequestModel`](crate::observe::RequestModel)).
pub(crate) fn enabled() -> bool {
    tracing::span_enabled!(target: "oai_resilience::retry", tracing::Level::DEBUG)
}

/// A new `call` span, a child of the current span.
pub(crate) fn call_span() -> Span {
    tracing::debug_span!(
        target: "oai_resilience::retry",
        "call",
        otel.name = Empty,
        otel.kind = "client",
        otel.status_code = Empty,
        gen_ai.operation.name = Empty,
        gen_ai.request.model = Empty,
        server.address = Empty,
        http.request.resend_count = Empty,
        oai_resilience.attempts = Empty,
        oai_resilience.request_id = Empty,
        oai_resilience.stop_reason = Empty,
        error.type = Empty,
    )
}

/// A new `attempt` span for attempt number `attempt`, a child of `call`.
pub(crate) fn attempt_span(call: &Span, attempt: u32) -> Span {
    let span = tracing::debug_span!(
        target: "oai_resilience::retry",
        parent: call,
        "attempt",
        otel.name = Empty,
        otel.kind = "client",
        otel.status_code = Empty,
        oai_resilience.attempt = attempt,
        http.request.method = Empty,
        url.path = Empty,
        server.address = Empty,
        server.port = Empty,
        http.request.resend_count = Empty,
        http.response.status_code = Empty,
        error.type = Empty,
        oai_resilience.request_id = Empty,
    );
    if attempt > 1 && !span.is_disabled() {
        span.record("http.request.resend_count", attempt - 1);
    }
    span
}

/// OpenTelemetry's `gen_ai.operation.name` for an OpenAI route, if it names one.
pub(crate) fn operation_name(path: &str) -> Option<&'static str> {
    let path = path.trim_end_matches('/');
    if path.ends_with("/chat/completions") || path.ends_with("/responses") {
        Some("chat")
    } else if path.ends_with("/completions") {
        Some("text_completion")
    } else if path.ends_with("/embeddings") {
        Some("embeddings")
    } else {
        None
    }
}

/// Records what `req` tells: method, path, host and port on the attempt span; on the first
/// attempt also the operation, the host and the model on the call span.
pub(crate) fn record_request<B>(
    call: &Span,
    attempt: &Span,
    req: &Request<B>,
    first: bool,
    model: Option<&str>,
) {
    let uri = req.uri();
    if !attempt.is_disabled() {
        attempt.record("otel.name", req.method().as_str());
        attempt.record("http.request.method", req.method().as_str());
        attempt.record("url.path", uri.path());
        if let Some(host) = uri.host() {
            attempt.record("server.address", host);
        }
        if let Some(port) = uri.port_u16() {
            attempt.record("server.port", port);
        }
    }
    if first && !call.is_disabled() {
        let operation = operation_name(uri.path());
        if let Some(op) = operation {
            call.record("gen_ai.operation.name", op);
        }
        if let Some(host) = uri.host() {
            call.record("server.address", host);
        }
        if let Some(m) = model {
            call.record("gen_ai.request.model", m);
        }
        match (operation, model) {
            (Some(op), Some(m)) => {
                call.record("otel.name", format!("{op} {m}"));
            }
            (Some(op), None) => {
                call.record("otel.name", op);
            }
            _ => {}
        }
    }
}

/// Records the end of an attempt: its status, error kind and request id (a request id that
/// looks like a key is recorded as `[redacted]`, as [`Error`](crate::Error) keeps it).
pub(crate) fn record_attempt_end(
    attempt: &Span,
    status: Option<StatusCode>,
    error: Option<ErrorKind>,
    request_id: Option<&str>,
) {
    if attempt.is_disabled() {
        return;
    }
    if let Some(s) = status {
        attempt.record("http.response.status_code", s.as_u16());
    }
    if let Some(kind) = error {
        attempt.record("error.type", kind.as_str());
        attempt.record("otel.status_code", "ERROR");
    }
    if let Some(id) = request_id {
        attempt.record("oai_resilience.request_id", &*redact_secrets(id));
    }
}

/// Records the end of a call: attempts and resends; for a failure the error kind and the stop
/// reason.
pub(crate) fn record_call_end(
    call: &Span,
    attempts: u32,
    request_id: Option<&str>,
    failure: Option<(ErrorKind, StopReason)>,
) {
    if call.is_disabled() {
        return;
    }
    call.record("oai_resilience.attempts", attempts);
    call.record("http.request.resend_count", attempts.saturating_sub(1));
    if let Some(id) = request_id {
        call.record("oai_resilience.request_id", &*redact_secrets(id));
    }
    if let Some((kind, stop)) = failure {
        call.record("error.type", kind.as_str());
        call.record("oai_resilience.stop_reason", stop_reason_name(stop));
        call.record("otel.status_code", "ERROR");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_names() {
        assert_eq!(operation_name("/v1/chat/completions"), Some("chat"));
        assert_eq!(
            operation_name("/openai/deployments/d/chat/completions"),
            Some("chat")
        );
        assert_eq!(operation_name("/v1/completions"), Some("text_completion"));
        assert_eq!(operation_name("/v1/embeddings/"), Some("embeddings"));
        assert_eq!(operation_name("/v1/responses"), Some("chat"));
        assert_eq!(operation_name("/v1/models"), None);
    }
}
