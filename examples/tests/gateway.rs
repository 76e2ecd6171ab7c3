//! The `gateway` binary's `--upstream`, with `/v1` as OpenAI's SDKs write a base URL and
//! without: a call through the gateway reaches the mock at `/v1/chat/completions` either way.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use oai_resilience::mock::MockServer;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const KEY: &str = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";
const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}]}"#;

/// Runs the gateway binary in front of `upstream` on a free port, makes one chat call through
/// it and returns the status; the gateway is stopped before returning.
async fn call_through_gateway(upstream: &str) -> u16 {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--listen", "127.0.0.1:0", "--upstream", upstream])
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // "gateway: listening on http://127.0.0.1:PORT/v1 -> UPSTREAM"
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("gateway: listening on http://") {
                return rest.split('/').next().unwrap().to_owned();
            }
        }
        panic!("the gateway exited before listening");
    })
    .await
    .expect("the gateway did not start listening");
    let client = test_support::http_client::<Full<Bytes>>();
    let req = http::Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {KEY}"))
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
        .unwrap();
    let status = client.request(req).await.unwrap().status().as_u16();
    child.kill().await.unwrap();
    status
}

#[tokio::test]
async fn upstream_is_accepted_with_or_without_v1() {
    let server = MockServer::start().await;
    let url = server.url();
    for upstream in [format!("{url}/v1"), url.clone()] {
        assert_eq!(call_through_gateway(&upstream).await, 200, "{upstream}");
    }
    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/v1/chat/completions", "/v1/chat/completions"]);
}

#[tokio::test]
async fn an_invalid_upstream_exits_with_usage() {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9/v1"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("invalid base URL \"127.0.0.1:9/v1\""),
        "{err}"
    );
    assert!(err.contains("usage: gateway"), "{err}");
}
