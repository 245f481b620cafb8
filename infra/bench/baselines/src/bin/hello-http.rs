//! The smallest HTTP Lambda: lambda_http answering 200. Floor for size, init and memory.

use lambda_http::{Body, Error, Request, Response, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_http::run(service_fn(|_request: Request| async {
        Ok::<_, Error>(Response::builder().status(200).body(Body::from("ok")).unwrap())
    }))
    .await
}
