//! Server-side auth failures end to end: `AuthLayer` → `ClassifyLayer` → hyper client → the
//! mock server answering OpenAI's 401/403s. Each error names its cause with the matching hint,
//! and the key fragment that OpenAI's 401 echoes is redacted.
#![cfg(feature = "mock")]

use crate::scripted;

use crate::auth_common;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;

use auth_common::*;
use oai_resilience::auth::{AuthLayer, FetchMode, KeySource, RefreshOnUnauthorizedLayer};
use oai_resilience::mock::{AuthFailure, MockResponse, MockServer, Route};
use oai_resilience::{ApiKey, AuthCause, Classify, ClassifyLayer, Error, ErrorKind};
use scripted::scripted as scripted_server;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

async fn send<L, B>(server: &MockServer, layer: L) -> Result<u16, Error>
where
    L: Layer<Classify<HttpClient>>,
    L::Service: Service<http::Request<Full<Bytes>>, Response = http::Response<B>, Error = Error>,
{
    let svc = ServiceBuilder::new()
        .layer(layer)
        .layer(ClassifyLayer::new())
        .service(client());
    svc.oneshot(chat(server.endpoint(Route::ChatCompletions)))
        .await
        .map(|r| r.status().as_u16())
}

/// Checks a server-side auth error: status, kind, cause, exact hint, the request id the mock
/// sent, one-line Display naming the cause, and no secret anywhere.
#[track_caller]
fn check(
    err: &Error,
    server: &MockServer,
    status: u16,
    kind: ErrorKind,
    cause: AuthCause,
    hint: &str,
) {
    let ctx = format!("{err:?}");
    assert_eq!(err.status().map(|s| s.as_u16()), Some(status), "{ctx}");
    assert_eq!(err.kind(), kind, "{ctx}");
    assert_eq!(err.auth_cause(), Some(cause), "{ctx}");
    assert_eq!(err.hint(), hint, "{ctx}");
    assert!(!err.is_retryable(), "{ctx}");
    let sent = server.requests().last().unwrap().request_id.clone();
    assert_eq!(err.request_id(), Some(sent.as_str()));
    let display = err.to_string();
    assert!(
        display.starts_with(&format!("{status} {kind} ({})", cause.describe())),
        "{display}"
    );
    assert!(display.ends_with(&format!("hint: {hint}")), "{display}");
    assert_no_secret(&format!("{display} {ctx}"), KEY);
}

/// [`check`] for a 401 that names an incorrect key.
#[track_caller]
fn check_incorrect_key(err: &Error, server: &MockServer) {
    check(
        err,
        server,
        401,
        ErrorKind::Authentication,
        AuthCause::IncorrectKey,
        "check that OPENAI_API_KEY holds a valid, current key (keys are at https://platform.openai.com/api-keys)",
    );
}

/// A mock server whose first chat call fails with `failure`.
async fn failing_with(failure: AuthFailure) -> MockServer {
    scripted_server(None, [MockResponse::auth_failure(failure)]).await
}

async fn scripted(failure: AuthFailure) -> (MockServer, Error) {
    let server = failing_with(failure).await;
    let err = send(&server, AuthLayer::from_key(KEY)).await.unwrap_err();
    assert_eq!(server.counts().total, 1);
    (server, err)
}

#[tokio::test]
async fn incorrect_key_names_the_cause_and_redacts_the_echoed_fragment() {
    // The mock expects another key, and echoes the one it got masked, as OpenAI does:
    // `sk-proj*****…wxyz`.
    let server = MockServer::builder().api_key(KEY2).start().await;
    let err = send(&server, AuthLayer::from_key(KEY)).await.unwrap_err();
    check_incorrect_key(&err, &server);
    assert_eq!(err.code(), Some("invalid_api_key"));
    let message = err.message().unwrap();
    assert!(
        message.starts_with("Incorrect API key provided: [redacted]. You can find"),
        "{message}"
    );
    for fragment in ["sk-proj", "***", "wxyz"] {
        let text = format!("{err} {err:?}");
        assert!(!text.contains(fragment), "{fragment:?} in {text}");
    }
}

#[tokio::test]
async fn incorrect_key_scripted_fragment_is_redacted() {
    let (server, err) = scripted(AuthFailure::IncorrectKey).await;
    check_incorrect_key(&err, &server);
    let echoed = oai_resilience::mock::ECHOED_KEY_FRAGMENT;
    let text = format!("{err} {err:?}");
    assert!(!text.contains(echoed), "{text}");
    assert!(!text.contains(&echoed[..7]), "{text}");
    assert!(!text.contains(&echoed[echoed.len() - 4..]), "{text}");
    assert!(text.contains("[redacted]"));
}

#[tokio::test]
async fn not_a_member_of_an_organization() {
    let (server, err) = scripted(AuthFailure::NotOrgMember).await;
    check(
        &err,
        &server,
        401,
        ErrorKind::Authentication,
        AuthCause::NotOrgMember,
        "ask to be added to an organization, or set OPENAI_ORG_ID to one you belong to",
    );
}

#[tokio::test]
async fn ip_not_allowed() {
    let (server, err) = scripted(AuthFailure::IpNotAuthorized).await;
    check(
        &err,
        &server,
        401,
        ErrorKind::Authentication,
        AuthCause::IpNotAllowed,
        "add this IP address to the key's project allow-list, or call from an allowed network",
    );
}

#[tokio::test]
async fn unsupported_region() {
    let (server, err) = scripted(AuthFailure::UnsupportedRegion).await;
    check(
        &err,
        &server,
        403,
        ErrorKind::PermissionDenied,
        AuthCause::UnsupportedRegion,
        "the API is not available from this region; see OpenAI's supported countries",
    );
}

#[tokio::test]
async fn missing_scope() {
    let (server, err) = scripted(AuthFailure::MissingScope).await;
    check(
        &err,
        &server,
        401,
        ErrorKind::Authentication,
        AuthCause::MissingScope,
        "give the key the needed permission (a restricted key lacks this scope) or use another key",
    );
}

#[tokio::test]
async fn key_lost_on_the_way() {
    // A proxy that strips the header: the server says no key arrived.
    let (server, err) = scripted(AuthFailure::MissingKey).await;
    check(
        &err,
        &server,
        401,
        ErrorKind::Authentication,
        AuthCause::MissingKey,
        "set OPENAI_API_KEY to a key from https://platform.openai.com/api-keys, or configure a key source on the auth layer",
    );
}

#[tokio::test]
async fn the_key_the_server_got_is_the_one_injected() {
    let server = MockServer::builder().api_key(KEY).start().await;
    assert_eq!(send(&server, AuthLayer::from_key(KEY)).await.unwrap(), 200);
    assert_eq!(server.counts().unauthorized, 0);
}

/// A provider that gives `KEY` from its cache and `KEY2` when asked to refresh.
fn rotating(asked: Arc<Mutex<Vec<FetchMode>>>) -> KeySource {
    KeySource::provider(move |mode: FetchMode| {
        asked.lock().unwrap().push(mode);
        async move {
            Ok::<_, std::io::Error>(ApiKey::new(match mode {
                FetchMode::Refresh => KEY2,
                _ => KEY,
            }))
        }
    })
}

/// An auth layer over `rotating(asked)` that fetches a fresh key once after a 401.
fn refreshing(asked: &Arc<Mutex<Vec<FetchMode>>>) -> RefreshOnUnauthorizedLayer {
    AuthLayer::new(rotating(Arc::clone(asked))).refresh_on_unauthorized()
}

#[tokio::test]
async fn refresh_on_unauthorized_retries_once_with_a_fresh_key() {
    let server = MockServer::builder().api_key(KEY2).start().await;
    let asked = Arc::default();
    let status = send(&server, refreshing(&asked)).await.unwrap();
    assert_eq!(status, 200);
    let counts = server.counts();
    assert_eq!((counts.total, counts.unauthorized, counts.ok), (2, 1, 1));
    assert_eq!(
        *asked.lock().unwrap(),
        [FetchMode::MayCache, FetchMode::Refresh]
    );
    let keys: Vec<_> = server
        .requests()
        .iter()
        .map(|r| r.headers["authorization"].clone())
        .collect();
    assert_eq!(keys[0], format!("Bearer {KEY}").as_str());
    assert_eq!(keys[1], format!("Bearer {KEY2}").as_str());
}

#[tokio::test]
async fn without_refresh_a_401_is_returned_after_one_request() {
    let server = MockServer::builder().api_key(KEY2).start().await;
    let asked = Arc::default();
    let err = send(&server, AuthLayer::new(rotating(Arc::clone(&asked))))
        .await
        .unwrap_err();
    assert_eq!(err.auth_cause(), Some(AuthCause::IncorrectKey));
    assert_eq!(server.counts().total, 1);
    assert_eq!(*asked.lock().unwrap(), [FetchMode::MayCache]);
}

#[tokio::test]
async fn refresh_does_not_retry_causes_a_key_cannot_cure() {
    let server = failing_with(AuthFailure::UnsupportedRegion).await;
    let asked = Arc::default();
    let err = send(&server, refreshing(&asked)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert_eq!(server.counts().total, 1);
    assert_eq!(asked.lock().unwrap().len(), 1);
}
