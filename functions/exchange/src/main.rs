//! exchange: the RFC 8693 token endpoint and the broker's JWKS, behind an API Gateway HTTP API.

use nhi_broker::config::Config;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    nhi_broker::telemetry::init();
    let config = Config::from_env()?;
    let sdk = nhi_broker::aws::sdk_config_with(&config.aws, None).await;
    let api = nhi_broker::wiring::broker_api(&config, &sdk)?;
    nhi_broker::http::gateway::run(&api).await
}
