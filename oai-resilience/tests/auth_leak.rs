//! The leak test: the whole default stack (auth → a request-tracing layer → retry → pace →
//! classify → hyper client → the mock) runs with tracing at TRACE captured in memory, through successes, local
//! rejections, 401s, provider failures and a key refresh; every error, layer, service and
//! source is then formatted with `{:?}`, `{:#?}` and `{}`. No 8 consecutive characters of
//! either key's secret part may appear anywhere.
#![cfg(feature = "mock")]

mod auth_common;

use std::io;

use auth_common::*;
use bytes::Bytes;
use http_body_util::Full;
use oai_resilience::auth::{AuthLayer, Credentials, EnvSource, FetchMode, KeySource};
use oai_resilience::mock::{MockServer, Route};
use oai_resilience::{ApiKey, ClassifyLayer, Error, PaceLayer, RetryLayer};
use tower::{ServiceBuilder, ServiceExt};

use test_support::capture;

use capture::Captured;

/// Runs one request through auth → trace requests → retry → pace → classify → client, logging the outcome the
/// way an application would, and returns the error (if any) for formatting later.
async fn run(
    layer: AuthLayer,
    req: http::Request<Full<Bytes>>,
    addr: std::net::SocketAddr,
) -> Option<Error> {
    tracing::info!(layer = ?layer, "test: sending");
    let svc = ServiceBuilder::new()
        .layer(layer)
        // What tower-http's TraceLayer or a user's own logging does: Debug of the request.
        .map_request(|req: http::Request<Full<Bytes>>| {
            tracing::trace!(request = ?req, "test: request leaving the auth layer");
            req
        })
        .layer(RetryLayer::new())
        .layer(PaceLayer::new())
        .layer(ClassifyLayer::new())
        .service(loopback_client(addr));
    tracing::debug!(service = ?svc, "test: stack");
    match svc.oneshot(req).await {
        Ok(res) => {
            tracing::info!(response = ?res, "test: ok");
            None
        }
        Err(err) => {
            tracing::warn!(error = %err, debug = ?err, "test: call failed");
            Some(err)
        }
    }
}

#[tokio::test]
async fn no_key_material_in_logs_debug_or_display() {
    // Global, in a binary with one test: a thread-local subscriber can miss events whose
    // callsite interest another thread cached first.
    let captured = Captured::install_global(tracing::Level::TRACE);

    // The mock accepts only KEY2, so KEY gets OpenAI's 401 (with its echo of the key).
    let server = MockServer::builder().api_key(KEY2).start().await;
    let addr = server.addr();
    let mut errors: Vec<Error> = Vec::new();
    let mut layers: Vec<AuthLayer> = Vec::new();

    // 1. Success and a 401, with static keys.
    for key in [KEY2, KEY] {
        let layer = AuthLayer::from_key(key);
        layers.push(layer.clone());
        errors.extend(run(layer, chat(OPENAI_CHAT), addr).await);
    }

    // 2. Local rejections of malformed variants of both keys.
    for key in [KEY, KEY2] {
        let variants = [
            format!("{key}\n"),
            format!(" {key}"),
            format!("\"{key}\""),
            format!("Bearer {key}"),
            format!("{}é{}", &key[..20], &key[21..]),
            format!("{}+{}", &key[..20], &key[21..]),
            format!("{}.{}", &key[..20], &key[21..]),
            format!("xx-{}", &key[3..]),
            key[..24].to_owned(),
        ];
        for bad in variants {
            let layer = AuthLayer::from_key(bad);
            layers.push(layer.clone());
            errors.extend(run(layer, chat(OPENAI_CHAT), addr).await);
        }
    }

    // 3. A header the caller set (not marked sensitive), valid and malformed.
    for value in [
        format!("Bearer {KEY2}"),
        format!("Bearer Bearer {KEY}"),
        KEY.to_owned(),
    ] {
        let mut req = chat(OPENAI_CHAT);
        req.headers_mut()
            .insert("authorization", value.parse().unwrap());
        errors.extend(run(AuthLayer::check_only(), req, addr).await);
    }

    // 4. The environment (fake), with org and project.
    let env = EnvSource::with_lookup(|name| match name {
        "OPENAI_API_KEY" => Some(format!("{KEY}\r\n")),
        "OPENAI_ORG_ID" => Some("org-leaktest".into()),
        _ => None,
    });
    tracing::info!(env = ?env, "test: env source");
    errors.extend(run(AuthLayer::new(env), chat(OPENAI_CHAT), addr).await);

    // 5. Providers: one that fails with the key in its own message, one that rotates with a
    // refresh on 401.
    let failing = AuthLayer::from_provider(|_m: FetchMode| async {
        Err::<ApiKey, _>(io::Error::other(format!("vault refused to hand out {KEY}")))
    });
    layers.push(failing.clone());
    errors.extend(run(failing, chat(OPENAI_CHAT), addr).await);
    let rotating = KeySource::provider(|mode: FetchMode| async move {
        Ok::<_, io::Error>(Credentials::new(match mode {
            FetchMode::Refresh => KEY2,
            _ => KEY,
        }))
    });
    tracing::info!(source = ?rotating, "test: provider");
    let svc = ServiceBuilder::new()
        .layer(AuthLayer::new(rotating.clone()).refresh_on_unauthorized())
        .layer(RetryLayer::new())
        .layer(PaceLayer::new())
        .layer(ClassifyLayer::new())
        .service(loopback_client(addr));
    tracing::debug!(service = ?svc, "test: refreshing stack");
    svc.oneshot(chat(server.endpoint(Route::ChatCompletions)))
        .await
        .expect("the refreshed key is accepted");

    // 6. Azure's header.
    let azure = AuthLayer::from_key(KEY).azure();
    layers.push(azure.clone());
    errors.extend(run(azure, chat(server.endpoint(Route::ChatCompletions)), addr).await);

    // Everything formatted, every way.
    let mut formatted = String::new();
    for err in &errors {
        formatted += &format!("{err}\n{err:?}\n{err:#?}\n{}\n", err.hint());
    }
    for layer in &layers {
        formatted += &format!("{layer:?}\n{layer:#?}\n");
    }
    for key in [KEY, KEY2] {
        let k = ApiKey::new(key);
        let c = Credentials::new(k.clone()).with_project("proj_x");
        let s = KeySource::from_credentials(c.clone());
        formatted += &format!("{k} {k:?} {c:?} {c:#?} {s:?}\n");
    }

    let logs = captured.text();
    // The capture works and saw the interesting events (so the test can fail).
    assert!(logs.contains("auth: key added to the request"), "{logs}");
    assert!(
        logs.contains("auth: request rejected locally; nothing sent"),
        "{logs}"
    );
    assert!(logs.contains("auth: the server rejected the key"), "{logs}");
    assert!(
        logs.contains("auth: retrying once with a fresh key after a 401"),
        "{logs}"
    );
    assert!(
        logs.contains("test: request leaving the auth layer"),
        "{logs}"
    );
    assert!(
        logs.contains("Sensitive"),
        "request Debug shows the key header as Sensitive"
    );
    assert!(logs.contains("sk-proj-…wxyz"), "masked keys are logged");
    assert!(errors.len() >= 20, "{} errors", errors.len());
    // Reached the mock: KEY2 ok, KEY 401, the caller's valid header, the refresh's two
    // requests, and Azure's (a 401: the mock wants `Authorization`). Nothing malformed.
    assert_eq!(
        server.counts().total,
        6,
        "only the well-formed calls reached the mock"
    );

    for key in [KEY, KEY2] {
        assert_no_secret(&logs, key);
        assert_no_secret(&formatted, key);
    }
}
