//! `mock-server`: the embedded mock OpenAI server (`oai_resilience::mock`) as a process, for
//! the gateway's benchmark and load scenarios (`oai-gateway/bench/`).
//!
//! ```sh
//! cargo run --release -p oai-gateway --example mock-server -- --scenario flaky
//! ```
//!
//! It prints one line, `listening http://127.0.0.1:PORT`, then reads commands on stdin, one per
//! line, and answers each with one line of JSON on stdout:
//!
//! - `counts`: `{"total": .., "answered": .., "ok": .., "by_status": {..}}`;
//! - `errors P`: sets the probability of random 5xx answers (`1` for an outage, `0` after);
//! - `reset`: clears the counts.
//!
//! It exits when stdin closes. Scenarios, as `tools/loadtest/src/main.rs` configures its mock (key
//! check with `oai_resilience::mock::TEST_KEY`, latency 20 ms unless `--latency-ms`):
//!
//! | `--scenario` | mock |
//! |---|---|
//! | `clean` (default) | no rate limits, no faults, latency 0 |
//! | `burst` | a request bucket of 20 refilled 20/s |
//! | `flaky` | 20 % random 5xx (seed 7), no limit |
//! | `quota` | every call a quota 429 |
//! | `outage` | no faults until `errors 1` |
//!
//! `--threads N` sets the tokio worker threads (default 1: on the shared machine the mock,
//! the gateway and the load driver share the cores).

use std::io::{BufRead, Write};
use std::time::Duration;

use oai_resilience::mock::{MockServer, RateLimit, TEST_KEY};

fn usage() -> ! {
    eprintln!(
        "usage: mock-server [--scenario clean|burst|flaky|quota|outage] [--latency-ms MS] \
         [--threads N] [--no-key]"
    );
    std::process::exit(2)
}

fn main() {
    let mut scenario = "clean".to_owned();
    let mut latency: Option<u64> = None;
    let mut threads = 1usize;
    let mut key = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--scenario" => scenario = args.next().unwrap_or_else(|| usage()),
            "--latency-ms" => {
                latency = Some(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or_else(|| usage()),
                );
            }
            "--threads" => {
                threads = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage());
            }
            "--no-key" => key = false,
            _ => usage(),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("mock-server")
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("mock-server: cannot start the runtime: {e}");
            std::process::exit(1)
        });
    let default_latency = if scenario == "clean" { 0 } else { 20 };
    let latency = Duration::from_millis(latency.unwrap_or(default_latency));
    let mut b = MockServer::builder().latency(latency).no_rate_limits();
    if key {
        b = b.api_key(TEST_KEY);
    }
    let b = match scenario.as_str() {
        "clean" => b,
        "burst" => b.request_limit(RateLimit::bucket(20, 20.0)),
        "flaky" => b.random_server_errors(0.2, 7),
        "quota" => b.quota_exhausted(true),
        "outage" => b.random_server_errors(0.0, 7),
        _ => usage(),
    };
    let server = runtime.block_on(b.start());
    println!("listening {}", server.url());
    let _ = std::io::stdout().flush();
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let mut words = line.split_whitespace();
        let answer = match (words.next(), words.next()) {
            (Some("counts"), _) => {
                let c = server.counts();
                let by_status: serde_json::Map<String, serde_json::Value> = c
                    .by_status
                    .iter()
                    .map(|(s, n)| (s.to_string(), (*n).into()))
                    .collect();
                serde_json::json!({
                    "total": c.total,
                    "answered": c.answered,
                    "ok": c.ok,
                    "by_status": by_status,
                })
            }
            (Some("errors"), Some(p)) => match p.parse::<f64>() {
                Ok(p) => {
                    server.set_random_server_errors(p);
                    serde_json::json!({"errors": p})
                }
                Err(_) => serde_json::json!({"error": "errors P: P is a probability"}),
            },
            (Some("reset"), _) => {
                server.reset_counts();
                serde_json::json!({"reset": true})
            }
            _ => serde_json::json!({"error": "commands: counts, errors P, reset"}),
        };
        println!("{answer}");
        let _ = std::io::stdout().flush();
    }
    drop(server);
    runtime.shutdown_background();
}
