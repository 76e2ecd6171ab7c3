//! Item 2 and 7 of issue #20: the server's key goes only to callers that presented a valid
//! access key; anonymous callers never get it, on any method or route; a bad access key sends
//! nothing upstream. Checked against a raw loopback upstream that records every byte.

mod support;

use std::net::SocketAddr;

use support::{
    bearer, chat_as, chat_with, config_for, get_as, raw_gateway, request, start, RawUpstream, CHAT,
    KEY, SERVER_KEY,
};

const ALICE: &str = "gw-alice-0123456789abcdef";

/// A [`raw_gateway`] with `extra` arguments and the access key `alice=ALICE`, in the
/// environment `env`.
async fn alice_gateway(extra: &[&str], env: &[(&str, &str)]) -> (RawUpstream, SocketAddr) {
    let access = format!("alice={ALICE}");
    let mut args = extra.to_vec();
    args.extend(["--access-key", access.as_str()]);
    raw_gateway(&args, env).await
}

/// A method, a path and header lines.
type Attempt = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
);

/// Requests of every shape a caller might try, without a valid access key.
fn anonymous_requests() -> Vec<Attempt> {
    let paths = [
        "/v1/chat/completions",
        "/v1/models",
        "/v1/files/x",
        "/v1/organization/admin_api_keys",
        "/v1/unknown",
        "/",
    ];
    let auths: [Vec<(&str, &str)>; 5] = [
        vec![],
        vec![("authorization", "Bearer ")],
        vec![("authorization", "Bearer gw-wrong-0123456789abcdef")],
        vec![("authorization", "Basic YWxpY2U6cHc=")],
        vec![("api-key", ALICE)],
    ];
    let mut out = Vec::new();
    for method in ["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "TRACE"] {
        for path in paths {
            for auth in &auths {
                out.push((method, path, auth.clone()));
            }
        }
    }
    out
}

#[tokio::test]
async fn with_access_keys_anonymous_callers_never_reach_the_upstream() {
    let (upstream, gw) = alice_gateway(&[], &[("OPENAI_API_KEY", SERVER_KEY)]).await;
    for (method, path, headers) in anonymous_requests() {
        let body = if method == "POST" { CHAT } else { "" };
        let res = request(gw, method, path, &headers, body).await;
        assert!(
            [401, 404, 405].contains(&res.status),
            "{method} {path} {headers:?}: {}",
            res.status
        );
        assert!(!res.body.contains(SERVER_KEY) && !res.head.contains(SERVER_KEY));
        if res.status == 401 {
            assert_eq!(res.json()["error"]["code"], "invalid_api_key");
        }
    }
    assert!(upstream.received().is_empty(), "{:?}", upstream.received());
}

#[tokio::test]
async fn a_valid_access_key_is_replaced_by_the_server_key() {
    let env = [
        ("OPENAI_API_KEY", SERVER_KEY),
        ("OPENAI_ORG_ID", "org-server"),
    ];
    let (upstream, gw) = alice_gateway(&[], &env).await;
    let res = chat_with(gw, ALICE, &[("openai-organization", "org-other")]).await;
    assert_eq!(res.status, 200, "{}", res.body);
    let got = upstream.received();
    assert_eq!(got.len(), 1);
    let sent = &got[0];
    assert_eq!(sent.request_line(), "POST /v1/chat/completions HTTP/1.1");
    assert_eq!(
        sent.header("authorization").unwrap(),
        format!("Bearer {SERVER_KEY}")
    );
    assert_eq!(sent.header("openai-organization").unwrap(), "org-server");
    assert!(!sent.head.contains(ALICE), "{}", sent.head);
    assert_eq!(sent.body, CHAT.as_bytes());
}

#[tokio::test]
async fn without_access_keys_the_server_key_is_never_used() {
    // OPENAI_API_KEY is set, but no access key is configured: callers bring their own.
    let (upstream, gw) = raw_gateway(&[], &[("OPENAI_API_KEY", SERVER_KEY)]).await;
    for method in ["GET", "POST", "DELETE"] {
        for path in ["/v1/chat/completions", "/v1/models", "/v1/files/x"] {
            let body = if method == "POST" { CHAT } else { "" };
            let res = request(gw, method, path, &[], body).await;
            assert_eq!(res.status, 401, "{method} {path}: {}", res.body);
            assert!(!res.body.contains(SERVER_KEY));
        }
    }
    assert!(upstream.received().is_empty());
    // A caller's own key is forwarded as it came.
    let res = get_as(gw, "/v1/models", KEY).await;
    assert_eq!(res.status, 200, "{}", res.body);
    let got = upstream.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("authorization").unwrap(), bearer(KEY));
    assert!(!got[0].head.contains(SERVER_KEY));
    // A malformed own key is refused locally, as before.
    let res = chat_as(gw, "sk-...").await;
    assert_eq!(res.status, 401, "{}", res.body);
    assert_eq!(upstream.received().len(), 1);
}

#[tokio::test]
async fn azure_style_upstream_gets_the_key_in_api_key() {
    let (upstream, gw) = alice_gateway(
        &["--upstream-auth-header", "api-key"],
        &[("OPENAI_API_KEY", "azure-key-0123456789abcdef")],
    )
    .await;
    let res = get_as(gw, "/v1/models", ALICE).await;
    assert_eq!(res.status, 200, "{}", res.body);
    let sent = &upstream.received()[0];
    assert_eq!(
        sent.header("api-key").unwrap(),
        "azure-key-0123456789abcdef"
    );
    assert_eq!(sent.header("authorization"), None);
}

#[tokio::test]
async fn access_keys_file_names_keys() {
    let dir = std::env::temp_dir().join(format!("oai-gateway-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keys");
    std::fs::write(
        &file,
        format!("# team keys\nalice {ALICE}\n\nbob gw-bob-0123456789abcdef\n"),
    )
    .unwrap();
    let upstream = RawUpstream::start().await;
    let url = upstream.url();
    let c = config_for(
        &url,
        &["--access-keys-file", file.to_str().unwrap()],
        &[("OPENAI_API_KEY", SERVER_KEY)],
    );
    assert_eq!(c.access_keys.len(), 2);
    let gw = start(c).await;
    for key in [ALICE, "gw-bob-0123456789abcdef"] {
        let res = get_as(gw, "/v1/models", key).await;
        assert_eq!(res.status, 200, "{}", res.body);
    }
    assert_eq!(upstream.received().len(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}
