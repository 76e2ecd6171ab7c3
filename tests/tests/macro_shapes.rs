//! `#[openai_call]` on every supported function shape: these compile and run.

use std::fmt::Debug;

use oai_resilience::{openai_call, Error, ErrorKind};

#[derive(Debug)]
struct Client {
    base: String,
}

#[openai_call]
async fn free(client: &Client, text: &str) -> Result<usize, Error> {
    Ok(client.base.len() + text.len())
}

#[openai_call(skip(n))]
async fn generic<T: Debug + Clone + Send>(value: T, n: u32) -> Result<Vec<T>, Error> {
    Ok(vec![value.clone(); n as usize])
}

#[openai_call]
async fn impl_trait_arg(text: impl AsRef<str> + Debug) -> Result<impl Debug, Error> {
    Ok(text.as_ref().to_uppercase())
}

#[openai_call]
async fn owned_body_cloned(body: String) -> Result<String, Error> {
    let owned = body.clone();
    consume(owned).await
}

async fn consume(s: String) -> Result<String, Error> {
    Ok(s)
}

#[openai_call]
async fn fails(code: u16) -> Result<(), Error> {
    let status = http::StatusCode::from_u16(code).map_err(|_| Error::new(ErrorKind::Internal))?;
    Err(Error::new(ErrorKind::from_status(status, None)).with_status(status))
}

impl Client {
    #[openai_call]
    async fn method(&self, n: u8) -> Result<String, Error> {
        Ok(format!("{}/{n}", self.base))
    }

    #[openai_call]
    async fn owned_self(self) -> Result<String, Error> {
        Ok(self.base.clone())
    }

    #[openai_call]
    async fn failing_method(&self, n: u8) -> Result<u8, Error> {
        Err(Error::new(ErrorKind::ServerError).with_detail(format!("{n}")))
    }

    #[openai_call]
    async fn early_return(&self, n: u8) -> Result<u8, Error> {
        if n > 3 {
            return Ok(3);
        }
        Ok(n)
    }
}

trait Api {
    async fn call(&self, prompt: &str) -> Result<String, Error>;
}

impl Api for Client {
    #[openai_call(name = "Api::call")]
    async fn call(&self, prompt: &str) -> Result<String, Error> {
        Ok(format!("{}:{prompt}", self.base))
    }
}

#[tokio::test(start_paused = true)]
async fn shapes_run() {
    let c = Client {
        base: "http://x".to_owned(),
    };
    assert_eq!(free(&c, "ab").await.unwrap(), 10);
    assert_eq!(generic("a", 2).await.unwrap(), vec!["a", "a"]);
    assert_eq!(
        format!("{:?}", impl_trait_arg("hi").await.unwrap()),
        "\"HI\""
    );
    assert_eq!(owned_body_cloned("x".to_owned()).await.unwrap(), "x");
    assert_eq!(c.method(1).await.unwrap(), "http://x/1");
    assert_eq!(c.early_return(9).await.unwrap(), 3);
    assert_eq!(c.call("p").await.unwrap(), "http://x:p");
    assert_eq!(c.owned_self().await.unwrap(), "http://x");
}

#[tokio::test(start_paused = true)]
async fn method_path_names_the_type() {
    let err = fails(400).await.unwrap_err();
    let ctx = err.call_context().expect("call context");
    assert_eq!(ctx.function, "macro_shapes::fails");
    assert_eq!(ctx.args, vec![("code".to_owned(), "400".to_owned())]);
}

#[tokio::test(start_paused = true)]
async fn path_of_a_method_names_the_type() {
    let c = Client {
        base: "b".to_owned(),
    };
    let err = c.failing_method(2).await.unwrap_err();
    let ctx = err.call_context().expect("call context");
    assert_eq!(ctx.function, "macro_shapes::Client::failing_method");
    assert_eq!(
        ctx.args,
        vec![
            ("self".to_owned(), "Client { base: \"b\" }".to_owned()),
            ("n".to_owned(), "2".to_owned())
        ]
    );
}

mod renamed {
    // The `crate` path as a user of a renamed dependency writes it (that the expansion uses
    // only this path is checked by the macro crate's unit tests).
    use oai_resilience as oai;

    #[oai::openai_call(crate = "oai", name = "renamed::call")]
    pub(super) async fn call(n: u8) -> Result<u8, oai::Error> {
        Err(oai::Error::new(oai::ErrorKind::NotFound).with_detail(format!("{n}")))
    }
}

#[tokio::test(start_paused = true)]
async fn crate_override_and_name() {
    let err = renamed::call(4).await.unwrap_err();
    let ctx = err.call_context().unwrap();
    assert_eq!(ctx.function, "renamed::call");
    assert_eq!(ctx.args, vec![("n".to_owned(), "4".to_owned())]);
}

fn assert_send<T: Send>(value: T) -> T {
    value
}

#[tokio::test(start_paused = true)]
async fn futures_are_send_and_spawnable() {
    let c = Client {
        base: "http://x".to_owned(),
    };
    let fut = assert_send(c.method(7));
    assert_eq!(fut.await.unwrap(), "http://x/7");
    let handle = tokio::spawn(async { generic(1u8, 2).await });
    assert_eq!(handle.await.unwrap().unwrap(), vec![1, 1]);
    let err = tokio::spawn(fails(503)).await.unwrap().unwrap_err();
    assert_eq!(err.attempts(), 5);
}
