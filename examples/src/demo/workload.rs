//! The demo's calls: what each one is, and how it is sent.

use std::fmt;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use oai_resilience::{openai_call, Error, ErrorKind, PaceLayer};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::stack::{AttemptCounter, Layers, Stack};

/// How a call is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// Through the tower stack, `Validate -> Auth -> Retry -> Pace -> Classify`.
    Stack,
    /// Through an `#[openai_call]` function over `Pace -> Classify`.
    Macro,
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Via::Stack => "tower stack",
            Via::Macro => "#[openai_call]",
        })
    }
}

/// What one call of the workload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallKind {
    /// A chat completion through the stack.
    Chat,
    /// An embedding through the stack.
    Embedding,
    /// A chat completion through the `#[openai_call]` function.
    MacroChat,
    /// A chat completion without its `messages` (through the stack): refused locally.
    MissingParameter,
    /// A call whose key was pasted with its quotes (through the `#[openai_call]` function):
    /// refused locally.
    QuotedKey,
    /// A chat completion for the second project, whose quota is exhausted (through the stack).
    ExhaustedQuota,
}

impl CallKind {
    /// How the call is made.
    pub fn via(self) -> Via {
        match self {
            CallKind::MacroChat | CallKind::QuotedKey => Via::Macro,
            _ => Via::Stack,
        }
    }

    /// A few words for the report.
    pub fn describe(self) -> &'static str {
        match self {
            CallKind::Chat => "chat completion",
            CallKind::Embedding => "embedding",
            CallKind::MacroChat => "chat completion",
            CallKind::MissingParameter => "chat completion without `messages`",
            CallKind::QuotedKey => "chat completion, key pasted with quotes",
            CallKind::ExhaustedQuota => "chat completion for project B (quota exhausted)",
        }
    }

    /// Whether the call is meant to fail (the workload's planted faults).
    pub fn is_planted_fault(self) -> bool {
        matches!(
            self,
            CallKind::MissingParameter | CallKind::QuotedKey | CallKind::ExhaustedQuota
        )
    }
}

/// What call `i` of `n` is: one planted fault each at a quarter, half and three quarters of
/// the way, every fourth call through `#[openai_call]`, every fifth an embedding.
pub fn plan(i: usize, n: usize) -> CallKind {
    if i == n / 4 {
        CallKind::MissingParameter
    } else if i == n / 2 {
        CallKind::QuotedKey
    } else if i == 3 * n / 4 {
        CallKind::ExhaustedQuota
    } else if i % 4 == 3 {
        CallKind::MacroChat
    } else if i % 5 == 1 {
        CallKind::Embedding
    } else {
        CallKind::Chat
    }
}

/// The services and URLs the calls use. Clones share the pacer and the retry budget.
#[derive(Clone)]
pub(crate) struct Clients {
    pub(crate) pace: PaceLayer,
    stack: Stack,
    single: Stack,
    base: String,
    billing: String,
    /// The key the `#[openai_call]` function sends (the stack's auth layer has its own).
    key: String,
}

impl fmt::Debug for Clients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Clients")
            .field("base", &self.base)
            .field("billing", &self.billing)
            .finish_non_exhaustive()
    }
}

impl Clients {
    pub(crate) fn new(
        layers: &Layers,
        stack: Stack,
        single: Stack,
        base: &str,
        billing: &str,
        key: &str,
    ) -> Self {
        Clients {
            pace: layers.pace.clone(),
            stack,
            single,
            base: base.trim_end_matches('/').to_owned(),
            billing: billing.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
        }
    }

    /// Makes call `i`; its requests are counted on `attempts`.
    pub(crate) async fn call(
        &self,
        i: usize,
        kind: CallKind,
        attempts: Arc<AtomicU32>,
    ) -> Result<(), Error> {
        let counter = AttemptCounter(attempts);
        let chat = chat_body(i);
        match kind {
            CallKind::Chat => {
                self.through_stack(&self.base, "/v1/chat/completions", &chat, counter)
                    .await
            }
            CallKind::Embedding => {
                let body = json!({"model": "text-embedding-3-small", "input": format!("support ticket #{i}")});
                self.through_stack(&self.base, "/v1/embeddings", &body, counter)
                    .await
            }
            CallKind::MissingParameter => {
                let body = json!({"model": "gpt-4o-mini", "max_completion_tokens": 5});
                self.through_stack(&self.base, "/v1/chat/completions", &body, counter)
                    .await
            }
            CallKind::ExhaustedQuota => {
                self.through_stack(&self.billing, "/v1/chat/completions", &chat, counter)
                    .await
            }
            CallKind::MacroChat => ask(&self.single, &self.base, &self.key, &chat, &counter).await,
            CallKind::QuotedKey => {
                let pasted = format!("\"{}\"", self.key);
                ask(&self.single, &self.base, &pasted, &chat, &counter).await
            }
        }
    }

    async fn through_stack(
        &self,
        base: &str,
        path: &str,
        body: &Value,
        counter: AttemptCounter,
    ) -> Result<(), Error> {
        let req = Request::post(format!("{base}{path}"))
            .header(CONTENT_TYPE, "application/json")
            .extension(counter)
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| Error::new(ErrorKind::Internal).with_source(e))?;
        let res = self.stack.clone().oneshot(req).await?;
        read_json(res).await.map(drop)
    }
}

fn chat_body(i: usize) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": format!("Summarize support ticket #{i} in one sentence.")}],
        "max_completion_tokens": 5,
    })
}

/// The JSON of a successful response. A failed body read is `Error::body` and a body that is
/// not JSON `Error::decode`: neither is retried (the server has answered), where
/// `Error::from_service_error` would make the read a retryable connection error and re-send
/// the POST.
async fn read_json(res: http::Response<hyper::body::Incoming>) -> Result<Value, Error> {
    let bytes = res
        .into_body()
        .collect()
        .await
        .map_err(Error::body)?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(Error::decode)
}

/// One chat completion, written as an application would: build the request, send it, read
/// the answer. The attribute checks the key and the body before the first attempt, retries
/// what can succeed, and gives the final error the call's context.
#[openai_call(
    max_attempts = 6,
    api_key = api_key,
    validate(body = "POST /v1/chat/completions"),
    skip(single, api_key, counter)
)]
async fn ask(
    single: &Stack,
    base: &str,
    api_key: &str,
    body: &Value,
    counter: &AttemptCounter,
) -> Result<(), Error> {
    let mut auth = HeaderValue::from_str(&format!("Bearer {api_key}"))
        .map_err(|e| Error::new(ErrorKind::MalformedApiKey).with_source(e))?;
    auth.set_sensitive(true);
    let req = Request::post(format!("{base}/v1/chat/completions"))
        .header(CONTENT_TYPE, "application/json")
        .header(AUTHORIZATION, auth)
        .extension(counter.clone())
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| Error::new(ErrorKind::Internal).with_source(e))?;
    let res = single.clone().oneshot(req).await?;
    read_json(res).await.map(drop)
}
