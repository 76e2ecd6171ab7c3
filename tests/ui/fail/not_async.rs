use oai_resilience::{openai_call, Error};

#[openai_call]
fn summarize(text: &str) -> Result<String, Error> {
    Ok(text.to_owned())
}

fn main() {
    let _ = summarize("still type-checks");
}
