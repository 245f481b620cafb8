//! The leases table: releases, revocations and fences, each one transaction with its audit event.

use super::release_items::{lease_item, new_put, push_fence_check, push_put_new};
use super::*;
use crate::domain::{AuditEvent, Fence, FenceRef, Lease, LeaseStatus, Revocation};
use crate::error::TokenRejection;
use crate::error::{BrokerError, Result};
use crate::ports::{LeaseLedger, ReplayGuard};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};

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
    Ok(TransactWriteItem::builder()
        .put(new_put(table, item, key_attr)?)
        .build())
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
    /// A subject, grant or secret revocation also raises its fence in the same transaction, so
    /// from the moment it is recorded no release through it can land, whatever any cache says.
    pub async fn record_revocation(&self, revocation: &Revocation, event: &AuditEvent) -> Result<()> {
        let mut items = vec![put_new(&self.revocations_table, revocation_item(revocation)?, "pk")?];
        items.extend(revocation_fence_puts(self.registry()?, revocation)?);
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
}

/// What each item of a release transaction is, so a cancellation is read by its reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReleaseItem {
    Lease,
    Replay,
    Grant,
    Secret,
    SubjectFence,
    IssuerFence,
    Audit,
}

/// How many items a release transaction holds at most: one of each kind.
const RELEASE_ITEM_KINDS: usize = 7;

/// A cancelled release, read item by item (DynamoDB lists one reason per item, in order):
/// - the lease's own `attribute_not_exists` failed: lease ids are fresh per request, so only an
///   earlier attempt of this very request wrote it, and transactions are atomic: it landed;
/// - a conflict or throttling on any item: the broker's own contention, retryable (503);
/// - a guard's condition: the caller's answer (replayed token, revoked subject, disabled issuer,
///   revoked grant, disabled secret);
/// - the audit append alone: the chain moved under us (a lost response), retryable;
/// - anything else: a server error.
pub(super) fn release_cancellation(err: &TransactError, items: &[ReleaseItem]) -> Result<()> {
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
        (ReleaseItem::Secret, BrokerError::InvalidTarget("the secret is revoked")),
    ];
    for (item, error) in denial {
        if failed(item) {
            return Err(error);
        }
    }
    Err(audited_transact_error(err))
}

/// The fence puts a revocation raises (subjects, grants, secrets; none for the others), each
/// shard naming the revocation.
pub(crate) fn revocation_fence_puts(registry: &str, revocation: &Revocation) -> Result<Vec<TransactWriteItem>> {
    let kind = revocation.target_kind;
    let Some(fence) = Fence::for_revocation(kind, &revocation.target_id) else {
        if kind == crate::domain::RevocationTarget::Subject {
            return Err(BrokerError::InvalidRequest("a subject is named <issuer>#<sub>"));
        }
        return Ok(Vec::new());
    };
    let origin = [
        ("revocation_id", s(&revocation.revocation_id)),
        ("actor", s(&revocation.actor)),
        ("reason", s(&revocation.reason)),
        ("at", n(revocation.at)),
    ];
    fence_puts(registry, &fence, origin)
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
                ("pk".to_string(), s(keys::fence_pk(fence.as_ref(), shard))),
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
    (0..keys::FENCE_SHARDS)
        .map(|shard| {
            let mut delete = aws_sdk_dynamodb::types::Delete::builder()
                .table_name(registry)
                .key("pk", s(keys::fence_pk(fence.as_ref(), shard)))
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

#[async_trait]
impl crate::ports::LeaseReader for DynamoLedger {
    async fn lease(&self, lease_id: &str) -> Result<Option<Lease>> {
        read_lease(&self.client, &self.leases_table, lease_id).await
    }
}

impl DynamoLedger {
    /// A release's transaction items (the audit event is appended by the audit writer) and what
    /// each is, to read a cancellation by.
    pub(super) fn release_items(
        &self,
        lease: &Lease,
        replay: Option<&ReplayGuard>,
    ) -> Result<(Vec<TransactWriteItem>, Vec<ReleaseItem>)> {
        // Room for all of them and the audit append: each item is about a kilobyte, and a
        // growing vector would move them (a few kB of copies per release).
        let mut items = Vec::with_capacity(RELEASE_ITEM_KINDS);
        push_put_new(&mut items, &self.leases_table, lease_item(lease), "pk")?;
        let mut roles = vec![ReleaseItem::Lease];
        if let Some(guard) = replay {
            let item = Item::from([
                ("pk".to_string(), s(keys::replay_pk(&guard.key))),
                ("sk".to_string(), s(keys::REPLAY_SK)),
                ("ttl".to_string(), n(guard.expires_at)),
            ]);
            push_put_new(&mut items, &self.leases_table, item, "pk")?;
            roles.push(ReleaseItem::Replay);
        }
        // Neither the grant nor a secret revoked, nor the subject or its issuer fenced, when the
        // lease lands, whatever a cached read said: a revocation raises its fence before fanout
        // sweeps, so it can never miss a lease written after its sweep. Each fence is checked at
        // one of its shards (by lease id), so no item is checked by every release of a popular
        // grant, secret or subject (a hot item would cap it near 1,000 releases/s and make
        // concurrent releases cancel each other).
        if let Some(registry) = &self.registry_table {
            let shard = keys::fence_shard(&lease.lease_id);
            push_fence_check(&mut items, registry, FenceRef::Grant(&lease.grant_id), shard)?;
            roles.push(ReleaseItem::Grant);
            if lease.kind == crate::domain::TargetKind::Secret {
                push_fence_check(&mut items, registry, FenceRef::Secret(&lease.target), shard)?;
                roles.push(ReleaseItem::Secret);
            }
            let subject = FenceRef::Subject {
                issuer: &lease.issuer,
                subject: &lease.subject,
            };
            push_fence_check(&mut items, registry, subject, shard)?;
            roles.push(ReleaseItem::SubjectFence);
            push_fence_check(&mut items, registry, FenceRef::Issuer(&lease.issuer), shard)?;
            roles.push(ReleaseItem::IssuerFence);
        }
        roles.push(ReleaseItem::Audit);
        debug_assert!(roles.len() <= RELEASE_ITEM_KINDS);
        Ok((items, roles))
    }
}

#[async_trait]
impl LeaseLedger for DynamoLedger {
    async fn record_release(&self, lease: &Lease, event: &AuditEvent, replay: Option<&ReplayGuard>) -> Result<()> {
        let (items, roles) = self.release_items(lease, replay)?;
        match self.audit.transact(items, event).await? {
            Ok(()) => Ok(()),
            Err(e) => release_cancellation(&e, &roles),
        }
    }

    async fn record_denial(&self, event: &AuditEvent) -> Result<()> {
        self.audit.put(event).await
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
                .key("pk", s(keys::fence_pk(fence.as_ref(), 0)))
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

/// One lease by id, whatever its status (consistent read): the one lease read both the exchange's
/// ledger and fanout's use.
pub(crate) async fn read_lease(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    lease_id: &str,
) -> Result<Option<Lease>> {
    client
        .get_item()
        .table_name(table)
        .key("pk", s(keys::lease_pk(lease_id)))
        .key("sk", s(keys::LEASE_SK))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| BrokerError::aws("dynamodb", "GetItem", &e))?
        .item
        .map(|item| from_item(item, "lease"))
        .transpose()
}
