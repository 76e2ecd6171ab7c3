use oai_resilience::{openai_call, Error};

#[openai_call(timeout = "10s", max_attempts = 2, timeout = "20s")]
async fn summarize(text: &str) -> Result<String, Error> {
    Ok(text.to_owned())
}

fn main() {
    let _ = summarize("x");
}
