//! `gateway`: an OpenAI-compatible proxy that gives any OpenAI client the resilience stack.
//!
//! ```sh
//! cargo run -p examples --bin gateway                        # upstream: an embedded mock
//! cargo run -p examples --bin gateway -- --listen 127.0.0.1:8787 --upstream http://127.0.0.1:9000/v1
//! ```
//!
//! Then point any OpenAI client at it, for example the official Python SDK:
//!
//! ```python
//! from openai import OpenAI
//! client = OpenAI(base_url="http://127.0.0.1:8787/v1", api_key="sk-...")   # placeholder: 401, locally
//! ```
//!
//! Every request goes through the stack (local key checks, retries with jitter, pacing at the
//! rate limit, classification) before it reaches the upstream; failures come back as OpenAI's
//! error JSON with the hint in the message and in `x-oai-resilience-hint`, and with
//! `x-should-retry: false` so that the client's own retries do not multiply the requests. See
//! `examples/src/gateway.rs` for the mapping.
//!
//! Options:
//! - `--listen ADDR`: where to listen (default `127.0.0.1:8787`);
//! - `--upstream URL`: the OpenAI-compatible upstream's base URL, written as OpenAI's SDKs
//!   and `OPENAI_BASE_URL` write it, with or without `/v1` (`http://127.0.0.1:9000/v1` and
//!   `http://127.0.0.1:9000` both forward `/v1/chat/completions` to `/v1/chat/completions`);
//!   default: an embedded mock OpenAI server on a free port, with a seeded 10 % of 5xx
//!   answers that the gateway retries. Plain `http://` only in this example (the hyper-util
//!   client here has no TLS connector).
//! - `--store memory|redis://HOST:PORT`: where the pacing state lives (default `memory`: in
//!   this process). With Redis, every gateway replica that uses the same Redis and key shares
//!   the rate limit; if Redis is down the gateway paces in-process until it is back.
//!
//! The key is the incoming request's `Authorization: Bearer …`, or else `OPENAI_API_KEY`
//! (with `OPENAI_ORG_ID` / `OPENAI_PROJECT_ID`).

use std::net::SocketAddr;
use std::process::ExitCode;

use examples::gateway::Gateway;
use examples::stack::{http_client, Layers};
use oai_resilience::mock::MockServer;
use oai_resilience::AuthLayer;
use tokio::net::TcpListener;

const USAGE: &str =
    "usage: gateway [--listen ADDR] [--upstream URL] [--store memory|redis://HOST:PORT]";

struct Args {
    listen: SocketAddr,
    upstream: Option<String>,
    store: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
        upstream: None,
        store: "memory".to_owned(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (arg.clone(), None),
        };
        let mut value = |what: &str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs {what}\n{USAGE}"))
        };
        match name.as_str() {
            "--listen" => {
                let v = value("an address such as 127.0.0.1:8787")?;
                args.listen = v
                    .parse()
                    .map_err(|e| format!("--listen {v:?}: {e}\n{USAGE}"))?;
            }
            "--upstream" => args.upstream = Some(value("a URL")?),
            "--store" => args.store = value("memory or redis://HOST:PORT")?,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let mut layers = Layers::new(AuthLayer::from_env());
    match examples::gateway::pacing_store(&args.store).await {
        Ok(Some(store)) => {
            println!("pacing: shared through Redis");
            layers = layers.pacing_store(store);
        }
        Ok(None) => println!("pacing: in this process"),
        Err(msg) => {
            eprintln!("{msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    // Keep the mock alive for as long as the gateway runs.
    let mut _mock = None;
    let upstream = match args.upstream {
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
    let stack = layers.build(http_client());
    let gateway = match Gateway::new(&upstream, stack) {
        Ok(g) => g,
        Err(msg) => {
            eprintln!("{msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(args.listen);
    println!(
        "gateway: listening on http://{addr}/v1 -> {}",
        gateway.upstream()
    );
    println!("try:  curl -s http://{addr}/v1/chat/completions -H 'authorization: Bearer your-api-key' -d '{{}}'");
    tokio::select! {
        res = gateway.serve(listener) => {
            if let Err(e) = res {
                eprintln!("gateway stopped: {e}");
                return ExitCode::FAILURE;
            }
        }
        _ = tokio::signal::ctrl_c() => println!("\ngateway: stopped"),
    }
    ExitCode::SUCCESS
}
