//! [`MetricsObserver`]: the hooks recorded through the `metrics` facade.

use metrics::{counter, gauge, histogram, Label};

use super::{
    delay_source_name, stop_reason_name, AttemptFinished, CallGivenUp, CallSucceeded,
    LocalRejection, Observer, PacingWait, RateLimitLearned, RetryScheduled, TokensUsed,
};

/// `gen_ai.client.operation.duration` (OpenTelemetry): seconds per call, retries included.
pub const OPERATION_DURATION: &str = "gen_ai.client.operation.duration";
/// `http.client.request.duration` (OpenTelemetry): seconds per attempt.
pub const REQUEST_DURATION: &str = "http.client.request.duration";
/// `oai_resilience.resends` (ours): resends per call (attempts − 1), the value of
/// OpenTelemetry's attribute `http.request.resend_count` (which the spans carry). Not named
/// after the attribute: a histogram whose name ends in `_count` collides with its own `_count`
/// series in Prometheus's text format.
pub const RESEND_COUNT: &str = "oai_resilience.resends";
/// `oai_resilience.retries` (ours): retries scheduled, by cause.
pub const RETRIES: &str = "oai_resilience.retries";
/// `oai_resilience.gave_up` (ours): calls that ended with an error, by stop reason.
pub const GAVE_UP: &str = "oai_resilience.gave_up";
/// `oai_resilience.local_rejections` (ours): requests refused before sending, by kind.
pub const LOCAL_REJECTIONS: &str = "oai_resilience.local_rejections";
/// `oai_resilience.rate_limited` (ours): 429s received, by kind (`rate_limit` or `quota`).
pub const RATE_LIMITED: &str = "oai_resilience.rate_limited";
/// `oai_resilience.retry_budget.balance` (ours): the retry budget's balance at the last retry.
pub const BUDGET_BALANCE: &str = "oai_resilience.retry_budget.balance";
/// `oai_resilience.pacing.wait` (ours): seconds an attempt waited for a pacing slot, by the
/// limit that held it.
pub const PACING_WAIT: &str = "oai_resilience.pacing.wait";
/// `gen_ai.client.token.usage` (OpenTelemetry): tokens a response reported, by
/// `gen_ai.token.type` (`input`, `output`).
pub const TOKEN_USAGE: &str = "gen_ai.client.token.usage";

/// Records the stack's hooks as metrics through the [`metrics`] facade, so any exporter
/// (Prometheus, OpenTelemetry, StatsD, …) serves them. Names follow the OpenTelemetry semantic
/// conventions where one exists; the `oai_resilience.*` names are this crate's own.
///
/// | name | type | unit | attributes |
/// |---|---|---|---|
/// | `gen_ai.client.operation.duration` | histogram | s | `gen_ai.request.model`, `error.type` (failures) |
/// | `http.client.request.duration` | histogram | s | `gen_ai.request.model`, `http.response.status_code`, `error.type` (failures) |
/// | `oai_resilience.resends` | histogram | {resend} | `gen_ai.request.model` |
/// | `oai_resilience.retries` | counter | {retry} | `error.type` (the cause), `oai_resilience.delay_source` |
/// | `oai_resilience.gave_up` | counter | {call} | `error.type`, `oai_resilience.stop_reason` |
/// | `oai_resilience.rate_limited` | counter | {response} | `kind` (`rate_limit`, `quota`), `gen_ai.request.model` |
/// | `oai_resilience.local_rejections` | counter | {request} | `kind` (`validation`, `key`), `error.type` |
/// | `oai_resilience.retry_budget.balance` | gauge | {token} | — |
/// | `oai_resilience.pacing.wait` | histogram | s | `oai_resilience.pacing.limit` (`queue`, `cold_window`, `pause`, `requests`, `tokens`, `adaptive`), `gen_ai.request.model` |
/// | `gen_ai.client.token.usage` | histogram | {token} | `gen_ai.token.type` (`input`, `output`), `gen_ai.request.model` |
///
/// `error.type` is the [`ErrorKind`](crate::ErrorKind)'s name (`server_error`,
/// `rate_limited`, …). `gen_ai.request.model` is present when the model is known (see
/// [`RequestModel`](super::RequestModel)). The `metrics` facade has no unit on a record: the
/// units above are described once per metric through `describe_*` by
/// [`MetricsObserver::describe`].
///
/// ```
/// use std::sync::Arc;
/// use oai_resilience::observe::MetricsObserver;
/// use oai_resilience::OpenAiLayer;
///
/// MetricsObserver::describe(); // once, after the recorder is installed
/// let layer = OpenAiLayer::new().observer(Arc::new(MetricsObserver::new()));
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct MetricsObserver {}

impl MetricsObserver {
    /// An observer that records into the global recorder current at each event.
    pub fn new() -> Self {
        MetricsObserver {}
    }

    /// Describes every metric (unit and help text) to the installed recorder.
    pub fn describe() {
        use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
        describe_histogram!(
            OPERATION_DURATION,
            Unit::Seconds,
            "Duration of an OpenAI call, retries and delays included"
        );
        describe_histogram!(
            REQUEST_DURATION,
            Unit::Seconds,
            "Duration of one HTTP attempt"
        );
        describe_histogram!(RESEND_COUNT, Unit::Count, "Resends per call");
        describe_counter!(RETRIES, Unit::Count, "Retries scheduled, by cause");
        describe_counter!(
            GAVE_UP,
            Unit::Count,
            "Calls that ended with an error, by stop reason"
        );
        describe_counter!(
            RATE_LIMITED,
            Unit::Count,
            "429 responses, by kind (rate_limit or quota)"
        );
        describe_counter!(
            LOCAL_REJECTIONS,
            Unit::Count,
            "Requests refused locally before sending, by kind"
        );
        describe_gauge!(
            BUDGET_BALANCE,
            Unit::Count,
            "The retry budget's balance at the last retry"
        );
        describe_histogram!(
            PACING_WAIT,
            Unit::Seconds,
            "Time an attempt waited for a pacing slot, by the limit that held it"
        );
        describe_histogram!(
            TOKEN_USAGE,
            Unit::Count,
            "Tokens a response reported, by token type (input, output)"
        );
    }
}

fn model_label(labels: &mut Vec<Label>, model: Option<&str>) {
    if let Some(m) = model {
        labels.push(Label::new("gen_ai.request.model", m.to_owned()));
    }
}

impl Observer for MetricsObserver {
    fn attempt_finished(&self, e: &AttemptFinished<'_>) {
        let mut labels = Vec::with_capacity(3);
        model_label(&mut labels, e.model);
        if let Some(status) = e.status {
            labels.push(Label::new(
                "http.response.status_code",
                status.as_str().to_owned(),
            ));
        }
        if let Some(kind) = e.error {
            labels.push(Label::new("error.type", kind.as_str()));
        }
        histogram!(REQUEST_DURATION, labels).record(e.latency.as_secs_f64());
    }

    fn retry_scheduled(&self, e: &RetryScheduled<'_>) {
        counter!(
            RETRIES,
            "error.type" => e.cause.as_str(),
            "oai_resilience.delay_source" => delay_source_name(e.source),
        )
        .increment(1);
        if let Some(balance) = e.budget_balance {
            gauge!(BUDGET_BALANCE).set(balance);
        }
    }

    fn call_succeeded(&self, e: &CallSucceeded<'_>) {
        let mut labels = Vec::with_capacity(1);
        model_label(&mut labels, e.model);
        histogram!(RESEND_COUNT, labels.clone()).record(f64::from(e.attempts - 1));
        histogram!(OPERATION_DURATION, labels).record(e.elapsed.as_secs_f64());
    }

    fn call_given_up(&self, e: &CallGivenUp<'_>) {
        let mut labels = Vec::with_capacity(2);
        model_label(&mut labels, e.model);
        histogram!(RESEND_COUNT, labels.clone()).record(f64::from(e.attempts.saturating_sub(1)));
        labels.push(Label::new("error.type", e.error.as_str()));
        histogram!(OPERATION_DURATION, labels).record(e.elapsed.as_secs_f64());
        counter!(
            GAVE_UP,
            "error.type" => e.error.as_str(),
            "oai_resilience.stop_reason" => stop_reason_name(e.stop),
        )
        .increment(1);
    }

    fn rate_limit_learned(&self, e: &RateLimitLearned<'_>) {
        let mut labels = vec![Label::new("kind", e.kind.as_str())];
        model_label(&mut labels, e.model);
        counter!(RATE_LIMITED, labels).increment(1);
    }

    fn pacing_wait(&self, e: &PacingWait<'_>) {
        let mut labels = vec![Label::new("oai_resilience.pacing.limit", e.limit.as_str())];
        model_label(&mut labels, e.model);
        histogram!(PACING_WAIT, labels).record(e.waited.as_secs_f64());
    }

    fn tokens_used(&self, e: &TokensUsed<'_>) {
        for (kind, n) in [("input", e.input_tokens), ("output", e.output_tokens)] {
            let mut labels = vec![Label::new("gen_ai.token.type", kind)];
            model_label(&mut labels, e.model);
            histogram!(TOKEN_USAGE, labels).record(n as f64);
        }
    }

    fn local_rejection(&self, e: &LocalRejection<'_>) {
        counter!(
            LOCAL_REJECTIONS,
            "kind" => e.source.as_str(),
            "error.type" => e.error.as_str(),
        )
        .increment(1);
    }
}
