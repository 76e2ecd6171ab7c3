//! The base URL as OpenAI's SDKs write it, with `/v1`, and without: `OpenAiLayer` and
//! `BaseUrlLayer` send both to the same path of the mock server, never `/v1/v1/…`.
#![cfg(feature = "mock")]

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use oai_resilience::mock::MockServer;
use oai_resilience::stack::{BaseUrlLayer, InvalidBaseUrl, OpenAiLayer};
use oai_resilience::validate::ValidateBody;
use oai_resilience::{AuthLayer, ClassifyLayer, ErrorKind};
use tower::{Layer, ServiceBuilder, ServiceExt};

const KEY: &str = "sk-proj-BaseUrlTestKey0123456789abcdefghijklmnopqrstu";
use test_support::CHAT;

fn post(path: &str) -> http::Request<Full<Bytes>> {
    http::Request::post(path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
        .unwrap()
}

/// The spellings of the mock's base URL: `http://127.0.0.1:PORT` with and without `/v1`,
/// with and without a trailing slash.
fn spellings(server: &MockServer) -> [String; 4] {
    let url = server.url();
    [
        url.clone(),
        format!("{url}/"),
        format!("{url}/v1"),
        format!("{url}/v1/"),
    ]
}

fn paths(server: &MockServer) -> Vec<String> {
    server.requests().into_iter().map(|r| r.path).collect()
}

#[tokio::test]
async fn openai_layer_sends_every_spelling_to_the_same_path() {
    let server = MockServer::start().await;
    for base in spellings(&server) {
        let client: Client<HttpConnector, ValidateBody<Full<Bytes>>> = test_support::http_client();
        // `base_url` (a `Uri`) and `try_base_url` (a string) alike.
        let layers = [
            OpenAiLayer::new().base_url(base.parse().unwrap()),
            OpenAiLayer::new().try_base_url(&base).unwrap(),
        ];
        for layer in layers {
            let svc = layer.auth(AuthLayer::from_key(KEY)).layer(client.clone());
            let res = svc
                .oneshot(post("/v1/chat/completions"))
                .await
                .unwrap_or_else(|e| panic!("{base}: {e}"));
            assert_eq!(res.status(), 200, "{base}");
        }
    }
    assert_eq!(paths(&server), vec!["/v1/chat/completions"; 8]);
}

#[tokio::test]
async fn base_url_layer_sends_every_spelling_to_the_same_path() {
    let server = MockServer::start().await;
    for base in spellings(&server) {
        let client: Client<HttpConnector, Full<Bytes>> = test_support::http_client();
        let layer: BaseUrlLayer = base.parse().unwrap();
        assert_eq!(layer.url(), Ok(server.url().as_str()));
        let svc = ServiceBuilder::new()
            .layer(layer)
            .layer(ClassifyLayer::new())
            .service(client);
        let req = post("/v1/chat/completions");
        let res = svc.oneshot(req).await.unwrap();
        assert_eq!(res.status(), 200, "{base}");
    }
    assert_eq!(paths(&server), vec!["/v1/chat/completions"; 4]);
}

#[tokio::test]
async fn an_invalid_base_url_is_a_typed_error_and_sends_nothing() {
    let server = MockServer::start().await;
    // No scheme: `Uri` parses it, but it is not a base.
    let authority_only = server.url().trim_start_matches("http://").to_owned();
    let err = OpenAiLayer::new()
        .try_base_url(&format!("{authority_only}/v1"))
        .unwrap_err();
    assert!(err.to_string().starts_with("invalid base URL"), "{err}");

    let client: Client<HttpConnector, ValidateBody<Full<Bytes>>> = test_support::http_client();
    let svc = OpenAiLayer::new()
        .base_url(authority_only.parse().unwrap())
        .auth(AuthLayer::from_key(KEY))
        .layer(client);
    let err = svc.oneshot(post("/v1/chat/completions")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal);
    assert!(err.kind().is_local());
    let source = std::error::Error::source(&err).unwrap();
    assert!(source.is::<InvalidBaseUrl>(), "{source}");
    assert!(
        err.to_string().contains("invalid base URL"),
        "the error names the cause: {err}"
    );
    assert_eq!(server.counts().total, 0);
}
