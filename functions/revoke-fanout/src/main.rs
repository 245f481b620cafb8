//! revoke-fanout: invoked by the revocations table's DynamoDB stream (revocations and rotation
//! notices) and by a schedule that retries unconfirmed deliveries. Logic: `nhi_broker::fanout`.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use nhi_broker::jobs::FanoutInvocation;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    nhi_broker::telemetry::init();
    let config = nhi_broker::config::Config::from_env()?;
    let clients = nhi_broker::wiring::FanoutClients::new(&nhi_broker::aws::sdk_config_with(&config.aws, None).await);
    let service = nhi_broker::wiring::fanout_service(&config, clients)?;
    let service = &service;
    lambda_runtime::run(service_fn(|event: LambdaEvent<FanoutInvocation>| async move {
        // The invocation's deadline (epoch ms) as an Instant: a long sweep saves its place before it.
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let deadline = Instant::now() + Duration::from_millis(event.context.deadline.saturating_sub(now_ms));
        Ok::<_, Error>(nhi_broker::jobs::handle_fanout(service, event.payload, Some(deadline)).await?)
    }))
    .await
}
