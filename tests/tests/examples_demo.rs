//! The demo's workload, small: every call is accounted for, the planted faults fail with
//! their hints, everything else succeeds, and the printed numbers are the measured ones.

use examples::demo::{self, plan, CallKind, DemoConfig, Via};
use oai_resilience::{AuthCause, ErrorKind};

fn small() -> DemoConfig {
    DemoConfig {
        calls: 40,
        concurrency: 16,
        progress: false,
        ..DemoConfig::default()
    }
}

#[test]
fn plan_places_each_fault_once() {
    for n in 4..300 {
        let kinds: Vec<CallKind> = (0..n).map(|i| plan(i, n)).collect();
        for fault in [
            CallKind::MissingParameter,
            CallKind::QuotedKey,
            CallKind::ExhaustedQuota,
        ] {
            assert_eq!(kinds.iter().filter(|k| **k == fault).count(), 1, "n={n}");
        }
        assert!(kinds.iter().any(|k| k.via() == Via::Macro), "n={n}");
    }
}

#[tokio::test(start_paused = true)]
async fn small_workload_adds_up() {
    let summary = demo::run(small()).await.unwrap();
    let n = 40;
    assert_eq!(summary.outcomes.len(), n);
    let calls: Vec<usize> = summary.outcomes.iter().map(|o| o.call).collect();
    assert_eq!(
        calls,
        (0..n).collect::<Vec<_>>(),
        "every call once, in order"
    );
    assert_eq!(
        summary.calls_via(Via::Stack) + summary.calls_via(Via::Macro),
        n
    );
    assert!(summary.calls_via(Via::Macro) >= 9);

    // Exactly the planted faults fail, each the way the troubleshooting guide says.
    let failures = summary.failures();
    assert_eq!(summary.succeeded() + failures.len(), n);
    let kinds: Vec<CallKind> = failures.iter().map(|f| f.kind).collect();
    assert_eq!(
        kinds,
        [
            CallKind::MissingParameter,
            CallKind::QuotedKey,
            CallKind::ExhaustedQuota
        ],
        "{failures:#?}"
    );
    let missing = &failures[0].error;
    assert_eq!(missing.kind(), ErrorKind::InvalidParameter);
    assert_eq!(missing.param(), Some("messages"));
    assert_eq!(missing.hint(), "add the missing parameter `messages`");
    let quoted = &failures[1].error;
    assert_eq!(quoted.kind(), ErrorKind::MalformedApiKey);
    assert_eq!(quoted.auth_cause(), Some(AuthCause::Quoted));
    assert!(
        quoted.call_context().is_some(),
        "the #[openai_call] context"
    );
    let quota = &failures[2].error;
    assert_eq!(quota.kind(), ErrorKind::QuotaExceeded);
    assert!(quota.hint().contains("retrying will not help"));
    assert!(quota.request_id().unwrap().starts_with("req_"));

    // Attempts: the two local rejections sent nothing, the quota call exactly one request.
    let attempts_of = |kind| {
        summary
            .outcomes
            .iter()
            .find(|o| o.kind == kind)
            .unwrap()
            .attempts
    };
    assert_eq!(attempts_of(CallKind::MissingParameter), 0);
    assert_eq!(attempts_of(CallKind::QuotedKey), 0);
    assert_eq!(attempts_of(CallKind::ExhaustedQuota), 1);
    assert_eq!(summary.rejected_locally(), 2);
    assert_eq!(
        summary.retries(),
        summary.attempts() - (n - summary.rejected_locally()) as u64
    );

    // What the client counted is what the servers received and answered.
    assert_eq!(Some(summary.attempts()), summary.server_requests());
    let server = summary.server.as_ref().unwrap();
    let billing = summary.billing_server.as_ref().unwrap();
    assert_eq!(server.ok as usize, summary.succeeded());
    assert_eq!(billing.total, 1);
    assert_eq!(billing.quota_exceeded, 1);
    let server_errors = server.server_errors();
    let rate_limited = server.rate_limited;
    assert_eq!(
        server.total,
        server.ok + server_errors + rate_limited,
        "{server:?}"
    );
    // Every failed attempt of a successful call was retried.
    assert_eq!(summary.retries(), server_errors + rate_limited);

    // The report prints the measured numbers and each failure's one-line error.
    let report = demo::render(&summary);
    assert!(report.contains(&format!("{n} calls")), "{report}");
    for f in &failures {
        let line = f.error.to_string();
        assert!(!line.contains('\n'));
        assert!(report.contains(&line), "{report}");
        assert!(line.contains(" — hint: "), "{line}");
    }
    let row = |label: &str| -> u64 {
        let line = report
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no row {label:?} in\n{report}"));
        line[label.len() + line.find(label).unwrap()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(row("succeeded"), summary.succeeded() as u64);
    assert_eq!(row("could not succeed"), 3);
    assert_eq!(row("requests sent"), summary.attempts());
    assert_eq!(row("retries"), summary.retries());
    assert_eq!(row("rejected locally"), 2);
    assert_eq!(row("pacing waits"), summary.pacing.waits);
}

#[tokio::test]
async fn too_small_a_workload_is_an_error_not_a_panic() {
    let err = demo::run(DemoConfig {
        calls: 3,
        ..small()
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("at least 4 calls"));
}

/// `demo --real`'s code path (the TLS-capable client, the real workload), pointed at the
/// mock over plain HTTP: five requests, two local rejections.
#[cfg(feature = "real")]
#[tokio::test(start_paused = true)]
async fn real_workload_runs_against_a_compatible_server() {
    use oai_resilience::mock::MockServer;
    let key = "sk-proj-ReAlPaThTeStKeY0123456789abcdefgh";
    let server = MockServer::builder().api_key(key).start().await;
    let summary = demo::run_real(&server.url(), key, small()).await.unwrap();
    assert_eq!(summary.outcomes.len(), demo::plan_real().len());
    assert_eq!(summary.succeeded(), 5);
    assert_eq!(summary.rejected_locally(), 2);
    assert_eq!(summary.attempts(), 5);
    assert_eq!(server.counts().ok, 5);
    assert!(summary.server.is_none());
    let report = demo::render(&summary);
    assert!(report.contains("(the real API)"), "{report}");
    assert!(
        !report.contains(&key[8..]),
        "the key never appears: {report}"
    );
}
