//! Event handlers of the scheduled and stream-driven functions. For now they validate and
//! acknowledge their events; rotation, fanout and sweeping land in their own issues.

use aws_lambda_events::dynamodb::{Event as StreamEvent, EventRecord};
use aws_lambda_events::eventbridge::EventBridgeEvent;
use aws_lambda_events::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use serde_json::Value;

/// A scheduled invocation: the fields a run is keyed and logged by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledRun {
    pub id: String,
    pub time: String,
    pub detail_type: String,
}

/// Accept an EventBridge Scheduler / scheduled-rule event; refuse anything else clearly.
pub fn parse_scheduled_event(payload: Value) -> Result<ScheduledRun, String> {
    let event: EventBridgeEvent<Value> =
        serde_json::from_value(payload).map_err(|e| format!("not an EventBridge event: {e}"))?;
    if event.detail_type.is_empty() {
        return Err("EventBridge event has no detail-type".into());
    }
    Ok(ScheduledRun {
        id: event.id.unwrap_or_default(),
        time: event.time.map(|t| t.to_rfc3339()).unwrap_or_default(),
        detail_type: event.detail_type,
    })
}

/// Acknowledge a batch of stream records, reporting the ones that are not DynamoDB INSERT/MODIFY/
/// REMOVE records as failures by sequence number (ReportBatchItemFailures semantics).
pub fn acknowledge_stream_batch(event: &StreamEvent) -> DynamoDbEventResponse {
    let failures = event
        .records
        .iter()
        .filter(|r| !is_known_record(r))
        .map(|r| {
            let mut failure = DynamoDbBatchItemFailure::default();
            failure.item_identifier = r.change.sequence_number.clone();
            failure
        })
        .collect();
    let mut response = DynamoDbEventResponse::default();
    response.batch_item_failures = failures;
    response
}

fn is_known_record(record: &EventRecord) -> bool {
    matches!(record.event_name.as_str(), "INSERT" | "MODIFY" | "REMOVE")
}
