//! The sweeper's store: expired leases and lapsed approvals from their sparse indexes.

use super::fanout::{ACTIVE_BY_EXPIRY_INDEX, APPROVAL_DUE_INDEX, AuditPool, attr_num, attr_str};
use super::{DueIndex, build_err, keys, landed, n, put_new, revocation_item, s};
use crate::domain::{AuditEvent, LeaseStatus, Revocation, UnixTime};
use crate::error::{BrokerError, Result};
use crate::ports::{ExpiredLease, ExpiryStore, LapsedGrant};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{TransactWriteItem, Update};

pub struct DynamoExpiryStore {
    client: aws_sdk_dynamodb::Client,
    leases_table: String,
    registry_table: String,
    revocations_table: String,
    audit: AuditPool,
}

impl DynamoExpiryStore {
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        leases_table: &str,
        registry_table: &str,
        audit_table: &str,
        revocations_table: &str,
        audit_chains: usize,
    ) -> Self {
        Self {
            audit: AuditPool::new(&client, audit_table, audit_chains),
            client,
            leases_table: leases_table.into(),
            registry_table: registry_table.into(),
            revocations_table: revocations_table.into(),
        }
    }
}

#[async_trait]
impl ExpiryStore for DynamoExpiryStore {
    async fn expired_leases(&self, shard: u32, now: UnixTime, limit: usize) -> Result<Vec<ExpiredLease>> {
        let index = DueIndex {
            table: &self.leases_table,
            index: ACTIVE_BY_EXPIRY_INDEX,
            shard_attr: "active_shard",
            shard: format!("ACTIVE#{shard}"),
            due_attr: "expires_at",
        };
        index
            .due(&self.client, now, limit)
            .await?
            .into_iter()
            .map(|item| {
                let lease_id = attr_str(&item, "pk")
                    .and_then(|pk| keys::lease_id_of(&pk).map(str::to_string))
                    .ok_or_else(|| BrokerError::CorruptRecord("expiry index entry without a lease key".into()))?;
                Ok(ExpiredLease {
                    lease_id,
                    expires_at: attr_num(&item, "expires_at").unwrap_or_default(),
                    grant_id: attr_str(&item, "grant_id").unwrap_or_default(),
                    target: attr_str(&item, "target").unwrap_or_default(),
                    destination: attr_str(&item, "destination"),
                })
            })
            .collect()
    }

    async fn expire_lease(
        &self,
        lease: &ExpiredLease,
        revocation: Option<&Revocation>,
        event: &AuditEvent,
    ) -> Result<bool> {
        let update = Update::builder()
            .table_name(&self.leases_table)
            .key("pk", s(keys::lease_pk(&lease.lease_id)))
            .key("sk", s(keys::LEASE_SK))
            .update_expression("SET #status = :expired, expired_at = :now REMOVE active_shard")
            .condition_expression("#status = :active AND expires_at <= :now")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":expired", s(LeaseStatus::Expired.as_str()))
            .expression_attribute_values(":active", s(LeaseStatus::Active.as_str()))
            .expression_attribute_values(":now", n(event.at))
            .build()
            .map_err(build_err)?;
        let mut items = vec![TransactWriteItem::builder().update(update).build()];
        if let Some(revocation) = revocation {
            items.push(put_new(&self.revocations_table, revocation_item(revocation)?, "pk")?);
        }
        landed(self.audit.writer().transact(items, event).await?)
    }

    async fn lapsed_grants(&self, now: UnixTime, limit: usize) -> Result<Vec<LapsedGrant>> {
        let index = DueIndex {
            table: &self.registry_table,
            index: APPROVAL_DUE_INDEX,
            shard_attr: "approval_shard",
            shard: keys::APPROVAL_SHARD.into(),
            due_attr: "approval_expires_at",
        };
        index
            .due(&self.client, now, limit)
            .await?
            .into_iter()
            .map(|item| {
                let issuer = attr_str(&item, "pk").and_then(|pk| keys::issuer_of(&pk).map(str::to_string));
                let grant_id = attr_str(&item, "sk").and_then(|sk| keys::grant_id_of(&sk).map(str::to_string));
                match (issuer, grant_id) {
                    (Some(issuer), Some(grant_id)) => Ok(LapsedGrant {
                        issuer,
                        grant_id,
                        approval_expires_at: attr_num(&item, "approval_expires_at").unwrap_or_default(),
                    }),
                    _ => Err(BrokerError::CorruptRecord(
                        "approval index entry without a grant key".into(),
                    )),
                }
            })
            .collect()
    }

    async fn revoke_lapsed_grant(
        &self,
        grant: &LapsedGrant,
        revocation: &Revocation,
        event: &AuditEvent,
    ) -> Result<bool> {
        let update = Update::builder()
            .table_name(&self.registry_table)
            .key("pk", s(keys::issuer_pk(&grant.issuer)))
            .key("sk", s(keys::grant_sk(&grant.grant_id)))
            .update_expression("SET #status = :revoked REMOVE approval_shard")
            .condition_expression("#status = :active AND approval_expires_at <= :now")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":revoked", s("revoked"))
            .expression_attribute_values(":active", s("active"))
            .expression_attribute_values(":now", n(event.at))
            .build()
            .map_err(build_err)?;
        let mut items = vec![
            TransactWriteItem::builder().update(update).build(),
            put_new(&self.revocations_table, revocation_item(revocation)?, "pk")?,
        ];
        // The grant's fence, with the revocation: no release lands through it from now on.
        items.extend(super::ledger::revocation_fence_puts(&self.registry_table, revocation)?);
        landed(self.audit.writer().transact(items, event).await?)
    }
}
