//! Event parsing and handlers of the scheduled and stream-driven functions. Fanout and sweeping
//! still only validate and acknowledge their events (issue: revoke-fanout and expire-sweeper).

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

/// `detail-type` of an on-demand rotation (`detail: {"secret_id": "..."}`), sent by operators
/// through EventBridge or a direct invoke.
pub const ROTATE_SECRET_DETAIL_TYPE: &str = "Rotate Secret";

/// What a rotate invocation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateRequest {
    Scheduled(ScheduledRun),
    Secret { secret_id: String, run: ScheduledRun },
}

/// A scheduled run, or an on-demand rotation of one secret; anything else is refused clearly.
pub fn parse_rotate_event(payload: Value) -> Result<RotateRequest, String> {
    let detail = payload.get("detail").cloned().unwrap_or(Value::Null);
    let run = parse_scheduled_event(payload)?;
    match run.detail_type.as_str() {
        "Scheduled Event" => Ok(RotateRequest::Scheduled(run)),
        ROTATE_SECRET_DETAIL_TYPE => {
            let secret_id = detail
                .get("secret_id")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty() && id.len() <= 512)
                .ok_or("a Rotate Secret event needs detail.secret_id (1 to 512 characters)")?;
            Ok(RotateRequest::Secret {
                secret_id: secret_id.to_string(),
                run,
            })
        }
        other => Err(format!(
            "rotate accepts \"Scheduled Event\" or \"{ROTATE_SECRET_DETAIL_TYPE}\" events, not {other:?}"
        )),
    }
}

/// Run what a rotate event asks for; the JSON answer is the run's report (or the one outcome).
pub async fn handle_rotate_event(
    service: &crate::rotation::RotationService,
    payload: Value,
) -> Result<Value, crate::BrokerError> {
    let request = parse_rotate_event(payload).map_err(|e| {
        tracing::warn!(problem = %e, "rotate event refused");
        crate::BrokerError::InvalidRequest("not a scheduled or Rotate Secret event")
    })?;
    match request {
        RotateRequest::Scheduled(run) => {
            let report = service.run_scheduled().await?;
            tracing::info!(
                run_id = %run.id,
                rotated = report.rotated,
                previous_retired = report.previous_retired,
                not_due = report.not_due,
                skipped = report.skipped,
                failed = report.failed,
                remaining = report.remaining,
                signing_key_changes = ?report.signing_key_changes,
                "rotation run finished"
            );
            serde_json::to_value(&report).map_err(|e| crate::BrokerError::Internal(e.to_string()))
        }
        RotateRequest::Secret { secret_id, run } => {
            let outcome = service.rotate_secret(&secret_id, true).await?;
            tracing::info!(run_id = %run.id, secret_id = %secret_id, outcome = ?outcome, "on-demand rotation finished");
            serde_json::to_value(&outcome).map_err(|e| crate::BrokerError::Internal(e.to_string()))
        }
    }
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
