//! The opt-in "fresh key once on a 401" variant of the auth middleware.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use tower::ServiceExt;
use tower_service::Service;

use crate::error::{AuthCause, BoxError, Error, ErrorKind};

use super::layer::{
    apply, check_present, no_source, reject, server_error, target_host, AuthLayer, Config, Present,
};

/// Builds [`RefreshOnUnauthorized`] services: [`AuthLayer`]'s behaviour, plus one retry with
/// a fresh key when the server answers 401 "incorrect API key".
///
/// Made with [`AuthLayer::refresh_on_unauthorized`]. Only keys that the layer itself added
/// are refreshed, and only when the source can give another key (a [`KeyProvider`], asked
/// with [`FetchMode::Refresh`], or the environment, read again); a fixed key is never retried.
/// When the fresh key is the same as the rejected one, or the refresh fails, the original 401
/// is returned. At most one extra request is ever sent.
///
/// Replaying the request needs a clonable body (`B: Clone`, such as `Full<Bytes>`), which is
/// why this is a separate layer: [`AuthLayer`] itself works with any body.
///
/// [`KeyProvider`]: super::KeyProvider
/// [`FetchMode::Refresh`]: super::FetchMode::Refresh
#[derive(Debug, Clone)]
pub struct RefreshOnUnauthorizedLayer {
    config: Arc<Config>,
}

impl AuthLayer {
    /// On a 401 "incorrect API key" for a key this layer added, asks the source for a fresh key
    /// once and retries once. See [`RefreshOnUnauthorizedLayer`].
    pub fn refresh_on_unauthorized(self) -> RefreshOnUnauthorizedLayer {
        RefreshOnUnauthorizedLayer {
            config: self.into_config(),
        }
    }
}

crate::macros::layer_impl!(RefreshOnUnauthorizedLayer => RefreshOnUnauthorized, |l| {
    config: l.config.clone(),
});

/// The auth middleware that retries once with a fresh key on a 401. See
/// [`RefreshOnUnauthorizedLayer`].
#[derive(Debug, Clone)]
pub struct RefreshOnUnauthorized<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> RefreshOnUnauthorized<S> {
    crate::macros::inner_service_accessors!();
}

/// Whether a fresh key can cure `err`.
fn key_rejected(err: &Error) -> bool {
    err.kind() == ErrorKind::Authentication && err.auth_cause() == Some(AuthCause::IncorrectKey)
}

impl<S, B> Service<Request<B>> for RefreshOnUnauthorized<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    S::Response: Send,
    B: Clone + Send + 'static,
{
    type Response = S::Response;
    type Error = Error;
    /// Boxed: the retry path awaits the provider, the inner service, the provider again and
    /// the inner service again; an `async` block says that plainly, and one allocation is
    /// nothing next to a request that may be sent twice.
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_service_error)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let spare = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, spare.clone());
        let config = self.config.clone();
        Box::pin(async move {
            let config = &*config;
            let host = target_host(&req);
            let call = |svc: &mut S, req| {
                let fut = svc.call(req);
                async move { fut.await.map_err(Error::from_service_error) }
            };
            match check_present(&mut req, config, host.as_deref()).map_err(reject)? {
                Present::Checked => return call(&mut ready, req).await,
                Present::Nothing => {}
            }
            let source = config
                .source
                .as_ref()
                .ok_or_else(|| reject(no_source(config)))?;
            let creds = source.resolve().await.map_err(reject)?;
            let replay = source.can_refresh().then(|| req.clone());
            apply(&mut req, &creds, config, host.as_deref()).map_err(reject)?;
            let first = call(&mut ready, req)
                .await
                .map_err(|e| server_error(e, Some(creds.key())));
            let (err, mut replay) = match (first, replay) {
                (Err(err), Some(replay)) if key_rejected(&err) => (err, replay),
                (other, _) => return other,
            };
            let fresh = match source.refresh().await {
                Ok(fresh) => fresh,
                Err(refresh_err) => {
                    tracing::debug!(
                        error = %refresh_err,
                        "auth: refreshing the key after a 401 failed; returning the 401"
                    );
                    return Err(err);
                }
            };
            if fresh.key().expose_secret() == creds.key().expose_secret() {
                tracing::debug!(key = %creds.key(), "auth: the source gave the rejected key again");
                return Err(err);
            }
            apply(&mut replay, &fresh, config, host.as_deref()).map_err(reject)?;
            tracing::debug!(
                rejected = %creds.key(),
                fresh = %fresh.key(),
                "auth: retrying once with a fresh key after a 401"
            );
            let mut svc = spare;
            let svc = svc.ready().await.map_err(Error::from_service_error)?;
            call(svc, replay)
                .await
                .map_err(|e| server_error(e, Some(fresh.key())))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{ApiKey, FetchMode, KeySource};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use tower::service_fn;
    use tower_layer::Layer;

    const OLD: &str = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789aaaa";
    const NEW: &str = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789bbbb";

    fn unauthorized(message: &str) -> Error {
        let body = serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "code": null}});
        Error::from_response_parts(
            http::StatusCode::UNAUTHORIZED,
            &http::HeaderMap::new(),
            body.to_string().as_bytes(),
        )
    }

    type Seen = Arc<Mutex<Vec<String>>>;

    /// A server that accepts only `NEW` and records the keys it saw.
    fn server(
        reject_with: &'static str,
    ) -> (
        Seen,
        impl Service<
                Request<String>,
                Response = http::Response<()>,
                Error = Error,
                Future = impl Send + 'static,
            > + Clone
            + Send
            + 'static,
    ) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let svc = service_fn(move |req: Request<String>| {
            let auth = req.headers()[http::header::AUTHORIZATION]
                .to_str()
                .unwrap()
                .to_owned();
            assert_eq!(req.body(), "payload", "the replay keeps the body");
            s.lock().unwrap().push(auth.clone());
            async move {
                if auth == format!("Bearer {NEW}") {
                    Ok(http::Response::new(()))
                } else {
                    Err(unauthorized(reject_with))
                }
            }
        });
        (seen, svc)
    }

    /// A provider that hands out `OLD` from its cache and `NEW` when asked to refresh.
    fn provider(asked: Arc<Mutex<Vec<FetchMode>>>, fresh: &'static str) -> KeySource {
        KeySource::provider(move |mode: FetchMode| {
            asked.lock().unwrap().push(mode);
            async move {
                Ok::<_, BoxError>(ApiKey::new(match mode {
                    FetchMode::Refresh => fresh,
                    _ => OLD,
                }))
            }
        })
    }

    fn req() -> Request<String> {
        Request::post("https://api.openai.com/v1/chat/completions")
            .body("payload".to_owned())
            .unwrap()
    }

    const INCORRECT: &str = "Incorrect API key provided: sk-proj-***aaaa. You can find your API key at https://platform.openai.com/account/api-keys.";

    #[tokio::test]
    async fn a_rejected_key_is_refreshed_once_and_the_request_replayed() {
        let (seen, inner) = server(INCORRECT);
        let asked = Arc::default();
        let svc = AuthLayer::new(provider(Arc::clone(&asked), NEW))
            .refresh_on_unauthorized()
            .layer(inner);
        svc.oneshot(req()).await.unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            [format!("Bearer {OLD}"), format!("Bearer {NEW}")]
        );
        assert_eq!(
            *asked.lock().unwrap(),
            [FetchMode::MayCache, FetchMode::Refresh]
        );
    }

    #[tokio::test]
    async fn at_most_one_retry() {
        let (seen, inner) = server(INCORRECT);
        let asked = Arc::default();
        // The "fresh" key is wrong too.
        let fresh = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789cccc";
        let svc = AuthLayer::new(provider(Arc::clone(&asked), fresh))
            .refresh_on_unauthorized()
            .layer(inner);
        let err = svc.oneshot(req()).await.unwrap_err();
        assert_eq!(err.auth_cause(), Some(AuthCause::IncorrectKey));
        assert_eq!(seen.lock().unwrap().len(), 2);
        assert_eq!(asked.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn no_retry_when_the_fresh_key_is_the_same() {
        let (seen, inner) = server(INCORRECT);
        let asked = Arc::default();
        let svc = AuthLayer::new(provider(Arc::clone(&asked), OLD))
            .refresh_on_unauthorized()
            .layer(inner);
        let err = svc.oneshot(req()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Authentication);
        assert_eq!(seen.lock().unwrap().len(), 1);
        assert_eq!(asked.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn no_retry_for_a_fixed_key_or_other_causes() {
        let (seen, inner) = server(INCORRECT);
        let svc = AuthLayer::from_key(OLD)
            .refresh_on_unauthorized()
            .layer(inner);
        assert!(svc.oneshot(req()).await.is_err());
        assert_eq!(seen.lock().unwrap().len(), 1, "a fixed key is not retried");

        let (seen, inner) = server("You must be a member of an organization to use the API.");
        let asked = Arc::default();
        let svc = AuthLayer::new(provider(Arc::clone(&asked), NEW))
            .refresh_on_unauthorized()
            .layer(inner);
        let err = svc.oneshot(req()).await.unwrap_err();
        assert_eq!(err.auth_cause(), Some(AuthCause::NotOrgMember));
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "a fresh key cannot cure this"
        );
        assert_eq!(asked.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_failed_refresh_returns_the_original_401() {
        let (seen, inner) = server(INCORRECT);
        let n = Arc::new(AtomicUsize::new(0));
        let source = KeySource::provider(move |mode: FetchMode| {
            n.fetch_add(1, Ordering::SeqCst);
            async move {
                match mode {
                    FetchMode::Refresh => Err(BoxError::from("vault sealed")),
                    _ => Ok(ApiKey::new(OLD)),
                }
            }
        });
        let svc = AuthLayer::new(source)
            .refresh_on_unauthorized()
            .layer(inner);
        let err = svc.oneshot(req()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Authentication);
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_key_the_request_carries_is_not_refreshed() {
        let (seen, inner) = server(INCORRECT);
        let asked = Arc::default();
        let svc = AuthLayer::new(provider(Arc::clone(&asked), NEW))
            .refresh_on_unauthorized()
            .layer(inner);
        let mut r = req();
        r.headers_mut().insert(
            http::header::AUTHORIZATION,
            format!("Bearer {OLD}").parse().unwrap(),
        );
        assert!(svc.oneshot(r).await.is_err());
        assert_eq!(seen.lock().unwrap().len(), 1);
        assert!(asked.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn local_checks_still_come_first() {
        let (seen, inner) = server(INCORRECT);
        let svc = AuthLayer::from_key("sk-...")
            .refresh_on_unauthorized()
            .layer(inner);
        let err = svc.oneshot(req()).await.unwrap_err();
        assert_eq!(err.auth_cause(), Some(AuthCause::Placeholder));
        let svc = AuthLayer::check_only()
            .refresh_on_unauthorized()
            .layer(server(INCORRECT).1);
        assert_eq!(
            svc.oneshot(req()).await.unwrap_err().kind(),
            ErrorKind::MissingApiKey
        );
        assert!(seen.lock().unwrap().is_empty());
    }
}
