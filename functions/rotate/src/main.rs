//! rotate: run by an EventBridge schedule. Validates and acknowledges its schedule event.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    nhi_broker::telemetry::init();
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move {
        let run = nhi_broker::jobs::parse_scheduled_event(event.payload)?;
        tracing::info!(run_id = %run.id, scheduled_time = %run.time, detail_type = %run.detail_type, "scheduled run received");
        Ok::<_, Error>(serde_json::json!({ "run_id": run.id }))
    }))
    .await
}
