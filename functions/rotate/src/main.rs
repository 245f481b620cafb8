//! rotate: run by an EventBridge schedule (every due secret and the signing-key ring) or on demand
//! for one secret (`detail-type: Rotate Secret`).

use aws_lambda_events::eventbridge::EventBridgeEvent;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use nhi_broker::config::Config;
use serde_json::Value;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    nhi_broker::telemetry::init();
    let config = Config::from_env()?;
    let sdk = nhi_broker::aws::sdk_config_with(&config.aws, None).await;
    let clients = nhi_broker::wiring::RotationClients::new(&sdk);
    let service = nhi_broker::wiring::rotation_service(&config, clients)?;
    let service = &service;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<EventBridgeEvent<Value>>| async move {
            Ok::<_, Error>(nhi_broker::jobs::handle_rotate(service, event.payload).await?)
        },
    ))
    .await
}
