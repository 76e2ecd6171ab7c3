//! `#[openai_call]`: an `async fn` that makes one OpenAI call, run under the retry policy, with
//! errors that say which function failed, with what arguments, after which attempts.
//!
//! The attribute is re-exported as [`crate::openai_call`]; this module holds the error trait
//! that user error types implement to be retried and to receive the context.
use std::borrow::Cow;

use crate::error::{CallContext, Error, RetryContext};

/// The error types an `#[openai_call]` function may return.
///
/// The attribute classifies each attempt's error through [`CallError::to_error`] (the same
/// classification the retry layer applies to [`Error`]) and attaches the context of the whole
/// call to the error that leaves the function with [`CallError::attach_context`].
pub trait CallError: Sized {
    /// The typed view of this error that the retry policy classifies: kind, status, request
    /// id, retry hint. Borrow it when the error wraps an [`Error`]; build one otherwise.
    fn to_error(&self) -> Cow<'_, Error>;

    /// Wraps an error raised by the call itself (a local check, the overall timeout).
    fn from_error(err: Error) -> Self;

    /// Attaches what the retry machinery did and the call's context to the final error.
    fn attach_context(self, retry: RetryContext, call: CallContext) -> Self;
}

impl CallError for Error {
    fn to_error(&self) -> Cow<'_, Error> {
        Cow::Borrowed(self)
    }

    fn from_error(err: Error) -> Self {
        err
    }

    fn attach_context(self, retry: RetryContext, call: CallContext) -> Self {
        self.with_retry_context(retry).with_call_context(call)
    }
}
