//! Token usage read from responses as they pass: [`UsageLayer`] reports the `usage` object
//! of every answer to the pacer that paced the call, and to the stack's observer.
//!
//! The pacer counts a request against a tokens-per-minute limit before it is sent, from an
//! estimate: the prompt at about four characters per token, plus the whole completion budget
//! (`max_tokens` × `n`). Both parts are usually wrong, and the completion budget is an upper
//! bound that most answers stay far below. The API says what a call really used, in the
//! `usage` object of its answer:
//!
//! - a JSON answer (chat completions, embeddings, the Responses API): `usage` at the top;
//! - a chat stream with `stream_options: {"include_usage": true}`: a last chunk with empty
//!   `choices` and the `usage` ([`UsageLayer::include_usage`] can ask for it);
//! - a Responses API stream: the `response.completed` event's `response.usage`.
//!
//! [`UsageBody`] reads that object **without holding the body back**: every frame goes to the
//! caller as it comes, and a copy is scanned on the way (a JSON body is kept up to 8 MiB to
//! parse at its end; an event stream is scanned event by event and only the event being read
//! is kept). When the usage is found it is reported through the [`UsageSlot`] of the
//! response; the pace layer above listens there and
//!
//! - replaces the call's token charge with the true count: the difference goes back to the
//!   key's token bucket, or is taken from it (unless a newer `x-ratelimit-remaining-tokens`,
//!   which counted the true tokens already, has set the bucket since);
//! - learns the ratio of true to estimated tokens, separately for the prompt and for the
//!   completion budget, per pacing key (per model with the default keys), so the next
//!   estimates of that model come closer
//!   ([`KeySnapshot::usage_ratios`](crate::pace::KeySnapshot::usage_ratios));
//! - tells the observer ([`Observer::tokens_used`](crate::observe::Observer::tokens_used);
//!   `MetricsObserver` records `gen_ai.client.token.usage`).
//!
//! A response without usage, with a malformed or implausible one (a count above
//! 100,000,000), a compressed body (`content-encoding` other than `identity`: the layer does
//! not decode), or a body that ends early (an error frame, a stream cut before its usage
//! event, a body dropped by the caller) reports nothing: the estimate stands.
//!
//! The layer goes **below** the pace layer, around the HTTP client, so the stack's response
//! body becomes [`UsageBody`]`<B>`:
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use oai_resilience::pace::{PaceKey, PaceLayer};
//! use oai_resilience::usage::UsageLayer;
//! use oai_resilience::ClassifyLayer;
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() -> Result<(), oai_resilience::Error> {
//! // An upstream whose answers used 30 prompt and 40 completion tokens.
//! let upstream = service_fn(|_req: http::Request<Full<Bytes>>| async {
//!     let body = r#"{"choices":[],"usage":{"prompt_tokens":30,"completion_tokens":40}}"#;
//!     Ok::<_, oai_resilience::Error>(
//!         http::Response::builder()
//!             .header("content-type", "application/json")
//!             .body(Full::new(Bytes::from(body)))
//!             .unwrap(),
//!     )
//! });
//! let pace = PaceLayer::new();
//! let mut svc = ServiceBuilder::new()
//!     .layer(pace.clone())
//!     .layer(ClassifyLayer::new())
//!     .layer(UsageLayer::new())
//!     .service(upstream);
//! // About 25 prompt tokens estimated, and a completion budget of 400.
//! let body = format!(
//!     r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{}"}}],"max_tokens":400}}"#,
//!     "x".repeat(72)
//! );
//! let req = http::Request::post("https://api.openai.com/v1/chat/completions")
//!     .body(Full::new(Bytes::from(body)))
//!     .unwrap();
//! let resp = svc.ready().await?.call(req).await?;
//! let Ok(_) = resp.into_body().collect().await; // the usage is read as the body passes
//! let key = PaceKey::new("api.openai.com").with_model("gpt-4o-mini");
//! let (prompt, completion) = pace.pacer().key_state(&key).unwrap().usage_ratios.unwrap();
//! assert!((prompt - 30.0 / 25.0).abs() < 0.01, "{prompt}");
//! assert!((completion - 0.1).abs() < 0.001, "{completion}");
//! # Ok(()) }
//! ```

mod body;
mod layer;

use std::fmt;
use std::sync::{Arc, Mutex};

pub use body::UsageBody;
pub use layer::{include_usage, ResponseFuture, Usage, UsageLayer, UsageRequestBody};

/// The most tokens one count may report; above it the usage is taken as malformed.
pub const MAX_PLAUSIBLE_TOKENS: u64 = 100_000_000;

/// The tokens a response reported it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct TokenUsage {
    /// Input tokens: `prompt_tokens` (chat, embeddings) or `input_tokens` (Responses API).
    pub input_tokens: u64,
    /// Output tokens: `completion_tokens` or `output_tokens` (0 for embeddings).
    pub output_tokens: u64,
}

impl TokenUsage {
    /// `input_tokens` in and `output_tokens` out.
    pub fn new(input_tokens: u64, output_tokens: u64) -> Self {
        TokenUsage {
            input_tokens,
            output_tokens,
        }
    }

    /// Input plus output.
    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// The `usage` of a JSON document: an answer (`{"usage": {…}}`), a chat stream chunk (the
/// same), or a Responses API event (`{"response": {"usage": {…}}}`). `None` when there is
/// none, when it is `null`, malformed (a count that is not a non-negative integer, neither
/// input nor output count present) or implausible (a count above [`MAX_PLAUSIBLE_TOKENS`]),
/// or when the document is not JSON.
///
/// ```
/// use oai_resilience::usage::{usage_from_json, TokenUsage};
///
/// let chat = br#"{"id":"c","usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;
/// assert_eq!(usage_from_json(chat), Some(TokenUsage::new(12, 3)));
/// let done = br#"{"type":"response.completed","response":{"usage":{"input_tokens":5,"output_tokens":7}}}"#;
/// assert_eq!(usage_from_json(done), Some(TokenUsage::new(5, 7)));
/// assert_eq!(usage_from_json(br#"{"usage":{"prompt_tokens":-1}}"#), None);
/// assert_eq!(usage_from_json(b"{\"usage\":"), None);
/// ```
pub fn usage_from_json(json: &[u8]) -> Option<TokenUsage> {
    #[derive(serde::Deserialize)]
    struct Counts {
        prompt_tokens: Option<u64>,
        completion_tokens: Option<u64>,
        input_tokens: Option<u64>,
        output_tokens: Option<u64>,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        usage: Option<Counts>,
    }
    #[derive(serde::Deserialize)]
    struct Doc {
        usage: Option<Counts>,
        response: Option<Inner>,
    }
    let doc: Doc = serde_json::from_slice(json).ok()?;
    let c = doc.usage.or(doc.response.and_then(|r| r.usage))?;
    let input = c.prompt_tokens.or(c.input_tokens);
    let output = c.completion_tokens.or(c.output_tokens);
    if input.is_none() && output.is_none() {
        return None;
    }
    let usage = TokenUsage::new(input.unwrap_or(0), output.unwrap_or(0));
    (usage.input_tokens <= MAX_PLAUSIBLE_TOKENS && usage.output_tokens <= MAX_PLAUSIBLE_TOKENS)
        .then_some(usage)
}

type Listener = Box<dyn FnOnce(TokenUsage) + Send>;

/// Where a [`UsageBody`] reports the usage it finds: a response extension that
/// [`UsageLayer`] inserts, and that layers above (the pace layer) listen on. Clones share the
/// listeners; each listener is called at most once.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use oai_resilience::usage::{TokenUsage, UsageSlot};
///
/// let slot = UsageSlot::default();
/// let seen = Arc::new(Mutex::new(None));
/// let s = seen.clone();
/// slot.on_usage(move |u| *s.lock().unwrap() = Some(u));
/// assert!(slot.is_listened());
/// slot.report(TokenUsage::new(1, 2));
/// slot.report(TokenUsage::new(9, 9)); // listeners are called once
/// assert_eq!(*seen.lock().unwrap(), Some(TokenUsage::new(1, 2)));
/// ```
#[derive(Clone, Default)]
pub struct UsageSlot {
    listeners: Arc<Mutex<Vec<Listener>>>,
}

impl fmt::Debug for UsageSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageSlot")
            .field("listeners", &self.lock().len())
            .finish()
    }
}

impl UsageSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Listener>> {
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls `f` with the usage when the body finds it (never, if it does not). Register
    /// before the body is first polled: a body whose slot has no listener then passes its
    /// frames on without scanning them.
    pub fn on_usage(&self, f: impl FnOnce(TokenUsage) + Send + 'static) {
        self.lock().push(Box::new(f));
    }

    /// Whether anyone listens: a body whose slot nobody listens on scans nothing.
    pub fn is_listened(&self) -> bool {
        !self.lock().is_empty()
    }

    /// Calls every listener with `usage` (outside the lock), once.
    pub fn report(&self, usage: TokenUsage) {
        let listeners = std::mem::take(&mut *self.lock());
        for f in listeners {
            f(usage);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_from_json_reads_every_shape_and_refuses_bad_input() {
        type Case = (&'static [u8], Option<(u64, u64)>);
        let cases: [Case; 12] = [
            (
                br#"{"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
                Some((3, 4)),
            ),
            (
                br#"{"usage":{"prompt_tokens":3,"total_tokens":3}}"#,
                Some((3, 0)),
            ),
            (
                br#"{"usage":{"input_tokens":5,"output_tokens":6}}"#,
                Some((5, 6)),
            ),
            (
                br#"{"response":{"usage":{"input_tokens":1,"output_tokens":2}}}"#,
                Some((1, 2)),
            ),
            (br#"{"usage":null}"#, None),
            (br#"{"response":{"usage":null}}"#, None),
            (br#"{"usage":{}}"#, None),
            (br#"{"usage":{"prompt_tokens":1.5}}"#, None),
            (br#"{"usage":{"prompt_tokens":"3"}}"#, None),
            (
                br#"{"usage":{"prompt_tokens":100000001,"completion_tokens":1}}"#,
                None,
            ),
            (
                br#"{"usage":{"prompt_tokens":1,"completion_tokens":18446744073709551615}}"#,
                None,
            ),
            (b"[1,2]", None),
        ];
        for (json, want) in cases {
            assert_eq!(
                usage_from_json(json).map(|u| (u.input_tokens, u.output_tokens)),
                want,
                "{}",
                String::from_utf8_lossy(json)
            );
        }
        assert_eq!(usage_from_json(b""), None);
        assert_eq!(usage_from_json(b"\xff\xfe"), None);
        assert_eq!(TokenUsage::new(u64::MAX, 1).total(), u64::MAX);
    }

    #[test]
    fn a_slot_without_listeners_reports_to_nobody() {
        let slot = UsageSlot::default();
        assert!(!slot.is_listened());
        slot.report(TokenUsage::new(1, 1));
        assert!(format!("{slot:?}").contains("listeners: 0"));
    }
}
