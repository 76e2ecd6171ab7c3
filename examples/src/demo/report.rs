//! The demo's final report: a summary table and the one-line errors, all computed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::{Summary, Via};

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.2} s")
    } else {
        format!("{s:.1} s")
    }
}

fn percent(x: f64) -> String {
    let p = x * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{p:.0} %")
    } else {
        format!("{p:.1} %")
    }
}

/// A two-column table: label, number, and an optional note.
#[derive(Default)]
struct Table {
    rows: Vec<(String, String, String)>,
}

impl Table {
    fn row(&mut self, label: impl Into<String>, value: impl ToString, note: impl Into<String>) {
        self.rows
            .push((label.into(), value.to_string(), note.into()));
    }

    fn render(&self, out: &mut String) {
        let lw = self
            .rows
            .iter()
            .map(|r| r.0.chars().count())
            .max()
            .unwrap_or(0);
        let vw = self
            .rows
            .iter()
            .map(|r| r.1.chars().count())
            .max()
            .unwrap_or(0);
        for (label, value, note) in &self.rows {
            let line = format!("  {label:<lw$}  {value:>vw$}  {note}");
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
}

fn status_label(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "bad request",
        401 => "unauthorized",
        404 => "not found",
        429 => "too many requests",
        500 => "internal server error",
        502 => "bad gateway",
        503 => "service unavailable",
        504 => "gateway timeout",
        _ => "",
    }
}

/// The final report of a run: what the demo binary prints and `docs/demo-output.txt` holds.
pub fn render(s: &Summary) -> String {
    let c = &s.config;
    let calls = s.outcomes.len();
    let failures = s.failures();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "oai-resilience demo: {calls} calls against {} in {}",
        s.target,
        secs(s.elapsed)
    );
    if s.server.is_some() {
        let _ = writeln!(
            out,
            "faults: a burst of {} calls in flight against {} requests/s enforced (the headers say {}/min), \
             {} random 5xx, {} ms latency, one project with its quota exhausted",
            c.concurrency.min(calls),
            c.rate_per_sec,
            c.rate_per_sec * 60,
            percent(c.flaky),
            c.latency.as_millis(),
        );
    } else {
        let _ = writeln!(
            out,
            "planted faults: a missing parameter and a key pasted with quotes (both refused locally)"
        );
    }
    out.push('\n');

    let mut t = Table::default();
    t.row(
        "calls",
        calls,
        format!(
            "({} through the tower stack, {} through #[openai_call])",
            s.calls_via(Via::Stack),
            s.calls_via(Via::Macro)
        ),
    );
    t.row(
        "  succeeded",
        s.succeeded(),
        format!("({} of them after retries)", s.succeeded_after_retries()),
    );
    t.row("  could not succeed", failures.len(), "(listed below)");
    let attempts = s.attempts();
    t.row(
        "requests sent",
        attempts,
        format!(
            "({:.2} per call; every attempt of every call)",
            attempts as f64 / calls.max(1) as f64
        ),
    );
    t.row("  retries", s.retries(), "(attempts after the first)");
    t.row(
        "rejected locally",
        s.rejected_locally(),
        "(bad parameter or key: nothing sent)",
    );
    let average = if s.pacing.waits == 0 {
        Duration::ZERO
    } else {
        s.pacing.wait_time / u32::try_from(s.pacing.waits).unwrap_or(u32::MAX)
    };
    t.row(
        "pacing waits",
        s.pacing.waits,
        format!(
            "({} on average, queue up to {} calls)",
            secs(average),
            s.max_queue
        ),
    );
    t.row(
        "  429s the pacer learned from",
        s.pacing.rate_limited,
        "(each pauses the key for the server's hint)",
    );
    t.render(&mut out);
    out.push('\n');

    if let (Some(server), Some(billing)) = (&s.server, &s.billing_server) {
        let mut by_status: BTreeMap<u16, u64> = BTreeMap::new();
        for counts in [server, billing] {
            for (status, n) in &counts.by_status {
                *by_status.entry(*status).or_default() += n;
            }
        }
        let answered: u64 = by_status.values().sum();
        let mut t = Table::default();
        t.row(
            "the servers answered",
            answered,
            format!("(of {} requests received)", server.total + billing.total),
        );
        // Whether any call ended on a transient error: if none did, every one was retried.
        let gave_up_transient = failures.iter().any(|f| f.error.is_retryable());
        let retried = if gave_up_transient {
            ""
        } else {
            ", every one retried"
        };
        for (status, n) in &by_status {
            let note = match status {
                429 => {
                    let quota = server.quota_exceeded + billing.quota_exceeded;
                    let rate = server.rate_limited + billing.rate_limited;
                    format!("({rate} rate limit{retried}; {quota} insufficient quota)")
                }
                500..=599 => format!("(random server errors{retried})"),
                _ => String::new(),
            };
            t.row(format!("  {status} {}", status_label(*status)), n, note);
        }
        t.render(&mut out);
        out.push('\n');
    }

    if failures.is_empty() {
        let _ = writeln!(out, "Every call succeeded.");
    } else {
        let _ = writeln!(
            out,
            "Calls that could not succeed ({}), each as its one-line error with the hint:",
            failures.len()
        );
        for f in &failures {
            let _ = writeln!(
                out,
                "\n  call #{} ({}, {}):\n    {}",
                f.call,
                f.kind.describe(),
                f.kind.via(),
                f.error
            );
        }
    }
    out
}
