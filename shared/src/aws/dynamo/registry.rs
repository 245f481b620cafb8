//! The registry table as the exchange reads it (issuers, grants, targets, secrets) and its
//! single-item operator helpers.

use super::*;
use crate::domain::{Destination, Fence, Grant, GrantStatus, Issuer, Secret, Target};
use crate::error::{BrokerError, Result};
use crate::ports::{CurrentSecret, PolicyStore, SecretStore};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};

/// The index of grant copies by issuer and exact subject, or by issuer for pattern grants.
pub const POLICY_INDEX: &str = "by-policy-key";

#[derive(Clone)]
pub struct DynamoRegistry {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoRegistry {
    /// The registry table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

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

    /// Write a grant as is (any status), with its copies under its other issuers and a new policy
    /// generation for each, in one transaction (tests and the local runner; operators use
    /// `RegistryWrite`).
    pub async fn put_grant(&self, grant: &Grant) -> Result<()> {
        let generation = uuid::Uuid::now_v7().to_string();
        let mut items = Vec::new();
        for (issuer, record) in grant.issuers.iter().zip(grant_records(grant)?) {
            for item in [record, policy_generation_item(issuer, &generation)] {
                let put = Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .build()
                    .map_err(build_err)?;
                items.push(TransactWriteItem::builder().put(put).build());
            }
        }
        self.client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
            .map_err(|e| transact_error(&e))?;
        Ok(())
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
    /// The grant copies filed under one `policy_key` (eventually consistent: a global index).
    async fn policy_index(&self, policy_key: String) -> Result<Vec<Grant>> {
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(POLICY_INDEX)
            .key_condition_expression("policy_key = :k")
            .expression_attribute_values(":k", s(policy_key))
            .into_paginator()
            .items()
            .send();
        let mut grants = Vec::new();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| BrokerError::aws("dynamodb", "Query", &e))?;
            grants.push(from_item::<Grant>(item, "grant")?);
        }
        Ok(grants)
    }

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

/// A grant's records, one per issuer in order: the first is the grant's own (on the listing and,
/// when active, approval indexes), the others its copies; each carries its `policy_key`.
pub fn grant_records(grant: &Grant) -> Result<Vec<Item>> {
    grant
        .issuers
        .iter()
        .enumerate()
        .map(|(i, issuer)| {
            let primary = i == 0;
            to_item(
                grant,
                [
                    ("pk", s(keys::issuer_pk(issuer))),
                    ("sk", s(keys::grant_sk(&grant.id))),
                    ("policy_key", s(keys::policy_key(issuer, &grant.subject))),
                ]
                .into_iter()
                .chain(primary.then(|| ("item_type", s("grant"))))
                .chain(primary.then(|| ("item_id", s(&grant.id))))
                .chain(
                    (primary && grant.status == GrantStatus::Active)
                        .then(|| ("approval_shard", s(keys::APPROVAL_SHARD))),
                ),
            )
        })
        .collect()
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
    /// One query of the issuer's partition from `#ISSUER` to `#POLICY`: the record and its
    /// generation, nothing else (grant records sort after both).
    async fn issuer_head(&self, issuer: &str) -> Result<Option<(Issuer, String)>> {
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :issuer AND :policy")
            .expression_attribute_values(":pk", s(keys::issuer_pk(issuer)))
            .expression_attribute_values(":issuer", s(keys::ISSUER_SK))
            .expression_attribute_values(":policy", s(keys::POLICY_SK))
            .send()
            .await
            .map_err(|e| BrokerError::aws("dynamodb", "Query", &e))?;
        let mut found = None;
        let mut generation = String::new();
        for item in output.items.unwrap_or_default() {
            match item.get("sk").and_then(|v| v.as_s().ok()).map(String::as_str) {
                Some(keys::ISSUER_SK) => found = Some(from_item::<Issuer>(item, "issuer")?),
                Some(keys::POLICY_SK) => {
                    generation = item
                        .get("generation")
                        .and_then(|v| v.as_s().ok())
                        .cloned()
                        .unwrap_or_default()
                }
                _ => {}
            }
        }
        Ok(found.map(|i| (i, generation)))
    }

    async fn exact_grants(&self, issuer: &str, subject: &str) -> Result<Vec<Grant>> {
        self.policy_index(keys::exact_policy_key(issuer, subject)).await
    }

    async fn pattern_grants(&self, issuer: &str) -> Result<Vec<Grant>> {
        self.policy_index(keys::pattern_policy_key(issuer)).await
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
