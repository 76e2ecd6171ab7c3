// The inner client of `OpenAiLayer` receives `ValidateBody<B>`, not `B`: a client built for
// `Full<Bytes>` is reported where the stack is built, naming the body it must take.
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use oai_resilience::OpenAiLayer;

fn main() {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let _stack = OpenAiLayer::new().service_for::<Full<Bytes>, _>(client);
}
