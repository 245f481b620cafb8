//! DynamoDB adapters. Key schema (see docs/architecture.md):
//!
//! registry table  pk                 sk          item_type item_id
//!   issuer        ISSUER#<iss>       #ISSUER     issuer  <iss>
//!   grant         ISSUER#<iss>       GRANT#<id>  grant   <id>       (one Query loads issuer + grants)
//!   target        TARGET#<id>        #TARGET     target  <id>
//! leases table    pk                 sk
//!   lease         LEASE#<lease_id>   LEASE       + grant_id, target, subject_key, active_shard, expires_at, ttl
//! audit table     chain (S)          seq (N)     + event fields, prev_hash, hash

pub mod fanout;
pub mod registry_writes;
pub mod rotation;

pub use fanout::{DynamoDeliveryLedger, DynamoExpiryStore, DynamoFanoutLedger, DynamoFanoutRegistry};
pub use rotation::{DynamoKeyRing, DynamoRotationStore};

use crate::audit::{AuditChain, ChainLink};
use crate::domain::{
    AuditEvent, Destination, Fence, Grant, GrantStatus, Issuer, Lease, LeaseStatus, Revocation, Secret, Target,
};
use crate::error::TokenRejection;
use crate::error::{BrokerError, Result};
use crate::ports::{CurrentSecret, LeaseLedger, PolicyStore, ReplayGuard, SecretStore};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem, Update};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;

pub type Item = HashMap<String, AttributeValue>;

/// Lease records outlive their expiry for inventory and investigations, then DynamoDB TTL drops them.
pub const LEASE_RETENTION_SECONDS: i64 = 90 * 24 * 3600;
/// Active leases are spread over this many partitions of the sparse expiry index.
pub const ACTIVE_SHARDS: u32 = 8;

/// Key builders: the only place key formats are spelled out.
pub mod keys {
    pub fn issuer_pk(iss: &str) -> String {
        format!("ISSUER#{iss}")
    }
    pub const ISSUER_SK: &str = "#ISSUER";
    pub fn grant_sk(id: &str) -> String {
        format!("GRANT#{id}")
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
    pub fn lease_pk(id: &str) -> String {
        format!("LEASE#{id}")
    }
    pub const LEASE_SK: &str = "LEASE";
    pub fn replay_pk(key: &str) -> String {
        format!("REPLAY#{key}")
    }
    pub const REPLAY_SK: &str = "REPLAY";
    /// Deny-list entry of a revoked broker JWT (`jti` = lease id), kept until the token expires.
    pub fn deny_pk(jti: &str) -> String {
        format!("DENY#{jti}")
    }
    pub const DENY_SK: &str = "DENY";
    /// A delivery record in its destination's item collection.
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
    pub fn fence_pk(scope: &str, shard: u32) -> String {
        format!("FENCE#{shard}#{scope}")
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
        format!("{iss}#{sub}")
    }
    /// Shard of the sparse active-by-expiry index, stable per lease.
    pub fn active_shard(lease_id: &str) -> String {
        let h = lease_id
            .bytes()
            .fold(0u32, |acc, b| acc.wrapping_mul(31).wrapping_add(b as u32));
        format!("ACTIVE#{}", h % super::ACTIVE_SHARDS)
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

/// A domain value as an item, plus its key and index attributes.
pub fn to_item<T: Serialize>(
    value: &T,
    extra: impl IntoIterator<Item = (&'static str, AttributeValue)>,
) -> Result<Item> {
    let mut item: Item =
        serde_dynamo::to_item(value).map_err(|e| BrokerError::Internal(format!("item encoding: {e}")))?;
    // Absent, not NULL: index key attributes must be missing or typed.
    item.retain(|_, v| !matches!(v, AttributeValue::Null(_)));
    for (k, v) in extra {
        item.insert(k.to_string(), v);
    }
    Ok(item)
}

pub fn from_item<T: DeserializeOwned>(item: Item, what: &str) -> Result<T> {
    serde_dynamo::from_item(item).map_err(|e| BrokerError::CorruptRecord(format!("{what}: {e}")))
}

pub struct DynamoRegistry {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoRegistry {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    async fn put(&self, item: Item, operation: &'static str) -> Result<()> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| BrokerError::aws("dynamodb", operation, &e))?;
        Ok(())
    }

    /// Register or replace an issuer. Disabling one raises its fence in the same transaction (every
    /// release checks it, whatever its cached copy of the issuer says); enabling lowers it.
    pub async fn put_issuer(&self, issuer: &Issuer) -> Result<()> {
        let item = to_item(
            issuer,
            [
                ("pk", s(keys::issuer_pk(&issuer.issuer))),
                ("sk", s(keys::ISSUER_SK)),
                ("item_type", s("issuer")),
                ("item_id", s(&issuer.issuer)),
            ],
        )?;
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .build()
            .map_err(build_err)?;
        let mut items = vec![TransactWriteItem::builder().put(put).build()];
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
        self.client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
            .map_err(|e| transact_error(&e))?;
        Ok(())
    }

    pub async fn put_grant(&self, grant: &Grant) -> Result<()> {
        let item = to_item(
            grant,
            [
                ("pk", s(keys::issuer_pk(&grant.issuer))),
                ("sk", s(keys::grant_sk(&grant.id))),
                ("item_type", s("grant")),
                ("item_id", s(&grant.id)),
            ]
            .into_iter()
            // Active grants sit on the sparse approval-due index until the sweeper revokes them.
            .chain((grant.status == GrantStatus::Active).then(|| ("approval_shard", s(keys::APPROVAL_SHARD)))),
        )?;
        self.put(item, "PutItem").await
    }

    pub async fn put_target(&self, target: &Target) -> Result<()> {
        let item = to_item(
            target,
            [
                ("pk", s(keys::target_pk(&target.id))),
                ("sk", s(keys::TARGET_SK)),
                ("item_type", s("target")),
                ("item_id", s(&target.id)),
            ],
        )?;
        self.put(item, "PutItem").await
    }
}

impl DynamoRegistry {
    /// Every item of one type (`issuer`, `grant`, `target`, `secret`, `destination`) through the
    /// `by-type` index, page by page; `progress` is told the running count after each page.
    pub async fn list_type(&self, item_type: &str, mut progress: impl FnMut(usize)) -> Result<Vec<Item>> {
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .index_name("by-type")
            .key_condition_expression("item_type = :t")
            .expression_attribute_values(":t", s(item_type))
            .into_paginator()
            .send();
        let mut items = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| BrokerError::aws("dynamodb", "Query", &e))?;
            items.extend(page.items.unwrap_or_default());
            progress(items.len());
        }
        Ok(items)
    }

    /// Items of `item_type` with id `id` (e.g. a grant by id, whatever its issuer).
    pub async fn find(&self, item_type: &str, id: &str) -> Result<Vec<Item>> {
        find_by_id(&self.client, &self.table, item_type, id).await
    }

    /// One registry item by key (consistent read).
    pub async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>> {
        Ok(self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| BrokerError::aws("dynamodb", "GetItem", &e))?
            .item)
    }

    /// Every item in one partition (a secret with its versions and destination links, a
    /// destination with its delivery records).
    pub async fn collection(&self, pk: &str) -> Result<Vec<Item>> {
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(pk))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send();
        let mut items = Vec::new();
        while let Some(item) = pages.next().await {
            items.push(item.map_err(|e| BrokerError::aws("dynamodb", "Query", &e))?);
        }
        Ok(items)
    }

    /// Create or update a secret's metadata, leaving its versions and CURRENT pointer alone. A
    /// rotation policy puts the secret on the `rotation-due` index: due one interval from now, or
    /// at once when it has no value yet (rotation makes the first one); an existing due time stays.
    pub async fn put_secret(&self, secret: &Secret) -> Result<()> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(keys::secret_pk(&secret.id)))
            .key("sk", s(keys::SECRET_SK))
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":id", s(&secret.id))
            .expression_attribute_values(":owner", s(&secret.owner))
            .expression_attribute_values(":env", s(&secret.environment))
            .expression_attribute_values(":enabled", AttributeValue::Bool(secret.enabled))
            .expression_attribute_values(":desc", s(&secret.description))
            .expression_attribute_values(":type", s("secret"));
        let base = "SET id = :id, #owner = :owner, environment = :env, enabled = :enabled, description = :desc, \
                    item_type = :type, item_id = :id";
        request = match &secret.rotation {
            Some(policy) => {
                if let Some(problem) = policy.problem() {
                    return Err(BrokerError::InvalidRequest(problem));
                }
                // Only a schedule: a concurrent first value at worst makes the first rotation early.
                let has_value = self
                    .client
                    .get_item()
                    .table_name(&self.table)
                    .key("pk", s(keys::secret_pk(&secret.id)))
                    .key("sk", s(keys::SECRET_SK))
                    .projection_expression("current_version")
                    .send()
                    .await
                    .map_err(|e| BrokerError::aws("dynamodb", "GetItem", &e))?
                    .item
                    .is_some_and(|i| i.contains_key("current_version"));
                let now = crate::ports::Clock::now(&crate::ports::SystemClock);
                let first_due = if has_value { now + policy.interval_seconds } else { now };
                let rotation = serde_dynamo::to_attribute_value(policy)
                    .map_err(|e| BrokerError::Internal(format!("item encoding: {e}")))?;
                request
                    .update_expression(format!(
                        "{base}, rotation = :rotation, rotation_shard = :shard, \
                         rotation_due_at = if_not_exists(rotation_due_at, :due)"
                    ))
                    .expression_attribute_values(":rotation", rotation)
                    .expression_attribute_values(":shard", s(keys::ROTATION_SHARD))
                    .expression_attribute_values(":due", n(first_due))
            }
            None => request.update_expression(format!("{base} REMOVE rotation, rotation_shard, rotation_due_at")),
        };
        request
            .send()
            .await
            .map_err(|e| BrokerError::aws("dynamodb", "UpdateItem", &e))?;
        Ok(())
    }

    /// Register (or replace) a destination and its links in each secret's item collection, in one
    /// transaction; links to secrets it no longer holds are removed. Conditional on the item read
    /// (see `registry_writes`), so two concurrent writers cannot leave stale links; what fanout
    /// keeps on the item (the `exposed` flag) stays.
    pub async fn put_destination(&self, destination: &Destination) -> Result<()> {
        if destination.secrets.len() > 90 {
            return Err(BrokerError::InvalidRequest("a destination may hold at most 90 secrets"));
        }
        let existing = self
            .get(&keys::destination_pk(&destination.id), keys::DESTINATION_SK)
            .await?;
        let expect = registry_writes::Expect::from_read(existing.as_ref());
        let old_secrets: Vec<String> = match existing {
            Some(item) => from_item::<Destination>(item, "destination")?.secrets,
            None => Vec::new(),
        };
        let mut write = registry_writes::RegistryWrite::new(&self.table);
        write.destination(destination, &old_secrets, expect)?;
        write
            .commit_unaudited(&self.client)
            .await
            .map_err(|refused| match refused {
                registry_writes::WriteRefused::Changed(_) => BrokerError::Aws {
                    service: "dynamodb",
                    operation: "TransactWriteItems",
                    code: "TransactionCanceled:ConditionalCheckFailed".into(),
                    retryable: true,
                },
                registry_writes::WriteRefused::Failed(e) => e,
            })
    }

    /// Store an encrypted version and make it CURRENT, atomically. The version id must be new and
    /// the secret must exist. (Staged PENDING/PREVIOUS rotation is the rotate function's job.)
    pub async fn set_current_version(
        &self,
        secret_id: &str,
        version: &str,
        ciphertext: Vec<u8>,
        now: i64,
    ) -> Result<()> {
        self.store_current(secret_id, version, ciphertext, now).await
    }

    async fn store_current(&self, secret_id: &str, version: &str, ciphertext: Vec<u8>, now: i64) -> Result<()> {
        let blob = AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(ciphertext));
        let version_item = Item::from([
            ("pk".to_string(), s(keys::secret_pk(secret_id))),
            ("sk".to_string(), s(keys::version_sk(version))),
            ("secret_id".to_string(), s(secret_id)),
            ("version".to_string(), s(version)),
            ("ciphertext".to_string(), blob.clone()),
            ("stage".to_string(), s(crate::domain::VersionStage::Current.as_str())),
            ("created_at".to_string(), n(now)),
        ]);
        let pointer = Update::builder()
            .table_name(&self.table)
            .key("pk", s(keys::secret_pk(secret_id)))
            .key("sk", s(keys::SECRET_SK))
            .update_expression("SET current_version = :v, current_ciphertext = :c")
            // Never under a rotation in progress: that would leave two versions claiming CURRENT.
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(pending_version)")
            .expression_attribute_values(":v", s(version))
            .expression_attribute_values(":c", blob)
            .build()
            .map_err(|e| BrokerError::Internal(e.to_string()))?;
        self.client
            .transact_write_items()
            .transact_items(put_new(&self.table, version_item, "pk")?)
            .transact_items(TransactWriteItem::builder().update(pointer).build())
            .send()
            .await
            .map_err(|e| transact_error(&e))?;
        Ok(())
    }
}

#[async_trait]
impl SecretStore for DynamoRegistry {
    async fn current(&self, secret_id: &str) -> Result<Option<CurrentSecret>> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(keys::secret_pk(secret_id)))
            .key("sk", s(keys::SECRET_SK))
            .send()
            .await
            .map_err(|e| BrokerError::aws("dynamodb", "GetItem", &e))?;
        let Some(mut item) = output.item else { return Ok(None) };
        let version = item.remove("current_version").and_then(|v| v.as_s().ok().cloned());
        let ciphertext = item
            .remove("current_ciphertext")
            .and_then(|v| v.as_b().ok().map(|b| b.as_ref().to_vec()));
        let secret: Secret = from_item(item, "secret")?;
        Ok(match (version, ciphertext) {
            (Some(version), Some(ciphertext)) => Some(CurrentSecret {
                secret,
                version,
                ciphertext,
            }),
            _ => None,
        })
    }
}

#[async_trait]
impl PolicyStore for DynamoRegistry {
    async fn issuer_with_grants(&self, issuer: &str) -> Result<Option<(Issuer, Vec<Grant>)>> {
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(keys::issuer_pk(issuer)))
            .into_paginator()
            .items()
            .send();
        let mut found_issuer = None;
        let mut grants = Vec::new();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| BrokerError::aws("dynamodb", "Query", &e))?;
            match item.get("sk").and_then(|v| v.as_s().ok()).map(String::as_str) {
                Some(keys::ISSUER_SK) => found_issuer = Some(from_item::<Issuer>(item, "issuer")?),
                Some(sk) if sk.starts_with("GRANT#") => grants.push(from_item::<Grant>(item, "grant")?),
                _ => {}
            }
        }
        Ok(found_issuer.map(|i| (i, grants)))
    }

    async fn target(&self, id: &str) -> Result<Option<Target>> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(keys::target_pk(id)))
            .key("sk", s(keys::TARGET_SK))
            .send()
            .await
            .map_err(|e| BrokerError::aws("dynamodb", "GetItem", &e))?;
        output.item.map(|item| from_item(item, "target")).transpose()
    }
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

pub struct DynamoLedger {
    client: aws_sdk_dynamodb::Client,
    leases_table: String,
    revocations_table: String,
    /// When set, every release re-checks its grant (and secret) in the same transaction.
    registry_table: Option<String>,
    audit: AuditWriter,
}

/// A conditional put (the item must not exist yet) inside a transaction.
pub(crate) fn put_new(table: &str, item: Item, key_attr: &str) -> Result<TransactWriteItem> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression("attribute_not_exists(#k)")
        .expression_attribute_names("#k", key_attr)
        .build()
        .map_err(build_err)?;
    Ok(TransactWriteItem::builder().put(put).build())
}

pub(crate) fn revocation_item(revocation: &Revocation) -> Result<Item> {
    to_item(
        revocation,
        [
            (
                "pk",
                s(keys::revocation_pk(
                    revocation.target_kind.as_str(),
                    &revocation.target_id,
                )),
            ),
            ("sk", s(keys::revocation_sk(revocation.at, &revocation.revocation_id))),
            ("record_type", s("revocation")),
        ],
    )
}

pub(crate) fn audit_item(event: &AuditEvent, link: &ChainLink) -> Result<Item> {
    to_item(
        event,
        [
            ("chain", s(&link.chain)),
            ("seq", n(link.seq)),
            ("prev_hash", s(&link.prev_hash)),
            ("hash", s(&link.hash)),
        ],
    )
}

/// One writer's audit chain in the audit table (one per execution environment and adapter).
/// Every change recorded through it is written in the same transaction as its event.
pub struct AuditWriter {
    client: aws_sdk_dynamodb::Client,
    table: String,
    chain: AuditChain,
}

impl AuditWriter {
    pub fn new(client: aws_sdk_dynamodb::Client, audit_table: impl Into<String>) -> Self {
        Self {
            client,
            table: audit_table.into(),
            chain: AuditChain::default(),
        }
    }

    /// Run one transaction of `items` plus `event` appended to the chain: the event is recorded
    /// exactly when the change is. The chain advances on success and restarts on any failure (the
    /// write may or may not have landed, and a chain must never fork). The outer error is ours
    /// (building the request); the inner one is DynamoDB's answer, for callers to interpret.
    pub(crate) async fn transact(
        &self,
        items: Vec<TransactWriteItem>,
        event: &AuditEvent,
    ) -> Result<std::result::Result<(), TransactError>> {
        let mut chain = self.chain.lock().await;
        let link = chain.next_link(event);
        let audit = put_new(&self.table, audit_item(event, &link)?, "chain")?;
        // The token names this exact transaction (its audit link hashes the event, which names
        // what changes): a retry of it after a lost response is a no-op success in DynamoDB,
        // never a second application that fails its own conditions.
        let token = idempotency_token(&link);
        let mut pending = PendingAppend::new(&mut chain);
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .transact_items(audit)
            .client_request_token(token)
            .send()
            .await;
        match result {
            Ok(_) => {
                pending.landed(link);
                Ok(Ok(()))
            }
            Err(e) => Ok(Err(e)),
        }
    }

    /// An event on its own (denials), appended to the chain.
    pub(crate) async fn put(&self, event: &AuditEvent) -> Result<()> {
        let mut chain = self.chain.lock().await;
        let link = chain.next_link(event);
        let mut pending = PendingAppend::new(&mut chain);
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(audit_item(event, &link)?))
            .condition_expression("attribute_not_exists(chain)")
            .send()
            .await;
        match result {
            Ok(_) => {
                pending.landed(link);
                Ok(())
            }
            Err(e) => Err(BrokerError::aws("dynamodb", "PutItem", &e)),
        }
    }
}

/// `ClientRequestToken` of an audited transaction (1..=36 characters): derived from its audit link.
fn idempotency_token(link: &ChainLink) -> String {
    link.hash[..36].to_string()
}

/// An append in flight. Unless it is known to have landed, the chain restarts when this is
/// dropped: after an error, and also when the request's deadline drops the future mid-call (the
/// write may or may not have landed, and a chain must never fork).
struct PendingAppend<'a> {
    state: &'a mut crate::audit::ChainState,
    landed: bool,
}

impl<'a> PendingAppend<'a> {
    fn new(state: &'a mut crate::audit::ChainState) -> Self {
        Self { state, landed: false }
    }

    fn landed(&mut self, link: ChainLink) {
        self.state.advance(link);
        self.landed = true;
    }
}

impl Drop for PendingAppend<'_> {
    fn drop(&mut self) {
        if !self.landed {
            self.state.restart();
        }
    }
}

impl DynamoLedger {
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        leases_table: impl Into<String>,
        audit_table: impl Into<String>,
        revocations_table: impl Into<String>,
    ) -> Self {
        Self {
            audit: AuditWriter::new(client.clone(), audit_table),
            client,
            leases_table: leases_table.into(),
            revocations_table: revocations_table.into(),
            registry_table: None,
        }
    }

    /// Re-check each release's grant and secret in the registry as part of its transaction.
    pub fn with_registry_guard(mut self, registry_table: &str) -> Self {
        self.registry_table = Some(registry_table.into());
        self
    }

    /// An operator's revocation (a secret, grant, subject, lease or destination): the record
    /// revoke-fanout sweeps from and its audit event, atomically.
    /// A subject revocation also raises the subject's fence in the same transaction, so from the
    /// moment it is recorded no release for that identity can land, whatever any cache says.
    pub async fn record_revocation(&self, revocation: &Revocation, event: &AuditEvent) -> Result<()> {
        let mut items = vec![put_new(&self.revocations_table, revocation_item(revocation)?, "pk")?];
        if revocation.target_kind == crate::domain::RevocationTarget::Subject {
            let fence = Fence::subject_from_id(&revocation.target_id)
                .ok_or(BrokerError::InvalidRequest("a subject is named <issuer>#<sub>"))?;
            let origin = [
                ("revocation_id", s(&revocation.revocation_id)),
                ("actor", s(&revocation.actor)),
                ("reason", s(&revocation.reason)),
                ("at", n(revocation.at)),
            ];
            items.extend(fence_puts(self.registry()?, &fence, origin)?);
        }
        match self.audit.transact(items, event).await? {
            Ok(()) => Ok(()),
            Err(e) => Err(audited_transact_error(&e)),
        }
    }

    /// Run `items` and `event` in one transaction on this ledger's audit chain (operators' registry
    /// writes); the inner error is DynamoDB's answer, for the caller to read by its reasons.
    pub(crate) async fn audited_transact(
        &self,
        items: Vec<TransactWriteItem>,
        event: &AuditEvent,
    ) -> Result<std::result::Result<(), TransactError>> {
        self.audit.transact(items, event).await
    }

    /// Lift a subject's fence (an operator's unrevoke), with its audit event, atomically.
    /// `Ok(false)` when the subject was not fenced.
    pub async fn lift_subject_fence(&self, fence: &Fence, event: &AuditEvent) -> Result<bool> {
        let items = fence_deletes(self.registry()?, fence, true)?;
        landed(self.audit.transact(items, event).await?)
    }

    fn registry(&self) -> Result<&str> {
        self.registry_table
            .as_deref()
            .ok_or_else(|| BrokerError::Config("the ledger needs the registry table for fences".into()))
    }

    fn lease_item(lease: &Lease) -> Result<Item> {
        let mut extra = vec![
            ("pk", s(keys::lease_pk(&lease.lease_id))),
            ("sk", s(keys::LEASE_SK)),
            ("subject_key", s(keys::subject_key(&lease.issuer, &lease.subject))),
            ("ttl", n(lease.expires_at + LEASE_RETENTION_SECONDS)),
        ];
        if lease.status == LeaseStatus::Active {
            extra.push(("active_shard", s(keys::active_shard(&lease.lease_id))));
        }
        to_item(lease, extra)
    }
}

/// What each item of a release transaction is, so a cancellation is read by its reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReleaseItem {
    Lease,
    Replay,
    Grant,
    Secret,
    SubjectFence,
    IssuerFence,
    Audit,
}

/// A cancelled release, read item by item (DynamoDB lists one reason per item, in order):
/// - the lease's own `attribute_not_exists` failed: lease ids are fresh per request, so only an
///   earlier attempt of this very request wrote it, and transactions are atomic: it landed;
/// - a conflict or throttling on any item: the broker's own contention, retryable (503);
/// - a guard's condition: the caller's answer (replayed token, revoked subject, disabled issuer,
///   revoked grant, disabled secret);
/// - the audit append alone: the chain moved under us (a lost response), retryable;
/// - anything else: a server error.
fn release_cancellation(err: &TransactError, items: &[ReleaseItem]) -> Result<()> {
    let Some(reasons) = cancellation_reasons(err) else {
        return Err(transact_error(err));
    };
    let failed = |what: ReleaseItem| {
        items
            .iter()
            .zip(&reasons)
            .any(|(item, code)| *item == what && *code == "ConditionalCheckFailed")
    };
    if failed(ReleaseItem::Lease) {
        tracing::warn!("release found its own lease already written (an earlier attempt landed)");
        return Ok(());
    }
    if reasons.iter().any(|code| is_contention(code)) {
        return Err(transact_error(err));
    }
    let denial = [
        (
            ReleaseItem::Replay,
            BrokerError::TokenRejected(TokenRejection::Replayed),
        ),
        (
            ReleaseItem::SubjectFence,
            BrokerError::TokenRejected(TokenRejection::SubjectRevoked),
        ),
        (
            ReleaseItem::IssuerFence,
            BrokerError::TokenRejected(TokenRejection::IssuerDisabled),
        ),
        (
            ReleaseItem::Grant,
            BrokerError::PolicyDenied(crate::error::PolicyDenial::GrantRevoked),
        ),
        (
            ReleaseItem::Secret,
            BrokerError::InvalidTarget("the secret is disabled"),
        ),
    ];
    for (item, error) in denial {
        if failed(item) {
            return Err(error);
        }
    }
    Err(audited_transact_error(err))
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

/// Puts raising `fence` on every shard, each carrying `origin` (who raised it and why); a second
/// raise rewrites them.
pub(crate) fn fence_puts<const N: usize>(
    registry: &str,
    fence: &Fence,
    origin: [(&str, AttributeValue); N],
) -> Result<Vec<TransactWriteItem>> {
    let scope = fence.scope();
    (0..keys::FENCE_SHARDS)
        .map(|shard| {
            let mut item = Item::from([
                ("pk".to_string(), s(keys::fence_pk(&scope, shard))),
                ("sk".to_string(), s(keys::FENCE_SK)),
                ("scope".to_string(), s(&scope)),
            ]);
            item.extend(origin.iter().map(|(k, v)| (k.to_string(), v.clone())));
            if shard == 0 {
                // One shard is listed, so operators can see every standing fence.
                item.insert("item_type".into(), s("fence"));
                item.insert("item_id".into(), s(&scope));
            }
            let put = Put::builder()
                .table_name(registry)
                .set_item(Some(item))
                .build()
                .map_err(build_err)?;
            Ok(TransactWriteItem::builder().put(put).build())
        })
        .collect()
}

/// Deletes lowering `fence` on every shard; `raised`: the first must exist (its condition fails
/// the transaction when the fence was not up).
pub(crate) fn fence_deletes(registry: &str, fence: &Fence, raised: bool) -> Result<Vec<TransactWriteItem>> {
    let scope = fence.scope();
    (0..keys::FENCE_SHARDS)
        .map(|shard| {
            let mut delete = aws_sdk_dynamodb::types::Delete::builder()
                .table_name(registry)
                .key("pk", s(keys::fence_pk(&scope, shard)))
                .key("sk", s(keys::FENCE_SK));
            if raised && shard == 0 {
                delete = delete.condition_expression("attribute_exists(pk)");
            }
            Ok(TransactWriteItem::builder()
                .delete(delete.build().map_err(build_err)?)
                .build())
        })
        .collect()
}

fn fence_check(registry: &str, fence: &Fence, shard: u32) -> Result<TransactWriteItem> {
    let check = ConditionCheck::builder()
        .table_name(registry)
        .key("pk", s(keys::fence_pk(&fence.scope(), shard)))
        .key("sk", s(keys::FENCE_SK))
        .condition_expression("attribute_not_exists(pk)")
        .build()
        .map_err(build_err)?;
    Ok(TransactWriteItem::builder().condition_check(check).build())
}

#[async_trait]
impl LeaseLedger for DynamoLedger {
    async fn record_release(&self, lease: &Lease, event: &AuditEvent, replay: Option<&ReplayGuard>) -> Result<()> {
        let mut items = vec![put_new(&self.leases_table, Self::lease_item(lease)?, "pk")?];
        let mut roles = vec![ReleaseItem::Lease];
        if let Some(guard) = replay {
            let item = Item::from([
                ("pk".to_string(), s(keys::replay_pk(&guard.key))),
                ("sk".to_string(), s(keys::REPLAY_SK)),
                ("ttl".to_string(), n(guard.expires_at)),
            ]);
            items.push(put_new(&self.leases_table, item, "pk")?);
            roles.push(ReleaseItem::Replay);
        }
        // The grant (and a secret) must still be live, and neither the subject nor its issuer
        // fenced, when the lease lands, whatever a cached read said: a revocation that disabled
        // them first can never miss a lease written after its sweep.
        if let Some(registry) = &self.registry_table {
            let grant = ConditionCheck::builder()
                .table_name(registry)
                .key("pk", s(keys::issuer_pk(&lease.issuer)))
                .key("sk", s(keys::grant_sk(&lease.grant_id)))
                .condition_expression("#status = :active AND approval_expires_at > :now")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":active", s("active"))
                .expression_attribute_values(":now", n(lease.issued_at))
                .build()
                .map_err(build_err)?;
            items.push(TransactWriteItem::builder().condition_check(grant).build());
            roles.push(ReleaseItem::Grant);
            if lease.kind == crate::domain::TargetKind::Secret {
                let secret = ConditionCheck::builder()
                    .table_name(registry)
                    .key("pk", s(keys::secret_pk(&lease.target)))
                    .key("sk", s(keys::SECRET_SK))
                    .condition_expression("enabled = :true")
                    .expression_attribute_values(":true", AttributeValue::Bool(true))
                    .build()
                    .map_err(build_err)?;
                items.push(TransactWriteItem::builder().condition_check(secret).build());
                roles.push(ReleaseItem::Secret);
            }
            let shard = keys::fence_shard(&lease.lease_id);
            let subject = Fence::Subject {
                issuer: lease.issuer.clone(),
                subject: lease.subject.clone(),
            };
            items.push(fence_check(registry, &subject, shard)?);
            roles.push(ReleaseItem::SubjectFence);
            items.push(fence_check(registry, &Fence::Issuer(lease.issuer.clone()), shard)?);
            roles.push(ReleaseItem::IssuerFence);
        }
        roles.push(ReleaseItem::Audit);
        match self.audit.transact(items, event).await? {
            Ok(()) => Ok(()),
            Err(e) => release_cancellation(&e, &roles),
        }
    }

    async fn record_denial(&self, event: &AuditEvent) -> Result<()> {
        self.audit.put(event).await
    }

    async fn lease(&self, lease_id: &str) -> Result<Option<Lease>> {
        let output = self
            .client
            .get_item()
            .table_name(&self.leases_table)
            .key("pk", s(keys::lease_pk(lease_id)))
            .key("sk", s(keys::LEASE_SK))
            .send()
            .await
            .map_err(|e| BrokerError::aws("dynamodb", "GetItem", &e))?;
        output.item.map(|item| from_item(item, "lease")).transpose()
    }

    async fn is_denied(&self, jti: &str) -> Result<bool> {
        let output = self
            .client
            .get_item()
            .table_name(&self.leases_table)
            .key("pk", s(keys::deny_pk(jti)))
            .key("sk", s(keys::DENY_SK))
            .projection_expression("pk")
            .send()
            .await
            .map_err(|e| BrokerError::aws("dynamodb", "GetItem", &e))?;
        Ok(output.item.is_some())
    }

    async fn fence(&self, issuer: &str, subject: &str) -> Result<Option<Fence>> {
        let registry = self.registry()?;
        let raised = |fence: Fence| async move {
            let found = self
                .client
                .get_item()
                .table_name(registry)
                .key("pk", s(keys::fence_pk(&fence.scope(), 0)))
                .key("sk", s(keys::FENCE_SK))
                .projection_expression("pk")
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| BrokerError::aws("dynamodb", "GetItem", &e))?
                .item
                .is_some();
            Ok::<_, BrokerError>(found.then_some(fence))
        };
        // Both reads at once: one round trip of latency.
        let (subject, issuer) = futures::future::try_join(
            raised(Fence::Subject {
                issuer: issuer.into(),
                subject: subject.into(),
            }),
            raised(Fence::Issuer(issuer.into())),
        )
        .await?;
        Ok(subject.or(issuer))
    }

    async fn revoke_lease(&self, lease: &Lease, revocation: &Revocation, event: &AuditEvent) -> Result<bool> {
        let mut items = lease_revocation_items(&self.leases_table, lease, revocation)?;
        items.push(put_new(&self.revocations_table, revocation_item(revocation)?, "pk")?);
        landed(self.audit.transact(items, event).await?)
    }
}

/// What revoking one active lease writes, whoever revokes it (the holder, fanout): the lease
/// active -> revoked (conditional; it leaves the sparse expiry index) and, for a broker JWT, its
/// `jti` on the deny list until the token expires. The condition is the first item's.
pub(crate) fn lease_revocation_items(
    leases_table: &str,
    lease: &Lease,
    revocation: &Revocation,
) -> Result<Vec<TransactWriteItem>> {
    let update = Update::builder()
        .table_name(leases_table)
        .key("pk", s(keys::lease_pk(&lease.lease_id)))
        .key("sk", s(keys::LEASE_SK))
        .update_expression("SET #status = :revoked, revoked_at = :at, revocation_id = :rid REMOVE active_shard")
        .condition_expression("#status = :active")
        .expression_attribute_names("#status", "status")
        .expression_attribute_values(":revoked", s(LeaseStatus::Revoked.as_str()))
        .expression_attribute_values(":active", s(LeaseStatus::Active.as_str()))
        .expression_attribute_values(":at", n(revocation.at))
        .expression_attribute_values(":rid", s(&revocation.revocation_id))
        .build()
        .map_err(build_err)?;
    let mut items = vec![TransactWriteItem::builder().update(update).build()];
    if lease.kind == crate::domain::TargetKind::Jwt {
        let deny = Item::from([
            ("pk".to_string(), s(keys::deny_pk(&lease.lease_id))),
            ("sk".to_string(), s(keys::DENY_SK)),
            ("revocation_id".to_string(), s(&revocation.revocation_id)),
            ("ttl".to_string(), n(lease.expires_at)),
        ]);
        let put = Put::builder()
            .table_name(leases_table)
            .set_item(Some(deny))
            .build()
            .map_err(build_err)?;
        items.push(TransactWriteItem::builder().put(put).build());
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AuditAction, AuditOutcome, TargetKind};
    use aws_sdk_dynamodb::operation::transact_write_items::{TransactWriteItemsError, TransactWriteItemsOutput};
    use aws_smithy_mocks::{RuleMode, mock, mock_client};
    use std::sync::{Arc, Mutex};

    fn lease() -> Lease {
        Lease {
            lease_id: "lease-1".into(),
            kind: TargetKind::Jwt,
            issuer: "https://idp".into(),
            subject: "sub".into(),
            grant_id: "g".into(),
            target: "https://api".into(),
            environment: "prod".into(),
            scope: vec![],
            subject_token_fingerprint: "sha256:00".into(),
            key_id: "k".into(),
            secret_version: None,
            aws_access_key_id: None,
            issued_at: 1,
            expires_at: 61,
            status: LeaseStatus::Active,
            destination: None,
        }
    }

    fn event() -> AuditEvent {
        AuditEvent {
            event_id: "e".into(),
            at: 1,
            action: AuditAction::TokenExchange,
            outcome: AuditOutcome::Released,
            actor_issuer: None,
            actor_subject: None,
            target: None,
            grant_id: None,
            lease_id: Some("lease-1".into()),
            reason: None,
            token_fingerprint: None,
            old_version: None,
            new_version: None,
            request_id: None,
        }
    }

    #[tokio::test]
    async fn failed_transaction_keeps_only_the_code_and_restarts_the_audit_chain() {
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let record = |seen: Arc<Mutex<Vec<(String, String)>>>| {
            move |input: &aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsInput| {
                let audit = input.transact_items().last().unwrap().put().unwrap().item();
                let chain = audit["chain"].as_s().unwrap().clone();
                let seq = audit["seq"].as_n().unwrap().clone();
                seen.lock().unwrap().push((chain, seq));
                true
            }
        };
        let cancelled = mock!(aws_sdk_dynamodb::Client::transact_write_items)
            .match_requests(record(seen.clone()))
            .then_error(|| {
                TransactWriteItemsError::TransactionCanceledException(
                    aws_sdk_dynamodb::types::error::TransactionCanceledException::builder()
                        .message("Transaction cancelled, please refer cancellation reasons for specific reasons [ConditionalCheckFailed, None]")
                        .meta(
                            aws_sdk_dynamodb::error::ErrorMetadata::builder()
                                .code("TransactionCanceledException")
                                .build(),
                        )
                        .build(),
                )
            });
        let ok = mock!(aws_sdk_dynamodb::Client::transact_write_items)
            .match_requests(record(seen.clone()))
            .then_output(|| TransactWriteItemsOutput::builder().build());
        let ok2 = mock!(aws_sdk_dynamodb::Client::transact_write_items)
            .match_requests(record(seen.clone()))
            .then_output(|| TransactWriteItemsOutput::builder().build());
        let client = mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&cancelled, &ok, &ok2]);
        let ledger = DynamoLedger::new(client, "leases", "audit", "revocations");

        let err = ledger.record_release(&lease(), &event(), None).await.unwrap_err();
        assert_eq!(err.aws_code(), Some("TransactionCanceled:TransactionCanceled"));
        assert!(!err.to_string().contains("ConditionalCheckFailed"), "{err}");
        ledger.record_release(&lease(), &event(), None).await.unwrap();
        ledger.record_release(&lease(), &event(), None).await.unwrap();

        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0].1, "0");
        assert_ne!(seen[1].0, seen[0].0, "a failed write starts a new chain");
        assert_eq!((seen[1].1.as_str(), seen[2].1.as_str()), ("0", "1"));
        assert_eq!(seen[2].0, seen[1].0);
    }

    fn cancelled(reasons: &[&str]) -> TransactWriteItemsError {
        use aws_sdk_dynamodb::types::CancellationReason;
        TransactWriteItemsError::TransactionCanceledException(
            aws_sdk_dynamodb::types::error::TransactionCanceledException::builder()
                .set_cancellation_reasons(Some(
                    reasons
                        .iter()
                        .map(|code| CancellationReason::builder().code(*code).build())
                        .collect(),
                ))
                .meta(
                    aws_sdk_dynamodb::error::ErrorMetadata::builder()
                        .code("TransactionCanceledException")
                        .build(),
                )
                .build(),
        )
    }

    /// A release's items with the registry guard: lease, grant, subject fence, issuer fence, audit.
    async fn release_answer(reasons: &'static [&'static str]) -> Result<()> {
        let rule = mock!(aws_sdk_dynamodb::Client::transact_write_items)
            .match_requests(|input| input.client_request_token().is_some_and(|t| t.len() == 36))
            .then_error(move || cancelled(reasons));
        let client = mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&rule]);
        let ledger = DynamoLedger::new(client, "leases", "audit", "revocations").with_registry_guard("registry");
        ledger.record_release(&lease(), &event(), None).await
    }

    #[tokio::test]
    async fn release_cancellations_are_read_by_their_reasons() {
        const N: &str = "None";
        const FAILED: &str = "ConditionalCheckFailed";
        let conflict = release_answer(&[N, N, "TransactionConflict", N, N]).await.unwrap_err();
        assert!(conflict.is_retryable(), "{conflict}");
        assert_eq!(conflict.client_error().status, http::StatusCode::SERVICE_UNAVAILABLE);
        let throttled = release_answer(&[N, "ThrottlingError", N, N, N]).await.unwrap_err();
        assert_eq!(throttled.client_error().status, http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(matches!(
            release_answer(&[N, N, FAILED, N, N]).await,
            Err(BrokerError::TokenRejected(TokenRejection::SubjectRevoked))
        ));
        assert!(matches!(
            release_answer(&[N, N, N, FAILED, N]).await,
            Err(BrokerError::TokenRejected(TokenRejection::IssuerDisabled))
        ));
        assert!(matches!(
            release_answer(&[N, FAILED, N, N, N]).await,
            Err(BrokerError::PolicyDenied(crate::error::PolicyDenial::GrantRevoked))
        ));
        // The lease already written by this very request (a lost response): it landed.
        release_answer(&[FAILED, N, N, N, FAILED]).await.unwrap();
        // Only the audit append failed: the chain moved under us; retryable, never a 4xx.
        let audit = release_answer(&[N, N, N, N, FAILED]).await.unwrap_err();
        assert!(
            audit.is_retryable() && audit.client_error().status.is_server_error(),
            "{audit}"
        );
    }

    #[test]
    fn lease_items_carry_index_attributes_and_no_nulls() {
        let item = DynamoLedger::lease_item(&lease()).unwrap();
        assert_eq!(item["pk"].as_s().unwrap(), "LEASE#lease-1");
        assert_eq!(item["subject_key"].as_s().unwrap(), "https://idp#sub");
        assert!(item["active_shard"].as_s().unwrap().starts_with("ACTIVE#"));
        assert_eq!(item["ttl"].as_n().unwrap(), &(61 + LEASE_RETENTION_SECONDS).to_string());
        assert!(item.values().all(|v| !v.is_null()));
        let mut revoked = lease();
        revoked.status = LeaseStatus::Revoked;
        assert!(!DynamoLedger::lease_item(&revoked).unwrap().contains_key("active_shard"));
        let back: Lease = from_item(item, "lease").unwrap();
        assert_eq!(back, lease());
    }
}
