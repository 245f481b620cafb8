//! Operators' grant writes, part of a `RegistryWrite` (all or nothing with its other changes):
//! a grant's record under its first issuer and a copy under each other one, its revocation, and
//! the policy generation of every issuer it touches.

use super::registry_writes::{Expect, RegistryWrite, unchanged_condition};
use super::{build_err, keys, s};
use crate::domain::{Grant, GrantStatus};
use crate::error::{BrokerError, Result};
use aws_sdk_dynamodb::types::{Delete, Put, TransactWriteItem, Update};

/// Grant attributes an update removes when the new grant has none.
const GRANT_OPTIONAL: &[&str] = &[
    "session_policy",
    "delivers_to",
    "issuers",
    "subject",
    "subject_pattern",
    "condition",
];

impl RegistryWrite {
    /// Register or update an active grant (an update requires it still active). The grant is
    /// written once per issuer: the primary record (on the listing and approval indexes, and
    /// conditional on the plan's read) and a copy under each other issuer, each with its
    /// `policy_key` for the exchange's lookup by subject; copies under issuers the grant no longer
    /// names (`previous`) are deleted. Each issuer's policy generation moves with it.
    pub fn grant(&mut self, grant: &Grant, previous: Option<&Grant>, expect: Expect) -> Result<()> {
        if grant.status != GrantStatus::Active {
            return Err(BrokerError::InvalidRequest(
                "only active grants are written; revoke with revoke_grant",
            ));
        }
        if previous.is_some_and(|p| p.primary_issuer() != grant.primary_issuer()) {
            return Err(BrokerError::InvalidRequest("a grant's first issuer never changes"));
        }
        let key = (keys::issuer_pk(grant.primary_issuer()), keys::grant_sk(&grant.id));
        let mut records = super::grant_records(grant)?.into_iter();
        let mut own = records
            .next()
            .ok_or(BrokerError::InvalidRequest("a grant names at least one issuer"))?;
        own.remove("pk");
        own.remove("sk");
        let mut items = vec![self.upsert(key, own, GRANT_OPTIONAL, expect, Some("#status = :active"))?];
        for mut copy in records {
            copy.insert("write_id".into(), s(&self.write_id));
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(copy))
                .build()
                .map_err(build_err)?;
            items.push(TransactWriteItem::builder().put(put).build());
        }
        let dropped: Vec<&String> = previous
            .map(|p| p.issuers.iter().filter(|i| !grant.issuers.contains(i)).collect())
            .unwrap_or_default();
        for issuer in &dropped {
            let delete = Delete::builder()
                .table_name(&self.table)
                .key("pk", s(keys::issuer_pk(issuer)))
                .key("sk", s(keys::grant_sk(&grant.id)))
                .build()
                .map_err(build_err)?;
            items.push(TransactWriteItem::builder().delete(delete).build());
        }
        let touched: Vec<&String> = grant.issuers.iter().chain(dropped).collect();
        items.extend(self.generation_bumps(touched)?);
        self.push(format!("grant {}", grant.id), items);
        Ok(())
    }

    /// Mark an active grant revoked (never deleted), if unchanged since read, with its copies
    /// under its other issuers. Its leases are swept by the revocation record the caller writes
    /// after the commit.
    pub fn revoke_grant(&mut self, grant: &Grant, expect: Expect) -> Result<()> {
        let Expect::Unchanged(write_id) = expect else {
            return Err(BrokerError::InvalidRequest("only an existing grant is revoked"));
        };
        let mut update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(keys::issuer_pk(grant.primary_issuer())))
            .key("sk", s(keys::grant_sk(&grant.id)))
            .update_expression("SET #status = :revoked, write_id = :write REMOVE approval_shard")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":revoked", s("revoked"))
            .expression_attribute_values(":active", s("active"))
            .expression_attribute_values(":write", s(&self.write_id));
        let (condition, value) = unchanged_condition(write_id.as_deref());
        update = update.condition_expression(format!("attribute_exists(pk) AND #status = :active AND {condition}"));
        if let Some(value) = value {
            update = update.expression_attribute_values(":expected_write", value);
        }
        let mut items = vec![
            TransactWriteItem::builder()
                .update(update.build().map_err(build_err)?)
                .build(),
        ];
        for issuer in &grant.issuers[1..] {
            let copy = Update::builder()
                .table_name(&self.table)
                .key("pk", s(keys::issuer_pk(issuer)))
                .key("sk", s(keys::grant_sk(&grant.id)))
                .update_expression("SET #status = :revoked, write_id = :write")
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":revoked", s("revoked"))
                .expression_attribute_values(":write", s(&self.write_id))
                .build()
                .map_err(build_err)?;
            items.push(TransactWriteItem::builder().update(copy).build());
        }
        items.extend(self.generation_bumps(grant.issuers.iter())?);
        self.push(format!("grant {} (revoke)", grant.id), items);
        Ok(())
    }

    /// A new policy generation for each issuer not yet given one by this write: the exchange's
    /// compiled policy of that issuer is reloaded when it sees it.
    fn generation_bumps<'a>(
        &mut self,
        issuers: impl IntoIterator<Item = &'a String>,
    ) -> Result<Vec<TransactWriteItem>> {
        let mut items = Vec::new();
        for issuer in issuers {
            if !self.generations.insert(issuer.clone()) {
                continue;
            }
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(super::policy_generation_item(issuer, &self.write_id)))
                .build()
                .map_err(build_err)?;
            items.push(TransactWriteItem::builder().put(put).build());
        }
        Ok(items)
    }
}
