use oai_resilience::{openai_call, Error};

#[openai_call(api_key = key, key_rules = "lenient")]
async fn summarize(key: &str, text: &str) -> Result<String, Error> {
    let _ = key;
    Ok(text.to_owned())
}

#[openai_call(key_rules = oai_resilience::auth::KeyRules::lenient())]
async fn no_key(text: &str) -> Result<String, Error> {
    Ok(text.to_owned())
}

fn main() {
    let _ = summarize("k", "x");
    let _ = no_key("x");
}
