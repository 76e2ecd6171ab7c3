//! `GET /metrics`: the gateway's counters in the Prometheus text format (version 0.0.4), and
//! the library's metrics beside them.
//!
//! Two sources, one page:
//!
//! - **The gateway's own series** (`oai_gateway_*`): a small registry written for the gateway,
//!   one per [`Gateway`](crate::Gateway), so that tests can run several gateways in one
//!   process, each with its own numbers. Every label set is bounded by construction (routes
//!   are the allowlist's prefixes, statuses and error kinds are finite): atomics, a slot per
//!   status for attempts, a read-mostly map of atomics for requests (a read lock and no
//!   allocation once a label set has been seen) and fixed-bucket histograms.
//! - **The library's series** (`gen_ai_client_operation_duration`,
//!   `http_client_request_duration`, `oai_resilience_*`, …): the stack's
//!   [`oai_resilience::observe::MetricsObserver`] records them through the
//!   `metrics` facade into a `metrics-exporter-prometheus` recorder, installed as the process's
//!   global recorder by the first gateway ([`library_metrics`]) and rendered after the
//!   gateway's own series. The exporter spells the names with `_` for `.`; its histograms have
//!   fixed buckets (seconds for durations, counts for resends and tokens). These series are
//!   the process's: several gateways in one process share them.
//!
//! The series are listed in `oai-gateway/README.md` (Metrics).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use oai_resilience::observe::MetricsObserver;

use crate::gateway::BodyBudget;
use oai_resilience::retry::{RetryBudget, TokenBudget};
use oai_resilience::{Error, Pacer};

/// Upper bounds (seconds) of the latency histograms' buckets.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Upper bounds of the library's count histograms (resends per call, tokens per response).
const COUNT_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0,
];

/// How often the library's recorder is kept (its histogram samples folded in), besides at
/// each render.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The handle of the process's `metrics` recorder for the library's metrics: a
/// `metrics-exporter-prometheus` recorder with fixed histogram buckets, installed as the
/// global recorder by the first call (which also describes the library's metrics and starts
/// a thread that runs the recorder's upkeep every 5 s, so that unscraped histogram samples do
/// not pile up). `None` if another global recorder was installed first (an embedding
/// program's): the library's metrics go there, and `/metrics` shows the gateway's own only.
pub fn library_metrics() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("resend_count".into()), COUNT_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("token.usage".into()), COUNT_BUCKETS)
                });
            let handle = match builder.and_then(PrometheusBuilder::install_recorder) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(error = %e, "the library's metrics are not on /metrics: another metrics recorder is installed");
                    return None;
                }
            };
            MetricsObserver::describe();
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("oai-gateway-metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no upkeep thread for the library's metrics (they are kept at each scrape)");
            }
            Some(handle)
        })
        .clone()
}

/// A histogram with fixed buckets (cumulative when rendered).
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&self.counts) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// The request counter, by its labels: the allowlist prefix the request matched (or the
/// gateway's own endpoint, or `-` for a refused path), then the status answered, then the
/// error kind (`none` for a success), then the upstream route that served it (`served_by`:
/// `primary`, `fallback-N`, `-` if not sent). Nested maps so that a request that finds its series
/// (all but the first of each label set) takes a read lock, allocates nothing and adds
/// with an atomic.
type RequestCounts = HashMap<String, HashMap<u16, HashMap<String, HashMap<String, AtomicU64>>>>;

/// The statuses an attempt can get, 100 to 599, and index 0 for none.
const STATUS_SLOTS: usize = 501;

fn status_slot(status: Option<u16>) -> usize {
    match status {
        Some(s @ 100..=599) => usize::from(s) - 99,
        _ => 0,
    }
}

/// The gateway's counters. Shared by every clone of a [`Gateway`](crate::Gateway).
#[derive(Debug)]
pub struct Metrics {
    requests: RwLock<RequestCounts>,
    requests_in_flight: AtomicI64,
    attempts: Box<[AtomicU64]>,
    retries: AtomicU64,
    rate_limit_429: AtomicU64,
    quota_429: AtomicU64,
    upstream_latency: Histogram,
    streams_in_flight: AtomicI64,
    streams: AtomicU64,
    stalls_first_byte: AtomicU64,
    stalls_idle: AtomicU64,
    budget: Option<MeteredBudget>,
    pacer: Pacer,
    bodies: BodyBudget,
    library: Option<PrometheusHandle>,
}

impl Metrics {
    /// Counters for a gateway whose stack paces with `pacer` and spends `budget` (if any),
    /// and that buffers JSON bodies within `bodies`.
    pub fn new(pacer: Pacer, budget: Option<MeteredBudget>, bodies: BodyBudget) -> Self {
        Metrics {
            requests: RwLock::new(HashMap::new()),
            requests_in_flight: AtomicI64::new(0),
            attempts: (0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            retries: AtomicU64::new(0),
            rate_limit_429: AtomicU64::new(0),
            quota_429: AtomicU64::new(0),
            upstream_latency: Histogram::new(LATENCY_BUCKETS),
            streams_in_flight: AtomicI64::new(0),
            streams: AtomicU64::new(0),
            stalls_first_byte: AtomicU64::new(0),
            stalls_idle: AtomicU64::new(0),
            budget,
            pacer,
            bodies,
            library: None,
        }
    }

    /// Renders `library` (the library's metrics, see [`library_metrics`]) after the
    /// gateway's own series.
    pub fn with_library(mut self, library: Option<PrometheusHandle>) -> Self {
        self.library = library;
        self
    }

    /// The bytes of JSON bodies buffered now, across connections (for tests).
    pub fn buffered_bytes(&self) -> usize {
        self.bodies.used()
    }

    /// One request answered.
    pub fn request(&self, route: &str, status: u16, error: &str, served_by: &str) {
        {
            let map = self.requests.read().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map
                .get(route)
                .and_then(|m| m.get(&status))
                .and_then(|m| m.get(error))
                .and_then(|m| m.get(served_by))
            {
                n.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let mut map = self.requests.write().unwrap_or_else(|e| e.into_inner());
        map.entry(route.to_owned())
            .or_default()
            .entry(status)
            .or_default()
            .entry(error.to_owned())
            .or_default()
            .entry(served_by.to_owned())
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The number of requests answered with these labels so far, whichever route served
    /// them (for tests).
    pub fn requests(&self, route: &str, status: u16, error: &str) -> u64 {
        let map = self.requests.read().unwrap_or_else(|e| e.into_inner());
        map.get(route)
            .and_then(|m| m.get(&status))
            .and_then(|m| m.get(error))
            .map_or(0, |m| m.values().map(|n| n.load(Ordering::Relaxed)).sum())
    }

    pub(crate) fn in_flight(&self, delta: i64) {
        self.requests_in_flight.fetch_add(delta, Ordering::Relaxed);
    }

    /// One attempt sent upstream: its number within its request (1 for the first), the
    /// status it got (`None`: no answer), the time to the response head.
    pub(crate) fn attempt(&self, number: u32, status: Option<u16>, latency: Duration) {
        self.attempts[status_slot(status)].fetch_add(1, Ordering::Relaxed);
        if number > 1 {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
        self.upstream_latency.observe(latency);
    }

    /// An upstream 429: a rate limit (`quota == false`) or an exhausted quota.
    pub(crate) fn too_many_requests(&self, quota: bool) {
        if quota {
            self.quota_429.fetch_add(1, Ordering::Relaxed);
        } else {
            self.rate_limit_429.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn stream_started(&self) {
        self.streams.fetch_add(1, Ordering::Relaxed);
        self.streams_in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stream_ended(&self) {
        self.streams_in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn stall(&self, first_byte: bool) {
        if first_byte {
            self.stalls_first_byte.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stalls_idle.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP oai_gateway_requests_total Requests answered, by route (allowlist prefix), status, error kind and the upstream route that served them (served_by: primary, fallback-N, - if not sent).\n# TYPE oai_gateway_requests_total counter"
        );
        let mut rows: Vec<(String, u16, String, String, u64)> = Vec::new();
        for (route, by_status) in self
            .requests
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            for (status, by_error) in by_status {
                for (error, by_route) in by_error {
                    for (served_by, n) in by_route {
                        rows.push((
                            route.clone(),
                            *status,
                            error.clone(),
                            served_by.clone(),
                            n.load(Ordering::Relaxed),
                        ));
                    }
                }
            }
        }
        rows.sort();
        for (route, status, error, served_by, n) in rows {
            let _ = writeln!(
                out,
                "oai_gateway_requests_total{{route=\"{}\",status=\"{status}\",error=\"{}\",served_by=\"{}\"}} {n}",
                escape(&route),
                escape(&error),
                escape(&served_by)
            );
        }
        gauge(
            &mut out,
            "oai_gateway_requests_in_flight",
            "Requests being handled (until their response head is sent).",
            self.requests_in_flight.load(Ordering::Relaxed) as f64,
        );
        let _ = writeln!(
            out,
            "# HELP oai_gateway_upstream_attempts_total Attempts sent upstream, by the status they got (none: no answer).\n# TYPE oai_gateway_upstream_attempts_total counter"
        );
        for (slot, n) in self.attempts.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            if slot == 0 {
                let _ = writeln!(
                    out,
                    "oai_gateway_upstream_attempts_total{{status=\"none\"}} {n}"
                );
            } else {
                let status = slot + 99;
                let _ = writeln!(
                    out,
                    "oai_gateway_upstream_attempts_total{{status=\"{status}\"}} {n}"
                );
            }
        }
        counter(
            &mut out,
            "oai_gateway_retries_total",
            "Attempts after the first of their request (retries sent).",
            self.retries.load(Ordering::Relaxed),
        );
        labelled_counter(
            &mut out,
            "oai_gateway_upstream_429_total",
            "Upstream 429 answers, by kind (rate_limit or quota).",
            "kind",
            &[
                ("rate_limit", self.rate_limit_429.load(Ordering::Relaxed)),
                ("quota", self.quota_429.load(Ordering::Relaxed)),
            ],
        );
        self.upstream_latency.render(
            &mut out,
            "oai_gateway_upstream_latency_seconds",
            "Time from sending an attempt to its response head.",
        );
        let p = self.pacer.metrics();
        let _ = writeln!(
            out,
            "# HELP oai_gateway_pacing_wait_seconds Time requests waited for a pacing slot (waits that were not granted at once; sum and count only: the pacer keeps totals).\n# TYPE oai_gateway_pacing_wait_seconds summary\noai_gateway_pacing_wait_seconds_sum {}\noai_gateway_pacing_wait_seconds_count {}",
            p.wait_time.as_secs_f64(),
            p.waits
        );
        counter(
            &mut out,
            "oai_gateway_pacing_granted_total",
            "Requests granted a pacing slot.",
            p.granted,
        );
        counter(
            &mut out,
            "oai_gateway_pacing_refused_total",
            "Requests the pacer failed locally (they could not be admitted in time).",
            p.paced_errors,
        );
        gauge(
            &mut out,
            "oai_gateway_pacing_queue",
            "Requests waiting for a pacing slot now.",
            p.queue_len as f64,
        );
        gauge(
            &mut out,
            "oai_gateway_pacing_keys",
            "Keys the in-process pacer tracks now.",
            p.keys as f64,
        );
        if let Some(b) = &self.budget {
            gauge(
                &mut out,
                "oai_gateway_retry_budget_balance",
                "Retry-budget tokens; retries are allowed above half the maximum.",
                b.budget.balance(),
            );
            gauge(
                &mut out,
                "oai_gateway_retry_budget_threshold",
                "The balance above which retries are allowed.",
                b.budget.threshold(),
            );
            counter(
                &mut out,
                "oai_gateway_retry_budget_refused_total",
                "Retries the budget refused.",
                b.refused.load(Ordering::Relaxed),
            );
        }
        gauge(
            &mut out,
            "oai_gateway_body_buffered_bytes",
            "Bytes of JSON request bodies buffered now, across connections.",
            self.bodies.used() as f64,
        );
        gauge(
            &mut out,
            "oai_gateway_body_buffered_bytes_limit",
            "The cap on them (--max-buffered-bytes).",
            self.bodies.cap() as f64,
        );
        counter(
            &mut out,
            "oai_gateway_body_budget_refused_total",
            "JSON bodies refused with 503 because the cap was reached.",
            self.bodies.refused(),
        );
        gauge(
            &mut out,
            "oai_gateway_streams_in_flight",
            "Event streams (text/event-stream answers) being relayed now.",
            self.streams_in_flight.load(Ordering::Relaxed) as f64,
        );
        counter(
            &mut out,
            "oai_gateway_streams_total",
            "Event streams relayed.",
            self.streams.load(Ordering::Relaxed),
        );
        labelled_counter(
            &mut out,
            "oai_gateway_stream_stalls_total",
            "Upstream bodies cut by the watchdog, by the bound exceeded.",
            "bound",
            &[
                ("first_byte", self.stalls_first_byte.load(Ordering::Relaxed)),
                ("idle", self.stalls_idle.load(Ordering::Relaxed)),
            ],
        );
        if let Some(library) = &self.library {
            out.push_str(&library.render());
        }
        out
    }
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

/// A counter with one label: a line per label value and its count.
fn labelled_counter(out: &mut String, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (value, n) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
    }
}

fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The gateway's retry budget: the library's [`TokenBudget`] (its default settings), kept by
/// the gateway so that `/metrics` can show its balance, and counting the retries it refuses.
#[derive(Debug, Clone)]
pub struct MeteredBudget {
    budget: TokenBudget,
    refused: Arc<AtomicU64>,
}

impl MeteredBudget {
    /// Wraps `budget`.
    pub fn new(budget: TokenBudget) -> Self {
        MeteredBudget {
            budget,
            refused: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl RetryBudget for MeteredBudget {
    fn on_request(&self) {
        self.budget.on_request();
    }

    fn on_success(&self) {
        self.budget.on_success();
    }

    fn on_failure(&self, err: &Error) {
        self.budget.on_failure(err);
    }

    fn try_retry(&self) -> bool {
        let ok = self.budget.try_retry();
        if !ok {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    fn refund(&self) {
        self.budget.refund();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::new(Pacer::default(), None, BodyBudget::new(100));
        m.request("/v1/models", 200, "none", "primary");
        m.request("/v1/models", 200, "none", "primary");
        m.request("/v1/models", 200, "none", "fallback-1");
        m.attempt(1, Some(200), Duration::from_millis(3));
        m.attempt(2, None, Duration::from_millis(30));
        let text = m.render();
        assert!(text.contains(
            "oai_gateway_requests_total{route=\"/v1/models\",status=\"200\",error=\"none\",served_by=\"primary\"} 2"
        ));
        assert!(text.contains(
            "oai_gateway_requests_total{route=\"/v1/models\",status=\"200\",error=\"none\",served_by=\"fallback-1\"} 1"
        ));
        assert_eq!(m.requests("/v1/models", 200, "none"), 3);
        assert!(text.contains("oai_gateway_upstream_attempts_total{status=\"none\"} 1"));
        assert!(text.contains("oai_gateway_retries_total 1"));
        assert!(text.contains("oai_gateway_upstream_latency_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("oai_gateway_upstream_latency_seconds_bucket{le=\"0.05\"} 2"));
        assert!(text.contains("oai_gateway_upstream_latency_seconds_count 2"));
        assert_eq!(escape("a\"b\\"), "a\\\"b\\\\");
    }
}
