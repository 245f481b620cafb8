//! Operators' registry writes, all or nothing. A `RegistryWrite` is a list of changes (register
//! or update an issuer, target, grant or destination; revoke a grant; disable a destination;
//! create a secret with its first value), each conditional on what the operator's plan read:
//! - a create requires the item to be absent;
//! - an update requires the item unchanged since it was read (its `write_id`, a fresh id stamped
//!   by every write of this module; items written before it existed have none), and a grant
//!   still active (a revoked grant is never revived);
//! - updates are `UpdateItem`s of the attributes the operator owns, so what the broker keeps on
//!   the same item (a destination's `exposed` flag, a secret's versions) is never overwritten.
//!
//! Grants are written by `grant_writes`, secrets by `secret_writes`.
//!
//! `commit` runs every change plus one audit event in one `TransactWriteItems` (at most 100
//! items, so 99 for changes), idempotent through the audit writer's `ClientRequestToken`. A
//! cancelled transaction is read by its reasons: the first change whose condition failed is named
//! (someone changed it since the plan; nothing was written), contention is retryable.

use super::{
    DynamoLedger, Item, TransactError, build_err, cancellation_reasons, fence_deletes, fence_puts, keys, n, s, to_item,
};
use crate::domain::{AuditEvent, Destination, Fence, Issuer, Target};
use crate::error::{BrokerError, Result};
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem, Update};
use std::collections::HashMap;

pub use super::secret_writes::RotationChange;

/// DynamoDB's limit on items per transaction.
pub const MAX_TRANSACTION_ITEMS: usize = 100;
/// Items one commit can spend on changes (the audit event takes one).
pub const MAX_CHANGE_ITEMS: usize = MAX_TRANSACTION_ITEMS - 1;

/// What the plan found, and so what the write requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Nothing there: create it.
    Absent,
    /// There, unchanged since read: the `write_id` it had (`None` for items that never had one).
    Unchanged(Option<String>),
}

impl Expect {
    /// What a plan read of `item` expects at write time.
    pub fn from_read(item: Option<&Item>) -> Self {
        match item {
            None => Self::Absent,
            Some(item) => Self::Unchanged(item.get("write_id").and_then(|v| v.as_s().ok()).cloned()),
        }
    }
}

/// Why a commit did not happen.
#[derive(Debug)]
pub enum WriteRefused {
    /// This change's condition failed: the item changed (or appeared, or went) since the plan.
    Changed(String),
    /// Anything else (contention is `BrokerError::Aws { retryable: true, .. }`).
    Failed(BrokerError),
}

impl From<BrokerError> for WriteRefused {
    fn from(e: BrokerError) -> Self {
        Self::Failed(e)
    }
}

struct Change {
    label: String,
    items: Vec<TransactWriteItem>,
}

/// Changes to commit together.
pub struct RegistryWrite {
    pub(super) table: String,
    pub(super) write_id: String,
    changes: Vec<Change>,
    /// Issuers whose policy generation this write already moves.
    pub(super) generations: std::collections::BTreeSet<String>,
}

impl RegistryWrite {
    pub fn new(registry_table: &str) -> Self {
        Self {
            table: registry_table.into(),
            write_id: uuid::Uuid::now_v7().to_string(),
            changes: Vec::new(),
            generations: Default::default(),
        }
    }

    /// Items the changes so far take in a transaction.
    pub fn item_count(&self) -> usize {
        self.changes.iter().map(|c| c.items.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Labels of the changes, in order.
    pub fn labels(&self) -> Vec<&str> {
        self.changes.iter().map(|c| c.label.as_str()).collect()
    }

    /// Register or update an issuer. Its fence follows `enabled` in the same transaction (raised
    /// when disabled, lowered when enabled), as `DynamoRegistry::put_issuer` does.
    pub fn issuer(&mut self, issuer: &Issuer, expect: Expect) -> Result<()> {
        let key = (keys::issuer_pk(&issuer.issuer), keys::ISSUER_SK.to_string());
        let item = to_item(issuer, [("item_type", s("issuer")), ("item_id", s(&issuer.issuer))])?;
        let mut items = vec![self.upsert(key, item, &[], expect, None)?];
        let fence = Fence::Issuer(issuer.issuer.clone());
        if issuer.enabled {
            items.extend(fence_deletes(&self.table, &fence, false)?);
        } else {
            let at = crate::ports::Clock::now(&crate::ports::SystemClock);
            items.extend(fence_puts(
                &self.table,
                &fence,
                [("reason", s("issuer disabled")), ("at", n(at))],
            )?);
        }
        self.push(format!("issuer {}", issuer.issuer), items);
        Ok(())
    }

    pub fn target(&mut self, target: &Target, expect: Expect) -> Result<()> {
        let key = (keys::target_pk(&target.id), keys::TARGET_SK.to_string());
        let item = to_item(target, [("item_type", s("target")), ("item_id", s(&target.id))])?;
        let items = vec![self.upsert(key, item, &[], expect, None)?];
        self.push(format!("target {}", target.id), items);
        Ok(())
    }

    /// Register or update a destination and its links in each secret's collection (links to
    /// secrets it no longer holds are removed). `old_secrets`: what the read item held.
    pub fn destination(&mut self, destination: &Destination, old_secrets: &[String], expect: Expect) -> Result<()> {
        let key = (keys::destination_pk(&destination.id), keys::DESTINATION_SK.to_string());
        let item = to_item(
            destination,
            [("item_type", s("destination")), ("item_id", s(&destination.id))],
        )?;
        // A revoked destination is never re-enabled (a disabled one may be).
        let condition = destination.enabled.then_some("attribute_not_exists(revoked)");
        let mut items = vec![self.upsert(key, item, &[], expect, condition)?];
        for secret in old_secrets.iter().filter(|s| !destination.secrets.contains(s)) {
            let delete = Delete::builder()
                .table_name(&self.table)
                .key("pk", s(keys::secret_pk(secret)))
                .key("sk", s(keys::destination_link_sk(&destination.id)))
                .build()
                .map_err(build_err)?;
            items.push(TransactWriteItem::builder().delete(delete).build());
        }
        for secret in &destination.secrets {
            let link = Item::from([
                ("pk".to_string(), s(keys::secret_pk(secret))),
                ("sk".to_string(), s(keys::destination_link_sk(&destination.id))),
                ("destination_id".to_string(), s(&destination.id)),
                ("secret_id".to_string(), s(secret)),
            ]);
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(link))
                .build()
                .map_err(build_err)?;
            items.push(TransactWriteItem::builder().put(put).build());
        }
        self.push(format!("destination {}", destination.id), items);
        Ok(())
    }

    /// Clear a destination's `exposed` flag (an operator resolved its unconfirmed deliveries),
    /// if it is still exposed by the same unconfirmed event the operator looked at.
    pub fn resolve_destination(&mut self, destination_id: &str, last_unconfirmed_event: Option<&str>) -> Result<()> {
        let mut update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(keys::destination_pk(destination_id)))
            .key("sk", s(keys::DESTINATION_SK))
            .update_expression(
                "SET exposed = :false, unconfirmed_deliveries = :zero, resolved_at = :now \
                 REMOVE exposed_since",
            )
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":now", n(crate::ports::Clock::now(&crate::ports::SystemClock)));
        update = match last_unconfirmed_event {
            Some(event) => update
                .condition_expression("attribute_exists(pk) AND last_unconfirmed_event = :event")
                .expression_attribute_values(":event", s(event)),
            None => {
                update.condition_expression("attribute_exists(pk) AND attribute_not_exists(last_unconfirmed_event)")
            }
        };
        let item = TransactWriteItem::builder()
            .update(update.build().map_err(build_err)?)
            .build();
        self.push(format!("destination {destination_id} (resolve)"), vec![item]);
        Ok(())
    }

    /// A conditional update of one registry item (a delivery record an operator re-queues or
    /// resolves): `update_expression` and `condition` over `names` and `values`.
    fn update(
        &mut self,
        label: String,
        (pk, sk): (String, String),
        update_expression: &str,
        condition: &str,
        names: &[(&str, &str)],
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<()> {
        let mut update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .update_expression(update_expression)
            .condition_expression(condition);
        for (name, attribute) in names {
            update = update.expression_attribute_names(*name, *attribute);
        }
        for (name, value) in values {
            update = update.expression_attribute_values(name, value);
        }
        let item = TransactWriteItem::builder()
            .update(update.build().map_err(build_err)?)
            .build();
        self.push(label, vec![item]);
        Ok(())
    }

    /// Mark an unconfirmed delivery resolved by `actor` (it stays unconfirmed, as history).
    pub fn resolve_delivery(&mut self, destination_id: &str, event_id: &str, actor: &str, now: i64) -> Result<()> {
        self.update(
            format!("delivery {event_id}"),
            (keys::destination_pk(destination_id), keys::delivery_sk(event_id)),
            "SET resolved_at = :now, resolved_by = :actor",
            "#status = :unconfirmed AND attribute_not_exists(resolved_at)",
            &[("#status", "status")],
            vec![
                (":now", n(now)),
                (":actor", s(actor)),
                (":unconfirmed", s("unconfirmed")),
            ],
        )
    }

    /// Queue an unconfirmed delivery again (still as read: `attempts`): pending, due `now`, a
    /// fresh attempt budget and confirmation window (`confirm_by`), back on the due index.
    pub fn requeue_delivery(
        &mut self,
        destination_id: &str,
        event_id: &str,
        attempts: u32,
        confirm_by: i64,
        actor: &str,
        now: i64,
    ) -> Result<()> {
        self.update(
            format!("delivery {event_id}"),
            (keys::destination_pk(destination_id), keys::delivery_sk(event_id)),
            "SET #status = :pending, attempts = :zero, next_attempt_at = :now, confirm_by = :by, \
             delivery_shard = :shard, redelivered_at = :now, redelivered_by = :actor",
            "#status = :unconfirmed AND attempts = :attempts",
            &[("#status", "status")],
            vec![
                (":pending", s("pending")),
                (":unconfirmed", s("unconfirmed")),
                (":zero", n(0)),
                (":attempts", n(i64::from(attempts))),
                (":now", n(now)),
                (":by", n(confirm_by)),
                (":shard", s(keys::DELIVERY_SHARD)),
                (":actor", s(actor)),
            ],
        )
    }

    /// Write every change and `event` in one transaction.
    pub async fn commit(self, ledger: &DynamoLedger, event: &AuditEvent) -> std::result::Result<(), WriteRefused> {
        if self.changes.is_empty() {
            return Ok(());
        }
        if self.item_count() > MAX_CHANGE_ITEMS {
            return Err(WriteRefused::Failed(BrokerError::InvalidRequest(
                "more changes than one transaction holds",
            )));
        }
        let owners: Vec<&str> = self
            .changes
            .iter()
            .flat_map(|c| c.items.iter().map(move |_| c.label.as_str()))
            .collect();
        let items: Vec<TransactWriteItem> = self.changes.iter().flat_map(|c| c.items.clone()).collect();
        match ledger.audited_transact(items, event).await? {
            Ok(()) => Ok(()),
            Err(e) => Err(refusal(&e, &owners)),
        }
    }

    /// As `commit`, without an audit event: for the adapter's own single-item helpers
    /// (`DynamoRegistry::put_destination`, used by tests and the local runner's bootstrap).
    pub(crate) async fn commit_unaudited(
        self,
        client: &aws_sdk_dynamodb::Client,
    ) -> std::result::Result<(), WriteRefused> {
        if self.changes.is_empty() {
            return Ok(());
        }
        let owners: Vec<&str> = self
            .changes
            .iter()
            .flat_map(|c| c.items.iter().map(move |_| c.label.as_str()))
            .collect();
        let items: Vec<TransactWriteItem> = self.changes.iter().flat_map(|c| c.items.clone()).collect();
        let result = client
            .transact_write_items()
            .set_transact_items(Some(items))
            .client_request_token(&self.write_id[..36.min(self.write_id.len())])
            .send()
            .await;
        result.map(|_| ()).map_err(|e| refusal(&e, &owners))
    }

    pub(super) fn push(&mut self, label: String, items: Vec<TransactWriteItem>) {
        self.changes.push(Change { label, items });
    }

    /// A `PutItem` for a create, an `UpdateItem` of the operator-owned attributes for an update.
    pub(super) fn upsert(
        &self,
        (pk, sk): (String, String),
        mut item: Item,
        optional: &[&str],
        expect: Expect,
        extra_condition: Option<&str>,
    ) -> Result<TransactWriteItem> {
        item.insert("write_id".into(), s(&self.write_id));
        match expect {
            Expect::Absent => {
                item.insert("pk".into(), s(pk));
                item.insert("sk".into(), s(sk));
                let put = Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .map_err(build_err)?;
                Ok(TransactWriteItem::builder().put(put).build())
            }
            Expect::Unchanged(write_id) => {
                let mut names = HashMap::new();
                let mut values = HashMap::new();
                let mut set = Vec::new();
                let mut attributes: Vec<(String, AttributeValue)> = item.into_iter().collect();
                attributes.sort_by(|a, b| a.0.cmp(&b.0));
                for (i, (name, value)) in attributes.into_iter().enumerate() {
                    names.insert(format!("#a{i}"), name);
                    values.insert(format!(":a{i}"), value);
                    set.push(format!("#a{i} = :a{i}"));
                }
                let absent: Vec<&str> = optional
                    .iter()
                    .filter(|o| !names.values().any(|n| n == *o))
                    .copied()
                    .collect();
                let mut remove = Vec::new();
                for (i, name) in absent.into_iter().enumerate() {
                    names.insert(format!("#r{i}"), name.to_string());
                    remove.push(format!("#r{i}"));
                }
                let mut expression = format!("SET {}", set.join(", "));
                if !remove.is_empty() {
                    expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
                }
                let (unchanged, expected_value) = unchanged_condition(write_id.as_deref());
                let mut condition = format!("attribute_exists(pk) AND {unchanged}");
                if let Some(extra) = extra_condition {
                    condition.push_str(&format!(" AND {extra}"));
                    if extra.contains("#status") {
                        names.insert("#status".into(), "status".into());
                        values.insert(":active".into(), s("active"));
                    }
                }
                if let Some(value) = expected_value {
                    values.insert(":expected_write".into(), value);
                }
                let update = Update::builder()
                    .table_name(&self.table)
                    .key("pk", s(pk))
                    .key("sk", s(sk))
                    .update_expression(expression)
                    .condition_expression(condition)
                    .set_expression_attribute_names(Some(names))
                    .set_expression_attribute_values(Some(values))
                    .build()
                    .map_err(build_err)?;
                Ok(TransactWriteItem::builder().update(update).build())
            }
        }
    }
}

/// The condition "still as read", and the value it compares with.
pub(super) fn unchanged_condition(write_id: Option<&str>) -> (String, Option<AttributeValue>) {
    match write_id {
        Some(id) => ("write_id = :expected_write".into(), Some(s(id))),
        None => ("attribute_not_exists(write_id)".into(), None),
    }
}

/// A cancelled commit, by its reasons: the first change whose condition failed, else the error
/// (contention retryable). `owners`: the change label of each item, in order (the audit append
/// follows them).
fn refusal(err: &TransactError, owners: &[&str]) -> WriteRefused {
    if let Some(reasons) = cancellation_reasons(err)
        && !reasons.iter().any(|r| super::is_contention(r))
        && let Some(index) = reasons
            .iter()
            .take(owners.len())
            .position(|r| *r == "ConditionalCheckFailed")
    {
        return WriteRefused::Changed(owners[index].to_string());
    }
    WriteRefused::Failed(super::audited_transact_error(err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Grant, GrantStatus};

    #[test]
    fn updates_set_only_what_operators_own_and_require_the_read_state() {
        let mut write = RegistryWrite::new("registry");
        let grant = Grant {
            id: "g".into(),
            issuers: vec!["https://issuer".into()],
            subject: crate::domain::SubjectMatch::Exact("s".into()),
            claims: Default::default(),
            condition: None,
            environment: "prod".into(),
            targets: vec!["t".into()],
            scopes: vec![],
            max_ttl_seconds: 60,
            session_policy: None,
            approval_expires_at: 2,
            owner: "o".into(),
            justification: "j".into(),
            status: GrantStatus::Active,
            created_at: 1,
            delivers_to: None,
        };
        write.grant(&grant, None, Expect::Unchanged(Some("w1".into()))).unwrap();
        write.grant(&grant, None, Expect::Absent).unwrap();
        let update = write.changes[0].items[0].update().unwrap();
        let names = update.expression_attribute_names().unwrap();
        assert!(update.update_expression().contains(" REMOVE "));
        let removed: Vec<&String> = names
            .iter()
            .filter(|(k, _)| k.starts_with("#r"))
            .map(|(_, v)| v)
            .collect();
        assert_eq!(removed.len(), 5, "absent optional fields are removed: {removed:?}");
        assert_eq!(
            update.condition_expression(),
            Some("attribute_exists(pk) AND write_id = :expected_write AND #status = :active")
        );
        assert!(!names.values().any(|n| n == "exposed" || n == "pk"));
        let put = write.changes[1].items[0].put().unwrap();
        assert_eq!(put.condition_expression(), Some("attribute_not_exists(pk)"));
        // Two grant writes and one new policy generation for their issuer (once per write).
        assert_eq!(write.item_count(), 3);
        assert_eq!(
            write.changes[0].items[1].put().unwrap().item()["sk"],
            s(keys::POLICY_SK)
        );
        assert_eq!(write.changes[1].items.len(), 1);
        assert_eq!(write.labels(), ["grant g", "grant g"]);
    }
}
