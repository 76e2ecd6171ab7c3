//! `demo`: a few hundred OpenAI calls through `oai-resilience`, against an embedded mock
//! OpenAI server with a realistic mix of faults. No key, no network.
//!
//! ```sh
//! cargo run --release -p examples --bin demo
//! cargo run --release -p examples --bin demo -- --calls 100
//! ```
//!
//! The workload (see `examples/src/demo/`) runs a burst of calls through the tower stack
//! (`Validate -> Auth -> Retry -> Pace -> Classify -> hyper-util`) and through
//! `#[openai_call]` functions, while the mock enforces a rate limit that the burst exceeds,
//! fails a share of requests with 5xx, and one project has no quota left. Three calls are
//! planted to fail: a missing parameter, a key pasted with its quotes, the exhausted quota.
//! A live progress bar shows calls done, retries, local rejections and pacing waits; the end
//! is a summary table and the one-line error of each call that could not succeed, with its
//! hint. Every number is measured, none is written in.
//!
//! Options: `--calls N` (default 300), `--concurrency N` (default 64), `--seed N`,
//! `--no-progress`.
//!
//! Against the real API (needs `OPENAI_API_KEY`, and the `real` feature for TLS): five cheap
//! calls (`gpt-4o-mini`, at most 5 completion tokens each) plus the two local faults, which
//! send nothing. `OPENAI_BASE_URL` overrides `https://api.openai.com`.
//!
//! ```sh
//! OPENAI_API_KEY=sk-... cargo run --release -p examples --features real --bin demo -- --real
//! ```

use std::process::ExitCode;

use examples::demo::{self, DemoConfig};

const USAGE: &str = "usage: demo [--calls N] [--concurrency N] [--seed N] [--no-progress] [--real]";

fn parse_args() -> Result<(DemoConfig, bool), String> {
    let mut config = DemoConfig::default();
    let mut real = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            let v = it
                .next()
                .ok_or_else(|| format!("{name} needs a number\n{USAGE}"))?;
            v.parse()
                .map_err(|_| format!("{name}: {v:?} is not a number\n{USAGE}"))
        };
        match arg.as_str() {
            "--calls" => config.calls = number("--calls")? as usize,
            "--concurrency" => config.concurrency = number("--concurrency")? as usize,
            "--seed" => config.seed = number("--seed")?,
            "--no-progress" => config.progress = false,
            "--real" => real = true,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    Ok((config, real))
}

#[cfg(feature = "real")]
async fn run_real(config: DemoConfig) -> Result<demo::Summary, oai_resilience::BoxError> {
    let key = std::env::var("OPENAI_API_KEY").map_err(|_| {
        "--real needs OPENAI_API_KEY (keys are at https://platform.openai.com/api-keys)"
    })?;
    let base = std::env::var("OPENAI_BASE_URL")
        .ok()
        .map(|b| b.trim_end_matches('/').trim_end_matches("/v1").to_owned())
        .unwrap_or_else(|| "https://api.openai.com".to_owned());
    demo::run_real(&base, &key, config).await
}

#[cfg(not(feature = "real"))]
async fn run_real(_config: DemoConfig) -> Result<demo::Summary, oai_resilience::BoxError> {
    Err("--real needs TLS, which the `real` feature adds: \
         cargo run --release -p examples --features real --bin demo -- --real"
        .into())
}

#[tokio::main]
async fn main() -> ExitCode {
    let (config, real) = match parse_args() {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let summary = if real {
        run_real(config).await
    } else {
        demo::run(config).await
    };
    match summary {
        Ok(summary) => {
            print!("{}", demo::render(&summary));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}
