//! Item 1 of issue #20: an `https://` upstream with a self-signed certificate generated here,
//! trusted through `--upstream-ca`; HTTP/2 is negotiated by ALPN. Without the CA, the
//! certificate is refused and the call fails with 502 without any request being served.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use oai_resilience::RetryConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use support::{accept_each, config, request, start, KEY};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A TLS upstream on 127.0.0.1 with a fresh self-signed certificate; records the HTTP version
/// and path of each request it serves. Returns its address, the certificate's PEM and the log.
async fn tls_upstream() -> (SocketAddr, String, Arc<Mutex<Vec<String>>>) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let pem = cert.pem();
    let der: CertificateDer<'static> = cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signing_key.serialize_der()));
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![der], key)
    .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    accept_each(listener, move |tcp| {
        let acceptor = acceptor.clone();
        let log = log2.clone();
        async move {
            // A client that refuses the certificate ends here.
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let log = log.clone();
                async move {
                    log.lock()
                        .unwrap()
                        .push(format!("{:?} {}", req.version(), req.uri().path()));
                    let body = Full::new(Bytes::from_static(br#"{"object":"list","data":[]}"#));
                    let mut res = Response::new(body);
                    res.headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    Ok::<_, Infallible>(res)
                }
            });
            let io = TokioIo::new(stream);
            if h2 {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service)
                    .await;
            } else {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            }
        }
    });
    (addr, pem, log)
}

#[tokio::test]
async fn tls_upstream_with_a_self_signed_certificate_through_upstream_ca() {
    let (addr, pem, log) = tls_upstream().await;
    let dir = std::env::temp_dir().join(format!("oai-gateway-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let url = format!("https://127.0.0.1:{}/v1", addr.port());
    let auth = format!("Bearer {KEY}");
    let h = [("authorization", auth.as_str())];

    let gw = start(config(
        &["--upstream", &url, "--upstream-ca", ca.to_str().unwrap()],
        &[],
    ))
    .await;
    for _ in 0..3 {
        let res = request(gw, "GET", "/v1/models", &h, "").await;
        assert_eq!(res.status, 200, "{}", res.body);
        assert_eq!(res.json()["object"], "list");
    }
    assert_eq!(*log.lock().unwrap(), vec!["HTTP/2.0 /v1/models"; 3]);

    // Without the CA the certificate is refused: 502 after the retries, nothing served.
    let mut c = config(&["--upstream", &url], &[]);
    c.retry = RetryConfig::new().max_attempts(2).seed(3);
    let untrusted = start(c).await;
    let res = request(untrusted, "GET", "/v1/models", &h, "").await;
    assert_eq!(res.status, 502, "{}", res.body);
    assert_eq!(log.lock().unwrap().len(), 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_ca_file_is_a_config_error() {
    let dir = std::env::temp_dir().join(format!("oai-gateway-badca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.pem");
    std::fs::write(&bad, "not a certificate\n").unwrap();
    let none = |_: &str| None;
    for (path, want) in [
        (bad.to_str().unwrap().to_owned(), "holds no CERTIFICATE"),
        (
            dir.join("missing.pem").to_str().unwrap().to_owned(),
            "cannot read",
        ),
    ] {
        let err = oai_gateway::Config::from_args(["--upstream-ca", path.as_str()], &none)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--upstream-ca:") && err.contains(want),
            "{err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
