//! End to end over loopback: `ValidateLayer` → hyper-util client → the mock server. An invalid
//! request never reaches the server; a valid one does, byte for byte.
#![cfg(feature = "mock")]

use bytes::Bytes;
use http_body_util::Full;
use oai_resilience::mock::{MockServer, Route};
use oai_resilience::validate::{ValidateBody, ValidateLayer};
use oai_resilience::{ClassifyLayer, ErrorKind};
use tower::{Service, ServiceBuilder, ServiceExt};

/// Posts `body` to `url` through `svc`, once it is ready.
async fn send<S>(svc: &mut S, url: String, body: &'static str) -> Result<S::Response, S::Error>
where
    S: Service<http::Request<Full<Bytes>>>,
{
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    svc.ready().await?.call(req).await
}

#[tokio::test]
async fn an_invalid_request_never_reaches_the_server() {
    let server = MockServer::builder().start().await;
    let client = test_support::http_client::<ValidateBody<Full<Bytes>>>();
    let mut svc = ServiceBuilder::new()
        .layer(ValidateLayer::new())
        .layer(ClassifyLayer::new())
        .service(client);

    // Missing `messages`, and a temperature out of range.
    let bad = r#"{"model":"gpt-4o-mini","temperature":9}"#;
    let err = send(&mut svc, server.endpoint(Route::ChatCompletions), bad)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidParameter);
    assert_eq!(err.violations().len(), 2);
    assert_eq!(err.param(), Some("messages"));
    assert_eq!(server.counts().total, 0, "zero requests reached the server");

    let bad = r#"{"model":"text-embedding-3-small","input":"x","dimensions":0,"extra":1}"#;
    let err = send(&mut svc, server.endpoint(Route::Embeddings), bad)
        .await
        .unwrap_err();
    let params: Vec<&str> = err.violations().iter().map(|v| v.param.as_str()).collect();
    assert_eq!(params, ["dimensions", "extra"]);
    assert_eq!(server.counts().total, 0);

    // A valid request goes through, with the bytes the caller sent.
    let good = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}]}"#;
    let res = send(&mut svc, server.endpoint(Route::ChatCompletions), good)
        .await
        .unwrap();
    assert!(res.status().is_success());
    let counts = server.counts();
    assert_eq!((counts.total, counts.ok), (1, 1));
    assert_eq!(server.requests()[0].body, good.as_bytes());
}
