//! `gateway`: the smallest OpenAI-compatible proxy over the resilience stack, for teaching.
//! The deployable gateway is the `oai-gateway` crate (`cargo run -p oai-gateway -- --help`,
//! `oai-gateway/README.md`): TLS upstreams, access keys, a route allowlist, limits and a
//! graceful drain. This example has none of that: run it on loopback only.
//!
//! ```sh
//! cargo run -p examples --bin gateway                       # upstream: an embedded mock
//! cargo run -p examples --bin gateway -- --listen 127.0.0.1:8787 --upstream http://127.0.0.1:9000/v1
//! ```
//!
//! Each request is read whole (so retries can replay it), sent through the stack
//! (validation, key checks, retries, pacing, classification) with the caller's own
//! `Authorization` header, and answered with the upstream's response streamed through, or
//! with the stack's error mapped to OpenAI's error JSON by
//! [`oai_resilience::respond::error_response`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;

use bytes::Bytes;
use examples::stack::{http_client, Layers};
use http::Request;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use oai_resilience::mock::MockServer;
use oai_resilience::stack::BaseUrlLayer;
use oai_resilience::{respond, AuthLayer};
use tokio::net::TcpListener;
use tower::{Layer, ServiceExt};

const USAGE: &str = "usage: gateway [--listen ADDR] [--upstream URL]";

#[tokio::main]
async fn main() -> ExitCode {
    let (mut listen, mut upstream) = (SocketAddr::from(([127, 0, 0, 1], 8787)), None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(v)) if v.parse::<SocketAddr>().is_ok() => listen = v.parse().unwrap(),
            ("--upstream", Some(v)) => upstream = Some(v),
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    // Keep the mock alive for as long as the gateway runs.
    let mut _mock = None;
    let upstream = match upstream {
        Some(url) => url,
        None => {
            let mock = MockServer::builder()
                .random_server_errors(0.1, 42)
                .start()
                .await;
            let url = mock.url();
            println!("upstream: embedded mock OpenAI server at {url} (10 % flaky 5xx)");
            _mock = Some(mock);
            url
        }
    };
    // The caller's own key only (`check_only`): a proxy must not lend its key to anyone who
    // can reach it. `oai-gateway` lends it to holders of its access keys.
    let base: BaseUrlLayer = match upstream.parse() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let stack = base.layer(Layers::new(AuthLayer::check_only()).build(http_client()));
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(listen);
    println!("gateway: listening on http://{addr}/v1 -> {upstream}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let stack = stack.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let stack = stack.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let Ok(body) = Limited::new(body, 8 << 20).collect().await else {
                        let err =
                            oai_resilience::Error::new(oai_resilience::ErrorKind::RequestTooLarge);
                        return Ok::<_, Infallible>(
                            respond::error_response(&err).map(|b| Either::Right(Full::new(b))),
                        );
                    };
                    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                    let mut out = Request::builder().method(parts.method.clone()).uri(path);
                    for name in ["authorization", "content-type", "accept"] {
                        if let (Some(h), Some(v)) = (out.headers_mut(), parts.headers.get(name)) {
                            h.insert(name, v.clone());
                        }
                    }
                    let out = out
                        .body(Full::new(body.to_bytes()))
                        .expect("a path from a valid URI");
                    Ok(match stack.oneshot(out).await {
                        Ok(res) => res.map(Either::Left),
                        Err(err) => respond::error_response(&err)
                            .map(|b| Either::Right(Full::<Bytes>::new(b))),
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
