//! Exposure: a destination that did not confirm a delivery is flagged `exposed` (it may still
//! hold or use what it was told about). `destination redeliver` queues its unconfirmed deliveries
//! again (the same SETs, same `jti`; revoke-fanout's retry schedule sends them);
//! `destination resolve` clears the flag once nothing is left unsettled. An unconfirmed delivery
//! is settled when
//! - it has since been confirmed (a redelivery), or
//! - it concerns a secret, and the destination has confirmed that secret's current version, or
//!   the secret was rotated after the delivery (the copy it missed is no longer current).
//!
//! Deliveries about grants, leases or subjects settle only by being confirmed.

use crate::{CliError, CliResult, Ctl, Report, attr};
use nhi_broker::aws::dynamo::registry_writes::{MAX_CHANGE_ITEMS, RegistryWrite, WriteRefused};
use nhi_broker::aws::dynamo::{Item, from_item};
use nhi_broker::domain::{
    AuditAction, AuditEvent, AuditOutcome, ChangeEvent, Delivery, DeliveryStatus, RevocationTarget,
};
use serde_json::json;

/// How long a redelivered SET has to be confirmed (as fanout's default confirmation window).
const REDELIVERY_CONFIRM_WINDOW_SECONDS: i64 = 3600;

/// The secret a change event concerns, if any.
pub(crate) fn event_secret(event: &ChangeEvent) -> Option<&str> {
    match event {
        ChangeEvent::Rotated { secret_id, .. } => Some(secret_id),
        ChangeEvent::Revoked {
            target_kind: RevocationTarget::Secret,
            target_id,
            ..
        } => Some(target_id),
        ChangeEvent::Revoked {
            target_kind: RevocationTarget::SecretVersion,
            target_id,
            ..
        } => target_id.rsplit_once('#').map(|(secret, _)| secret),
        ChangeEvent::Revoked { .. } => None,
    }
}

struct Record {
    delivery: Delivery,
    resolved: bool,
}

impl Ctl {
    async fn destination_records(&self, id: &str) -> CliResult<(Item, Vec<Record>)> {
        let found = self.reads.destination_records(id).await?;
        let destination = found.destination.ok_or_else(|| CliError {
            message: format!("no destination with id {id:?}"),
            code: 1,
        })?;
        let mut records = Vec::new();
        for item in found.deliveries {
            let resolved = item.contains_key("resolved_at");
            records.push(Record {
                delivery: from_item(item, "delivery")?,
                resolved,
            });
        }
        records.sort_by_key(|r| r.delivery.created_at);
        Ok((destination, records))
    }

    /// Why an unconfirmed delivery is not settled yet (`None`: settled).
    async fn unsettled(&self, record: &Record, records: &[Record]) -> CliResult<Option<String>> {
        let delivery = &record.delivery;
        let Some(secret_id) = event_secret(&delivery.event) else {
            return Ok(Some(format!(
                "event {} ({}) was never confirmed: redeliver it (brokerctl destination redeliver {})",
                delivery.event.event_id(),
                delivery.event.subject(),
                delivery.destination_id
            )));
        };
        let secret = self.reads.secret(secret_id).await?;
        let current = secret.as_ref().map(|i| attr(i, "current_version").to_string());
        let current_since = match &current {
            Some(version) if !version.is_empty() => {
                self.reads.secret_version(secret_id, version).await?.and_then(|v| {
                    v.get("created_at")
                        .and_then(|n| n.as_n().ok())
                        .and_then(|n| n.parse::<i64>().ok())
                })
            }
            _ => None,
        };
        let confirmed_current = records.iter().any(|r| {
            r.delivery.status == DeliveryStatus::Confirmed
                && matches!(&r.delivery.event, ChangeEvent::Rotated { secret_id: s, new_version, .. }
                    if s == secret_id && Some(new_version) == current.as_ref())
        });
        let rotated_since = current_since.is_some_and(|at| at > delivery.created_at);
        if confirmed_current || rotated_since {
            return Ok(None);
        }
        Ok(Some(format!(
            "event {} about secret {secret_id} was never confirmed, and the destination has not confirmed its \
             current version {}: redeliver, or rotate the secret",
            delivery.event.event_id(),
            current.filter(|c| !c.is_empty()).unwrap_or_else(|| "-".into())
        )))
    }

    /// Clear a destination's exposure once every unconfirmed delivery is settled. Audited.
    pub async fn resolve_destination(&self, id: &str, reason: &str) -> CliResult<Report> {
        if reason.trim().is_empty() {
            return Err(CliError::usage("a reason is required"));
        }
        let (destination, records) = self.destination_records(id).await?;
        let exposed = destination
            .get("exposed")
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(false);
        let open: Vec<&Record> = records
            .iter()
            .filter(|r| r.delivery.status == DeliveryStatus::Unconfirmed && !r.resolved)
            .collect();
        if !exposed && open.is_empty() {
            return Err(CliError {
                message: format!("destination {id} is not exposed: nothing to resolve"),
                code: 1,
            });
        }
        let mut blocking = Vec::new();
        for record in &open {
            if let Some(why) = self.unsettled(record, &records).await? {
                blocking.push(why);
            }
        }
        if !blocking.is_empty() {
            return Err(CliError {
                message: format!(
                    "destination {id} stays exposed: {} unsettled delivery(ies); nothing was changed\n  {}",
                    blocking.len(),
                    blocking.join("\n  ")
                ),
                code: 1,
            });
        }
        if open.len() + 1 > MAX_CHANGE_ITEMS {
            return Err(CliError {
                message: format!(
                    "destination {id} has {} unconfirmed deliveries; one resolve handles {}",
                    open.len(),
                    MAX_CHANGE_ITEMS - 1
                ),
                code: 1,
            });
        }
        let mut write = RegistryWrite::new(&self.tables.registry);
        let last_event = destination.get("last_unconfirmed_event").and_then(|v| v.as_s().ok());
        write.resolve_destination(id, last_event.map(String::as_str))?;
        for record in &open {
            write.resolve_delivery(id, record.delivery.event.event_id(), &self.actor(), self.now)?;
        }
        let event = AuditEvent {
            actor_subject: Some(self.actor()),
            target: Some(format!("destination:{id}")),
            reason: Some(reason.into()),
            ..AuditEvent::new(AuditAction::Deliver, AuditOutcome::Resolved, self.now)
        };
        write
            .commit(&self.ledger, &event)
            .await
            .map_err(|refused| match refused {
                WriteRefused::Changed(what) => CliError {
                    message: format!(
                        "{what} changed while resolving (a new delivery failed?): nothing was changed; look again"
                    ),
                    code: 1,
                },
                WriteRefused::Failed(e) => CliError::from(e),
            })?;
        Ok(Report::new(
            format!(
                "destination {id} resolved: {} delivery(ies) settled, no longer exposed",
                open.len()
            ),
            json!({ "destination": id, "resolved": open.len(), "exposed": false, "reason": reason }),
        ))
    }

    /// Queue every unconfirmed (unresolved) delivery of a destination again: pending, due now,
    /// a fresh attempt budget and confirmation window. The same SET (same `jti`) is sent by
    /// revoke-fanout's retry schedule. Audited.
    pub async fn redeliver(&self, id: &str) -> CliResult<Report> {
        let (destination, records) = self.destination_records(id).await?;
        if destination.get("enabled").and_then(|v| v.as_bool().ok()) == Some(&false) {
            return Err(CliError {
                message: format!("destination {id} is disabled: nothing is delivered to it"),
                code: 1,
            });
        }
        let open: Vec<&Record> = records
            .iter()
            .filter(|r| r.delivery.status == DeliveryStatus::Unconfirmed && !r.resolved)
            .take(MAX_CHANGE_ITEMS)
            .collect();
        if open.is_empty() {
            return Ok(Report::new(
                format!("destination {id} has no unconfirmed delivery to send again"),
                json!({ "destination": id, "queued": 0 }),
            ));
        }
        let mut write = RegistryWrite::new(&self.tables.registry);
        for record in &open {
            write.requeue_delivery(
                id,
                record.delivery.event.event_id(),
                record.delivery.attempts,
                self.now + REDELIVERY_CONFIRM_WINDOW_SECONDS,
                &self.actor(),
                self.now,
            )?;
        }
        let event = AuditEvent {
            actor_subject: Some(self.actor()),
            target: Some(format!("destination:{id}")),
            reason: Some(format!("redeliver: {} delivery(ies) queued", open.len())),
            ..AuditEvent::new(AuditAction::Register, AuditOutcome::Applied, self.now)
        };
        write
            .commit(&self.ledger, &event)
            .await
            .map_err(|refused| match refused {
                WriteRefused::Changed(what) => CliError {
                    message: format!("{what} changed meanwhile: nothing was queued; run it again"),
                    code: 1,
                },
                WriteRefused::Failed(e) => CliError::from(e),
            })?;
        let events: Vec<&str> = open.iter().map(|r| r.delivery.event.event_id()).collect();
        Ok(Report::new(
            format!(
                "{} delivery(ies) to {id} queued again; revoke-fanout's retry schedule sends them (then `brokerctl destination resolve {id} --reason ...`)",
                open.len()
            ),
            json!({ "destination": id, "queued": open.len(), "events": events }),
        ))
    }
}
