//! The `priority` scenario: a batch lane and an interactive lane share one key's rate limit.
//!
//! The mock holds one bucket of 20 requests refilled 20 per second (answers after the
//! latency, 20 ms by default). A batch lane sends N calls (default 1,000) at concurrency C
//! (default 100); meanwhile an interactive lane starts one call every 200 ms, until the batch
//! is done. Both go through the whole stack ([`OpenAiLayer`]) over hyper-util.
//!
//! Two rows in the same run, each against a fresh mock, both with a cold window of one
//! request ([`PacerConfig::cold_window`]: the key's first request learns the bucket before
//! the batch goes; with the default, the first wave of 100 takes 80 429s whose pauses hold
//! every lane for up to 1.3 s, which alone puts the first interactive calls past 100 ms):
//!
//! - `stack-fifo` (the baseline): no priorities, so the pacer admits first come, first
//!   served: an interactive call waits behind the batch calls queued before it;
//! - `stack`: the batch calls carry [`Priority::LOW`], the interactive ones
//!   [`Priority::HIGH`]; the batch lane leaves 2 requests of the bucket to the interactive
//!   lane ([`PacerConfig::lane_reserves`]), so an interactive call finds one at once instead
//!   of waiting for the next refill, and has a share of half the slots
//!   ([`PacerConfig::lane_shares`]) so that it is never starved.
//!
//! Figures per row: the interactive calls' wait (a call's time less the mock's answer time:
//! what pacing and retries added), p50/p99/max; the batch lane's share of the bucket: the
//! batch calls served over what the bucket gave while the batch ran (20 at the start plus
//! 20/s until the last batch call was admitted); failed calls of each lane; requests the mock
//! received and its 429s.
//!
//! The goal (issue #23): the stack's interactive p99 wait ≤ 100 ms (one refill interval at
//! most), the batch lane ≥ 80 % of the bucket, 0 failed. The interactive lane's one call per
//! 200 ms is 5 of the bucket's 20 per second: the batch lane's share cannot pass
//! 1 − 5/20 = 0.75, so the figure is printed beside that ceiling and beside the share of the
//! slots the interactive lane left (`batch_share_of_left`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use oai_resilience::pace::{PaceLayer, PacerConfig, Priority};
use oai_resilience::stack::OpenAiLayer;
use oai_resilience::validate::ValidateBody;
use oai_resilience::{AuthLayer, BoxError};
use test_support::http_client;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::Layer;

use super::{api_base, one_call, quantile, Config, MockHost, Svc, BUCKET, CHAT, PATH};

/// The time between two interactive calls' starts.
const INTERACTIVE_EVERY: Duration = Duration::from_millis(200);
/// The bucket's refill per second.
const REFILL: f64 = 20.0;
/// The batch lane's share in the `stack` row.
const BATCH_SHARE: f64 = 0.5;
/// Requests in flight on the cold key before its first answer, in both rows
/// ([`PacerConfig::cold_window`]).
const COLD_WINDOW: u32 = 1;
/// The requests the batch lane leaves to the interactive lane in the `stack` row.
const INTERACTIVE_RESERVE: u32 = 2;
/// Interactive calls at most (a bound on the loop: 2,000 s of them).
const MAX_INTERACTIVE: usize = 10_000;
/// The goal: the stack's interactive p99 wait at most this.
const GOAL_P99: Duration = Duration::from_millis(100);
/// The goal: the batch lane's share of the bucket at least this.
const GOAL_SHARE: f64 = 0.8;

/// One row: a client's run of the scenario.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// `stack` (lanes) or `stack-fifo` (no priorities).
    pub(crate) client: &'static str,
    pub(crate) batch_calls: usize,
    pub(crate) batch_failed: usize,
    /// From the start to the last batch answer.
    pub(crate) batch_wall: Duration,
    pub(crate) interactive_failed: usize,
    /// The interactive calls' waits, sorted.
    pub(crate) waits: Vec<Duration>,
    /// Interactive calls answered while the batch ran (admitted from the same bucket).
    pub(crate) interactive_during: usize,
    pub(crate) requests_sent: u64,
    pub(crate) rate_limited: u64,
    /// The mock's answer time.
    pub(crate) latency: Duration,
}

impl Row {
    pub(crate) fn failed(&self) -> usize {
        self.batch_failed + self.interactive_failed
    }

    /// What the bucket gave while the batch ran: its capacity, plus the refill until the
    /// last batch call was admitted (its answer came a latency later).
    fn bucket_slots(&self) -> f64 {
        let admitting = self.batch_wall.saturating_sub(self.latency).as_secs_f64();
        BUCKET as f64 + REFILL * admitting
    }

    /// The batch lane's calls served over the bucket's slots.
    pub(crate) fn batch_share(&self) -> f64 {
        (self.batch_calls - self.batch_failed) as f64 / self.bucket_slots()
    }

    /// The batch lane's calls served over the slots the interactive lane left.
    pub(crate) fn batch_share_of_left(&self) -> f64 {
        let left = self.bucket_slots() - self.interactive_during as f64;
        (self.batch_calls - self.batch_failed) as f64 / left.max(1.0)
    }

    fn wait(&self, q: f64) -> Duration {
        quantile(&self.waits, q)
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        serde_json::json!({
            "scenario": "priority",
            "client": self.client,
            "failed": self.failed(),
            "interactive_p99_wait_ms": ms(self.wait(0.99)),
            "interactive_p50_wait_ms": ms(self.wait(0.50)),
            "interactive_max_wait_ms": ms(self.wait(1.0)),
            "batch_share": self.batch_share(),
            "batch_share_of_left": self.batch_share_of_left(),
            "batch_calls": self.batch_calls,
            "batch_failed": self.batch_failed,
            "batch_wall_s": self.batch_wall.as_secs_f64(),
            "interactive_calls": self.waits.len() + self.interactive_failed,
            "interactive_failed": self.interactive_failed,
            "requests_sent": self.requests_sent,
            "rate_limited": self.rate_limited,
            "latency_ms": ms(self.latency),
            "cold_window": COLD_WINDOW,
        })
    }
}

/// The stack over hyper-util against `base`; with `lanes`, the batch lane has its share.
fn stack(base: &str, key: &str, lanes: bool) -> Result<Svc, BoxError> {
    let client = http_client::<ValidateBody<Full<Bytes>>>();
    let mut pace = PacerConfig::default();
    // The bucket is known to be scarce: one probe learns it before the batch goes, in both
    // rows (without it, the cold wave of 100 calls takes 80 429s whose pauses hold the key,
    // every lane alike, for up to 1.3 s).
    pace.cold_window = Some(COLD_WINDOW);
    if lanes {
        pace.lane_shares = vec![(Priority::LOW, BATCH_SHARE)];
        pace.lane_reserves = vec![(Priority::HIGH, INTERACTIVE_RESERVE)];
    }
    Ok(BoxCloneService::new(
        OpenAiLayer::new()
            .base_url(api_base(base).parse()?)
            .auth(AuthLayer::from_key(key))
            .pace(PaceLayer::with_config(pace))
            .layer(client),
    ))
}

/// One chat call in `lane` (none: no extension): its wait and whether it succeeded.
async fn call(svc: Svc, lane: Option<Priority>, latency: Duration) -> (Duration, bool) {
    let Ok(mut req) = http::Request::post(PATH)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
    else {
        return (Duration::ZERO, false);
    };
    if let Some(lane) = lane {
        req.extensions_mut().insert(lane);
    }
    let began = Instant::now();
    let ok = one_call(svc, req).await.is_ok();
    (began.elapsed().saturating_sub(latency), ok)
}

async fn run_row(cfg: &Config, lanes: bool) -> Result<Row, BoxError> {
    let host = MockHost::start(cfg).await?;
    let svc = stack(&host.mock.url(), &cfg.api_key, lanes)?;
    let (batch_lane, interactive_lane) = if lanes {
        (Some(Priority::LOW), Some(Priority::HIGH))
    } else {
        (None, None)
    };
    let latency = cfg.latency;
    let gate = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let done = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let batch: Vec<_> = (0..cfg.calls)
        .map(|_| {
            let (svc, gate) = (svc.clone(), gate.clone());
            tokio::spawn(async move {
                let _slot = gate.acquire_owned().await.ok();
                call(svc, batch_lane, latency).await.1
            })
        })
        .collect();
    let interactive = {
        let (svc, done) = (svc.clone(), done.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(INTERACTIVE_EVERY);
            let mut calls = Vec::new();
            while calls.len() < MAX_INTERACTIVE {
                tick.tick().await;
                if done.load(Ordering::Relaxed) {
                    break;
                }
                let svc = svc.clone();
                calls.push(tokio::spawn(async move {
                    let (wait, ok) = call(svc, interactive_lane, latency).await;
                    (wait, ok, Instant::now())
                }));
            }
            calls
        })
    };
    let mut batch_failed = 0;
    for t in batch {
        if !t.await.unwrap_or(false) {
            batch_failed += 1;
        }
    }
    let batch_end = Instant::now();
    done.store(true, Ordering::Relaxed);
    let mut waits = Vec::new();
    let (mut interactive_failed, mut interactive_during) = (0, 0);
    for t in interactive.await? {
        match t.await {
            Ok((wait, true, answered)) => {
                waits.push(wait);
                if answered <= batch_end {
                    interactive_during += 1;
                }
            }
            _ => interactive_failed += 1,
        }
    }
    waits.sort();
    let counts = host.mock.counts();
    Ok(Row {
        client: if lanes { "stack" } else { "stack-fifo" },
        batch_calls: cfg.calls,
        batch_failed,
        batch_wall: batch_end - start,
        interactive_failed,
        waits,
        interactive_during,
        requests_sent: counts.total,
        rate_limited: counts.rate_limited,
        latency,
    })
}

/// Runs the baseline (`stack-fifo`), then the stack with lanes.
pub(crate) async fn run(cfg: &Config) -> Result<Vec<Row>, BoxError> {
    Ok(vec![run_row(cfg, false).await?, run_row(cfg, true).await?])
}

/// The rows as table lines.
pub(crate) fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "priority: one key, bucket of 20 refilled 20/s; batch lane N calls at C, interactive \
         lane 1 call per 200 ms\n\
         client      | batch ok/failed | batch wall | batch share (of left) | interactive n/failed | wait p50 / p99 / max (ms) | requests (429)",
    );
    for r in rows {
        out.push_str(&format!(
            "\n{:<11} | {:>5}/{:<9} | {:>8.2} s | {:>5.3} ({:.3})         | {:>9}/{:<10} | {:>6.1} / {:>6.1} / {:>6.1}    | {} ({})",
            r.client,
            r.batch_calls - r.batch_failed,
            r.batch_failed,
            r.batch_wall.as_secs_f64(),
            r.batch_share(),
            r.batch_share_of_left(),
            r.waits.len() + r.interactive_failed,
            r.interactive_failed,
            r.wait(0.5).as_secs_f64() * 1e3,
            r.wait(0.99).as_secs_f64() * 1e3,
            r.wait(1.0).as_secs_f64() * 1e3,
            r.requests_sent,
            r.rate_limited,
        ));
    }
    out
}

/// The goal line: the stack's figures against the goal, the baseline's beside them.
pub(crate) fn target_line(rows: &[Row]) -> String {
    let Some(s) = rows.iter().find(|r| r.client == "stack") else {
        return "priority: no stack row".into();
    };
    let p99 = s.wait(0.99);
    let wait_met = p99 <= GOAL_P99 && s.failed() == 0;
    let share_met = s.batch_share() >= GOAL_SHARE;
    let baseline = rows
        .iter()
        .find(|r| r.client != "stack")
        .map_or(String::new(), |b| {
            format!(
                "; baseline {}: p99 {:.1} ms, batch share {:.3}, {} failed",
                b.client,
                b.wait(0.99).as_secs_f64() * 1e3,
                b.batch_share(),
                b.failed()
            )
        });
    format!(
        "priority (stack): interactive p99 wait {:.1} ms (goal <= 100), {} failed: {}; batch \
         share {:.3} of the bucket (goal >= {GOAL_SHARE}; at most {:.2} with 5 interactive \
         calls/s on 20/s): {}, {:.3} of the slots the interactive lane left{baseline}",
        p99.as_secs_f64() * 1e3,
        s.failed(),
        if wait_met { "met" } else { "MISSED" },
        s.batch_share(),
        1.0 - (1.0 / INTERACTIVE_EVERY.as_secs_f64()) / REFILL,
        if share_met { "met" } else { "MISSED" },
        s.batch_share_of_left(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(client: &'static str, waits_ms: &[u64], interactive_failed: usize) -> Row {
        Row {
            client,
            batch_calls: 1000,
            batch_failed: 0,
            // 20 + 20/s × 65 s = 1,320 slots.
            batch_wall: Duration::from_millis(65_020),
            interactive_failed,
            waits: waits_ms.iter().map(|&m| Duration::from_millis(m)).collect(),
            interactive_during: 320,
            requests_sent: 1320,
            rate_limited: 0,
            latency: Duration::from_millis(20),
        }
    }

    #[test]
    fn shares_are_of_the_bucket_and_of_what_the_interactive_lane_left() {
        let r = row("stack", &[1, 2, 3], 0);
        assert!((r.batch_share() - 1000.0 / 1320.0).abs() < 1e-9);
        assert!((r.batch_share_of_left() - 1.0).abs() < 1e-9);
        let v = r.json();
        for field in ["failed", "interactive_p99_wait_ms", "batch_share"] {
            assert!(v.get(field).is_some(), "{field}");
        }
        assert_eq!(v["client"], "stack");
        assert_eq!(v["interactive_p99_wait_ms"], 3.0);
    }

    #[test]
    fn the_target_line_judges_the_stack_row() {
        let fast = row("stack", &[5; 100], 0);
        let slow = row("stack-fifo", &[5_000; 100], 0);
        let line = target_line(&[slow.clone(), fast]);
        assert!(
            line.contains("wait 5.0 ms (goal <= 100), 0 failed: met"),
            "{line}"
        );
        assert!(
            line.contains("baseline stack-fifo: p99 5000.0 ms"),
            "{line}"
        );
        // A failed interactive call misses the goal, however fast the others were.
        let failing = row("stack", &[5; 100], 1);
        assert!(target_line(&[failing]).contains("1 failed: MISSED"));
        assert_eq!(target_line(&[slow]), "priority: no stack row");
        assert!(table(&[row("stack", &[], 0)]).contains("stack"));
    }
}
