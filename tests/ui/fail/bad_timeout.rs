use oai_resilience::{openai_call, Error};

#[openai_call(timeout = "60 seconds")]
async fn summarize(text: &str) -> Result<String, Error> {
    Ok(text.to_owned())
}

fn main() {
    let _ = summarize("x");
}
