//! Audit export: every write to the audit table, as the table's stream delivers it, appended to a
//! bucket with Object Lock, so the trail has a copy that those who can write the table cannot edit
//! or delete (issue 17 item 3). `brokerctl audit verify --export` compares the two.
//!
//! At least once, in order per stream shard: a batch becomes one object per (kind, day), its key
//! derived from the batch's records (the first record's stream event id and the count), so a
//! redelivered batch writes the same keys with the same bytes (on the versioned, locked bucket: one
//! more version of identical content). Readers deduplicate by (`chain`, `seq`, `change`). A batch
//! that cannot be written fails the invocation and the stream retries it: nothing is skipped.
//!
//! Layout: `audit/v1/events/dt=YYYY-MM-DD/<event id>-<n>.jsonl` (audit events) and
//! `audit/v1/digests/dt=YYYY-MM-DD/...` (audit digests), the day of each item's `at` (UTC). One line
//! per stream record (JSON Lines; schema in README, "Audit export"):
//! `{"schema":"nhi-broker.audit.v1","change":"INSERT","stream_event_id":"...","item":{...}}`, the
//! item exactly as stored (its hash, signature and index attributes included), numbers as JSON
//! numbers. The broker only inserts audit items: a `MODIFY` or `REMOVE` line is a change made to the
//! table after the fact, and is exported too.

use crate::aws::dynamo::digest::DIGEST_CHAIN;
use crate::error::{BrokerError, Result};
use async_trait::async_trait;
use aws_lambda_events::dynamodb::{Event as StreamEvent, EventRecord};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

pub const SCHEMA: &str = "nhi-broker.audit.v1";
pub const PREFIX: &str = "audit/v1/";

/// Where exported objects go. Writing the same key again with the same body must be harmless.
#[async_trait]
pub trait ExportStore: Send + Sync {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<()>;
}

/// An object a batch becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportObject {
    pub key: String,
    pub body: Vec<u8>,
    pub lines: usize,
}

/// What one batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExportReport {
    pub records: usize,
    pub objects: usize,
    /// MODIFY and REMOVE records: changes to audit items after they were written.
    pub changes_after_the_fact: usize,
}

/// `YYYY-MM-DD` (UTC) of epoch seconds.
pub fn day_of(at: i64) -> String {
    aws_smithy_types::DateTime::from_secs(at)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .map(|t| t[..10].to_string())
        .unwrap_or_else(|_| "1970-01-01".into())
}

fn line(record: &EventRecord) -> Result<(String, i64, Value)> {
    let image = if record.event_name == "REMOVE" {
        &record.change.old_image
    } else {
        &record.change.new_image
    };
    // Sorted attributes: a redelivered batch must serialize to the same bytes (stream images are
    // unordered maps).
    let item: BTreeMap<String, Value> = serde_dynamo::from_item(image.clone())
        .map_err(|e| BrokerError::CorruptRecord(format!("audit stream image: {e}")))?;
    let kind = if item.get("chain").and_then(Value::as_str) == Some(DIGEST_CHAIN) {
        "digests"
    } else {
        "events"
    };
    let at = item
        .get("at")
        .and_then(Value::as_i64)
        .unwrap_or_else(|| record.change.approximate_creation_date_time.timestamp());
    let line = json!({
        "schema": SCHEMA,
        "change": record.event_name,
        "stream_event_id": record.event_id,
        "item": item,
    });
    Ok((kind.to_string(), at, line))
}

/// The objects a batch becomes: one per (kind, day), lines in stream order.
pub fn export_objects(records: &[EventRecord]) -> Result<Vec<ExportObject>> {
    let mut groups: BTreeMap<(String, String), (String, Vec<Value>)> = BTreeMap::new();
    for record in records {
        let (kind, at, line) = line(record)?;
        let group = groups
            .entry((kind, day_of(at)))
            .or_insert_with(|| (record.event_id.clone(), Vec::new()));
        group.1.push(line);
    }
    Ok(groups
        .into_iter()
        .map(|((kind, day), (first, lines))| {
            let mut body = Vec::new();
            for line in &lines {
                body.extend(line.to_string().into_bytes());
                body.push(b'\n');
            }
            // Stream event ids are opaque: keep what is safe in a key.
            let first: String = first
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(64)
                .collect();
            ExportObject {
                key: format!("{PREFIX}{kind}/dt={day}/{first}-{}.jsonl", lines.len()),
                body,
                lines: lines.len(),
            }
        })
        .collect())
}

pub struct ExportService {
    store: Arc<dyn ExportStore>,
}

impl ExportService {
    pub fn new(store: Arc<dyn ExportStore>) -> Self {
        Self { store }
    }

    /// Export one stream batch. Any failure fails the whole batch (the stream redelivers it; keys
    /// and bodies are the same the next time).
    pub async fn export(&self, event: &StreamEvent) -> Result<ExportReport> {
        let objects = export_objects(&event.records)?;
        for object in &objects {
            self.store.put(&object.key, object.body.clone()).await?;
        }
        let changes = event.records.iter().filter(|r| r.event_name != "INSERT").count();
        if changes > 0 {
            tracing::warn!(
                changes,
                "audit items were modified or removed after they were written (exported as such)"
            );
        }
        Ok(ExportReport {
            records: event.records.len(),
            objects: objects.len(),
            changes_after_the_fact: changes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(event_id: &str, name: &str, chain: &str, seq: i64, at: i64) -> EventRecord {
        let image = serde_json::json!({
            "chain": { "S": chain }, "seq": { "N": seq.to_string() }, "at": { "N": at.to_string() },
            "hash": { "S": format!("h{seq}") }
        });
        serde_json::from_value(serde_json::json!({
            "eventID": event_id, "eventName": name, "eventVersion": "1.1", "eventSource": "aws:dynamodb",
            "awsRegion": "us-east-1",
            "dynamodb": {
                "ApproximateCreationDateTime": 1.7e9, "Keys": {}, "NewImage": image, "OldImage": image,
                "SequenceNumber": "1", "SizeBytes": 1, "StreamViewType": "NEW_AND_OLD_IMAGES"
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_batch_becomes_one_object_per_kind_and_day_with_keys_a_redelivery_repeats() {
        let records = vec![
            record("e1", "INSERT", "c", 0, 86_400 * 20_000),
            record("e2", "INSERT", DIGEST_CHAIN, 4, 86_400 * 20_000 + 5),
            record("e3", "INSERT", "c", 1, 86_400 * 20_001),
            record("e/../4", "REMOVE", "c", 0, 86_400 * 20_001),
        ];
        let objects = export_objects(&records).unwrap();
        let keys: Vec<&str> = objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "audit/v1/digests/dt=2024-10-04/e2-1.jsonl",
                "audit/v1/events/dt=2024-10-04/e1-1.jsonl",
                "audit/v1/events/dt=2024-10-05/e3-2.jsonl",
            ]
        );
        assert_eq!(objects, export_objects(&records).unwrap(), "deterministic");
        let lines: Vec<Value> = std::str::from_utf8(&objects[2].body)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["item"]["seq"], 1);
        assert_eq!(lines[0]["schema"], SCHEMA);
        assert_eq!(lines[1]["change"], "REMOVE");
        assert_eq!(lines[1]["item"]["hash"], "h0");
    }
}
