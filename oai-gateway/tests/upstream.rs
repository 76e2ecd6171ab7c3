//! The gateway's upstream as OpenAI's SDKs write a base URL, with `/v1`, and without: both
//! forward `/v1/chat/completions` to `/v1/chat/completions`, never `/v1/v1/…`.

use std::net::SocketAddr;

use bytes::Bytes;
use examples::gateway::Gateway;
use examples::stack::{http_client, Layers};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use oai_resilience::mock::MockServer;
use oai_resilience::stack::InvalidBaseUrl;
use oai_resilience::AuthLayer;

const KEY: &str = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";
const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}]}"#;

async fn gateway(upstream: &str) -> SocketAddr {
    let layers = Layers::new(AuthLayer::check_only());
    let gw = Gateway::new(upstream, layers.build(http_client())).unwrap();
    let (addr, _task) = gw.spawn(([127, 0, 0, 1], 0).into()).await.unwrap();
    addr
}

async fn chat(addr: SocketAddr) -> (u16, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = http::Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {KEY}"))
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
        .unwrap();
    let res = client.request(req).await.unwrap();
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

#[test]
fn an_invalid_upstream_is_a_typed_error() {
    let stack = || Layers::new(AuthLayer::check_only()).build(http_client());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let gw = Gateway::new("http://127.0.0.1:9/v1", stack()).unwrap();
        assert_eq!(gw.upstream(), "http://127.0.0.1:9");
        for bad in [
            "127.0.0.1:9/v1",
            "http://127.0.0.1:9/v1?x=1",
            "http://user:pw@127.0.0.1:9/v1",
        ] {
            let err: InvalidBaseUrl = Gateway::new(bad, stack()).unwrap_err();
            assert!(err.to_string().starts_with("invalid base URL"), "{err}");
            assert!(!err.to_string().contains("pw"), "{err}");
        }
    });
}
