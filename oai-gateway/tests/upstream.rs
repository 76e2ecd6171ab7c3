//! The gateway's upstream as OpenAI's SDKs write a base URL, with `/v1`, and without: both
//! forward `/v1/chat/completions` to `/v1/chat/completions`, never `/v1/v1/…`.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use oai_gateway::config::Command;
use oai_gateway::Config;
use oai_resilience::mock::MockServer;

mod support;

async fn gateway(upstream: &str) -> SocketAddr {
    support::start(support::config(&["--upstream", upstream], &[])).await
}

async fn chat(addr: SocketAddr) -> (u16, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let res = client.request(support::chat_request(addr)).await.unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn upstream_with_or_without_v1_forwards_to_the_same_path() {
    let server = MockServer::start().await;
    let url = server.url();
    let spellings = [
        format!("{url}/v1"),
        url.clone(),
        format!("{url}/v1/"),
        format!("{url}/"),
    ];
    for upstream in &spellings {
        let addr = gateway(upstream).await;
        let (status, body) = chat(addr).await;
        assert_eq!(status, 200, "--upstream {upstream}: {body}");
    }
    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, vec!["/v1/chat/completions"; spellings.len()]);
}

#[tokio::test]
async fn an_invalid_upstream_is_a_config_error_that_hides_credentials() {
    let gw = oai_gateway::Gateway::new(&support::config(
        &["--upstream", "http://127.0.0.1:9/v1/"],
        &[],
    ))
    .await
    .unwrap();
    assert_eq!(gw.upstream(), "http://127.0.0.1:9");
    let none = |_: &str| None;
    for bad in [
        "127.0.0.1:9/v1",
        "http://127.0.0.1:9/v1?x=1",
        "http://user:pw@127.0.0.1:9/v1",
        "ftp://x",
        "not a url",
    ] {
        let err = match Config::from_args(["--upstream", bad], &none) {
            Err(e) => e.to_string(),
            Ok(Command::Run(_)) | Ok(Command::Help) => panic!("{bad} accepted"),
        };
        assert!(err.starts_with("--upstream: invalid base URL"), "{err}");
        assert!(!err.contains("pw"), "{err}");
    }
}
