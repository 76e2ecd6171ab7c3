//! The upstream side: the HTTP client (rustls with the webpki roots plus `--upstream-ca`,
//! HTTP/1.1 and HTTP/2 by ALPN, pooled connections), the stack over it, and the pacing store.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use oai_resilience::pace::{RedisStore, RedisStoreConfig};
use oai_resilience::stack::ClientBody;
use oai_resilience::{Error, OpenAiLayer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tower::util::BoxCloneSyncService;

use crate::config::ConfigError;

/// The client the stack sends through.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, ClientBody<Full<Bytes>>>;

/// The full stack, type-erased so that it can be named, cloned and shared.
pub type Stack = BoxCloneSyncService<Request<Full<Bytes>>, Response<Incoming>, Error>;

/// The certificates of the PEM file `path`.
///
/// # Errors
///
/// The file cannot be read, or holds no certificate or a malformed one.
pub fn read_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let shown = path.display();
    let pem = std::fs::read(path)
        .map_err(|e| ConfigError(format!("--upstream-ca: cannot read {shown}: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError(format!("--upstream-ca: {shown} is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(ConfigError(format!(
            "--upstream-ca: {shown} holds no CERTIFICATE block"
        )));
    }
    Ok(certs)
}

/// The upstream client: `https://` with rustls (the webpki roots, plus the certificates of
/// `ca`), HTTP/2 when the server offers it by ALPN, else HTTP/1.1; `http://` over plain
/// HTTP/1.1. Idle connections are kept for 90 s and reused.
///
/// # Errors
///
/// An unreadable CA file or a certificate rustls refuses.
pub fn client(ca: Option<&Path>) -> Result<UpstreamClient, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca {
        for cert in read_ca(path)? {
            roots.add(cert).map_err(|e| {
                ConfigError(format!(
                    "--upstream-ca: {}: a certificate is not usable as a CA: {e}",
                    path.display()
                ))
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector))
}

/// The stack of `layer` over `client`, type-erased.
pub fn stack(layer: &OpenAiLayer, client: UpstreamClient) -> Stack {
    BoxCloneSyncService::new(layer.service_for::<Full<Bytes>, _>(client))
}

/// The pacing store for `--store ARG`: `memory` (or `in-process`): `None`, each gateway paces
/// in its own process (the default); `redis://HOST:PORT[/DB]` (or `rediss://`): a
/// [`RedisStore`] shared by every gateway that uses the same Redis.
///
/// If Redis does not answer now, the store is returned anyway with a `tracing` warning: it
/// paces in-process until Redis answers (the store fails open), so a gateway starts while
/// its Redis is down.
///
/// # Errors
///
/// An unknown store or a URL the Redis client cannot parse. The message never contains the
/// URL (it may hold a Redis password).
pub async fn pacing_store(arg: &str) -> Result<Option<RedisStore>, ConfigError> {
    match arg {
        "memory" | "in-process" => Ok(None),
        url if url.starts_with("redis://") || url.starts_with("rediss://") => {
            let config = RedisStoreConfig::default();
            let store = RedisStore::open(url, config.clone()).map_err(|e| {
                ConfigError(format!("--store: not a usable Redis URL ({})", e.kind()))
            })?;
            if let Err(e) = RedisStore::connect(url, config).await {
                tracing::warn!(
                    error = %e.kind(),
                    "Redis does not answer yet: pacing in-process until it does"
                );
            }
            Ok(Some(store))
        }
        _ => Err(ConfigError(
            "--store: expected memory or redis://HOST:PORT".to_owned(),
        )),
    }
}
