//! Operators' secret writes: a new secret with its first version in one transaction, and
//! metadata updates that never change the environment (part of every version's encryption
//! context) and keep the rotation policy unless told.

use super::registry_writes::{Expect, RegistryWrite, unchanged_condition};
use super::{Item, build_err, keys, n, s, to_item};
use crate::domain::Secret;
use crate::error::{BrokerError, Result};
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use std::collections::HashMap;

/// How a secret's rotation policy changes with a `secret put`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationChange {
    Keep,
    Set(crate::domain::RotationPolicy),
    Remove,
}

impl RegistryWrite {
    /// A new secret with its first (CURRENT) version, in the same transaction: a secret never
    /// exists without a decryptable value. Refused (`Changed`) if the id exists.
    pub fn create_secret(&mut self, secret: &Secret, version: &str, ciphertext: Vec<u8>, now: i64) -> Result<()> {
        if let Some(policy) = &secret.rotation
            && let Some(problem) = policy.problem()
        {
            return Err(BrokerError::InvalidRequest(problem));
        }
        let blob = AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(ciphertext));
        let mut extra = vec![
            ("pk", s(keys::secret_pk(&secret.id))),
            ("sk", s(keys::SECRET_SK)),
            ("item_type", s("secret")),
            ("item_id", s(&secret.id)),
            ("write_id", s(&self.write_id)),
            ("current_version", s(version)),
            ("current_ciphertext", blob.clone()),
        ];
        if let Some(policy) = &secret.rotation {
            extra.push(("rotation_shard", s(keys::ROTATION_SHARD)));
            extra.push(("rotation_due_at", n(now + policy.interval_seconds)));
        }
        let item = to_item(secret, extra)?;
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(build_err)?;
        let version_put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(version_item(&secret.id, version, blob, now)))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(build_err)?;
        self.push(
            format!("secret {}", secret.id),
            vec![
                TransactWriteItem::builder().put(put).build(),
                TransactWriteItem::builder().put(version_put).build(),
            ],
        );
        Ok(())
    }

    /// Update an existing secret's metadata, keeping its environment (part of every version's
    /// encryption context: a changed one would make them undecryptable) and, unless told, its
    /// rotation policy. `first_version`: a value for a secret that has none yet (never under a
    /// rotation in progress). Removing the policy is refused while a rotation is in progress.
    pub fn update_secret(
        &mut self,
        secret: &Secret,
        rotation: &RotationChange,
        first_version: Option<(&str, Vec<u8>)>,
        expect: Expect,
        now: i64,
    ) -> Result<()> {
        let Expect::Unchanged(write_id) = expect else {
            return Err(BrokerError::InvalidRequest("update_secret needs an existing secret"));
        };
        let mut set = vec![
            "id = :id",
            "#owner = :owner",
            "enabled = :enabled",
            "description = :desc",
            "write_id = :write",
        ];
        let mut remove: Vec<&str> = Vec::new();
        let (unchanged, expected_value) = unchanged_condition(write_id.as_deref());
        let mut conditions = vec![
            "attribute_exists(pk)".to_string(),
            "environment = :env".into(),
            unchanged,
        ];
        let mut values: HashMap<String, AttributeValue> = HashMap::from([
            (":id".into(), s(&secret.id)),
            (":owner".into(), s(&secret.owner)),
            (":enabled".into(), AttributeValue::Bool(secret.enabled)),
            (":desc".into(), s(&secret.description)),
            (":write".into(), s(&self.write_id)),
            (":env".into(), s(&secret.environment)),
        ]);
        if let Some(value) = expected_value {
            values.insert(":expected_write".into(), value);
        }
        if secret.enabled {
            // A revoked secret is never re-enabled (a disabled one may be).
            conditions.push("attribute_not_exists(revoked)".into());
        }
        match rotation {
            RotationChange::Keep => {}
            RotationChange::Set(policy) => {
                if let Some(problem) = policy.problem() {
                    return Err(BrokerError::InvalidRequest(problem));
                }
                set.extend([
                    "rotation = :rotation",
                    "rotation_shard = :shard",
                    "rotation_due_at = if_not_exists(rotation_due_at, :due)",
                ]);
                values.insert(
                    ":rotation".into(),
                    serde_dynamo::to_attribute_value(policy)
                        .map_err(|e| BrokerError::Internal(format!("item encoding: {e}")))?,
                );
                values.insert(":shard".into(), s(keys::ROTATION_SHARD));
                values.insert(":due".into(), n(now + policy.interval_seconds));
            }
            RotationChange::Remove => {
                remove.extend(["rotation", "rotation_shard", "rotation_due_at"]);
                conditions.push("attribute_not_exists(pending_version)".into());
            }
        }
        let mut items = Vec::new();
        if let Some((version, ciphertext)) = first_version {
            let blob = AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(ciphertext));
            set.extend(["current_version = :version", "current_ciphertext = :cipher"]);
            values.insert(":version".into(), s(version));
            values.insert(":cipher".into(), blob.clone());
            conditions.push("attribute_not_exists(current_version)".into());
            conditions.push("attribute_not_exists(pending_version)".into());
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(version_item(&secret.id, version, blob, now)))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(build_err)?;
            items.push(TransactWriteItem::builder().put(put).build());
        }
        conditions.dedup();
        let mut expression = format!("SET {}", set.join(", "));
        if !remove.is_empty() {
            expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        let update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(keys::secret_pk(&secret.id)))
            .key("sk", s(keys::SECRET_SK))
            .update_expression(expression)
            .condition_expression(conditions.join(" AND "))
            .expression_attribute_names("#owner", "owner")
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(build_err)?;
        items.insert(0, TransactWriteItem::builder().update(update).build());
        self.push(format!("secret {}", secret.id), items);
        Ok(())
    }
}

fn version_item(secret_id: &str, version: &str, blob: AttributeValue, now: i64) -> Item {
    Item::from([
        ("pk".to_string(), s(keys::secret_pk(secret_id))),
        ("sk".to_string(), s(keys::version_sk(version))),
        ("secret_id".to_string(), s(secret_id)),
        ("version".to_string(), s(version)),
        ("ciphertext".to_string(), blob),
        ("stage".to_string(), s(crate::domain::VersionStage::Current.as_str())),
        ("created_at".to_string(), n(now)),
    ])
}
