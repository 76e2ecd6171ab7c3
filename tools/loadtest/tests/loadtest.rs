//! Tiny configurations of every `loadtest` scenario in virtual time: the accounting (every
//! call counted as ok or failed by kind, requests counted by the mock), the JSON fields and
//! the theoretical minimum. The only timing assertions are lower bounds (no run beats the
//! minimum, a stretched stream lasts its duration); the real figures come from the release
//! run.

#[allow(dead_code)]
#[path = "../src/main.rs"]
mod loadtest_example;

use std::time::Duration;

use loadtest_example::{
    api_base, cpu_line, parse_args, rounds_line, run, table, target_line, ClientKind, Config,
    Report, Scenario, Which, HEADER, USAGE,
};

fn tiny(scenario: Scenario, calls: usize, concurrency: usize) -> Config {
    let mut cfg = Config::new(scenario);
    cfg.calls = calls;
    cfg.concurrency = concurrency;
    cfg.sample = None;
    cfg
}

/// Runs `cfg` and checks its accounting ([`check_accounting`]).
async fn run_checked(cfg: &Config) -> Report {
    let r = run(cfg).await.unwrap();
    check_accounting(&r);
    r
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
        "minimum_s",
    ] {
        if field == "minimum_s" && r.minimum.is_none() {
            assert!(json[field].is_null() && json["baseline"][field].is_null());
            continue;
        }
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
    let r = run_checked(&tiny(Scenario::Burst, 40, 20)).await;
    assert_eq!(r.stack.failed(), 0, "{}", table(&r));
    // 20 more requests than the bucket holds at 20/s, then the last call's 20 ms latency.
    assert_eq!(r.minimum, Some(Duration::from_millis(1020)));
    assert!(r.stack.wall >= Duration::from_millis(1020), "{}", table(&r));
    // The mock's count is the sent requests: every ok call is one 200 at least.
    assert!(r.stack.requests_sent >= 40);
}

#[test]
fn the_burst_minimum_includes_the_last_calls_latency() {
    let burst = |calls, concurrency, latency_ms| {
        let mut cfg = tiny(Scenario::Burst, calls, concurrency);
        cfg.latency = Duration::from_millis(latency_ms);
        cfg.minimum().unwrap()
    };
    // The burst at 2 s: (300 - 20) / 20 s + 2 s.
    assert_eq!(burst(300, 50, 2000), Duration::from_secs(16));
    assert_eq!(burst(300, 50, 20), Duration::from_millis(14_020));
    assert_eq!(burst(300, 50, 0), Duration::from_secs(14));
    // Fewer calls than the bucket: one answer time.
    assert_eq!(burst(10, 10, 500), Duration::from_millis(500));
    // One slot: 40 calls of 100 ms one after the other outlast the bucket.
    assert_eq!(burst(40, 1, 100), Duration::from_secs(4));
    // No minimum against another server.
    let mut remote = tiny(Scenario::Burst, 300, 50);
    remote.base_url = Some("http://127.0.0.1:9".into());
    assert_eq!(remote.minimum(), None);
    assert_eq!(tiny(Scenario::Flaky, 300, 20).minimum(), None);
}

#[tokio::test(start_paused = true)]
async fn latency_reports_the_ideal_and_one_request_per_call() {
    let mut cfg = tiny(Scenario::Latency, 20, 5);
    cfg.latency = Duration::from_millis(50);
    let r = run_checked(&cfg).await;
    // ⌈20/5⌉ rounds of 50 ms.
    let ideal = Duration::from_millis(200);
    assert_eq!(r.minimum, Some(ideal));
    let json = r.json();
    assert_eq!(json["minimum_s"], 0.2);
    assert_eq!(json["baseline"]["minimum_s"], 0.2);
    assert_eq!(json["latency_ms"], 50.0);
    assert!(json["wall_over_minimum"].as_f64().unwrap() >= 1.0, "{json}");
    for run in [&r.stack, r.baseline.as_ref().unwrap()] {
        assert_eq!((run.ok, run.requests_sent), (20, 20), "{}", table(&r));
        assert!(run.wall >= ideal && run.p50 >= cfg.latency, "{}", table(&r));
    }
    let line = target_line(&r);
    assert!(line.starts_with("latency: target "), "{line}");
    for part in [
        "wall <= 1.05x ideal",
        "p99 <= 1.10x latency",
        "requests = calls (20/20",
    ] {
        assert!(line.contains(part), "{line}");
    }
    assert!(
        table(&r).contains("| latency | stack | 20 | 20 | 0 |"),
        "{}",
        table(&r)
    );
}

#[tokio::test(start_paused = true)]
async fn stream_long_reads_streams_that_last_their_duration() {
    let mut cfg = tiny(Scenario::StreamLong, 6, 3);
    cfg.stream = Duration::from_millis(80);
    cfg.latency = Duration::from_millis(20);
    let r = run_checked(&cfg).await;
    // ⌈6/3⌉ rounds of 20 ms to the headers and an 80 ms stream.
    assert_eq!(r.minimum, Some(Duration::from_millis(200)));
    assert_eq!(r.json()["stream_ms"], 80.0);
    for run in [&r.stack, r.baseline.as_ref().unwrap()] {
        assert_eq!((run.ok, run.requests_sent), (6, 6), "{}", table(&r));
        // Every call read its stream to the end, after the latency.
        assert!(run.p50 >= Duration::from_millis(100), "{}", table(&r));
    }
    let line = target_line(&r);
    assert!(line.starts_with("stream-long: target "), "{line}");
    assert!(line.contains("wall <= 1.05x ideal"), "{line}");
}

#[tokio::test(start_paused = true)]
async fn flaky_retries_the_5xx() {
    let r = run_checked(&tiny(Scenario::Flaky, 30, 5)).await;
    assert_eq!(r.stack.failed(), 0, "{}", table(&r));
    assert!(r.stack.requests_sent > 30, "{}", table(&r));
}

#[tokio::test(start_paused = true)]
async fn quota_fails_every_call_by_kind_with_one_request_each() {
    let r = run_checked(&tiny(Scenario::Quota, 5, 5)).await;
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
    let r = run_checked(&cfg).await;
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
    let r = run_checked(&tiny(Scenario::Clean, 50, 10)).await;
    assert_eq!((r.stack.ok, r.baseline.as_ref().unwrap().ok), (50, 50));
    assert_eq!(r.stack.requests_sent, 50);
    assert_eq!(r.baseline.as_ref().unwrap().requests_sent, 50);
}

#[tokio::test(start_paused = true)]
async fn clean_rounds_report_each_clients_median() {
    let mut cfg = tiny(Scenario::Clean, 20, 5);
    cfg.rounds = 3;
    let r = run_checked(&cfg).await;
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
    assert!(!args("--scenario all")
        .unwrap()
        .scenarios
        .contains(&Scenario::Latency));
    // No plot unless asked.
    assert!(args("").unwrap().svg.is_none());
    assert_eq!(
        args("--svg target/burst.svg").unwrap().svg.as_deref(),
        Some("target/burst.svg")
    );
    assert!(args("--help").unwrap().help && args("-h").unwrap().help);
    assert!(!args("").unwrap().help);
    assert!(USAGE.starts_with("Usage: loadtest") && USAGE.contains("--latency-ms"));
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

#[test]
fn latency_and_stream_flags_parse_and_apply() {
    let args = |s: &str| parse_args(s.split_whitespace().map(String::from));
    // The defaults: 2 s for latency, 10 s streams for stream-long, 20 ms for burst.
    let a = args("--scenario latency,stream-long").unwrap();
    assert_eq!(a.scenarios, vec![Scenario::Latency, Scenario::StreamLong]);
    let latency = a.config(Scenario::Latency);
    assert_eq!(
        (latency.calls, latency.concurrency, latency.latency),
        (200, 50, Duration::from_secs(2))
    );
    assert_eq!(latency.minimum(), Some(Duration::from_secs(8)));
    let stream = a.config(Scenario::StreamLong);
    assert_eq!((stream.calls, stream.concurrency), (100, 50));
    assert_eq!(
        (stream.latency, stream.stream),
        (Duration::ZERO, Duration::from_secs(10))
    );
    assert_eq!(stream.minimum(), Some(Duration::from_secs(20)));
    assert_eq!(a.config(Scenario::Burst).latency, Duration::from_millis(20));
    // --latency-ms reaches every scenario; --stream-ms only the streaming one.
    let a = args("--scenario burst,latency --latency-ms 2000 --stream-ms 50").unwrap();
    let burst = a.config(Scenario::Burst);
    assert_eq!(burst.latency, Duration::from_secs(2));
    assert_eq!(burst.stream, Duration::ZERO);
    assert_eq!(burst.minimum(), Some(Duration::from_secs(16)));
    assert_eq!(a.config(Scenario::Clean).latency, Duration::from_secs(2));
    let stream = a.config(Scenario::StreamLong);
    assert_eq!(stream.stream, Duration::from_millis(50));
    assert_eq!(
        args("--scenario all,latency").unwrap().scenarios.len(),
        6,
        "all and a name"
    );
    assert!(args("--latency-ms").unwrap_err().contains("needs a value"));
    assert!(args("--latency-ms 2s")
        .unwrap_err()
        .contains("--latency-ms"));
    assert!(args("--stream-ms -1").unwrap_err().contains("--stream-ms"));
    assert!(args("--scenario latency,nope")
        .unwrap_err()
        .contains("unknown scenario"));
}

#[test]
fn the_base_url_loses_one_trailing_v1() {
    for url in [
        "http://127.0.0.1:8000",
        "http://127.0.0.1:8000/",
        "http://127.0.0.1:8000/v1",
        "http://127.0.0.1:8000/v1/",
    ] {
        assert_eq!(api_base(url), "http://127.0.0.1:8000", "{url}");
    }
    assert_eq!(api_base("https://host/openai/v1"), "https://host/openai");
    assert_eq!(api_base("https://host/v1/v1"), "https://host/v1");
    assert_eq!(api_base("https://host/v10"), "https://host/v10");
    assert_eq!(api_base("http://v1"), "http://v1");
}

/// `--base-url http://host:port/v1` as OpenAI's SDKs spell it, and without `/v1`: the same
/// calls reach `/v1/chat/completions`, for the stack and the baseline.
#[tokio::test(start_paused = true)]
async fn base_url_with_or_without_v1_gives_the_same_run() {
    const KEY: &str = "sk-proj-BaseBaseBaseBaseBase00000000";
    let mut outcomes = Vec::new();
    for suffix in ["", "/v1", "/v1/", "/"] {
        let server = oai_resilience::mock::MockServer::builder()
            .api_key(KEY)
            .start()
            .await;
        let url = format!("{}{suffix}", server.url());
        let args = parse_args(
            [
                "--scenario",
                "latency",
                "--n",
                "6",
                "--concurrency",
                "3",
                "--base-url",
                &url,
                "--api-key",
                KEY,
                "--baseline",
            ]
            .map(String::from),
        )
        .unwrap();
        let r = run(&args.config(Scenario::Latency)).await.unwrap();
        let b = r.baseline.as_ref().expect("--baseline runs it");
        assert_eq!((r.stack.ok, b.ok), (6, 6), "{url}: {}", table(&r));
        let paths: Vec<String> = server.requests().into_iter().map(|q| q.path).collect();
        assert_eq!(paths.len(), 12, "{url}");
        assert!(
            paths.iter().all(|p| p == "/v1/chat/completions"),
            "{url}: {paths:?}"
        );
        assert_eq!(server.counts().not_found, 0);
        outcomes.push((
            r.stack.ok,
            r.stack.failed_by_kind.clone(),
            r.stack.requests_sent,
            b.ok,
            b.failed_by_kind.clone(),
            b.requests_sent,
        ));
    }
    assert!(outcomes.windows(2).all(|w| w[0] == w[1]), "{outcomes:?}");
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

#[test]
fn the_client_flag_parses_and_reaches_the_config() {
    let args = |s: &str| parse_args(s.split_whitespace().map(String::from));
    // hyper by default, with the rows named as before.
    let a = args("--scenario burst").unwrap();
    assert_eq!(a.client, ClientKind::Hyper);
    assert_eq!(a.config(Scenario::Burst).client, ClientKind::Hyper);
    assert_eq!(Config::new(Scenario::Flaky).client, ClientKind::Hyper);
    for (name, client) in [
        ("hyper", ClientKind::Hyper),
        ("reqwest", ClientKind::Reqwest),
        ("async-openai", ClientKind::AsyncOpenAi),
    ] {
        let a = args(&format!("--scenario burst,quota --client {name} --n 7")).unwrap();
        assert_eq!(a.client, client);
        assert_eq!(client.name(), name);
        for sc in [Scenario::Burst, Scenario::Quota] {
            let cfg = a.config(sc);
            assert_eq!((cfg.client, cfg.calls, cfg.baseline), (client, 7, true));
        }
    }
    assert!(args("--client curl")
        .unwrap_err()
        .contains("unknown client curl"));
    assert!(args("--client").unwrap_err().contains("needs a value"));
    assert!(args("--frobnicate").unwrap_err().contains("--client"));
    assert!(USAGE.contains("--client hyper|reqwest|async-openai"));
    // The rows' names.
    let (hyper, reqwest, openai) = (
        ClientKind::Hyper,
        ClientKind::Reqwest,
        ClientKind::AsyncOpenAi,
    );
    for (client, which, label) in [
        (hyper, Which::Baseline, "baseline"),
        (reqwest, Which::Stack, "stack (reqwest)"),
        (reqwest, Which::Baseline, "baseline (reqwest-retry)"),
        (openai, Which::Stack, "stack (async-openai)"),
        (openai, Which::Baseline, "baseline (async-openai retry)"),
        (openai, Which::Bare, "bare (async-openai)"),
    ] {
        assert_eq!(client.label(which), label);
    }
}

fn tiny_through(
    client: ClientKind,
    scenario: Scenario,
    calls: usize,
    concurrency: usize,
) -> Config {
    let mut cfg = tiny(scenario, calls, concurrency);
    cfg.client = client;
    cfg.latency = Duration::from_millis(2);
    cfg
}

/// Each client, over loopback against the mock: the stack and the client's own default both
/// run and are named for the client; through 5xx at 20 % the stack loses no call, and on an
/// exhausted quota it sends one request per call.
#[tokio::test(start_paused = true)]
async fn every_client_runs_flaky_and_quota_with_its_baseline() {
    for client in ClientKind::EVERY {
        let r = run_checked(&tiny_through(client, Scenario::Flaky, 30, 5)).await;
        let b = r.baseline.as_ref().unwrap();
        let text = table(&r);
        assert!(
            text.contains(&format!("| flaky | {} | 30 |", client.label(Which::Stack))),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "| flaky | {} | 30 |",
                client.label(Which::Baseline)
            )),
            "{text}"
        );
        assert_eq!(r.stack.failed(), 0, "{text}");
        assert!(r.stack.requests_sent > 30, "the 5xx were retried: {text}");
        assert!(b.requests_sent >= 30, "{text}");
        let json = r.json();
        assert_eq!(json["client"], client.label(Which::Stack));
        assert_eq!(json["baseline"]["client"], client.label(Which::Baseline));
        assert_eq!(json["http_client"], client.name());
        assert_eq!(json["failed"], 0);
        let line = target_line(&r);
        assert!(line.contains("target met"), "{line}");

        let r = run_checked(&tiny_through(client, Scenario::Quota, 4, 4)).await;
        assert_eq!(
            r.stack.failed_by_kind,
            vec![("quota_exceeded".to_string(), 4)],
            "{}",
            table(&r)
        );
        assert_eq!(r.stack.requests_sent, 4, "{}", table(&r));
        let b = r.baseline.as_ref().unwrap();
        assert_eq!(b.failed(), 4, "{}", table(&r));
    }
}

/// `clean` through reqwest and async-openai compares with their bare clients.
#[tokio::test(start_paused = true)]
async fn clean_through_the_other_clients_compares_with_their_bare_clients() {
    for client in [ClientKind::Reqwest, ClientKind::AsyncOpenAi] {
        let r = run_checked(&tiny_through(client, Scenario::Clean, 10, 5)).await;
        let b = r.baseline.as_ref().unwrap();
        assert_eq!(b.label(), client.label(Which::Bare));
        assert_eq!((r.stack.ok, b.ok), (10, 10), "{}", table(&r));
        assert_eq!((r.stack.requests_sent, b.requests_sent), (10, 10));
    }
}

/// `stream-long` through reqwest and async-openai reads each event stream to its end.
#[tokio::test(start_paused = true)]
async fn streams_through_the_other_clients_last_their_duration() {
    for client in [ClientKind::Reqwest, ClientKind::AsyncOpenAi] {
        let mut cfg = tiny_through(client, Scenario::StreamLong, 4, 2);
        cfg.stream = Duration::from_millis(40);
        let r = run_checked(&cfg).await;
        for run in [&r.stack, r.baseline.as_ref().unwrap()] {
            assert_eq!((run.ok, run.requests_sent), (4, 4), "{}", table(&r));
            assert!(run.p50 >= Duration::from_millis(40), "{}", table(&r));
        }
    }
}
