//! Event parsing and handlers of the scheduled and stream-driven functions. The functions' mains
//! receive typed events (`aws_lambda_events`) and call `handle_rotate`, `handle_fanout` and
//! `handle_sweep`; the `*_event` variants take raw JSON (the local runner, tests) and refuse what
//! does not parse with the same clear error.

use crate::fanout::{FanoutReport, FanoutService, FanoutWork};
use crate::sweeper::SweepService;
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
    scheduled_run(&eventbridge_event(payload)?)
}

fn eventbridge_event(payload: Value) -> Result<EventBridgeEvent<Value>, String> {
    serde_json::from_value(payload).map_err(|e| format!("not an EventBridge event: {e}"))
}

/// The run an EventBridge event stands for (it must name its `detail-type`).
pub fn scheduled_run(event: &EventBridgeEvent<Value>) -> Result<ScheduledRun, String> {
    if event.detail_type.is_empty() {
        return Err("EventBridge event has no detail-type".into());
    }
    Ok(ScheduledRun {
        id: event.id.clone().unwrap_or_default(),
        time: event.time.map(|t| t.to_rfc3339()).unwrap_or_default(),
        detail_type: event.detail_type.clone(),
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
    rotate_request(&eventbridge_event(payload)?)
}

/// What a typed rotate event asks for.
pub fn rotate_request(event: &EventBridgeEvent<Value>) -> Result<RotateRequest, String> {
    let run = scheduled_run(event)?;
    match run.detail_type.as_str() {
        "Scheduled Event" => Ok(RotateRequest::Scheduled(run)),
        ROTATE_SECRET_DETAIL_TYPE => {
            let secret_id = event
                .detail
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
    handle_rotate(service, eventbridge_event(payload).map_err(refuse_rotate)?).await
}

fn refuse_rotate(problem: String) -> crate::BrokerError {
    tracing::warn!(problem = %problem, "rotate event refused");
    crate::BrokerError::InvalidRequest("not a scheduled or Rotate Secret event")
}

/// rotate's typed entry point.
pub async fn handle_rotate(
    service: &crate::rotation::RotationService,
    event: EventBridgeEvent<Value>,
) -> Result<Value, crate::BrokerError> {
    let request = rotate_request(&event).map_err(|e| {
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
            let outcome = service.rotate_on_demand(&secret_id).await?;
            tracing::info!(run_id = %run.id, secret_id = %secret_id, outcome = ?outcome, "on-demand rotation finished");
            serde_json::to_value(&outcome).map_err(|e| crate::BrokerError::Internal(e.to_string()))
        }
    }
}

/// What one revocations-table stream record asks of fanout. `Err` for records that can never be
/// processed (they are reported, retried a bounded number of times, then land in the DLQ).
pub fn fanout_work(record: &EventRecord) -> Result<FanoutWork, String> {
    #[derive(serde::Deserialize, Default)]
    struct Marker {
        record_type: Option<String>,
        resume_cursor: Option<String>,
    }
    let marker = |image: &serde_dynamo::Item| -> Result<Marker, String> {
        serde_dynamo::from_item(image.clone()).map_err(|e| format!("unreadable image: {e}"))
    };
    match record.event_name.as_str() {
        "INSERT" => {
            let image = &record.change.new_image;
            match marker(image)?.record_type.as_deref() {
                Some("revocation") => Ok(FanoutWork::Revocation {
                    revocation: serde_dynamo::from_item(image.clone()).map_err(|e| format!("not a revocation: {e}"))?,
                    cursor: None,
                }),
                Some("rotation") => Ok(FanoutWork::Rotation(
                    serde_dynamo::from_item(image.clone()).map_err(|e| format!("not a rotation notice: {e}"))?,
                )),
                other => Err(format!("unknown record_type {other:?}")),
            }
        }
        // A revocation's sweep saved its place: resume from there.
        "MODIFY" => {
            let new = marker(&record.change.new_image)?;
            let old = marker(&record.change.old_image).unwrap_or_default();
            match (new.record_type.as_deref(), new.resume_cursor) {
                (Some("revocation"), Some(cursor)) if old.resume_cursor.as_deref() != Some(cursor.as_str()) => {
                    Ok(FanoutWork::Revocation {
                        revocation: serde_dynamo::from_item(record.change.new_image.clone())
                            .map_err(|e| format!("not a revocation: {e}"))?,
                        cursor: Some(cursor),
                    })
                }
                _ => Ok(FanoutWork::Nothing("modification without new progress")),
            }
        }
        "REMOVE" => Ok(FanoutWork::Nothing("expired by TTL")),
        other => Err(format!("unknown stream event {other:?}")),
    }
}

/// Process a batch in order. The first record that fails is reported (ReportBatchItemFailures)
/// and processing stops there: Lambda retries from it, so later records are not run twice out of
/// order. Each record's work is idempotent, so the retry redoes only what is missing.
pub async fn handle_stream_batch(
    service: &FanoutService,
    event: &StreamEvent,
    deadline: Option<std::time::Instant>,
) -> DynamoDbEventResponse {
    let mut response = DynamoDbEventResponse::default();
    let mut total = FanoutReport::default();
    for record in &event.records {
        let sequence = record.change.sequence_number.clone();
        let outcome = match fanout_work(record) {
            Ok(work) => service.process(work, deadline).await.map_err(|e| e.to_string()),
            Err(problem) => Err(problem),
        };
        match outcome {
            Ok(report) => {
                tracing::info!(
                    sequence_number = sequence.as_deref().unwrap_or_default(),
                    event_name = %record.event_name,
                    leases_revoked = report.leases_revoked,
                    sessions_denied = report.sessions_denied,
                    deliveries_confirmed = report.deliveries_confirmed,
                    deliveries_pending = report.deliveries_pending,
                    deliveries_unconfirmed = report.deliveries_unconfirmed,
                    deliveries_skipped = report.deliveries_skipped,
                    continued = report.continued,
                    "stream record processed"
                );
                total.add(&report);
            }
            Err(problem) => {
                tracing::error!(
                    sequence_number = sequence.as_deref().unwrap_or_default(),
                    problem = %problem,
                    "stream record failed; reported for retry"
                );
                let mut failure = DynamoDbBatchItemFailure::default();
                failure.item_identifier = sequence;
                response.batch_item_failures.push(failure);
                break;
            }
        }
    }
    crate::telemetry::emit_metrics(
        "revoke-fanout",
        &[
            ("LeasesRevoked", total.leases_revoked),
            ("DeliveriesConfirmed", total.deliveries_confirmed),
            ("DeliveriesPending", total.deliveries_pending),
            ("DeliveriesUnconfirmed", total.deliveries_unconfirmed),
            ("RecordsFailed", response.batch_item_failures.len() as u64),
        ],
    );
    response
}

/// What revoke-fanout is invoked with: a batch of stream records, or its retry schedule.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum FanoutInvocation {
    Stream(StreamEvent),
    Scheduled(Box<EventBridgeEvent<Value>>),
}

/// revoke-fanout from raw JSON (the local runner's stream poller, tests).
pub async fn handle_fanout_event(
    service: &FanoutService,
    payload: Value,
    deadline: Option<std::time::Instant>,
) -> Result<Value, crate::BrokerError> {
    let invocation = if payload.get("Records").is_some() {
        FanoutInvocation::Stream(serde_json::from_value(payload).map_err(|e| {
            tracing::warn!(problem = %e, "revoke-fanout event refused");
            crate::BrokerError::InvalidRequest("not a DynamoDB stream event")
        })?)
    } else {
        FanoutInvocation::Scheduled(Box::new(eventbridge_event(payload).map_err(refuse_fanout)?))
    };
    handle_fanout(service, invocation, deadline).await
}

fn refuse_fanout(problem: String) -> crate::BrokerError {
    tracing::warn!(problem = %problem, "revoke-fanout event refused");
    crate::BrokerError::InvalidRequest("not a DynamoDB stream event or a scheduled event")
}

/// revoke-fanout's typed entry point: the stream, or the retry schedule.
pub async fn handle_fanout(
    service: &FanoutService,
    invocation: FanoutInvocation,
    deadline: Option<std::time::Instant>,
) -> Result<Value, crate::BrokerError> {
    let event = match invocation {
        FanoutInvocation::Stream(event) => {
            let response = handle_stream_batch(service, &event, deadline).await;
            return serde_json::to_value(&response).map_err(|e| crate::BrokerError::Internal(e.to_string()));
        }
        FanoutInvocation::Scheduled(event) => *event,
    };
    let run = scheduled_run(&event).map_err(refuse_fanout)?;
    let report = service.retry_due().await?;
    tracing::info!(
        run_id = %run.id,
        deliveries_confirmed = report.deliveries_confirmed,
        deliveries_pending = report.deliveries_pending,
        deliveries_unconfirmed = report.deliveries_unconfirmed,
        "delivery retry run finished"
    );
    crate::telemetry::emit_metrics(
        "revoke-fanout",
        &[
            ("DeliveriesConfirmed", report.deliveries_confirmed),
            ("DeliveriesPending", report.deliveries_pending),
            ("DeliveriesUnconfirmed", report.deliveries_unconfirmed),
        ],
    );
    serde_json::to_value(&report).map_err(|e| crate::BrokerError::Internal(e.to_string()))
}

/// expire-sweeper from raw JSON.
pub async fn handle_sweep_event(service: &SweepService, payload: Value) -> Result<Value, crate::BrokerError> {
    handle_sweep(service, eventbridge_event(payload).map_err(refuse_sweep)?).await
}

fn refuse_sweep(problem: String) -> crate::BrokerError {
    tracing::warn!(problem = %problem, "expire-sweeper event refused");
    crate::BrokerError::InvalidRequest("not a scheduled event")
}

/// expire-sweeper: one run per scheduled event; counts go to the log and to EMF metrics.
pub async fn handle_sweep(service: &SweepService, event: EventBridgeEvent<Value>) -> Result<Value, crate::BrokerError> {
    let run = scheduled_run(&event).map_err(refuse_sweep)?;
    let report = service.run().await?;
    tracing::info!(
        run_id = %run.id,
        leases_expired = report.leases_expired,
        destination_notices = report.destination_notices,
        grants_revoked = report.grants_revoked,
        deliveries_unconfirmed = report.deliveries_unconfirmed,
        already_done = report.already_done,
        remaining = report.remaining,
        digest_seq = report.digest_seq,
        digest_heads = report.digest_heads,
        "sweep finished"
    );
    crate::telemetry::emit_metrics(
        "expire-sweeper",
        &[
            ("LeasesExpired", report.leases_expired),
            ("GrantsRevoked", report.grants_revoked),
            ("DestinationsUnconfirmed", report.deliveries_unconfirmed),
            ("Remaining", report.remaining),
            ("AuditDigestHeads", report.digest_heads),
        ],
    );
    serde_json::to_value(&report).map_err(|e| crate::BrokerError::Internal(e.to_string()))
}

/// audit-export from raw JSON (the local runner's stream poller).
pub async fn handle_export_event(
    service: &crate::export::ExportService,
    payload: Value,
) -> Result<Value, crate::BrokerError> {
    let event: StreamEvent = serde_json::from_value(payload).map_err(|e| {
        tracing::warn!(problem = %e, "audit-export event refused");
        crate::BrokerError::InvalidRequest("not a DynamoDB stream event")
    })?;
    handle_export(service, &event).await
}

/// audit-export's entry point: one stream batch, written whole or failed whole.
pub async fn handle_export(
    service: &crate::export::ExportService,
    event: &StreamEvent,
) -> Result<Value, crate::BrokerError> {
    let report = service.export(event).await?;
    tracing::info!(
        records = report.records,
        objects = report.objects,
        changes_after_the_fact = report.changes_after_the_fact,
        "audit batch exported"
    );
    crate::telemetry::emit_metrics(
        "audit-export",
        &[
            ("AuditEventsExported", report.records as u64),
            ("AuditChangesAfterTheFact", report.changes_after_the_fact as u64),
        ],
    );
    serde_json::to_value(&report).map_err(|e| crate::BrokerError::Internal(e.to_string()))
}
