use oai_resilience::{openai_call, Error};

#[openai_call(max_attempts = 3, retries = 5)]
async fn summarize(text: &str) -> Result<String, Error> {
    Ok(text.to_owned())
}

fn main() {
    let _ = summarize("x");
}
