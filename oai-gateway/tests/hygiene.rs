//! Item 7 of issue #20: only the OpenAI API's methods and routes are forwarded; the rest is
//! refused locally in OpenAI's error shape. Hop-by-hop headers, headers named in
//! `Connection:` and `cookie` never reach the upstream; `set-cookie` never comes back.

mod support;

use support::{bearer, chat_with, get_as, raw, raw_gateway, request, KEY};

#[tokio::test]
async fn routes_outside_the_allowlist_are_refused_locally() {
    let (upstream, gw) = raw_gateway(&[], &[]).await;
    let auth = bearer(KEY);
    let h = [("authorization", auth.as_str())];
    for (method, path, status) in [
        ("GET", "/v1/organization/admin_api_keys", 404),
        ("GET", "/v1/organization/users", 404),
        ("GET", "/v1/models/../organization/admin_api_keys", 404),
        ("GET", "/v1/models/%2e%2e/organization/users", 404),
        ("GET", "/v1/unknown", 404),
        ("GET", "/admin", 404),
        ("PUT", "/v1/files/x", 405),
        ("PATCH", "/v1/models", 405),
        ("TRACE", "/v1/models", 405),
        ("OPTIONS", "/v1/models", 405),
        ("HEAD", "/v1/models", 405),
    ] {
        let res = request(gw, method, path, &h, "").await;
        assert_eq!(res.status, status, "{method} {path}: {}", res.body);
        if method != "HEAD" {
            let e = &res.json()["error"];
            assert_eq!(e["type"], "invalid_request_error", "{}", res.body);
            assert_eq!(e["attempts"], 0);
        }
        assert_eq!(res.header("x-should-retry").as_deref(), Some("false"));
    }
    // `OPTIONS *` and `CONNECT`, which an HTTP library will not send.
    let res = raw(gw, "OPTIONS * HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(res.status, 405, "{}", res.body);
    let res = raw(
        gw,
        &format!(
            "CONNECT 127.0.0.1:{} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n",
            upstream.addr.port()
        ),
    )
    .await;
    assert_eq!(res.status, 405, "{}", res.body);
    assert!(upstream.received().is_empty(), "{:?}", upstream.received());

    // The allowed routes are forwarded.
    for (method, path) in [
        ("GET", "/v1/models"),
        ("DELETE", "/v1/files/file-abc"),
        ("GET", "/v1/batches?limit=2"),
    ] {
        let res = request(gw, method, path, &h, "").await;
        assert_eq!(res.status, 200, "{method} {path}: {}", res.body);
    }
    let lines: Vec<String> = upstream
        .received()
        .iter()
        .map(|r| r.request_line().to_owned())
        .collect();
    assert_eq!(
        lines,
        [
            "GET /v1/models HTTP/1.1",
            "DELETE /v1/files/file-abc HTTP/1.1",
            "GET /v1/batches?limit=2 HTTP/1.1"
        ]
    );
}

#[tokio::test]
async fn admin_and_extra_routes_are_opt_in() {
    let (upstream, gw) = raw_gateway(
        &["--allow-admin-routes", "--allow-route", "/v1/rerank"],
        &[],
    )
    .await;
    for path in ["/v1/organization/admin_api_keys", "/v1/rerank"] {
        let res = get_as(gw, path, KEY).await;
        assert_eq!(res.status, 200, "{path}: {}", res.body);
    }
    assert_eq!(upstream.received().len(), 2);
}

#[tokio::test]
async fn hop_by_hop_connection_named_and_cookie_headers_are_not_forwarded() {
    let (upstream, gw) = raw_gateway(&[], &[]).await;
    let res = chat_with(
        gw,
        KEY,
        &[
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic eDp5"),
            ("cookie", "session=abc"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-custom", "kept"),
        ],
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.header("set-cookie"), None, "{}", res.head);
    let sent = &upstream.received()[0];
    for gone in [
        "x-secret-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "cookie",
        "x-forwarded-for",
    ] {
        assert_eq!(
            sent.header(gone),
            None,
            "{gone} was forwarded:\n{}",
            sent.head
        );
    }
    assert_eq!(sent.header("x-custom").as_deref(), Some("kept"));
    assert!(
        !sent
            .header("connection")
            .unwrap_or_default()
            .contains("x-secret-hop"),
        "{}",
        sent.head
    );
}
