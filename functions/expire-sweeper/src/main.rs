//! expire-sweeper: run by an EventBridge schedule. Logic: `nhi_broker::sweeper`.

use aws_lambda_events::eventbridge::EventBridgeEvent;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    nhi_broker::telemetry::init();
    let config = nhi_broker::config::Config::from_env()?;
    let clients = nhi_broker::wiring::SweepClients::new(&nhi_broker::aws::sdk_config_with(&config.aws, None).await);
    let service = nhi_broker::wiring::sweep_service(&config, clients);
    let service = &service;
    lambda_runtime::run(service_fn(|event: LambdaEvent<EventBridgeEvent<Value>>| async move {
        Ok::<_, Error>(nhi_broker::jobs::handle_sweep(service, event.payload).await?)
    }))
    .await
}
