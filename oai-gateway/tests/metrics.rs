//! Item 5 of issue #20 (the rest): `GET /metrics` counts what the test sent, on the main
//! listener or on `--metrics-listen`, the gateway's own series and the library's (#22 item
//! 2). (The JSON access log: `access_log.rs`.)

mod support;

use std::time::Duration;

use oai_gateway::server;
use oai_resilience::mock::{MockResponse, MockServer, Route};
use oai_resilience::RetryConfig;
use support::{config, config_for, request, start_with_gateway, CHAT, KEY};
use tokio::net::TcpListener;

/// The value of the series `line` (name and labels) in `text`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(start_paused = true)]
async fn metrics_count_what_was_sent() {
    let server = MockServer::builder()
        .script(
            Route::ChatCompletions,
            [
                MockResponse::rate_limited(Duration::from_millis(200)),
                MockResponse::ok(),
                MockResponse::quota_exceeded(),
            ],
        )
        .start()
        .await;
    let mut c = config(&["--upstream", &server.url()], &[]);
    c.retry = RetryConfig::new().seed(3);
    let (addr, _gw) = start_with_gateway(&c).await;
    let auth = format!("Bearer {KEY}");
    let auth = [("authorization", auth.as_str())];
    // 1: a 429 rate limit, retried, then 200. 2: a quota 429, not retried. 3: 200.
    for expected in [200, 429, 200] {
        let res = request(addr, "POST", "/v1/chat/completions", &auth, CHAT).await;
        assert_eq!(res.status, expected, "{}", res.body);
    }
    // 4: a local 400 (no messages): nothing sent. 5: no key. 6: a route not allowed.
    let res = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &auth,
        r#"{"model":"x"}"#,
    )
    .await;
    assert_eq!(res.status, 400);
    let res = request(addr, "POST", "/v1/chat/completions", &[], CHAT).await;
    assert_eq!(res.status, 401);
    let res = request(addr, "GET", "/v1/organization/users", &auth, "").await;
    assert_eq!(res.status, 404);

    let res = request(addr, "GET", "/metrics", &[], "").await;
    assert_eq!(res.status, 200);
    assert!(res
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let m = &res.body;
    // served_by: the upstream route that served the request; `-` for a local refusal.
    let chat = |status: u16, error: &str, served_by: &str| {
        value(
            m,
            &format!(
                "oai_gateway_requests_total{{route=\"/v1/chat/completions\",status=\"{status}\",error=\"{error}\",served_by=\"{served_by}\"}}"
            ),
        )
    };
    assert_eq!(chat(200, "none", "primary"), Some(2.0), "{m}");
    assert_eq!(chat(429, "quota_exceeded", "primary"), Some(1.0), "{m}");
    assert_eq!(chat(400, "invalid_parameter", "primary"), Some(1.0), "{m}");
    assert_eq!(chat(401, "unauthenticated", "-"), Some(1.0), "{m}");
    assert_eq!(
        value(
            m,
            "oai_gateway_requests_total{route=\"-\",status=\"404\",error=\"route_not_allowed\",served_by=\"-\"}"
        ),
        Some(1.0),
        "{m}"
    );
    // Four attempts upstream: 429, 200, 429 (quota), 200; one of them a retry.
    assert_eq!(
        value(m, "oai_gateway_upstream_attempts_total{status=\"200\"}"),
        Some(2.0)
    );
    assert_eq!(
        value(m, "oai_gateway_upstream_attempts_total{status=\"429\"}"),
        Some(2.0)
    );
    assert_eq!(value(m, "oai_gateway_retries_total"), Some(1.0), "{m}");
    assert_eq!(
        value(m, "oai_gateway_upstream_429_total{kind=\"rate_limit\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(m, "oai_gateway_upstream_429_total{kind=\"quota\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(m, "oai_gateway_upstream_latency_seconds_count"),
        Some(4.0)
    );
    assert!(
        value(m, "oai_gateway_retry_budget_balance").is_some(),
        "{m}"
    );
    assert!(value(m, "oai_gateway_pacing_wait_seconds_count").is_some());
    assert_eq!(value(m, "oai_gateway_streams_in_flight"), Some(0.0));
    assert_eq!(
        value(m, "oai_gateway_requests_in_flight"),
        Some(1.0),
        "this one"
    );
    // Every sample line is `name{labels} number` or `name number`.
    for line in m.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (_, v) = line.rsplit_once(' ').unwrap();
        v.parse::<f64>()
            .unwrap_or_else(|_| panic!("not a sample: {line}"));
    }
    assert_eq!(server.counts().total, 4);
    // The library's metrics (its MetricsObserver on the gateway's stack, through the
    // Prometheus exporter), after the gateway's own. They are the process's: another test of
    // this binary may add to them, so at least what this test sent.
    let at_least = |series: &str, n: f64| {
        let v = value(m, series).unwrap_or_else(|| panic!("no {series} in\n{m}"));
        assert!(v >= n, "{series} = {v}, expected at least {n}");
    };
    let model = "gen_ai_request_model=\"gpt-4o-mini\"";
    // Calls: two successes (one after a retry), one quota failure.
    at_least(
        &format!("gen_ai_client_operation_duration_count{{{model}}}"),
        2.0,
    );
    at_least(
        &format!("gen_ai_client_operation_duration_count{{{model},error_type=\"quota_exceeded\"}}"),
        1.0,
    );
    at_least(
        &format!("http_client_request_duration_count{{{model},http_response_status_code=\"200\"}}"),
        2.0,
    );
    at_least(
        &format!("oai_resilience_rate_limited{{kind=\"rate_limit\",{model}}}"),
        1.0,
    );
    at_least(
        &format!("oai_resilience_rate_limited{{kind=\"quota\",{model}}}"),
        1.0,
    );
    at_least(
        "oai_resilience_retries{error_type=\"rate_limited\",oai_resilience_delay_source=\"retry_after_ms\"}",
        1.0,
    );
    at_least(
        "oai_resilience_local_rejections{kind=\"validation\",error_type=\"invalid_parameter\"}",
        1.0,
    );
    for histogram in [
        "gen_ai_client_operation_duration",
        "http_client_request_duration",
        // The retried call waited for the pacer after its 429.
        "oai_resilience_pacing_wait",
    ] {
        assert!(
            m.contains(&format!("# TYPE {histogram} histogram")),
            "{histogram}: {m}"
        );
    }
}

#[tokio::test]
async fn metrics_listen_moves_the_endpoint() {
    let server = MockServer::start().await;
    let c = config_for(&server.url(), &["--metrics-listen", "127.0.0.1:0"], &[]);
    let (addr, gw) = start_with_gateway(&c).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    tokio::spawn(server::serve_metrics(listener, gw));
    // Not on the main listener any more: /metrics is not an API route.
    let res = request(addr, "GET", "/metrics", &[], "").await;
    assert_eq!(res.status, 404);
    let res = request(metrics_addr, "GET", "/metrics", &[], "").await;
    assert_eq!(res.status, 200);
    assert!(
        res.body
            .contains("oai_gateway_requests_total{route=\"-\",status=\"404\""),
        "{}",
        res.body
    );
    let res = request(metrics_addr, "GET", "/v1/models", &[], "").await;
    assert_eq!(res.status, 404);
}
