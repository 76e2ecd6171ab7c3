//! `OpenAiLayer::new` reads `OPENAI_BASE_URL`. This binary holds this one test alone: it sets
//! the variable, and no other test runs in this process to see it.
#![cfg(feature = "mock")]

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use oai_resilience::mock::MockServer;
use oai_resilience::stack::OpenAiLayer;
use oai_resilience::validate::ValidateBody;
use oai_resilience::{AuthLayer, ErrorKind};
use tower::{Layer, ServiceExt};

const KEY: &str = "sk-proj-BaseUrlEnvTestKey0123456789abcdefghijklmnopqr";
use test_support::CHAT;

fn post() -> http::Request<Full<Bytes>> {
    http::Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn openai_base_url_is_read_when_no_base_is_set() {
    let server = MockServer::start().await;
    let client: Client<HttpConnector, ValidateBody<Full<Bytes>>> = test_support::http_client();

    // As the SDKs write it: with `/v1`.
    std::env::set_var("OPENAI_BASE_URL", format!("{}/v1", server.url()));
    let layer = OpenAiLayer::new();
    assert_eq!(
        layer.base_url_layer().unwrap().url(),
        Ok(server.url().as_str())
    );
    let svc = layer.auth(AuthLayer::from_key(KEY)).layer(client.clone());
    let res = svc.oneshot(post()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(server.requests()[0].path, "/v1/chat/completions");

    // An explicit base wins over the variable.
    let other = MockServer::start().await;
    let svc = OpenAiLayer::new()
        .base_url(other.url().parse().unwrap())
        .auth(AuthLayer::from_key(KEY))
        .layer(client.clone());
    svc.oneshot(post()).await.unwrap();
    assert_eq!((server.counts().total, other.counts().total), (1, 1));

    // An invalid value: a typed error for each request, nothing sent.
    std::env::set_var("OPENAI_BASE_URL", "localhost:8000/v1");
    let svc = OpenAiLayer::new()
        .auth(AuthLayer::from_key(KEY))
        .layer(client.clone());
    let err = svc.oneshot(post()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal);
    assert!(
        err.to_string().contains("read from OPENAI_BASE_URL"),
        "the error names the variable: {err}"
    );

    // Unset or blank: no base.
    std::env::set_var("OPENAI_BASE_URL", "  ");
    assert!(OpenAiLayer::new().base_url_layer().is_none());
    std::env::remove_var("OPENAI_BASE_URL");
    assert!(OpenAiLayer::new().base_url_layer().is_none());
    assert_eq!((server.counts().total, other.counts().total), (1, 1));
}
