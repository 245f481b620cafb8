//! DynamoDB adapters. Key schema (see docs/architecture.md):
//!
//! registry table  pk                 sk          item_type item_id
//!   issuer        ISSUER#<iss>       #ISSUER     issuer  <iss>
//!   grant         ISSUER#<iss>       GRANT#<id>  grant   <id>       (one Query loads issuer + grants)
//!   target        TARGET#<id>        #TARGET     target  <id>
//! leases table    pk                 sk
//!   lease         LEASE#<lease_id>   LEASE       + grant_id, target, subject_key, active_shard, expires_at, ttl
//! audit table     chain (S)          seq (N)     + event fields, prev_hash, hash, sig, time_shard (by-time index)
//!   digest        #DIGEST            n           + window, heads, prev_hash, hash, digest_sig

mod audit;
pub mod audit_query;
mod deliveries;
pub mod digest;
mod expiry;
pub mod fanout;
mod grant_writes;
mod ledger;
pub mod operator;
mod registry;
pub mod registry_writes;
mod release_items;
pub mod rotation;
mod secret_writes;
#[cfg(test)]
mod tests;

pub use audit::{AuditWriter, LINK_ATTRIBUTES};
pub use audit_query::{INDEX_ATTRIBUTES, index_attributes};
pub use deliveries::DynamoDeliveryLedger;
pub use digest::DynamoAuditDigests;
pub use expiry::DynamoExpiryStore;
pub use fanout::{DynamoFanoutLedger, DynamoFanoutRegistry};
pub use ledger::DynamoLedger;
pub(crate) use ledger::{fence_deletes, fence_puts, lease_revocation_items, put_new, revocation_item};
pub use registry::{DynamoRegistry, grant_records};
pub use rotation::{DynamoKeyRing, DynamoRotationStore};

use crate::error::{BrokerError, Result};
use aws_sdk_dynamodb::types::AttributeValue;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;

pub type Item = HashMap<String, AttributeValue>;

/// A sparse "due" index: every item waiting on a deadline carries `shard_attr` = `shard` (items
/// with nothing due carry none, so the index holds only them) and its deadline in `due_attr`.
/// What is due at `now` is one Query, earliest first.
pub(crate) struct DueIndex<'a> {
    pub table: &'a str,
    pub index: &'a str,
    pub shard_attr: &'a str,
    pub shard: String,
    pub due_attr: &'a str,
}

impl DueIndex<'_> {
    pub(crate) fn query(
        &self,
        client: &aws_sdk_dynamodb::Client,
        now: i64,
    ) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder {
        client
            .query()
            .table_name(self.table)
            .index_name(self.index)
            .key_condition_expression("#shard = :shard AND #due <= :now")
            .expression_attribute_names("#shard", self.shard_attr)
            .expression_attribute_names("#due", self.due_attr)
            .expression_attribute_values(":shard", s(&self.shard))
            .expression_attribute_values(":now", n(now))
    }

    /// Up to `limit` (1..=1000) due items: one page.
    pub(crate) async fn due(&self, client: &aws_sdk_dynamodb::Client, now: i64, limit: usize) -> Result<Vec<Item>> {
        Ok(self
            .query(client, now)
            .limit(limit.clamp(1, 1000) as i32)
            .send()
            .await
            .map_err(|e| BrokerError::aws("dynamodb", "Query", &e))?
            .items
            .unwrap_or_default())
    }
}

/// Lease records outlive their expiry for inventory and investigations, then DynamoDB TTL drops them.
pub const LEASE_RETENTION_SECONDS: i64 = 90 * 24 * 3600;
/// Active leases are spread over this many partitions of the sparse expiry index.
pub const ACTIVE_SHARDS: u32 = 8;

/// Key builders and parsers: the only place key formats are spelled out.
pub mod keys {
    /// The id in `key` after `prefix` (`LEASE#<id>` -> `<id>`).
    fn id_after<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
        key.strip_prefix(prefix).filter(|id| !id.is_empty())
    }
    pub fn issuer_of(pk: &str) -> Option<&str> {
        id_after(pk, "ISSUER#")
    }
    pub fn grant_id_of(sk: &str) -> Option<&str> {
        id_after(sk, "GRANT#")
    }
    pub fn secret_id_of(pk: &str) -> Option<&str> {
        id_after(pk, "SECRET#")
    }
    pub fn lease_id_of(pk: &str) -> Option<&str> {
        id_after(pk, "LEASE#")
    }
    pub fn issuer_pk(iss: &str) -> String {
        format!("ISSUER#{iss}")
    }
    pub const ISSUER_SK: &str = "#ISSUER";
    pub fn grant_sk(id: &str) -> String {
        format!("GRANT#{id}")
    }
    /// The issuer's policy generation (see `exchange::policy::catalog`). Sorts right after
    /// `ISSUER_SK`, so one query reads both.
    pub const POLICY_SK: &str = "#POLICY";
    /// A grant copy's key on the `by-policy-key` index: its issuer and exact subject (hashed: a
    /// subject may be 1 KiB), or its issuer's pattern set.
    pub fn policy_key(iss: &str, subject: &crate::domain::SubjectMatch) -> String {
        match subject {
            crate::domain::SubjectMatch::Exact(sub) => exact_policy_key(iss, sub),
            crate::domain::SubjectMatch::Pattern(_) => pattern_policy_key(iss),
        }
    }
    pub fn exact_policy_key(iss: &str, sub: &str) -> String {
        format!("SUB#{}", crate::crypto::sha256_hex(format!("{iss}\n{sub}").as_bytes()))
    }
    pub fn pattern_policy_key(iss: &str) -> String {
        format!("PATTERNS#{iss}")
    }
    pub fn target_pk(id: &str) -> String {
        format!("TARGET#{id}")
    }
    pub const TARGET_SK: &str = "#TARGET";
    pub fn secret_pk(id: &str) -> String {
        format!("SECRET#{id}")
    }
    pub const SECRET_SK: &str = "#SECRET";
    pub fn version_sk(version: &str) -> String {
        format!("VERSION#{version}")
    }
    // The keys a release writes are concatenated, not `format!`ted: a release builds a dozen,
    // and the formatting machinery costs more than the copying.
    pub fn lease_pk(id: &str) -> String {
        ["LEASE#", id].concat()
    }
    pub const LEASE_SK: &str = "LEASE";
    pub fn replay_pk(key: &str) -> String {
        ["REPLAY#", key].concat()
    }
    pub const REPLAY_SK: &str = "REPLAY";
    /// Deny-list entry of a revoked broker JWT (`jti` = lease id), kept until the token expires.
    pub fn deny_pk(jti: &str) -> String {
        format!("DENY#{jti}")
    }
    pub const DENY_SK: &str = "DENY";
    /// A delivery record in its destination's item collection.
    pub const DELIVERY_PREFIX: &str = "DELIVERY#";
    pub fn delivery_sk(event_id: &str) -> String {
        format!("DELIVERY#{event_id}")
    }
    /// Partition of the sparse delivery retry and drift indexes: every pending delivery.
    pub const DELIVERY_SHARD: &str = "DELIVERY";
    /// Partition of the sparse `approval-due` index: every active grant.
    pub const APPROVAL_SHARD: &str = "APPROVAL";
    /// Revocations table: one item collection per revoked thing, ordered by time.
    pub fn revocation_pk(kind: &str, id: &str) -> String {
        format!("{kind}#{id}")
    }
    pub fn revocation_sk(at: i64, revocation_id: &str) -> String {
        format!("{at:012}#{revocation_id}")
    }
    /// Rotation notices share the revocations table (and its stream) with revocations.
    pub fn rotation_notice_pk(secret_id: &str) -> String {
        format!("rotation#{secret_id}")
    }
    pub fn destination_pk(id: &str) -> String {
        format!("DEST#{id}")
    }
    pub const DESTINATION_SK: &str = "#DEST";
    /// A destination's link in a secret's item collection: one Query finds a secret's holders.
    pub fn destination_link_sk(id: &str) -> String {
        format!("DEST#{id}")
    }
    pub fn key_ring_pk(ring: &str) -> String {
        format!("KEYRING#{ring}")
    }
    pub const KEY_RING_SK: &str = "#KEYRING";
    /// Partition of the sparse `rotation-due` index: every secret with a rotation policy.
    pub const ROTATION_SHARD: &str = "ROTATION";
    /// Fences (a revoked subject, a disabled issuer) are written to every shard and checked at one
    /// shard per release, chosen by lease id, so one busy subject or issuer spreads its checks over
    /// this many items (partitions) instead of one.
    pub const FENCE_SHARDS: u32 = 8;
    /// `FENCE#<shard>#<scope>`, the scope written straight into the key.
    pub fn fence_pk(fence: crate::domain::FenceRef<'_>, shard: u32) -> String {
        let mut pk = String::with_capacity(64);
        pk.push_str("FENCE#");
        pk.push_str(itoa::Buffer::new().format(shard));
        pk.push('#');
        fence.write_scope(&mut pk);
        pk
    }
    pub const FENCE_SK: &str = "#FENCE";
    /// The shard a release checks: stable per lease, so a retried request is the same request.
    pub fn fence_shard(lease_id: &str) -> u32 {
        lease_id
            .bytes()
            .fold(7u32, |acc, b| acc.wrapping_mul(33).wrapping_add(b as u32))
            % FENCE_SHARDS
    }
    pub fn subject_key(iss: &str, sub: &str) -> String {
        [iss, "#", sub].concat()
    }
    /// Shard of the sparse active-by-expiry index, stable per lease.
    pub fn active_shard(lease_id: &str) -> String {
        let h = lease_id
            .bytes()
            .fold(0u32, |acc, b| acc.wrapping_mul(31).wrapping_add(b as u32));
        ["ACTIVE#", itoa::Buffer::new().format(h % super::ACTIVE_SHARDS)].concat()
    }
}

pub(crate) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(crate) fn n(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

pub(crate) fn build_err(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Internal(format!("request construction: {e}"))
}

/// An issuer's policy generation record (`keys::POLICY_SK`): `generation` replaced by every write
/// of the issuer's grants.
pub(crate) fn policy_generation_item(issuer: &str, generation: &str) -> Item {
    Item::from([
        ("pk".to_string(), s(keys::issuer_pk(issuer))),
        ("sk".to_string(), s(keys::POLICY_SK)),
        ("generation".to_string(), s(generation)),
    ])
}

/// A domain value as an item, plus its key and index attributes.
pub fn to_item<T: Serialize>(
    value: &T,
    extra: impl IntoIterator<Item = (&'static str, AttributeValue)>,
) -> Result<Item> {
    let mut item: Item =
        serde_dynamo::to_item(value).map_err(|e| BrokerError::Internal(format!("item encoding: {e}")))?;
    // Absent, not NULL: index key attributes must be missing or typed.
    item.retain(|_, v| !matches!(v, AttributeValue::Null(_)));
    let extra = extra.into_iter();
    item.reserve(extra.size_hint().0);
    for (k, v) in extra {
        item.insert(k.to_string(), v);
    }
    Ok(item)
}

pub fn from_item<T: DeserializeOwned>(item: Item, what: &str) -> Result<T> {
    serde_dynamo::from_item(item).map_err(|e| BrokerError::CorruptRecord(format!("{what}: {e}")))
}

pub(crate) type TransactError =
    aws_sdk_dynamodb::error::SdkError<aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError>;

/// Whether a single-item write failed on its condition.
/// Registry items of one type with one id, through the `by-type` index (grants live in their
/// issuer's collection, so their key is found this way).
pub(crate) async fn find_by_id(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    item_type: &str,
    id: &str,
) -> Result<Vec<Item>> {
    let output = client
        .query()
        .table_name(table)
        .index_name("by-type")
        .key_condition_expression("item_type = :t AND item_id = :id")
        .expression_attribute_values(":t", s(item_type))
        .expression_attribute_values(":id", s(id))
        .send()
        .await
        .map_err(|e| BrokerError::aws("dynamodb", "Query", &e))?;
    Ok(output.items.unwrap_or_default())
}

/// Ids of the destinations linked to a secret (its `DEST#` items), sorted: one Query.
pub(crate) async fn destination_ids(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    secret_id: &str,
) -> Result<Vec<String>> {
    let mut pages = client
        .query()
        .table_name(table)
        .key_condition_expression("pk = :pk AND begins_with(sk, :dest)")
        .expression_attribute_values(":pk", s(keys::secret_pk(secret_id)))
        .expression_attribute_values(":dest", s(keys::destination_link_sk("")))
        .projection_expression("destination_id")
        .into_paginator()
        .items()
        .send();
    let mut ids = Vec::new();
    while let Some(item) = pages.next().await {
        let item = item.map_err(|e| BrokerError::aws("dynamodb", "Query", &e))?;
        if let Some(id) = item.get("destination_id").and_then(|v| v.as_s().ok()) {
            ids.push(id.clone());
        }
    }
    ids.sort();
    Ok(ids)
}

pub(crate) fn is_conditional_check_failed<E: aws_sdk_dynamodb::error::ProvideErrorMetadata>(
    err: &aws_sdk_dynamodb::error::SdkError<E>,
) -> bool {
    err.as_service_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "ConditionalCheckFailedException")
}

/// `Ok(true)` when an audited transaction landed, `Ok(false)` when its first item's condition
/// failed (another writer changed that state first), otherwise the error.
pub(crate) fn landed(result: std::result::Result<(), TransactError>) -> Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if condition_failed_at(&e, 0) => Ok(false),
        Err(e) => Err(audited_transact_error(&e)),
    }
}

/// Whether a cancelled transaction failed on the condition of its `index`-th item.
pub(crate) fn condition_failed_at(
    err: &aws_sdk_dynamodb::error::SdkError<aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError>,
    index: usize,
) -> bool {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
    match err.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) => cancelled
            .cancellation_reasons()
            .get(index)
            .and_then(|r| r.code())
            .is_some_and(|code| code == "ConditionalCheckFailed"),
        _ => false,
    }
}

/// One code per item of a cancelled transaction, in order (`None` for items that were fine);
/// `None` when the transaction was not cancelled.
pub(crate) fn cancellation_reasons(err: &TransactError) -> Option<Vec<&str>> {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
    match err.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) => Some(
            cancelled
                .cancellation_reasons()
                .iter()
                .map(|r| r.code().unwrap_or("None"))
                .collect(),
        ),
        _ => None,
    }
}

/// Cancellation reasons that mean contention, not a decision: retry later.
pub(crate) fn is_contention(code: &str) -> bool {
    matches!(
        code,
        "TransactionConflict" | "ThrottlingError" | "ProvisionedThroughputExceeded" | "RequestLimitExceeded"
    )
}

/// A failed transaction as a `BrokerError`, by its cancellation reasons: contention (conflict,
/// throttling) is retryable; other cancellations keep the first non-`None` reason as their code.
pub(crate) fn transact_error(err: &TransactError) -> BrokerError {
    transact_error_from(err, false)
}

/// As `transact_error`, for transactions written through `AuditWriter::transact`, whose last item
/// is the audit append: its condition failing alone means this writer's chain moved (the chain
/// restarts), so a retry succeeds.
pub(crate) fn audited_transact_error(err: &TransactError) -> BrokerError {
    transact_error_from(err, true)
}

fn transact_error_from(err: &TransactError, audited: bool) -> BrokerError {
    let Some(reasons) = cancellation_reasons(err) else {
        return BrokerError::aws("dynamodb", "TransactWriteItems", err);
    };
    let code = reasons
        .iter()
        .find(|c| is_contention(c))
        .or_else(|| reasons.iter().find(|c| **c != "None"))
        .copied()
        .unwrap_or("TransactionCanceled");
    let audit_moved = audited
        && reasons
            .split_last()
            .is_some_and(|(last, rest)| *last == "ConditionalCheckFailed" && rest.iter().all(|c| *c == "None"));
    BrokerError::Aws {
        service: "dynamodb",
        operation: "TransactWriteItems",
        code: format!("TransactionCanceled:{code}"),
        retryable: is_contention(code) || audit_moved,
    }
}
