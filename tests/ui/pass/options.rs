//! Every option at once, on the function shapes the attribute supports.
use std::time::Duration;

use oai_resilience::{openai_call, Error};

#[derive(Debug)]
struct Client;

#[derive(Debug, serde::Serialize)]
struct Body {
    model: String,
}

#[openai_call(
    retry = oai_resilience::retry::RetryConfig::new().no_budget(),
    policy = oai_resilience::retry::OpenAiPolicy::new(),
    max_attempts = 5,
    base_delay = "250ms",
    max_delay = Duration::from_secs(4),
    timeout = "1m30s",
    skip(api_key),
    name = "demo::summarize",
    validate(body = "POST /v1/chat/completions"),
    api_key = api_key,
    crate = "oai_resilience",
)]
async fn summarize(client: &Client, api_key: &str, body: &Body) -> Result<String, Error> {
    let _ = client;
    Ok(body.model.clone())
}

#[openai_call(skip_all, api_key = "OPENAI_API_KEY")]
async fn with_env_key<T: std::fmt::Debug + Sync>(value: &T) -> Result<(), Error> {
    let _ = value;
    Ok(())
}

impl Client {
    #[openai_call]
    async fn method(&self, prompt: impl AsRef<str> + std::fmt::Debug) -> Result<impl std::fmt::Debug, Error> {
        Ok(prompt.as_ref().len())
    }
}

fn main() {
    let _ = summarize(&Client, "sk-x", &Body { model: "m".into() });
    let _ = with_env_key(&1);
    let _ = Client.method("p");
}
