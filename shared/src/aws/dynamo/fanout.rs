//! DynamoDB adapters of revoke-fanout and expire-sweeper: lease sweeps through the lease indexes,
//! the jti deny list, delivery records, registry disables, expiry through sparse deadline indexes.

use super::{AuditWriter, Item, from_item, is_conditional_check_failed, keys, landed, n, s};
use crate::domain::{AuditEvent, Destination, Lease, LeaseStatus, Revocation, RevocationTarget, TargetKind, UnixTime};
use crate::error::{BrokerError, Result};
use crate::ports::LeaseReader;
use crate::ports::{FanoutLedger, FanoutRegistry, LeasePage, LeaseScope};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use std::sync::atomic::{AtomicUsize, Ordering};

pub const DELIVERY_DUE_INDEX: &str = "delivery-due";
pub const DELIVERY_OVERDUE_INDEX: &str = "delivery-overdue";
pub const ACTIVE_BY_EXPIRY_INDEX: &str = "active-by-expiry";
pub const APPROVAL_DUE_INDEX: &str = "approval-due";

/// Several audit chains, so concurrent writes of one function do not queue behind one chain.
pub(super) struct AuditPool {
    writers: Vec<AuditWriter>,
    next: AtomicUsize,
}

impl AuditPool {
    pub(super) fn new(client: &aws_sdk_dynamodb::Client, table: &str, size: usize) -> Self {
        Self {
            writers: (0..size.max(1))
                .map(|_| AuditWriter::new(client.clone(), table))
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub(super) fn writer(&self) -> &AuditWriter {
        &self.writers[self.next.fetch_add(1, Ordering::Relaxed) % self.writers.len()]
    }
}

/// A query's LastEvaluatedKey as an opaque cursor (string and number attributes only).
pub fn encode_cursor(key: &Item) -> Result<String> {
    let map: serde_json::Map<String, serde_json::Value> = key
        .iter()
        .map(|(k, v)| match v {
            AttributeValue::S(x) => Ok((k.clone(), serde_json::json!({ "S": x }))),
            AttributeValue::N(x) => Ok((k.clone(), serde_json::json!({ "N": x }))),
            _ => Err(BrokerError::Internal("unexpected key attribute type".into())),
        })
        .collect::<Result<_>>()?;
    Ok(serde_json::Value::Object(map).to_string())
}

pub fn decode_cursor(cursor: &str) -> Result<Item> {
    let bad = || BrokerError::CorruptRecord("revocation progress cursor".into());
    let value: serde_json::Map<String, serde_json::Value> = serde_json::from_str(cursor).map_err(|_| bad())?;
    value
        .into_iter()
        .map(|(k, v)| {
            if let Some(x) = v.get("S").and_then(|x| x.as_str()) {
                Ok((k, AttributeValue::S(x.into())))
            } else if let Some(x) = v.get("N").and_then(|x| x.as_str()) {
                Ok((k, AttributeValue::N(x.into())))
            } else {
                Err(bad())
            }
        })
        .collect()
}

pub(super) fn attr_str(item: &Item, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

pub(super) fn attr_num(item: &Item, name: &str) -> Option<i64> {
    item.get(name).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok())
}

pub struct DynamoFanoutLedger {
    client: aws_sdk_dynamodb::Client,
    leases_table: String,
    revocations_table: String,
    audit: AuditPool,
}

impl DynamoFanoutLedger {
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        leases_table: &str,
        audit_table: &str,
        revocations_table: &str,
        audit_chains: usize,
    ) -> Self {
        Self {
            audit: AuditPool::new(&client, audit_table, audit_chains),
            client,
            leases_table: leases_table.into(),
            revocations_table: revocations_table.into(),
        }
    }
}

#[async_trait]
impl crate::ports::LeaseReader for DynamoFanoutLedger {
    async fn lease(&self, lease_id: &str) -> Result<Option<Lease>> {
        super::ledger::read_lease(&self.client, &self.leases_table, lease_id).await
    }
}

#[async_trait]
impl FanoutLedger for DynamoFanoutLedger {
    async fn active_leases(
        &self,
        scope: &LeaseScope,
        now: UnixTime,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<LeasePage> {
        let (index, key_attr, key, extra_filter): (&str, &str, String, Vec<(&str, &str, String)>) = match scope {
            LeaseScope::Nothing => return Ok(LeasePage::default()),
            LeaseScope::Lease(id) => {
                let lease = self.lease(id).await?;
                return Ok(LeasePage {
                    leases: lease
                        .into_iter()
                        .filter(|l| l.status == LeaseStatus::Active && l.expires_at > now)
                        .collect(),
                    next: None,
                });
            }
            LeaseScope::Grant(id) => ("by-grant", "grant_id", id.clone(), vec![]),
            LeaseScope::Subject { issuer, subject } => {
                ("by-subject", "subject_key", keys::subject_key(issuer, subject), vec![])
            }
            // Target ids of different kinds may coincide: only secret leases.
            LeaseScope::Secret(id) => (
                "by-target",
                "target",
                id.clone(),
                vec![("kind", ":kind", TargetKind::Secret.as_str().into())],
            ),
            LeaseScope::SecretVersion { secret_id, version } => (
                "by-target",
                "target",
                secret_id.clone(),
                vec![
                    ("kind", ":kind", TargetKind::Secret.as_str().into()),
                    ("secret_version", ":version", version.clone()),
                ],
            ),
        };
        let mut filter = "#status = :active".to_string();
        let mut request = self
            .client
            .query()
            .table_name(&self.leases_table)
            .index_name(index)
            .key_condition_expression("#k = :k AND expires_at > :now")
            .expression_attribute_names("#k", key_attr)
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":k", s(key))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":active", s(LeaseStatus::Active.as_str()))
            .limit(limit.clamp(1, 1000) as i32);
        for (i, (attr, placeholder, value)) in extra_filter.into_iter().enumerate() {
            let name = format!("#f{i}");
            filter.push_str(&format!(" AND {name} = {placeholder}"));
            request = request
                .expression_attribute_names(name, attr)
                .expression_attribute_values(placeholder, s(value));
        }
        if let Some(cursor) = cursor {
            request = request.set_exclusive_start_key(Some(decode_cursor(cursor)?));
        }
        let output = request
            .filter_expression(filter)
            .send()
            .await
            .map_err(|e| BrokerError::aws("dynamodb", "Query", &e))?;
        let leases = output
            .items
            .unwrap_or_default()
            .into_iter()
            .map(|i| from_item::<Lease>(i, "lease"))
            .collect::<Result<Vec<_>>>()?;
        let next = output.last_evaluated_key.as_ref().map(encode_cursor).transpose()?;
        Ok(LeasePage { leases, next })
    }

    async fn revoke_derived(&self, lease: &Lease, revocation: &Revocation, event: &AuditEvent) -> Result<bool> {
        let items = super::lease_revocation_items(&self.leases_table, lease, revocation)?;
        landed(self.audit.writer().transact(items, event).await?)
    }

    async fn save_progress(&self, revocation: &Revocation, cursor: &str) -> Result<()> {
        self.client
            .update_item()
            .table_name(&self.revocations_table)
            .key(
                "pk",
                s(keys::revocation_pk(
                    revocation.target_kind.as_str(),
                    &revocation.target_id,
                )),
            )
            .key("sk", s(keys::revocation_sk(revocation.at, &revocation.revocation_id)))
            .update_expression("SET resume_cursor = :c ADD resume_passes :one")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":c", s(cursor))
            .expression_attribute_values(":one", n(1))
            .send()
            .await
            .map_err(|e| BrokerError::aws("dynamodb", "UpdateItem", &e))?;
        Ok(())
    }
}

pub struct DynamoFanoutRegistry {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoFanoutRegistry {
    pub fn new(client: aws_sdk_dynamodb::Client, table: &str) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// A conditional update that only ever switches something off; false when it already was
    /// (or the item is gone).
    async fn switch_off(&self, pk: String, sk: &str, update: &str, condition: &str, status_name: bool) -> Result<bool> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .update_expression(update)
            .condition_expression(condition);
        request = if status_name {
            request
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":active", s("active"))
                .expression_attribute_values(":revoked", s("revoked"))
        } else {
            request
                .expression_attribute_values(":true", AttributeValue::Bool(true))
                .expression_attribute_values(":false", AttributeValue::Bool(false))
        };
        match request.send().await {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_check_failed(&e) => Ok(false),
            Err(e) => Err(BrokerError::aws("dynamodb", "UpdateItem", &e)),
        }
    }
}

#[async_trait]
impl FanoutRegistry for DynamoFanoutRegistry {
    async fn disable_target(&self, revocation: &Revocation) -> Result<bool> {
        let id = &revocation.target_id;
        // The fence first (every writer of grant and secret revocations raises it with the record;
        // raising it again is harmless): the sweep that follows can then miss no release.
        let fences = super::ledger::revocation_fence_puts(&self.table, revocation)?;
        if !fences.is_empty() {
            self.client
                .transact_write_items()
                .set_transact_items(Some(fences))
                .send()
                .await
                .map_err(|e| super::transact_error(&e))?;
        }
        match revocation.target_kind {
            RevocationTarget::Grant => {
                // Grants live in their (first) issuer's collection, the type index finds the key;
                // a copy under each other issuer is what releases through that issuer check, so
                // every copy is switched off (each on its own: a retry finishes what a crash left).
                let found = super::find_by_id(&self.client, &self.table, "grant", id).await?;
                let mut changed = false;
                for item in found {
                    let Some(pk) = attr_str(&item, "pk") else { continue };
                    let issuers: Vec<String> = match item.get("issuers").and_then(|v| v.as_l().ok()) {
                        Some(list) => list.iter().filter_map(|v| v.as_s().ok().cloned()).collect(),
                        None => keys::issuer_of(&pk).map(str::to_string).into_iter().collect(),
                    };
                    for issuer in &issuers {
                        changed |= self
                            .switch_off(
                                keys::issuer_pk(issuer),
                                &keys::grant_sk(id),
                                "SET #status = :revoked REMOVE approval_shard",
                                "#status = :active",
                                true,
                            )
                            .await?;
                    }
                    if changed {
                        for issuer in &issuers {
                            self.client
                                .put_item()
                                .table_name(&self.table)
                                .set_item(Some(super::policy_generation_item(issuer, &revocation.revocation_id)))
                                .send()
                                .await
                                .map_err(|e| BrokerError::aws("dynamodb", "PutItem", &e))?;
                        }
                    }
                }
                Ok(changed)
            }
            RevocationTarget::Secret => {
                self.switch_off(
                    keys::secret_pk(id),
                    keys::SECRET_SK,
                    // `revoked` marks it for operators: a revoked secret or destination is never
                    // re-enabled by `secret put` or `apply`.
                    "SET enabled = :false, revoked = :true",
                    "attribute_exists(pk) AND (enabled = :true OR attribute_not_exists(revoked))",
                    false,
                )
                .await
            }
            RevocationTarget::Destination => {
                self.switch_off(
                    keys::destination_pk(id),
                    keys::DESTINATION_SK,
                    // `revoked` marks it for operators: a revoked secret or destination is never
                    // re-enabled by `secret put` or `apply`.
                    "SET enabled = :false, revoked = :true",
                    "attribute_exists(pk) AND (enabled = :true OR attribute_not_exists(revoked))",
                    false,
                )
                .await
            }
            RevocationTarget::Lease | RevocationTarget::Subject | RevocationTarget::SecretVersion => Ok(false),
        }
    }

    async fn destinations_of_secret(&self, secret_id: &str) -> Result<Vec<String>> {
        super::destination_ids(&self.client, &self.table, secret_id).await
    }

    async fn destination(&self, id: &str) -> Result<Option<Destination>> {
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(keys::destination_pk(id)))
            .key("sk", s(keys::DESTINATION_SK))
            .send()
            .await
            .map_err(|e| BrokerError::aws("dynamodb", "GetItem", &e))?
            .item;
        item.map(|i| from_item(i, "destination")).transpose()
    }
}

/// Delivery records live in their destination's item collection (`DEST#<id>`, `DELIVERY#<event>`),
/// so a destination's history is one Query. Pending records carry `delivery_shard`, which puts
/// them on the sparse retry (`next_attempt_at`) and drift (`confirm_by`) indexes.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let key = Item::from([("pk".to_string(), s("LEASE#1")), ("expires_at".to_string(), n(42))]);
        assert_eq!(decode_cursor(&encode_cursor(&key).unwrap()).unwrap(), key);
        assert!(decode_cursor("not json").is_err());
        assert!(decode_cursor(r#"{"pk":{"B":"x"}}"#).is_err());
    }
}
