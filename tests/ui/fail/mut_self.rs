use oai_resilience::{openai_call, Error};

struct Client {
    calls: u32,
}

impl Client {
    #[openai_call]
    async fn send(&mut self) -> Result<u32, Error> {
        self.calls += 1;
        Ok(self.calls)
    }
}

fn main() {
    let mut c = Client { calls: 0 };
    let _ = c.send();
}
