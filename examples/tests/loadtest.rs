//! Tiny configurations of every `loadtest` scenario in virtual time: the accounting (every
//! call counted as ok or failed by kind, requests counted by the mock) and the JSON fields.
//! No timing assertions: the real figures come from the release run.

#[allow(dead_code)]
#[path = "../loadtest.rs"]
mod loadtest_example;

use std::time::Duration;

use loadtest_example::{
    cpu_line, parse_args, rounds_line, run, table, target_line, Config, Report, Scenario, HEADER,
};

fn tiny(scenario: Scenario, calls: usize, concurrency: usize) -> Config {
    let mut cfg = Config::new(scenario);
    cfg.calls = calls;
    cfg.concurrency = concurrency;
    cfg.sample = None;
    cfg
}

/// Every call is either ok or failed by some kind, for both clients; the JSON has the fields.
fn check_accounting(r: &Report) {
    for run in std::iter::once(&r.stack).chain(r.baseline.as_ref()) {
        assert_eq!(run.ok + run.failed(), run.calls, "{run:?}");
        assert!(run.requests_sent >= run.calls as u64 - run.failed() as u64);
        assert!(run.p50 <= run.p99);
    }
    let json = r.json();
    for field in [
        "ok",
        "failed",
        "requests_sent",
        "wall_s",
        "p50_ms",
        "p99_ms",
    ] {
        assert!(
            json.get(field).is_some_and(|v| v.is_number()),
            "{field}: {json}"
        );
        assert!(
            json["baseline"].get(field).is_some(),
            "baseline {field}: {json}"
        );
    }
    assert_eq!(json["scenario"], r.scenario.name());
    let text = table(r);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text
        .lines()
        .all(|l| l.starts_with(&format!("| {} |", r.scenario.name()))));
}

#[tokio::test(start_paused = true)]
async fn burst_paces_and_counts() {
    let r = run(&tiny(Scenario::Burst, 40, 20)).await.unwrap();
    check_accounting(&r);
    assert_eq!(r.stack.failed(), 0, "{}", table(&r));
    assert_eq!(r.minimum, Some(Duration::from_secs(1)));
    // The mock's count is the sent requests: every ok call is one 200 at least.
    assert!(r.stack.requests_sent >= 40);
}

#[tokio::test(start_paused = true)]
async fn flaky_retries_the_5xx() {
    let r = run(&tiny(Scenario::Flaky, 30, 5)).await.unwrap();
    check_accounting(&r);
    assert_eq!(r.stack.failed(), 0, "{}", table(&r));
    assert!(r.stack.requests_sent > 30, "{}", table(&r));
}

#[tokio::test(start_paused = true)]
async fn quota_fails_every_call_by_kind_with_one_request_each() {
    let r = run(&tiny(Scenario::Quota, 5, 5)).await.unwrap();
    check_accounting(&r);
    assert_eq!(r.stack.ok, 0);
    assert_eq!(
        r.stack.failed_by_kind,
        vec![("quota_exceeded".to_string(), 5)],
        "{}",
        table(&r)
    );
    assert_eq!(r.stack.requests_sent, 5);
    assert!(
        target_line(&r).contains("target met"),
        "{}",
        target_line(&r)
    );
    let json = r.json();
    assert_eq!(json["failed"], 5);
    assert_eq!(json["failed_by_kind"]["quota_exceeded"], 5);
}

#[tokio::test(start_paused = true)]
async fn outage_switches_off_and_calls_after_it_succeed() {
    let mut cfg = tiny(Scenario::Outage, 30, 10);
    cfg.outage = Duration::from_secs(1);
    cfg.arrival = Duration::from_millis(100);
    let r = run(&cfg).await.unwrap();
    check_accounting(&r);
    let (sent, during, after, after_ok) = r.stack.outage.unwrap();
    assert_eq!(during + after, 30);
    assert!(during >= 9 && after >= 19, "{during} {after}");
    assert_eq!(after_ok, after, "{}", table(&r));
    assert!(sent >= during as u64, "{sent} {during}");
    assert!(r.stack.failed() > 0, "{}", table(&r));
    assert!(r.json()["outage"]["calls_after"].is_number());
}

#[tokio::test(start_paused = true)]
async fn clean_compares_with_the_bare_client() {
    let r = run(&tiny(Scenario::Clean, 50, 10)).await.unwrap();
    check_accounting(&r);
    assert_eq!((r.stack.ok, r.baseline.as_ref().unwrap().ok), (50, 50));
    assert_eq!(r.stack.requests_sent, 50);
    assert_eq!(r.baseline.as_ref().unwrap().requests_sent, 50);
}

#[tokio::test(start_paused = true)]
async fn clean_rounds_report_each_clients_median() {
    let mut cfg = tiny(Scenario::Clean, 20, 5);
    cfg.rounds = 3;
    let r = run(&cfg).await.unwrap();
    check_accounting(&r);
    assert_eq!(r.rounds.len(), 3);
    assert!(r.rounds.iter().all(|(s, b)| *s > 0.0 && b.is_some()));
    // The table's runs are the medians of the rounds.
    let mut stack: Vec<f64> = r.rounds.iter().map(|(s, _)| *s).collect();
    let mut bare: Vec<f64> = r.rounds.iter().filter_map(|(_, b)| *b).collect();
    stack.sort_by(f64::total_cmp);
    bare.sort_by(f64::total_cmp);
    assert_eq!(r.stack.rps(), stack[1]);
    assert_eq!(r.baseline.as_ref().unwrap().rps(), bare[1]);
    let line = rounds_line(&r).unwrap();
    assert!(line.starts_with("clean rounds"), "{line}");
    assert_eq!(line.matches('(').count(), 4, "{line}");
    // Linux reports the process's CPU time: one figure per client over all rounds.
    if cfg!(target_os = "linux") {
        let (s, b) = r.cpu_per_call.unwrap();
        assert!(s >= 0.0 && b >= 0.0);
        assert!(cpu_line(&r).unwrap().contains("stack"));
    }
    // One round: no rounds line.
    let one = run(&tiny(Scenario::Clean, 20, 5)).await.unwrap();
    assert!(rounds_line(&one).is_none());
}

#[test]
fn arguments_parse_and_reject() {
    let args = |s: &str| parse_args(s.split_whitespace().map(String::from));
    let a = args("--scenario burst --n 10 --concurrency 3 --json --svg none").unwrap();
    assert_eq!(a.scenarios, vec![Scenario::Burst]);
    let cfg = a.config(Scenario::Burst);
    assert_eq!((cfg.calls, cfg.concurrency, cfg.baseline), (10, 3, true));
    assert!(cfg.mock_runtime);
    assert_eq!(cfg.rounds, 1);
    assert_eq!(a.config(Scenario::Clean).rounds, 5);
    assert!(a.json && a.svg.is_none());
    assert_eq!(args("").unwrap().scenarios.len(), 5);
    assert_eq!(args("--scenario all").unwrap().scenarios.len(), 5);
    let remote = args("--base-url http://127.0.0.1:9/ --api-key sk-x").unwrap();
    let cfg = remote.config(Scenario::Flaky);
    assert!(!cfg.baseline && cfg.base_url.is_some());
    assert!(
        args("--base-url http://x --baseline")
            .unwrap()
            .config(Scenario::Quota)
            .baseline
    );
    assert!(args("--scenario nope")
        .unwrap_err()
        .contains("unknown scenario"));
    assert!(args("--n").unwrap_err().contains("needs a value"));
    assert!(args("--n x").unwrap_err().contains("--n"));
    assert!(args("--frobnicate")
        .unwrap_err()
        .contains("unknown argument"));
    assert!(HEADER.starts_with("| scenario |"));
}

#[tokio::test(start_paused = true)]
async fn base_url_runs_the_stack_alone_and_counts_on_the_client() {
    // A server of our own stands for "any OpenAI-compatible server": its faults apply, the
    // baseline does not run, and the requests are counted on the client side.
    let server = oai_resilience::mock::MockServer::builder()
        .api_key("sk-proj-RemoteRemoteRemote0000")
        .quota_exhausted(true)
        .start()
        .await;
    let args = parse_args(
        [
            "--scenario",
            "flaky",
            "--n",
            "4",
            "--base-url",
            &server.url(),
            "--api-key",
            "sk-proj-RemoteRemoteRemote0000",
        ]
        .map(String::from),
    )
    .unwrap();
    let r = run(&args.config(Scenario::Flaky)).await.unwrap();
    assert!(r.baseline.is_none());
    assert!(r.cpu_per_call.is_none(), "no baseline, no comparison");
    assert_eq!(
        r.stack.failed_by_kind,
        vec![("quota_exceeded".to_string(), 4)]
    );
    assert_eq!(r.stack.requests_sent, 4);
    assert_eq!(server.counts().total, 4);
    assert!(r.json()["baseline"].is_null());
}
