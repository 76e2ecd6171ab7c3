//! `ValidateLayer` with a counting inner service: what is sent, what is not, and why.

use std::convert::Infallible;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{stream, FutureExt};
use http::{Method, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use oai_resilience::validate::{ValidateBody, ValidateLayer, Validator};
use oai_resilience::{BoxError, Error, ErrorKind, Violation};
use tower::{service_fn, Layer, Service, ServiceExt};

use test_support::CHAT;

/// What the inner service saw: the number of calls and the last body, and whether the layer
/// had buffered it.
#[derive(Clone, Default)]
struct Seen {
    calls: Arc<AtomicUsize>,
    last: Arc<Mutex<Option<(Bytes, bool)>>>,
}

impl Seen {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Sends `req` through `layer` over a fresh [`upstream`] that records into this `Seen`.
    async fn send<B>(&self, layer: &ValidateLayer, req: Request<B>) -> Result<Response<()>, Error>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        layer.layer(upstream(self.clone())).oneshot(req).await
    }

    /// [`Seen::send`] of [`post`]`(path, body)`.
    async fn post(
        &self,
        layer: &ValidateLayer,
        path: &str,
        body: &str,
    ) -> Result<Response<()>, Error> {
        self.send(layer, post(path, body)).await
    }

    /// [`Seen::post`] of the valid [`CHAT`] request to `/v1/chat/completions`.
    async fn chat(&self, layer: &ValidateLayer) -> Result<Response<()>, Error> {
        self.post(layer, "/v1/chat/completions", CHAT).await
    }
}

/// A counting inner service that reads the body it gets.
fn upstream<B>(
    seen: Seen,
) -> impl Service<Request<ValidateBody<B>>, Response = Response<()>, Error = BoxError> + Clone
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    service_fn(move |req: Request<ValidateBody<B>>| {
        let seen = seen.clone();
        async move {
            seen.calls.fetch_add(1, Ordering::SeqCst);
            let buffered = req.body().is_buffered();
            let bytes = req.into_body().collect().await?.to_bytes();
            *seen.last.lock().unwrap() = Some((bytes, buffered));
            Ok::<_, BoxError>(Response::new(()))
        }
    })
}

fn post(path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

#[tokio::test]
async fn an_invalid_request_is_not_sent_and_lists_every_violation() {
    let seen = Seen::default();
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"a"},{"role":"user"}],"temperature":5,"n":0}"#;
    let err = seen
        .post(
            &ValidateLayer::new(),
            "https://api.openai.com/v1/chat/completions",
            body,
        )
        .await
        .unwrap_err();
    assert_eq!(seen.calls(), 0, "nothing may reach the inner service");
    assert_eq!(err.kind(), ErrorKind::InvalidParameter);
    assert!(err.kind().is_local());
    assert!(!err.is_retryable());
    let params: Vec<&str> = err.violations().iter().map(|v| v.param.as_str()).collect();
    assert_eq!(params, ["messages[1].content", "temperature", "n"]);
    assert_eq!(err.param(), Some("messages[1].content"));
    assert_eq!(
        err.hint(),
        "add the missing parameter `messages[1].content`"
    );
    let shown = err.to_string();
    assert!(
        shown.starts_with("invalid_parameter: messages[1].content: Missing required parameter"),
        "{shown}"
    );
}

#[tokio::test]
async fn a_valid_request_is_sent_with_the_same_bytes() {
    let seen = Seen::default();
    seen.chat(&ValidateLayer::new()).await.unwrap();
    assert_eq!(seen.calls(), 1);
    let (bytes, buffered) = seen.last.lock().unwrap().clone().unwrap();
    assert_eq!(bytes, CHAT.as_bytes());
    assert!(buffered);
}

#[tokio::test]
async fn routes_match_with_or_without_v1_and_under_a_base_path() {
    let seen = Seen::default();
    let layer = ValidateLayer::new().base_path("/openai");
    for path in [
        "/chat/completions",
        "/v1/chat/completions",
        "http://localhost:8080/openai/v1/chat/completions?api-version=1",
        "/openai/chat/completions/",
    ] {
        let err = seen
            .post(&layer, path, r#"{"model":"m"}"#)
            .await
            .unwrap_err();
        assert_eq!(err.param(), Some("messages"), "{path}");
    }
    assert_eq!(seen.calls(), 0);
}

#[tokio::test]
async fn unknown_routes_and_other_methods_pass_untouched() {
    let seen = Seen::default();
    let layer = ValidateLayer::new();
    for (method, path) in [
        (Method::POST, "/v1/files"),
        (Method::GET, "/v1/chat/completions"),
        (Method::POST, "/v1/chat/completionsx"),
    ] {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"not even json")))
            .unwrap();
        seen.send(&layer, req).await.unwrap();
        let (bytes, buffered) = seen.last.lock().unwrap().clone().unwrap();
        assert_eq!(bytes, &b"not even json"[..]);
        assert!(!buffered, "{path}: an unknown route must not be buffered");
    }
    assert_eq!(seen.calls(), 3);
}

#[tokio::test]
async fn non_json_bodies_pass_untouched() {
    let seen = Seen::default();
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "multipart/form-data; boundary=x")
        .body(Full::new(Bytes::from_static(b"--x\r\n...")))
        .unwrap();
    seen.send(&ValidateLayer::new(), req).await.unwrap();
    assert_eq!(seen.calls(), 1);
    assert!(!seen.last.lock().unwrap().clone().unwrap().1);
}

#[tokio::test]
async fn a_json_content_type_with_parameters_is_validated() {
    let seen = Seen::default();
    let req = Request::post("/v1/embeddings")
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(Bytes::from_static(br#"{"model":"m"}"#)))
        .unwrap();
    let err = seen.send(&ValidateLayer::new(), req).await.unwrap_err();
    assert_eq!(err.param(), Some("input"));
    assert_eq!(seen.calls(), 0);
}

#[tokio::test]
async fn an_invalid_json_body_is_rejected() {
    let seen = Seen::default();
    let err = seen
        .post(&ValidateLayer::new(), "/v1/responses", "{\"model\": ")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidParameter);
    assert_eq!(err.param(), Some("body"));
    assert_eq!(seen.calls(), 0);
}

/// `seed` is `format: int64`: a seed beyond the range of an `i64` is not sent, also one that
/// a JSON parser reads as `i64::MIN` (-9223372036854776001 reads as -2^63); the limits are.
#[tokio::test]
async fn a_seed_outside_the_int64_range_is_rejected_with_its_path() {
    let body = |seed: &str| {
        format!(
            r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"Hello"}}],"seed":{seed}}}"#
        )
    };
    for seed in [
        "-9223372036854776001",
        "-9223372036854775809",
        "9223372036854775808",
    ] {
        let seen = Seen::default();
        let err = seen
            .post(
                &ValidateLayer::new(),
                "https://api.openai.com/v1/chat/completions",
                &body(seed),
            )
            .await
            .unwrap_err();
        assert_eq!(
            seen.calls(),
            0,
            "{seed}: nothing may reach the inner service"
        );
        assert_eq!(err.kind(), ErrorKind::InvalidParameter, "{seed}");
        assert_eq!(err.param(), Some("seed"), "{seed}");
        assert_eq!(
            err.violations()[0].message,
            "Invalid 'seed': integer out of range. Expected a 64-bit signed integer."
        );
    }
    for seed in ["-9223372036854775808", "9223372036854775807", "1e3"] {
        let seen = Seen::default();
        seen.post(
            &ValidateLayer::new(),
            "https://api.openai.com/v1/chat/completions",
            &body(seed),
        )
        .await
        .unwrap_or_else(|e| panic!("{seed}: {e}"));
        assert_eq!(seen.calls(), 1, "{seed}");
    }
}

#[tokio::test]
async fn strict_mode_rejects_unknown_routes() {
    let seen = Seen::default();
    let layer = ValidateLayer::new().strict(true);
    let err = seen.post(&layer, "/v1/files", "{}").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidParameter);
    assert!(err.detail().unwrap().contains("POST /v1/files"), "{err}");
    assert_eq!(seen.calls(), 0);
    // Known routes still pass.
    seen.chat(&layer).await.unwrap();
    assert_eq!(seen.calls(), 1);
}

#[tokio::test]
async fn an_oversized_body_is_a_typed_error_and_is_not_sent() {
    let seen = Seen::default();
    let layer = ValidateLayer::new().body_limit(16);
    // Known size: refused before reading.
    let err = seen.chat(&layer).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RequestTooLarge);
    assert!(err.detail().unwrap().contains("16 bytes"));
    // Unknown size: refused once the chunks cross the limit.
    let chunks: Vec<Result<Frame<Bytes>, Infallible>> = (0..100)
        .map(|_| Ok(Frame::data(Bytes::from_static(b"{\"model\":"))))
        .collect();
    let req = Request::post("/v1/chat/completions")
        .body(StreamBody::new(stream::iter(chunks)))
        .unwrap();
    let err = seen.send(&layer, req).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RequestTooLarge);
    assert_eq!(seen.calls(), 0);
}

#[tokio::test]
async fn a_body_that_fails_to_read_is_a_typed_error() {
    let seen = Seen::default();
    let frames: Vec<Result<Frame<Bytes>, io::Error>> = vec![
        Ok(Frame::data(Bytes::from_static(b"{"))),
        Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "client went away",
        )),
    ];
    let req = Request::post("/v1/chat/completions")
        .body(StreamBody::new(stream::iter(frames)))
        .unwrap();
    let err = seen.send(&ValidateLayer::new(), req).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal);
    assert!(std::error::Error::source(&err).is_some());
    assert_eq!(seen.calls(), 0);
}

#[tokio::test]
async fn a_streamed_valid_body_is_reassembled() {
    let seen = Seen::default();
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = CHAT
        .as_bytes()
        .chunks(7)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let req = Request::post("/v1/chat/completions")
        .body(StreamBody::new(stream::iter(frames)))
        .unwrap();
    seen.send(&ValidateLayer::new(), req).await.unwrap();
    assert_eq!(
        seen.last.lock().unwrap().clone().unwrap().0,
        CHAT.as_bytes()
    );
}

#[tokio::test]
async fn user_rules_run_on_spec_and_custom_routes() {
    let seen = Seen::default();
    let layer = ValidateLayer::new()
        .rule(
            Method::POST,
            "/chat/completions",
            |body: &serde_json::Value, out: &mut Vec<Violation>| {
                if body["model"] != "gpt-4o-mini" {
                    out.push(Violation::new(
                        "model",
                        "Invalid value for 'model': this app uses gpt-4o-mini.",
                    ));
                }
            },
        )
        .rule(
            Method::POST,
            "/v1/my/endpoint",
            |body: &serde_json::Value, out: &mut Vec<Violation>| {
                if body.get("id").is_none() {
                    out.push(Violation::new("id", "Missing required parameter: 'id'."));
                }
            },
        );
    let err = seen
        .post(
            &layer,
            "/v1/chat/completions",
            r#"{"model":"gpt-4o","messages":[]}"#,
        )
        .await
        .unwrap_err();
    let params: Vec<&str> = err.violations().iter().map(|v| v.param.as_str()).collect();
    assert_eq!(params, ["messages", "model"], "spec rules, then the user's");
    let err = seen.post(&layer, "/my/endpoint", "{}").await.unwrap_err();
    assert_eq!(err.hint(), "add the missing parameter `id`");
    seen.post(&layer, "/my/endpoint", r#"{"id":1}"#)
        .await
        .unwrap();
    seen.chat(&layer).await.unwrap();
    assert_eq!(seen.calls(), 2);
}

#[tokio::test]
async fn inner_errors_keep_their_cause() {
    let svc = ValidateLayer::new().layer(service_fn(
        |_req: Request<ValidateBody<Full<Bytes>>>| async {
            Err::<Response<()>, _>(io::Error::new(io::ErrorKind::ConnectionRefused, "refused"))
        },
    ));
    let err = svc
        .oneshot(post("/v1/chat/completions", CHAT))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection);
}

#[tokio::test]
async fn readiness_is_respected_across_calls() {
    let (mock, mut handle) =
        tower_test::mock::pair::<Request<ValidateBody<Full<Bytes>>>, Response<()>>();
    let mut svc = ValidateLayer::new().layer(mock);
    handle.allow(1);
    let fut = svc
        .ready()
        .await
        .unwrap()
        .call(post("/v1/chat/completions", CHAT));
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.unwrap();
        assert!(req.body().is_buffered());
        send.send_response(Response::new(()));
        handle
    });
    fut.await.unwrap();
    let mut handle = server.await.unwrap();
    // The allowance of one is spent: the next call is not ready until allowed again.
    assert!(svc.ready().now_or_never().is_none());
    handle.allow(1);
    assert!(svc.ready().now_or_never().is_some());
}

#[test]
fn the_validator_works_without_tower() {
    let v = Validator::new().base_path("/compat");
    assert!(v
        .validate(
            &Method::POST,
            "/compat/v1/audio/speech",
            br#"{"model":"tts-1","input":"hi","voice":"alloy"}"#
        )
        .is_ok());
    let err = v
        .validate(
            &Method::POST,
            "/compat/v1/audio/speech",
            br#"{"model":"tts-1","input":"hi"}"#,
        )
        .unwrap_err();
    assert_eq!(err.param(), Some("voice"));
    assert!(v.check(&Method::POST, "/compat/v1/files", b"{}").is_none());
    assert!(v.validate(&Method::POST, "/compat/v1/files", b"{}").is_ok());
    assert!(v
        .clone()
        .strict(true)
        .validate(&Method::POST, "/compat/v1/files", b"{}")
        .is_err());
}
