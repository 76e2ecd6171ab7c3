//! Local key checks end to end: `AuthLayer` → `ClassifyLayer` → hyper client → the mock
//! server. Every missing or malformed key fails with a typed error and the mock receives
//! **zero** requests; the controls show that the same stack does reach the mock with a good key.
#![cfg(feature = "mock")]

use crate::auth_common;

use auth_common::*;
use oai_resilience::auth::{AuthLayer, EnvSource, FetchMode, KeyRules, KeySource};
use oai_resilience::mock::{MockServer, Route};
use oai_resilience::{ApiKey, AuthCause, ClassifyLayer, Error, ErrorKind};
use tower::{ServiceBuilder, ServiceExt};

/// Sends one chat request through auth → classify → client to `url` (connections always go
/// to the mock, whatever host `url` names).
async fn send(server: &MockServer, layer: AuthLayer, url: &str) -> Result<u16, Error> {
    send_req(server, layer, chat(url)).await
}

async fn send_req(
    server: &MockServer,
    layer: AuthLayer,
    req: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> Result<u16, Error> {
    let svc = ServiceBuilder::new()
        .layer(layer)
        .layer(ClassifyLayer::new())
        .service(loopback_client(server.addr()));
    svc.oneshot(req).await.map(|res| res.status().as_u16())
}

async fn mock() -> MockServer {
    MockServer::builder().api_key(KEY).start().await
}

/// Checks a local rejection: the kind, the cause, a piece of the hint, the key never in the
/// text, and zero requests at the server.
#[track_caller]
fn rejected(
    server: &MockServer,
    result: Result<u16, Error>,
    kind: ErrorKind,
    cause: impl Into<Option<AuthCause>>,
    hint: &str,
) -> Error {
    let err = result.expect_err("the key must be rejected locally");
    assert_eq!(err.kind(), kind, "{err:?}");
    assert_eq!(err.auth_cause(), cause.into(), "{err:?}");
    assert!(
        err.hint().contains(hint),
        "hint {:?} lacks {hint:?}",
        err.hint()
    );
    assert!(err.kind().is_local());
    assert!(!err.is_retryable());
    assert_eq!(err.status(), None, "no response was involved");
    let text = format!("{err} {err:?}");
    assert_no_secret(&text, KEY);
    assert_eq!(
        server.counts().total,
        0,
        "the mock must receive zero requests"
    );
    err
}

// ---- controls: the same stack does reach the mock ----

#[tokio::test]
async fn control_a_good_key_reaches_openai_host() {
    let server = mock().await;
    let status = send(&server, AuthLayer::from_key(KEY), OPENAI_CHAT)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(server.counts().total, 1);
    let sent = &server.requests()[0];
    assert_eq!(sent.headers["authorization"], format!("Bearer {KEY}"));
}

#[tokio::test]
async fn control_other_hosts_get_only_the_universal_checks() {
    let token = "local-token-7f3a9c";
    let server = MockServer::builder().api_key(token).start().await;
    let status = send(
        &server,
        AuthLayer::from_key(token),
        &server.endpoint(Route::ChatCompletions),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(server.counts().total, 1);
}

#[tokio::test]
async fn control_env_key_org_and_project_reach_the_server() {
    let server = mock().await;
    let env = EnvSource::with_lookup(|name| match name {
        "OPENAI_API_KEY" => Some(KEY.into()),
        "OPENAI_ORG_ID" => Some("org-abc".into()),
        "OPENAI_PROJECT_ID" => Some("proj_def".into()),
        _ => None,
    });
    send(&server, AuthLayer::new(env), OPENAI_CHAT)
        .await
        .unwrap();
    let sent = &server.requests()[0];
    assert_eq!(sent.headers["openai-organization"], "org-abc");
    assert_eq!(sent.headers["openai-project"], "proj_def");
}

// ---- missing key ----

#[tokio::test]
async fn missing_env_key_sends_nothing() {
    let server = mock().await;
    let env = EnvSource::with_lookup(|_| None);
    let err = rejected(
        &server,
        send(&server, AuthLayer::new(env), OPENAI_CHAT).await,
        ErrorKind::MissingApiKey,
        None,
        "set OPENAI_API_KEY",
    );
    assert!(err.hint().contains("https://platform.openai.com/api-keys"));
    assert!(
        err.to_string().contains("OPENAI_API_KEY is not set"),
        "{err}"
    );
}

#[tokio::test]
async fn missing_header_without_a_source_sends_nothing() {
    let server = mock().await;
    rejected(
        &server,
        send(&server, AuthLayer::check_only(), OPENAI_CHAT).await,
        ErrorKind::MissingApiKey,
        None,
        "OPENAI_API_KEY",
    );
}

#[tokio::test]
async fn empty_env_key_sends_nothing() {
    let server = mock().await;
    let env = EnvSource::with_lookup(|name| (name == "OPENAI_API_KEY").then(String::new));
    rejected(
        &server,
        send(&server, AuthLayer::new(env), OPENAI_CHAT).await,
        ErrorKind::MalformedApiKey,
        AuthCause::Empty,
        "use a real key",
    );
}

#[tokio::test]
async fn env_key_with_a_trailing_newline_sends_nothing() {
    // The `.env` / `echo` fault: the variable holds the key and its line break.
    let server = mock().await;
    let env = EnvSource::with_lookup(|name| (name == "OPENAI_API_KEY").then(|| format!("{KEY}\n")));
    let err = rejected(
        &server,
        send(&server, AuthLayer::new(env), OPENAI_CHAT).await,
        ErrorKind::MalformedApiKey,
        AuthCause::Whitespace,
        "remove the whitespace",
    );
    assert!(err.detail().unwrap().starts_with("a line break at the end"));
}

// ---- each malformed shape, one test each ----

macro_rules! malformed {
    ($($name:ident: $key:expr => $cause:ident, $hint:literal;)*) => {$(
        #[tokio::test]
        async fn $name() {
            let server = mock().await;
            let key: String = $key;
            rejected(
                &server,
                send(&server, AuthLayer::from_key(key), OPENAI_CHAT).await,
                ErrorKind::MalformedApiKey,
                AuthCause::$cause,
                $hint,
            );
        }
    )*};
}

malformed! {
    malformed_empty: String::new() => Empty, "use a real key";
    malformed_only_whitespace: " \n".to_owned() => Empty, "use a real key";
    malformed_trailing_newline: format!("{KEY}\n") => Whitespace, "copy-paste";
    malformed_trailing_crlf: format!("{KEY}\r\n") => Whitespace, "copy-paste";
    malformed_leading_space: format!(" {KEY}") => Whitespace, "copy-paste";
    malformed_space_inside: format!("{}  {}", &KEY[..20], &KEY[20..]) => Whitespace, "copy-paste";
    malformed_newline_inside: format!("{}\n{}", &KEY[..20], &KEY[20..]) => Whitespace, "copy-paste";
    malformed_tab_inside: format!("{}\t{}", &KEY[..20], &KEY[20..]) => Whitespace, "copy-paste";
    malformed_double_quotes: format!("\"{KEY}\"") => Quoted, "remove the quotes";
    malformed_single_quotes: format!("'{KEY}'") => Quoted, "remove the quotes";
    malformed_typographic_quotes: format!("\u{201C}{KEY}\u{201D}") => Quoted, "remove the quotes";
    malformed_non_ascii_letter: format!("{}é{}", &KEY[..20], &KEY[21..]) => NonAscii, "re-copy the key";
    malformed_zero_width_space: format!("{KEY}\u{200B}") => NonAscii, "re-copy the key";
    malformed_doubled_bearer: format!("Bearer {KEY}") => DoubledBearer, "the `Bearer ` prefix is added for you";
    malformed_placeholder_sk_dots: "sk-...".to_owned() => Placeholder, "use a real key";
    malformed_placeholder_your_api_key: "your-api-key".to_owned() => Placeholder, "use a real key";
    malformed_placeholder_angle_brackets: "<OPENAI_API_KEY>".to_owned() => Placeholder, "use a real key";
    malformed_placeholder_unexpanded_variable: "$OPENAI_API_KEY".to_owned() => Placeholder, "use a real key";
    malformed_placeholder_undefined: "undefined".to_owned() => Placeholder, "use a real key";
    malformed_wrong_prefix_for_openai: format!("key-{}", &KEY[8..]) => WrongPrefix, "start with `sk-`";
    malformed_other_vendors_key_for_openai: format!("sk-ant-api03-{}", &KEY[8..]) => WrongPrefix, "start with `sk-`";
    malformed_invalid_character_for_openai: format!("{}+{}", &KEY[..20], &KEY[21..]) => InvalidCharacters, "re-copy the key";
    malformed_truncated_for_openai: KEY[..20].to_owned() => TooShort, "copy it again in full";
}

#[tokio::test]
async fn a_malformed_header_already_on_the_request_sends_nothing() {
    let server = mock().await;
    let mut req = chat(OPENAI_CHAT);
    req.headers_mut().insert(
        "authorization",
        format!("Bearer Bearer {KEY}").parse().unwrap(),
    );
    rejected(
        &server,
        send_req(&server, AuthLayer::from_key(KEY), req).await,
        ErrorKind::MalformedApiKey,
        AuthCause::DoubledBearer,
        "pass the bare key",
    );
    let mut req = chat(OPENAI_CHAT);
    req.headers_mut()
        .insert("authorization", KEY.parse().unwrap());
    rejected(
        &server,
        send_req(&server, AuthLayer::check_only(), req).await,
        ErrorKind::MalformedApiKey,
        AuthCause::MissingBearerScheme,
        "Authorization: Bearer <key>",
    );
}

#[tokio::test]
async fn a_wrong_prefix_to_another_host_is_sent_unless_rules_say_always() {
    // The shape rules are for OpenAI's host: a compatible service's own key shape passes...
    let token = "key-1234567890";
    let server = MockServer::builder().api_key(token).start().await;
    let url = server.endpoint(Route::ChatCompletions);
    assert_eq!(
        send(&server, AuthLayer::from_key(token), &url)
            .await
            .unwrap(),
        200
    );
    // ...and configured rules apply everywhere.
    let server = MockServer::builder().api_key(token).start().await;
    let rules = KeyRules::openai().scope(oai_resilience::auth::ShapeScope::Always);
    rejected(
        &server,
        send(&server, AuthLayer::from_key(token).rules(rules), &url).await,
        ErrorKind::MalformedApiKey,
        AuthCause::WrongPrefix,
        "start with `sk-`",
    );
}

// ---- providers ----

#[tokio::test]
async fn a_failing_provider_sends_nothing() {
    let server = mock().await;
    let layer = AuthLayer::from_provider(|_m: FetchMode| async {
        Err::<ApiKey, _>(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "vault is sealed",
        ))
    });
    let err = rejected(
        &server,
        send(&server, layer, OPENAI_CHAT).await,
        ErrorKind::Internal,
        AuthCause::KeyProvider,
        "key provider",
    );
    let source = std::error::Error::source(&err).expect("the provider's error is kept");
    let io = source.downcast_ref::<std::io::Error>().unwrap();
    assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);
    assert!(err.to_string().contains("vault is sealed"), "{err}");
}

#[tokio::test]
async fn a_provider_giving_a_malformed_key_sends_nothing() {
    let server = mock().await;
    let layer = AuthLayer::from_provider(|_m: FetchMode| async {
        Ok::<_, std::io::Error>(ApiKey::new(format!("{KEY}\n")))
    });
    rejected(
        &server,
        send(&server, layer, OPENAI_CHAT).await,
        ErrorKind::MalformedApiKey,
        AuthCause::Whitespace,
        "copy-paste",
    );
}

#[tokio::test]
async fn provider_rotation_between_calls_reaches_the_server() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let server = MockServer::start().await;
    let n = Arc::new(AtomicUsize::new(0));
    let layer = AuthLayer::from_provider(move |_m: FetchMode| {
        let i = n.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, std::io::Error>(ApiKey::new([KEY, KEY2][i % 2])) }
    });
    let svc = ServiceBuilder::new()
        .layer(layer)
        .layer(ClassifyLayer::new())
        .service(loopback_client(server.addr()));
    for _ in 0..3 {
        svc.clone().oneshot(chat(OPENAI_CHAT)).await.unwrap();
    }
    let keys: Vec<String> = server
        .requests()
        .iter()
        .map(|r| r.headers["authorization"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        keys,
        [
            format!("Bearer {KEY}"),
            format!("Bearer {KEY2}"),
            format!("Bearer {KEY}")
        ]
    );
}

#[tokio::test]
async fn the_plain_functions_work_without_tower() {
    let source = KeySource::from(EnvSource::with_lookup(|name| {
        (name == "OPENAI_API_KEY").then(|| format!("'{KEY}'"))
    }));
    let err = source
        .resolve_checked(&KeyRules::openai())
        .await
        .unwrap_err();
    assert_eq!(err.auth_cause(), Some(AuthCause::Quoted));
    let ok = KeySource::from_key(KEY)
        .resolve_checked(&KeyRules::openai())
        .await
        .unwrap();
    assert_eq!(ok.key().to_string(), "sk-proj-…wxyz");
}
