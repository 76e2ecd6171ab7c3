//! `#[openai_call]`: an `async fn` that makes one OpenAI call, run under the retry policy, with
//! errors that say which function failed, with what arguments, after which attempts.
//!
//! The attribute is re-exported as [`crate::openai_call`]; this module holds the error trait
//! that user error types implement to be retried and to receive the context.
use crate::error::{BoxError, CallContext, Error};
use crate::retry::RetryableError;

/// The error types an `#[openai_call]` function may return: a [`RetryableError`] (the retry
/// layer's classification, so the attribute retries exactly what the layer retries) that can
/// also carry the call's [`CallContext`].
///
/// Implemented for [`Error`] and [`BoxError`]. A user error type implements
/// [`RetryableError`] and this one-method trait.
pub trait CallError: RetryableError {
    /// Returns the error with the call's context attached (where it can hold one).
    fn attach_call_context(self, ctx: CallContext) -> Self;
}

impl CallError for Error {
    fn attach_call_context(self, ctx: CallContext) -> Self {
        self.with_call_context(ctx)
    }
}

impl CallError for BoxError {
    fn attach_call_context(self, ctx: CallContext) -> Self {
        match self.downcast::<Error>() {
            Ok(e) => Box::new(e.with_call_context(ctx)),
            Err(other) => other,
        }
    }
}
