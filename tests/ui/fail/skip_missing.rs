use oai_resilience::{openai_call, Error};

#[openai_call(skip(api_key))]
async fn summarize(text: &str, key: &str) -> Result<String, Error> {
    Ok(format!("{text}{key}"))
}

fn main() {
    let _ = summarize("x", "y");
}
