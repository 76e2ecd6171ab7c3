//! Runs the `loadtest` example's logic in virtual time and checks the targets.

#[allow(dead_code)]
#[path = "../loadtest.rs"]
mod loadtest_example;

use loadtest_example::{run, summary, Limit, Options};

fn options(limit: Limit, pace: bool) -> Options {
    Options {
        limit,
        pace,
        progress: false,
        ..Options::default()
    }
}

#[tokio::test(start_paused = true)]
async fn paced_stack_meets_the_targets_on_the_small_bucket() {
    let report = run(&options(Limit::Small, true)).await.unwrap();
    let text = summary(&report);
    println!("{text}");
    assert!(report.meets_targets(), "{text}");
    assert!(text.ends_with("targets: met"));
    assert!(report.pace.unwrap().waits > 250);
}

#[tokio::test(start_paused = true)]
async fn paced_stack_meets_the_targets_on_the_quantized_limit() {
    let report = run(&options(Limit::Quantized, true)).await.unwrap();
    let text = summary(&report);
    println!("{text}");
    assert!(report.meets_targets(), "{text}");
}

#[tokio::test(start_paused = true)]
async fn the_baseline_without_pacing_does_not() {
    // Retry alone: 50 concurrent calls against 20 slots a second collect 429s and retry
    // into more of them.
    let report = run(&options(Limit::Small, false)).await.unwrap();
    let text = summary(&report);
    println!("{text}");
    assert!(!report.meets_targets(), "{text}");
    assert!(report.rate_limited > 50, "{text}");
    assert!(report.pace.is_none());
}
