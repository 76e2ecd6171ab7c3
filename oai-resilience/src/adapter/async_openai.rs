//! The stack as the tower service of async-openai's `Client::with_http_service` (feature
//! `async-openai`; async-openai 0.43 with its `middleware` feature).
//!
//! [`AsyncOpenAiService`] is a `tower::Service<HttpRequestFactory>` answering
//! `reqwest::Response`s. Each request goes through the layers of an [`OpenAiLayer`] —
//! validation and the auth check once, then the retry layer's loop, each attempt paced,
//! sent with a `reqwest::Client` and classified — and clones share the layer's pacer and
//! retry budget with every stack built from the same layer.
//!
//! ```
//! use async_openai::config::OpenAIConfig;
//! use oai_resilience::{AuthLayer, OpenAiLayer};
//!
//! let key = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789";
//! let service = OpenAiLayer::new()
//!     .auth(AuthLayer::from_env()) // the key async-openai sends is checked as it is
//!     .into_async_openai();
//! let client = async_openai::Client::with_config(OpenAIConfig::new().with_api_key(key))
//!     .with_http_service(service);
//! # let _ = client;
//! ```
//!
//! # async-openai's own retry
//!
//! `Client::with_http_service` replaces the executor that carries async-openai's built-in
//! retry (`OpenAIRetryLayer` over its `ReqwestService`) with the given service, so with this
//! service the stack's retry loop is the only one: async-openai's is replaced, not stacked.
//! (Do not put an `OpenAIRetryLayer` around it.)
//!
//! # Failures
//!
//! When the stack gives up, async-openai receives the response OpenAI would have sent
//! ([`respond::error_response`](crate::respond::error_response)): the upstream's status and
//! error object, or for a local failure OpenAI's status and `code`. So its users see the
//! `OpenAIError::ApiError` they know: `insufficient_quota` and `rate_limit_exceeded` (429),
//! `invalid_api_key` (401, for a placeholder key, without a request), a missing `messages`
//! (400 `missing_required_parameter` with `param: "messages"`, without a request). The
//! hint is appended to the message. (async-openai reads a 5xx body as plain text: its
//! message is then the JSON of the error object.)
//!
//! # Replays
//!
//! A JSON body is replayed from its bytes. A streamed body (a multipart upload) is replayed
//! by building the request again from async-openai's `HttpRequestFactory`, taking its new
//! `content-type` (boundary) and `content-length`, so uploads are retried correctly.
//! Response bodies are not buffered: `create_stream` streams.

use std::sync::Arc;
use std::task::{Context, Poll};

use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use futures_util::future::BoxFuture;
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

use super::body::{self, AdapterBody};
use crate::error::Error;
use crate::stack::OpenAiLayer;
use crate::validate::ValidateBody;

/// The stack as the service of async-openai's `Client::with_http_service`; see the
/// [module docs](self).
///
/// Clones share the layer's pacer and retry budget.
#[derive(Debug, Clone)]
pub struct AsyncOpenAiService {
    /// Built into a stack for each call, around a [`ClientSend`] for that call: the same
    /// `Arc` clones as cloning a built stack.
    layer: Arc<OpenAiLayer>,
    client: reqwest::Client,
}

impl AsyncOpenAiService {
    /// The service for `layer`'s stack, sending with a default `reqwest::Client` (with the
    /// TLS that the features of the reqwest in the build give it: async-openai's default
    /// `rustls` feature, for one).
    pub fn new(layer: OpenAiLayer) -> Self {
        AsyncOpenAiService::with_client(layer, reqwest::Client::new())
    }

    /// The service for `layer`'s stack, sending with `client` (its timeouts, proxies, TLS).
    pub fn with_client(layer: OpenAiLayer, client: reqwest::Client) -> Self {
        AsyncOpenAiService {
            layer: Arc::new(layer),
            client,
        }
    }
}

impl From<OpenAiLayer> for AsyncOpenAiService {
    fn from(layer: OpenAiLayer) -> Self {
        AsyncOpenAiService::new(layer)
    }
}

impl OpenAiLayer {
    /// This stack as the service of async-openai's `Client::with_http_service`:
    /// [`AsyncOpenAiService::new`]`(self)`. Build it from a clone to share the pacer and the
    /// retry budget with other stacks.
    #[cfg_attr(docsrs, doc(cfg(feature = "async-openai")))]
    pub fn into_async_openai(self) -> AsyncOpenAiService {
        AsyncOpenAiService::new(self)
    }
}

impl Service<HttpRequestFactory> for AsyncOpenAiService {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = BoxFuture<'static, Result<reqwest::Response, OpenAIError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), OpenAIError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, factory: HttpRequestFactory) -> Self::Future {
        let layer = self.layer.clone();
        let client = self.client.clone();
        Box::pin(async move {
            let req = factory.build().await?;
            let (req, origin) =
                body::request_into_http(req, Some(factory)).map_err(OpenAIError::Reqwest)?;
            let send = ClientSend {
                client: &client,
                origin: &origin,
            };
            let result = layer.layer(send).oneshot(req).await;
            Ok(match result {
                Ok(res) => body::response_from_http(res, origin.url),
                Err(err) => body::error_into_response(&err, origin.url),
            })
        })
    }
}

/// The stack's inner service for one call: sends an attempt with the `reqwest::Client`.
#[derive(Debug, Clone, Copy)]
struct ClientSend<'a> {
    client: &'a reqwest::Client,
    origin: &'a body::Origin,
}

impl<'a> Service<http::Request<ValidateBody<AdapterBody>>> for ClientSend<'a> {
    type Response = http::Response<reqwest::Body>;
    type Error = Error;
    type Future = BoxFuture<'a, Result<Self::Response, Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<ValidateBody<AdapterBody>>) -> Self::Future {
        let ClientSend { client, origin } = *self;
        Box::pin(async move {
            let req = body::request_from_http(req, origin).await?;
            match client.execute(req).await {
                Ok(res) => Ok(body::response_into_http(res, origin)),
                Err(e) => Err(body::transport_error(e)),
            }
        })
    }
}
