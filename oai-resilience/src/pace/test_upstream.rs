//! The canned upstream, request and key of the pace layer's unit tests (`service.rs`,
//! `store/wait.rs`).

use std::sync::Arc;

use crate::error::Error;

/// Answers `status` with the given headers (a 429 with OpenAI's body) behind the classify
/// layer, counting requests in `sent`.
pub(crate) fn upstream(
    status: u16,
    headers: &'static [(&'static str, &'static str)],
    sent: Arc<std::sync::atomic::AtomicU64>,
) -> impl tower_service::Service<
    http::Request<http_body_util::Full<bytes::Bytes>>,
    Response = http::Response<http_body_util::Full<bytes::Bytes>>,
    Error = Error,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    let inner = tower::service_fn(
        move |_req: http::Request<http_body_util::Full<bytes::Bytes>>| {
            sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut b = http::Response::builder().status(status);
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            let body = if status == 429 {
                r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#
            } else {
                "{}"
            };
            async move {
                Ok::<_, std::convert::Infallible>(
                    b.body(http_body_util::Full::new(bytes::Bytes::from(body)))
                        .unwrap(),
                )
            }
        },
    );
    tower::ServiceBuilder::new()
        .layer(crate::ClassifyLayer::new())
        .service(inner)
}

/// A small chat completion for `gpt-4o-mini` to `api.example.test`, sent with `auth`.
pub(crate) fn chat_request(
    auth: &'static str,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::post("https://api.example.test/v1/chat/completions")
        .header("authorization", auth)
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#,
        )))
        .unwrap()
}

/// The pacing key of a [`chat_request`] sent with `auth`.
pub(crate) fn chat_key(auth: &'static str) -> super::PaceKey {
    super::PaceKey::new("api.example.test")
        .with_credential(auth.as_bytes())
        .with_model("gpt-4o-mini")
}
