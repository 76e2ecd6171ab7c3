//! `oai-gateway`: see `oai-gateway --help` and `oai-gateway/README.md`.

use std::process::ExitCode;

use oai_gateway::config::{Command, HELP};
use oai_gateway::server::{self, Drained};
use oai_gateway::{Config, Gateway};
use tokio::net::TcpListener;

fn config_error(msg: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("oai-gateway: {msg}\nrun `oai-gateway --help` for the options");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let env = |name: &str| std::env::var(name).ok();
    let config = match Config::from_args(std::env::args().skip(1), &env) {
        Ok(Command::Help) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Run(c)) => c,
        Err(e) => return config_error(&e),
    };
    let _log = oai_gateway::logging::init(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("oai-gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(*config))
}

async fn run(config: Config) -> ExitCode {
    let gateway = match Gateway::new(&config).await {
        Ok(g) => g,
        Err(e) => return config_error(&e),
    };
    let listener = match TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("oai-gateway: cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(config.listen);
    if let Some(metrics_addr) = config.metrics_listen {
        let metrics_listener = match TcpListener::bind(metrics_addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("oai-gateway: cannot listen on {metrics_addr} (--metrics-listen): {e}");
                return ExitCode::FAILURE;
            }
        };
        println!(
            "oai-gateway: metrics on http://{}/metrics",
            metrics_listener.local_addr().unwrap_or(metrics_addr)
        );
        tokio::spawn(server::serve_metrics(metrics_listener, gateway.clone()));
    }
    let who = if config.access_keys.is_empty() {
        "callers' own keys (no access keys configured)".to_owned()
    } else {
        format!(
            "{} access key(s) -> the server's key",
            config.access_keys.len()
        )
    };
    println!(
        "oai-gateway: listening on http://{addr}/v1 -> {} ({who})",
        gateway.upstream()
    );
    match server::serve(
        listener,
        gateway,
        (&config).into(),
        server::termination_signal(),
    )
    .await
    {
        Ok(Drained::Complete) => {
            println!("oai-gateway: drained, exiting");
            ExitCode::SUCCESS
        }
        Ok(Drained::TimedOut) => {
            println!("oai-gateway: drain timeout passed, exiting");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("oai-gateway: stopped: {e}");
            ExitCode::FAILURE
        }
    }
}
