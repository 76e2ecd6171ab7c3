use oai_resilience::openai_call;

#[openai_call]
async fn summarize(text: &str) -> Option<String> {
    Some(text.to_owned())
}

fn main() {
    let _ = summarize("x");
}
