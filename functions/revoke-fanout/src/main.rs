//! revoke-fanout: invoked by the revocations table's DynamoDB stream. Reports unprocessable records
//! through ReportBatchItemFailures instead of failing the whole batch.

use aws_lambda_events::dynamodb::Event;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    nhi_broker::telemetry::init();
    lambda_runtime::run(service_fn(|event: LambdaEvent<Event>| async move {
        let response = nhi_broker::jobs::acknowledge_stream_batch(&event.payload);
        tracing::info!(
            records = event.payload.records.len(),
            failures = response.batch_item_failures.len(),
            "revocation stream batch received"
        );
        Ok::<_, Error>(response)
    }))
    .await
}
