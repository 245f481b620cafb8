//! audit-export: invoked by the audit table's DynamoDB stream; appends every write to the export
//! bucket (Object Lock). Logic: `nhi_broker::export`.

use aws_lambda_events::dynamodb::Event;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    nhi_broker::telemetry::init();
    let service = nhi_broker::wiring::export_service_from_env().await?;
    let service = &service;
    lambda_runtime::run(service_fn(|event: LambdaEvent<Event>| async move {
        // A failed batch fails the invocation: the stream retries it, nothing is skipped.
        Ok::<_, Error>(nhi_broker::jobs::handle_export(service, &event.payload).await?)
    }))
    .await
}
