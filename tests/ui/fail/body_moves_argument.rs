use oai_resilience::{openai_call, Error};

async fn send(body: String) -> Result<usize, Error> {
    Ok(body.len())
}

#[openai_call]
async fn summarize(body: String) -> Result<usize, Error> {
    send(body).await
}

fn main() {
    let _ = summarize(String::new());
}
