//! exchange: the RFC 8693 token endpoint and the broker's JWKS, behind an API Gateway HTTP API.

use lambda_http::{Error, service_fn};
use nhi_broker::config::Config;
use std::convert::Infallible;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    nhi_broker::telemetry::init();
    let config = Config::from_env()?;
    let sdk = nhi_broker::aws::sdk_config_with(&config.aws, None).await;
    let api = nhi_broker::wiring::broker_api(&config, &sdk)?;
    let api = &api;
    lambda_http::run(service_fn(move |request| async move {
        Ok::<_, Infallible>(api.handle(request).await)
    }))
    .await
}
