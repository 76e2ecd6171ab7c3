//! Fallback upstreams (issue #23 item 2), end to end over loopback: `--fallback-upstream`
//! routes tried after the primary when it cannot serve a call soon (an exhausted quota, 5xx
//! after its retries), never after a 400; the fallback's declared model; each route's own key
//! and auth header for access-key callers; the route that served named in
//! `x-oai-gateway-route`, the access log and `/metrics`; the configuration's errors.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use oai_gateway::gateway::ROUTE_HEADER;
use oai_resilience::mock::{MockResponse, MockServer, Route};
use oai_resilience::RetryConfig;
use serde_json::Value;
use support::{accept_each, authorized, parse, post_with_key, KEY};
use test_support::http_client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVER_KEY: &str = "sk-proj-ServerServerServerServerServer0123";
const BACKUP_KEY: &str = "0123456789abcdef0123456789abcdef";
const ACCESS_KEY: &str = "gw-access-key-for-team-a-0123456789";
const CHAT: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}]}"#;

/// A gateway for `args` and `env`, with two attempts per route and no backoff to wait for.
async fn gateway(args: &[&str], env: &[(&str, &str)]) -> SocketAddr {
    let mut c = support::config(args, env);
    c.retry = RetryConfig::new().seed(7).max_attempts(2);
    support::start(c).await
}

/// A [`gateway`] with the upstream `primary` and one `--fallback-upstream`, `fallback`.
async fn primary_then(primary: &str, fallback: &str) -> SocketAddr {
    gateway(
        &["--upstream", primary, "--fallback-upstream", fallback],
        &[],
    )
    .await
}

struct Answer {
    status: u16,
    route: Option<String>,
    json: Value,
}

async fn send(addr: SocketAddr, method: &str, path: &str, auth: &str, body: &str) -> Answer {
    let client = http_client::<Full<Bytes>>();
    let req = authorized(
        method,
        &format!("http://{addr}{path}"),
        "application/json",
        auth,
        Full::new(Bytes::from(body.to_owned())),
    );
    let res = client.request(req).await.unwrap();
    let status = res.status().as_u16();
    let route = res
        .headers()
        .get(ROUTE_HEADER)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        route,
        json,
    }
}

async fn chat(addr: SocketAddr, auth: &str) -> Answer {
    send(addr, "POST", "/v1/chat/completions", auth, CHAT).await
}

/// A [`chat`] with `key` that must be answered `status` by the route `route`.
async fn chat_served(addr: SocketAddr, key: &str, status: u16, route: &str) -> Answer {
    let a = chat(addr, key).await;
    assert_eq!(a.status, status, "{}", a.json);
    assert_eq!(a.route.as_deref(), Some(route));
    a
}

async fn metrics(addr: SocketAddr) -> String {
    let client = http_client::<Full<Bytes>>();
    let res = client
        .get(format!("http://{addr}/metrics").parse().unwrap())
        .await
        .unwrap();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A mock upstream whose next `times` chat completions answer `status`.
async fn failing(status: u16, times: usize) -> MockServer {
    MockServer::builder()
        .script(
            Route::ChatCompletions,
            (0..times).map(|_| MockResponse::status(status)),
        )
        .start()
        .await
}

/// A backup [`MockServer`] and a [`primary_then`] gateway over `primary` and it.
async fn with_backup(primary: &MockServer) -> (MockServer, SocketAddr) {
    let backup = MockServer::start().await;
    let addr = primary_then(&primary.url(), &backup.url()).await;
    (backup, addr)
}

fn model_sent(server: &MockServer) -> Vec<String> {
    server
        .requests()
        .iter()
        .map(|r| {
            let json: Value = serde_json::from_slice(&r.body).unwrap();
            json["model"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn a_quota_429_on_the_primary_is_served_by_the_fallback() {
    let primary = MockServer::builder().quota_exhausted(true).start().await;
    let (backup, addr) = with_backup(&primary).await;
    let a = chat_served(addr, KEY, 200, "fallback-1").await;
    assert_eq!(a.json["object"], "chat.completion", "{}", a.json);
    // A quota 429 is not retried: one request to the primary, then one to the fallback,
    // each with the caller's own key (no access keys: the server's key is never used).
    assert_eq!(primary.requests().len(), 1);
    let sent = backup.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].path, "/v1/chat/completions");
    assert_eq!(sent[0].headers["authorization"], format!("Bearer {KEY}"));
    assert_eq!(
        model_sent(&backup),
        ["gpt-4o"],
        "no model declared: sent as is"
    );
    let m = metrics(addr).await;
    assert!(
        m.contains(
            "oai_gateway_requests_total{route=\"/v1/chat/completions\",status=\"200\",error=\"none\",served_by=\"fallback-1\"} 1"
        ),
        "{m}"
    );
}

#[tokio::test]
async fn a_503_primary_moves_on_after_its_retries() {
    let primary = failing(503, 4).await;
    let (backup, addr) = with_backup(&primary).await;
    chat_served(addr, KEY, 200, "fallback-1").await;
    assert_eq!(primary.requests().len(), 2, "the primary's two attempts");
    assert_eq!(backup.requests().len(), 1);
}

#[tokio::test]
async fn a_400_from_the_primary_is_not_sent_to_the_fallback() {
    let primary = failing(400, 1).await;
    let (backup, addr) = with_backup(&primary).await;
    chat_served(addr, KEY, 400, "primary").await;
    assert_eq!(primary.requests().len(), 1);
    assert_eq!(
        backup.requests().len(),
        0,
        "a 400 fails the same everywhere"
    );
    // Nor a request the gateway's validation refuses (no messages): nothing sent anywhere.
    let a = send(
        addr,
        "POST",
        "/v1/chat/completions",
        KEY,
        r#"{"model":"gpt-4o"}"#,
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.json);
    assert_eq!(primary.requests().len(), 1);
    assert_eq!(backup.requests().len(), 0);
}

#[tokio::test]
async fn the_fallback_model_replaces_the_body_model() {
    let primary = MockServer::builder().quota_exhausted(true).start().await;
    let backup = MockServer::start().await;
    let spec = format!("{} model=gpt-4o-mini", backup.url());
    let addr = primary_then(&primary.url(), &spec).await;
    chat_served(addr, KEY, 200, "fallback-1").await;
    assert_eq!(model_sent(&primary), ["gpt-4o"]);
    assert_eq!(model_sent(&backup), ["gpt-4o-mini"]);
}

#[tokio::test]
async fn an_open_circuit_on_the_primary_sends_calls_to_the_fallback_at_once() {
    let primary = failing(503, 100).await;
    let (backup, addr) = with_backup(&primary).await;
    // Three calls, two attempts each: the breaker opens after five consecutive failures.
    for _ in 0..3 {
        let a = chat(addr, KEY).await;
        assert_eq!((a.status, a.route.as_deref()), (200, Some("fallback-1")));
    }
    let sent = primary.requests().len();
    assert!(sent <= 5, "{sent}");
    // While it is open, nothing more goes to the primary.
    for _ in 0..3 {
        let a = chat(addr, KEY).await;
        assert_eq!((a.status, a.route.as_deref()), (200, Some("fallback-1")));
    }
    assert_eq!(primary.requests().len(), sent);
    assert_eq!(backup.requests().len(), 6);
}

/// A route with `model=` rewrites JSON object bodies only: a `GET` that moves on to it is
/// sent as it is.
#[tokio::test]
async fn a_request_without_a_json_body_goes_to_a_model_route_as_it_is() {
    // The primary: a port nobody listens on (connection refused, which moves on).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let primary = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let backup = support::RawUpstream::start().await;
    let spec = format!("{} model=gpt-4o-mini", backup.url());
    let addr = primary_then(&primary, &spec).await;
    let a = send(addr, "GET", "/v1/models", KEY, "").await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.route.as_deref(), Some("fallback-1"));
    let sent = backup.received();
    assert_eq!(sent.len(), 1);
    assert!(
        sent[0].request_line().starts_with("GET /v1/models "),
        "{}",
        sent[0].request_line()
    );
    assert!(sent[0].body.is_empty());
}

/// An upstream that answers every request with a quota 429 (`insufficient_quota`), after
/// reading it up to the end of a multipart body (`--b--`) or of a chunked one.
async fn quota_upstream() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    accept_each(listener, move |mut stream| {
        let count = count.clone();
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 16 * 1024];
            while !(buf.ends_with(b"--b--\r\n") || buf.ends_with(b"0\r\n\r\n")) {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                if buf.len() > 1 << 20 {
                    return;
                }
            }
            count.fetch_add(1, Ordering::SeqCst);
            let json = r#"{"error":{"message":"You exceeded your current quota.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
            let res = format!(
                    "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
                    json.len()
                );
            let _ = stream.write_all(res.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    });
    (url, seen)
}

/// A streamed upload cannot be copied for the next route: it goes to the primary only, and the
/// primary's error is the answer, naming the primary.
#[tokio::test]
async fn an_upload_goes_to_the_primary_only() {
    let (primary, primary_seen) = quota_upstream().await;
    let backup = MockServer::start().await;
    let addr = primary_then(&primary, &backup.url()).await;
    let body = "--b\r\ncontent-disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--b--\r\n";
    let client = http_client::<Full<Bytes>>();
    let req = post_with_key(addr, "/v1/files", "multipart/form-data; boundary=b", body);
    let res = client.request(req).await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()[ROUTE_HEADER], "primary");
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let json: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["error"]["code"], "insufficient_quota", "{json}");
    assert_eq!(primary_seen.load(Ordering::SeqCst), 1);
    assert_eq!(backup.requests().len(), 0);
}

#[tokio::test]
async fn a_call_that_fails_on_every_route_answers_the_last_routes_error() {
    let primary = MockServer::builder().quota_exhausted(true).start().await;
    let second = failing(503, 2).await;
    let third = MockServer::builder().quota_exhausted(true).start().await;
    let addr = gateway(
        &[
            "--upstream",
            &primary.url(),
            "--fallback-upstream",
            &second.url(),
            "--fallback-upstream",
            &third.url(),
        ],
        &[],
    )
    .await;
    let a = chat(addr, KEY).await;
    assert_eq!(a.status, 429, "{}", a.json);
    assert_eq!(a.json["error"]["code"], "insufficient_quota", "{}", a.json);
    assert_eq!(
        a.route.as_deref(),
        Some("fallback-2"),
        "the last route tried"
    );
    assert_eq!(
        (
            primary.requests().len(),
            second.requests().len(),
            third.requests().len()
        ),
        (1, 2, 1)
    );
    let m = metrics(addr).await;
    assert!(
        m.contains("status=\"429\",error=\"quota_exceeded\",served_by=\"fallback-2\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn without_fallbacks_the_header_names_the_primary() {
    let primary = MockServer::start().await;
    let addr = gateway(&["--upstream", &primary.url()], &[]).await;
    chat_served(addr, KEY, 200, "primary").await;
    // A local refusal sent nothing: no route named.
    let a = send(addr, "POST", "/v1/chat/completions", "", CHAT).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.route, None);
    let m = metrics(addr).await;
    assert!(m.contains("error=\"none\",served_by=\"primary\"} 1"), "{m}");
    assert!(
        m.contains("error=\"unauthenticated\",served_by=\"-\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn access_key_callers_get_each_routes_own_key_and_header() {
    let primary = MockServer::builder().quota_exhausted(true).start().await;
    let backup = MockServer::start().await;
    let spec = format!("{} key-env=BACKUP_KEY auth-header=api-key", backup.url());
    let access = format!("team-a={ACCESS_KEY}");
    let addr = gateway(
        &[
            "--upstream",
            &primary.url(),
            "--fallback-upstream",
            &spec,
            "--access-key",
            &access,
        ],
        &[("OPENAI_API_KEY", SERVER_KEY), ("BACKUP_KEY", BACKUP_KEY)],
    )
    .await;
    chat_served(addr, ACCESS_KEY, 200, "fallback-1").await;
    let to_primary = &primary.requests()[0].headers;
    assert_eq!(to_primary["authorization"], format!("Bearer {SERVER_KEY}"));
    assert!(to_primary.get("api-key").is_none());
    let to_backup = &backup.requests()[0].headers;
    assert_eq!(to_backup["api-key"], BACKUP_KEY);
    assert!(
        to_backup.get("authorization").is_none(),
        "the access key and the server's key stay home: {to_backup:?}"
    );
    // A wrong access key: 401, nothing sent anywhere.
    let a = chat(addr, "gw-not-an-access-key").await;
    assert_eq!(a.status, 401);
    assert_eq!((primary.requests().len(), backup.requests().len()), (1, 1));
}

#[test]
fn fallbacks_come_from_flags_the_environment_or_the_file() {
    let c = parse(
        &[
            "--fallback-upstream",
            "https://a.example/v1 model=gpt-4o-mini",
            "--fallback-upstream=http://127.0.0.1:9",
        ],
        &[],
    )
    .unwrap();
    let got: Vec<(&str, Option<&str>)> = c
        .fallbacks
        .iter()
        .map(|f| (f.upstream.as_str(), f.model.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            ("https://a.example/v1", Some("gpt-4o-mini")),
            ("http://127.0.0.1:9", None)
        ]
    );
    let env = [(
        "OAI_GATEWAY_FALLBACK_UPSTREAMS",
        "https://a.example/v1, https://b.example/v1 model=m",
    )];
    let c = parse(&[], &env).unwrap();
    assert_eq!(c.fallbacks.len(), 2);
    assert_eq!(c.fallbacks[1].model.as_deref(), Some("m"));
    // The flag wins over the variable.
    let c = parse(&["--fallback-upstream", "https://c.example"], &env).unwrap();
    assert_eq!(c.fallbacks.len(), 1);
    assert_eq!(c.fallbacks[0].upstream, "https://c.example");

    let dir = std::env::temp_dir().join(format!("oai-gateway-fallback-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        "fallback-upstreams = [\"https://a.example/v1\", \"https://b.example/v1 model=m\"]\n",
    )
    .unwrap();
    let c = parse(&["--config", path.to_str().unwrap()], &[]).unwrap();
    assert_eq!(c.fallbacks.len(), 2);
    std::fs::write(&path, "fallback-upstreams = 3\n").unwrap();
    let err = parse(&["--config", path.to_str().unwrap()], &[]).unwrap_err();
    assert!(
        err.to_string().contains("key fallback-upstreams: expected"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    // Without fallbacks, none.
    assert!(parse(&[], &[]).unwrap().fallbacks.is_empty());
}

/// Environment variables, as (name, value).
type Env<'a> = Vec<(&'a str, &'a str)>;

#[test]
fn bad_fallbacks_are_errors_that_name_the_flag_and_hide_keys() {
    let access = format!("team-a={ACCESS_KEY}");
    // One `--fallback-upstream` and no environment: (its value, the error expected).
    let single = [
        ("", "--fallback-upstream number 1: expected"),
        ("https://a.example colour=blue", "unknown option \"colour\""),
        ("https://a.example model=a model=b", "model is given twice"),
        ("https://a.example model", "expected key-env=NAME"),
        ("https://a.example auth-header=a:b", "is not a header name"),
        ("https://a.example auth-header=api-key", "needs access keys"),
    ];
    let mut cases: Vec<(Vec<&str>, Env<'_>, &str)> = single
        .iter()
        .map(|&(spec, want)| (vec!["--fallback-upstream", spec], vec![], want))
        .collect();
    let key_env = [
        "--fallback-upstream",
        "https://a.example key-env=BACKUP_KEY",
    ];
    let key_env_and_access = [&key_env[..], &["--access-key", &access]].concat();
    cases.extend([
        (
            vec![
                "--fallback-upstream",
                "https://ok.example",
                "--fallback-upstream",
                "ftp://a.example",
            ],
            vec![],
            "--fallback-upstream number 2: invalid base URL",
        ),
        (
            key_env.to_vec(),
            vec![("BACKUP_KEY", BACKUP_KEY)],
            "key-env=BACKUP_KEY needs access keys",
        ),
        (
            key_env_and_access.clone(),
            vec![("OPENAI_API_KEY", SERVER_KEY)],
            "BACKUP_KEY (its key-env) is not set",
        ),
        (
            key_env_and_access,
            vec![("OPENAI_API_KEY", SERVER_KEY), ("BACKUP_KEY", ACCESS_KEY)],
            "an access key is the same as BACKUP_KEY",
        ),
    ]);
    for (args, env, want) in cases {
        let err = parse(&args, &env).unwrap_err().to_string();
        assert!(err.contains(want), "{args:?}: {err}");
        for secret in [SERVER_KEY, BACKUP_KEY, ACCESS_KEY] {
            assert!(!err.contains(secret), "{args:?}: {err}");
        }
    }
    // With access keys and OPENAI_API_KEY, a fallback without key-env takes the server's key.
    let c = parse(
        &[
            "--fallback-upstream",
            "https://a.example",
            "--access-key",
            &access,
        ],
        &[("OPENAI_API_KEY", SERVER_KEY)],
    )
    .unwrap();
    assert!(c.fallbacks[0].key.is_some());
}

#[test]
fn the_binary_exits_2_on_a_bad_fallback_and_help_lists_the_flag() {
    let bin = env!("CARGO_BIN_EXE_oai-gateway");
    let out = std::process::Command::new(bin)
        .args([
            "--fallback-upstream",
            "https://a.example key-env=BACKUP_KEY",
        ])
        .env_remove("OPENAI_API_KEY")
        .env("BACKUP_KEY", BACKUP_KEY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("oai-gateway: --fallback-upstream number 1"),
        "{err}"
    );
    assert!(
        !err.contains(BACKUP_KEY) && !err.contains("panicked"),
        "{err}"
    );
    let out = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--fallback-upstream"), "{help}");
    assert!(help.contains("OAI_GATEWAY_FALLBACK_UPSTREAMS"), "{help}");
}
