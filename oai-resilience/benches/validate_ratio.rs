//! The validation goal as a ratio measured in alternating rounds: each round times a batch of
//! `IgnoredAny` passes and then a batch of validations of the same body, and the ratio is
//! taken per round, so that a slower stretch of a shared machine slows both sides of a ratio
//! instead of one side of a comparison (criterion measures one function after the other; its
//! absolute figures moved by ±20 % between runs on the 2-core dev machine).
//!
//! Prints, per body, the median time per pass of each side, the median and spread of the
//! per-round ratios, and the ratio of the two sides' fastest rounds (the machine at its
//! quietest). Goal: `validate` at most 2x `ignored_any`. Run:
//! `cargo bench -p oai-resilience --bench validate_ratio` (201 rounds of ~2 ms batches;
//! `RATIO_ROUNDS` and `RATIO_BATCH_MS` change that).
//!
//! For a profiler (callgrind counts instructions, which the machine's noise does not move):
//! `PROFILE_SIDE=floor|validate PROFILE_CALLS=20000` runs only that side, that many times, on
//! the first body the filter selects; `RATIO_BODY=FILE` adds a body of your own (named `file`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use oai_resilience::validate::{self, Endpoint};
use serde::de::IgnoredAny;

mod bodies;
use bodies::{chat_body, chat_body_role_first};

/// Rounds and batch length, unless `RATIO_ROUNDS` and `RATIO_BATCH_MS` say otherwise.
const ROUNDS: usize = 201;
const BATCH_MS: u64 = 2;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Time per call of `f`, over a batch (about `BATCH_MS` of the floor).
fn per_call(batch: usize, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..batch {
        f();
    }
    start.elapsed() / batch as u32
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects bodies by name.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let mut bodies = vec![
        ("chat_1KB".to_string(), chat_body(1, 150)),
        ("chat_1KB_role_first".to_string(), chat_body_role_first()),
        ("chat_100KB".to_string(), chat_body(32, 1550)),
    ];
    // `RATIO_BODY=FILE`: a chat-completions body of your own, named `file`.
    if let Ok(file) = std::env::var("RATIO_BODY") {
        bodies.insert(
            0,
            ("file".to_string(), std::fs::read(file).expect("RATIO_BODY")),
        );
    }
    for (name, body) in bodies {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        assert!(validate::check(Endpoint::ChatCompletions, &body).is_valid());
        let floor = || {
            serde_json::from_slice::<IgnoredAny>(black_box(&body)).unwrap();
        };
        let check = || {
            black_box(validate::check(Endpoint::ChatCompletions, black_box(&body)));
        };
        if let Ok(side) = std::env::var("PROFILE_SIDE") {
            let calls: usize = env_or("PROFILE_CALLS", 20_000);
            for _ in 0..calls {
                if side == "floor" {
                    floor()
                } else {
                    check()
                }
            }
            return;
        }
        // Batches of about `batch_ms` of the floor (short: the two sides of a ratio run close
        // together in time); warm-up of one batch each.
        let rounds: usize = env_or("RATIO_ROUNDS", ROUNDS).max(1);
        let batch_ms: u64 = env_or("RATIO_BATCH_MS", BATCH_MS).max(1);
        let probe = per_call(1000, floor);
        let batch =
            (Duration::from_millis(batch_ms).as_nanos() / probe.as_nanos().max(1)).max(10) as usize;
        per_call(batch, floor);
        per_call(batch, check);
        let (mut a, mut b, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            // Alternate which side goes first.
            let (fa, fb) = if round % 2 == 0 {
                let fa = per_call(batch, floor);
                (fa, per_call(batch, check))
            } else {
                let fb = per_call(batch, check);
                (per_call(batch, floor), fb)
            };
            let (fa, fb) = (fa.as_secs_f64() * 1e6, fb.as_secs_f64() * 1e6);
            a.push(fa);
            b.push(fb);
            ratios.push(fb / fa);
        }
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        // The fastest round of each side: the machine at its quietest for both.
        let best = min(&b) / min(&a);
        println!(
            "{name} ({} bytes): ignored_any {:.3} µs, validate {:.3} µs; ratio median {:.2}x \
             (rounds: min {:.2}, p25 {:.2}, p75 {:.2}, max {:.2}; {rounds} rounds of {batch}); \
             fastest rounds {best:.2}x",
            body.len(),
            median(a),
            median(b),
            median(ratios),
            sorted[0],
            sorted[rounds / 4],
            sorted[3 * rounds / 4],
            sorted[rounds - 1],
        );
    }
}
