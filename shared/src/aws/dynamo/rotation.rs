//! DynamoDB adapters of the rotate function: secret rotation state in the registry (the secret
//! item carries the stage pointers, version items carry their stage), and the signing-key ring.
//!
//! registry table  pk                 sk               index attributes
//!   secret        SECRET#<id>        #SECRET          rotation_shard, rotation_due_at (GSI rotation-due, sparse)
//!   version       SECRET#<id>        VERSION#<v>      stage PENDING|CURRENT|PREVIOUS|DEPRECATED
//!   dest. link    SECRET#<id>        DEST#<dest id>
//!   key ring      KEYRING#<ring>     #KEYRING         keys, version

use super::{
    AuditWriter, DueIndex, Item, build_err, condition_failed_at, from_item, is_conditional_check_failed, keys, landed,
    n, put_new, revocation_item, s, to_item,
};
use crate::domain::{
    AuditEvent, KeyRing, Revocation, RotationNotice, RotationStep, Secret, SecretRotationState, UnixTime, VersionStage,
};
use crate::error::{BrokerError, Result};
use crate::ports::{KeyRingStore, Promotion, RotationStore};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, Put, Select, TransactWriteItem, Update};

/// Name of the sparse GSI on (`rotation_shard`, `rotation_due_at`).
pub const ROTATION_DUE_INDEX: &str = "rotation-due";

pub struct DynamoKeyRing {
    client: aws_sdk_dynamodb::Client,
    table: String,
    ring: String,
    audit: AuditWriter,
}

impl DynamoKeyRing {
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        registry_table: impl Into<String>,
        audit_table: impl Into<String>,
        ring: impl Into<String>,
    ) -> Self {
        Self {
            audit: AuditWriter::new(client.clone(), audit_table),
            client,
            table: registry_table.into(),
            ring: ring.into(),
        }
    }
}

#[async_trait]
impl KeyRingStore for DynamoKeyRing {
    async fn load(&self) -> Result<Option<KeyRing>> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(keys::key_ring_pk(&self.ring)))
            .key("sk", s(keys::KEY_RING_SK))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| BrokerError::aws("dynamodb", "GetItem", &e))?;
        output.item.map(|item| from_item(item, "signing-key ring")).transpose()
    }

    async fn save(&self, ring: &KeyRing, expected_version: Option<i64>, event: &AuditEvent) -> Result<bool> {
        let item = to_item(
            ring,
            [("pk", s(keys::key_ring_pk(&self.ring))), ("sk", s(keys::KEY_RING_SK))],
        )?;
        let put = Put::builder().table_name(&self.table).set_item(Some(item));
        let put = match expected_version {
            Some(v) => put
                .condition_expression("#v = :v")
                .expression_attribute_names("#v", "version")
                .expression_attribute_values(":v", n(v)),
            None => put.condition_expression("attribute_not_exists(pk)"),
        };
        let items = vec![
            TransactWriteItem::builder()
                .put(put.build().map_err(build_err)?)
                .build(),
        ];
        landed(self.audit.transact(items, event).await?)
    }
}

pub struct DynamoRotationStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    revocations_table: String,
    audit: AuditWriter,
}

impl DynamoRotationStore {
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        registry_table: impl Into<String>,
        audit_table: impl Into<String>,
        revocations_table: impl Into<String>,
    ) -> Self {
        Self {
            audit: AuditWriter::new(client.clone(), audit_table),
            client,
            table: registry_table.into(),
            revocations_table: revocations_table.into(),
        }
    }

    fn update(&self, pk: String, sk: String) -> aws_sdk_dynamodb::types::builders::UpdateBuilder {
        Update::builder()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
    }

    /// Set a version's stage, if it is at `from`.
    fn stage_update(
        &self,
        secret_id: &str,
        version: &str,
        from: VersionStage,
        to: VersionStage,
    ) -> Result<TransactWriteItem> {
        let update = self
            .update(keys::secret_pk(secret_id), keys::version_sk(version))
            .update_expression("SET stage = :to")
            .condition_expression("stage = :from")
            .expression_attribute_values(":to", s(to.as_str()))
            .expression_attribute_values(":from", s(from.as_str()))
            .build()
            .map_err(build_err)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    fn notice_item(notice: &RotationNotice) -> Result<Item> {
        to_item(
            notice,
            [
                ("pk", s(keys::rotation_notice_pk(&notice.secret_id))),
                ("sk", s(keys::revocation_sk(notice.at, &notice.notice_id))),
                ("record_type", s("rotation")),
            ],
        )
    }

    fn due_query(&self, now: UnixTime) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder {
        DueIndex {
            table: &self.table,
            index: ROTATION_DUE_INDEX,
            shard_attr: "rotation_shard",
            shard: keys::ROTATION_SHARD.into(),
            due_attr: "rotation_due_at",
        }
        .query(&self.client, now)
    }
}

fn take_s(item: &mut Item, name: &str) -> Option<String> {
    item.remove(name).and_then(|v| match v {
        AttributeValue::S(s) => Some(s),
        _ => None,
    })
}

fn take_n(item: &mut Item, name: &str) -> Option<i64> {
    item.remove(name).and_then(|v| match v {
        AttributeValue::N(n) => n.parse().ok(),
        _ => None,
    })
}

#[async_trait]
impl RotationStore for DynamoRotationStore {
    async fn due_secrets(&self, now: UnixTime, limit: usize) -> Result<Vec<String>> {
        let mut ids = Vec::with_capacity(limit);
        let mut start = None;
        // A page may hold fewer than `limit`; keep reading until the batch is full or none remain.
        while ids.len() < limit {
            let output = self
                .due_query(now)
                .limit((limit - ids.len()) as i32)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| BrokerError::aws("dynamodb", "Query", &e))?;
            for item in output.items() {
                if let Some(id) = item
                    .get("pk")
                    .and_then(|v| v.as_s().ok())
                    .and_then(|pk| keys::secret_id_of(pk))
                {
                    ids.push(id.to_string());
                }
            }
            start = output.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        Ok(ids)
    }

    async fn count_due(&self, now: UnixTime) -> Result<u64> {
        let mut total = 0u64;
        let mut start = None;
        loop {
            let output = self
                .due_query(now)
                .select(Select::Count)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| BrokerError::aws("dynamodb", "Query", &e))?;
            total += output.count.max(0) as u64;
            start = output.last_evaluated_key;
            if start.is_none() {
                return Ok(total);
            }
        }
    }

    async fn rotation_state(&self, secret_id: &str) -> Result<Option<SecretRotationState>> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(keys::secret_pk(secret_id)))
            .key("sk", s(keys::SECRET_SK))
            // Every step decides from the latest state: a stale read could repeat a step.
            .consistent_read(true)
            .projection_expression(
                "id, #owner, environment, enabled, description, rotation, current_version, previous_version, \
                 previous_expires_at, pending_version, rotation_step, rotation_due_at",
            )
            .expression_attribute_names("#owner", "owner")
            .send()
            .await
            .map_err(|e| BrokerError::aws("dynamodb", "GetItem", &e))?;
        let Some(mut item) = output.item else { return Ok(None) };
        let current_version = take_s(&mut item, "current_version");
        let previous_version = take_s(&mut item, "previous_version");
        let previous_expires_at = take_n(&mut item, "previous_expires_at");
        let pending_version = take_s(&mut item, "pending_version");
        let rotation_step = match take_s(&mut item, "rotation_step").as_deref() {
            None => None,
            Some("created") => Some(RotationStep::Created),
            Some("set") => Some(RotationStep::Set),
            Some("tested") => Some(RotationStep::Tested),
            Some(_) => return Err(BrokerError::CorruptRecord("secret: unknown rotation_step".into())),
        };
        let due_at = take_n(&mut item, "rotation_due_at");
        let secret: Secret = from_item(item, "secret")?;
        Ok(Some(SecretRotationState {
            secret,
            current_version,
            previous_version,
            previous_expires_at,
            pending_version,
            rotation_step,
            due_at,
        }))
    }

    async fn version_stage(&self, secret_id: &str, version: &str) -> Result<Option<VersionStage>> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(keys::secret_pk(secret_id)))
            .key("sk", s(keys::version_sk(version)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| BrokerError::aws("dynamodb", "GetItem", &e))?;
        let Some(item) = output.item else { return Ok(None) };
        let has_ciphertext = item
            .get("ciphertext")
            .and_then(|v| v.as_b().ok())
            .is_some_and(|b| !b.as_ref().is_empty());
        if !has_ciphertext {
            return Ok(None);
        }
        Ok(
            match item.get("stage").and_then(|v| v.as_s().ok()).map(String::as_str) {
                Some("PENDING") => Some(VersionStage::Pending),
                Some("CURRENT") => Some(VersionStage::Current),
                Some("PREVIOUS") => Some(VersionStage::Previous),
                Some("DEPRECATED") => Some(VersionStage::Deprecated),
                _ => None,
            },
        )
    }

    async fn stage_pending(
        &self,
        secret_id: &str,
        expected_current: Option<&str>,
        version: &str,
        ciphertext: Vec<u8>,
        now: UnixTime,
    ) -> Result<bool> {
        let version_item = Item::from([
            ("pk".to_string(), s(keys::secret_pk(secret_id))),
            ("sk".to_string(), s(keys::version_sk(version))),
            ("secret_id".to_string(), s(secret_id)),
            ("version".to_string(), s(version)),
            (
                "ciphertext".to_string(),
                AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(ciphertext)),
            ),
            ("stage".to_string(), s(VersionStage::Pending.as_str())),
            ("created_at".to_string(), n(now)),
        ]);
        let pointer = self
            .update(keys::secret_pk(secret_id), keys::SECRET_SK.into())
            .update_expression("SET pending_version = :v, rotation_step = :step, pending_since = :now")
            .expression_attribute_values(":v", s(version))
            .expression_attribute_values(":step", s(RotationStep::Created.as_str()))
            .expression_attribute_values(":now", n(now));
        let pointer = match expected_current {
            Some(current) => pointer
                .condition_expression("attribute_not_exists(pending_version) AND current_version = :cur")
                .expression_attribute_values(":cur", s(current)),
            None => pointer.condition_expression(
                "attribute_exists(pk) AND attribute_not_exists(pending_version) AND attribute_not_exists(current_version)",
            ),
        };
        let result = self
            .client
            .transact_write_items()
            .transact_items(
                TransactWriteItem::builder()
                    .update(pointer.build().map_err(build_err)?)
                    .build(),
            )
            .transact_items(put_new(&self.table, version_item, "pk")?)
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if condition_failed_at(&e, 0) || condition_failed_at(&e, 1) => Ok(false),
            Err(e) => Err(super::transact_error(&e)),
        }
    }

    async fn advance_step(&self, secret_id: &str, version: &str, from: RotationStep, to: RotationStep) -> Result<bool> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(keys::secret_pk(secret_id)))
            .key("sk", s(keys::SECRET_SK))
            .update_expression("SET rotation_step = :to")
            .condition_expression("pending_version = :v AND rotation_step = :from")
            .expression_attribute_values(":v", s(version))
            .expression_attribute_values(":from", s(from.as_str()))
            .expression_attribute_values(":to", s(to.as_str()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_check_failed(&e) => Ok(false),
            Err(e) => Err(BrokerError::aws("dynamodb", "UpdateItem", &e)),
        }
    }

    async fn destinations_for(&self, secret_id: &str) -> Result<Vec<String>> {
        super::destination_ids(&self.client, &self.table, secret_id).await
    }

    async fn promote(&self, p: &Promotion, event: &AuditEvent, notice: &RotationNotice) -> Result<bool> {
        // CURRENT's ciphertext travels with the secret item, so a release stays one GetItem.
        let pending = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(keys::secret_pk(&p.secret_id)))
            .key("sk", s(keys::version_sk(&p.new_version)))
            .consistent_read(true)
            .projection_expression("ciphertext")
            .send()
            .await
            .map_err(|e| BrokerError::aws("dynamodb", "GetItem", &e))?
            .item
            .and_then(|mut i| i.remove("ciphertext"))
            .ok_or_else(|| BrokerError::CorruptRecord("pending version has no ciphertext".into()))?;

        let mut expression = String::from(
            "SET current_version = :new, current_ciphertext = :c, rotation_due_at = :due, last_rotated_at = :now",
        );
        let mut removes = vec!["pending_version", "rotation_step", "pending_since"];
        let mut secret = self
            .update(keys::secret_pk(&p.secret_id), keys::SECRET_SK.into())
            .expression_attribute_values(":new", s(&p.new_version))
            .expression_attribute_values(":c", pending)
            .expression_attribute_values(":due", n(p.next_due_at))
            .expression_attribute_values(":now", n(notice.at))
            .expression_attribute_values(":tested", s(RotationStep::Tested.as_str()));
        secret = match &p.old_version {
            Some(old) => {
                expression.push_str(", previous_version = :old, previous_expires_at = :prev_exp");
                secret
                    .condition_expression(
                        "pending_version = :new AND rotation_step = :tested AND current_version = :old",
                    )
                    .expression_attribute_values(":old", s(old))
                    .expression_attribute_values(":prev_exp", n(p.previous_expires_at))
            }
            None => {
                removes.extend(["previous_version", "previous_expires_at"]);
                secret.condition_expression(
                    "pending_version = :new AND rotation_step = :tested AND attribute_not_exists(current_version)",
                )
            }
        };
        expression.push_str(" REMOVE ");
        expression.push_str(&removes.join(", "));
        let secret = secret.update_expression(expression).build().map_err(build_err)?;

        let mut items = vec![
            TransactWriteItem::builder().update(secret).build(),
            self.stage_update(
                &p.secret_id,
                &p.new_version,
                VersionStage::Pending,
                VersionStage::Current,
            )?,
        ];
        if let Some(old) = &p.old_version {
            items.push(self.stage_update(&p.secret_id, old, VersionStage::Current, VersionStage::Previous)?);
        }
        if let Some((version, revocation)) = &p.deprecated {
            items.push(self.stage_update(&p.secret_id, version, VersionStage::Previous, VersionStage::Deprecated)?);
            items.push(put_new(&self.revocations_table, revocation_item(revocation)?, "pk")?);
        }
        items.push(put_new(&self.revocations_table, Self::notice_item(notice)?, "pk")?);
        landed(self.audit.transact(items, event).await?)
    }

    async fn retire_previous(
        &self,
        secret_id: &str,
        version: &str,
        next_due_at: UnixTime,
        revocation: &Revocation,
        event: &AuditEvent,
    ) -> Result<bool> {
        let secret = self
            .update(keys::secret_pk(secret_id), keys::SECRET_SK.into())
            .update_expression("SET rotation_due_at = :due REMOVE previous_version, previous_expires_at")
            .condition_expression("previous_version = :v")
            .expression_attribute_values(":v", s(version))
            .expression_attribute_values(":due", n(next_due_at))
            .build()
            .map_err(build_err)?;
        let items = vec![
            TransactWriteItem::builder().update(secret).build(),
            self.stage_update(secret_id, version, VersionStage::Previous, VersionStage::Deprecated)?,
            put_new(&self.revocations_table, revocation_item(revocation)?, "pk")?,
        ];
        landed(self.audit.transact(items, event).await?)
    }

    async fn record_failure(&self, secret_id: &str, failure: &str, at: UnixTime) -> Result<()> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(keys::secret_pk(secret_id)))
            .key("sk", s(keys::SECRET_SK))
            .update_expression("SET rotation_failed_at = :at, rotation_failure = :failure")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":at", n(at))
            .expression_attribute_values(":failure", s(failure))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_check_failed(&e) => Ok(()),
            Err(e) => Err(BrokerError::aws("dynamodb", "UpdateItem", &e)),
        }
    }

    async fn reschedule(&self, secret_id: &str, due_at: UnixTime) -> Result<()> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(keys::secret_pk(secret_id)))
            .key("sk", s(keys::SECRET_SK))
            .update_expression("SET rotation_due_at = :due")
            .condition_expression("attribute_exists(rotation_shard)")
            .expression_attribute_values(":due", n(due_at))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // No longer on the rotation index: nothing to reschedule.
            Err(e) if is_conditional_check_failed(&e) => Ok(()),
            Err(e) => Err(BrokerError::aws("dynamodb", "UpdateItem", &e)),
        }
    }
}
