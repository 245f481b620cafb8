//! What operators (brokerctl) read, behind typed methods: registry items by what they are, a
//! destination's delivery records, a secret's active leases, the audit trail. Key formats and
//! queries stay in this adapter; brokerctl never builds a key or a query.

use super::{Item, keys, n, s};
use crate::domain::Lease;
use crate::error::{BrokerError, Result};

/// Reads across the tables, for operators.
pub struct OperatorReads {
    client: aws_sdk_dynamodb::Client,
    registry: super::DynamoRegistry,
    leases_table: String,
    audit_table: String,
    audit_queries: super::audit_query::AuditQueries,
}

/// A destination's item and its delivery records.
pub struct DestinationRecords {
    pub destination: Option<Item>,
    pub deliveries: Vec<Item>,
}

impl OperatorReads {
    pub fn new(client: aws_sdk_dynamodb::Client, registry_table: &str, leases_table: &str, audit_table: &str) -> Self {
        Self {
            registry: super::DynamoRegistry::new(client.clone(), registry_table),
            audit_queries: super::audit_query::AuditQueries::new(client.clone(), audit_table),
            client,
            leases_table: leases_table.into(),
            audit_table: audit_table.into(),
        }
    }

    pub async fn issuer(&self, issuer: &str) -> Result<Option<Item>> {
        self.registry.get(&keys::issuer_pk(issuer), keys::ISSUER_SK).await
    }

    pub async fn target(&self, id: &str) -> Result<Option<Item>> {
        self.registry.get(&keys::target_pk(id), keys::TARGET_SK).await
    }

    pub async fn grant(&self, issuer: &str, id: &str) -> Result<Option<Item>> {
        self.registry.get(&keys::issuer_pk(issuer), &keys::grant_sk(id)).await
    }

    pub async fn secret(&self, id: &str) -> Result<Option<Item>> {
        self.registry.get(&keys::secret_pk(id), keys::SECRET_SK).await
    }

    pub async fn secret_version(&self, id: &str, version: &str) -> Result<Option<Item>> {
        self.registry
            .get(&keys::secret_pk(id), &keys::version_sk(version))
            .await
    }

    pub async fn destination(&self, id: &str) -> Result<Option<Item>> {
        self.registry.get(&keys::destination_pk(id), keys::DESTINATION_SK).await
    }

    /// Ids of the destinations holding a copy of a secret.
    pub async fn destinations_of_secret(&self, secret_id: &str) -> Result<Vec<String>> {
        super::destination_ids(&self.client, &self.registry_table(), secret_id).await
    }

    /// A destination and its delivery records (one consistent Query of its collection).
    pub async fn destination_records(&self, id: &str) -> Result<DestinationRecords> {
        let mut records = DestinationRecords {
            destination: None,
            deliveries: Vec::new(),
        };
        for item in self.registry.collection(&keys::destination_pk(id)).await? {
            match item.get("sk").and_then(|v| v.as_s().ok()).map(String::as_str) {
                Some(keys::DESTINATION_SK) => records.destination = Some(item),
                Some(sk) if sk.starts_with(keys::DELIVERY_PREFIX) => records.deliveries.push(item),
                _ => {}
            }
        }
        Ok(records)
    }

    /// Active secret leases on `secret_id` not expired at `now`, soonest expiry first.
    pub async fn active_secret_leases(&self, secret_id: &str, now: i64) -> Result<Vec<Lease>> {
        let mut pages = self
            .client
            .query()
            .table_name(&self.leases_table)
            .index_name("by-target")
            .key_condition_expression("target = :t AND expires_at > :now")
            .filter_expression("#status = :active AND kind = :kind")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":t", s(secret_id))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":active", s("active"))
            .expression_attribute_values(":kind", s("secret"))
            .into_paginator()
            .items()
            .send();
        let mut leases = Vec::new();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| BrokerError::aws("dynamodb", "Query", &e))?;
            leases.push(super::from_item::<Lease>(item, "lease")?);
        }
        leases.sort_by_key(|l| l.expires_at);
        Ok(leases)
    }

    /// One page of audit events matching `query`, oldest first, read from the audit indexes.
    pub async fn audit_page(
        &self,
        query: &super::audit_query::AuditQuery,
        limit: usize,
        next_token: Option<&str>,
        now: i64,
    ) -> Result<super::audit_query::AuditPage> {
        self.audit_queries.page(query, limit, next_token, now).await
    }

    /// Every audit item (for `audit verify`, which must read them all), page by page; `progress`
    /// gets the count so far.
    pub async fn audit_all(&self, mut progress: impl FnMut(usize)) -> Result<Vec<Item>> {
        let mut pages = self.client.scan().table_name(&self.audit_table).into_paginator().send();
        let mut items = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| BrokerError::aws("dynamodb", "Scan", &e))?;
            items.extend(page.items.unwrap_or_default());
            progress(items.len());
        }
        Ok(items)
    }

    fn registry_table(&self) -> String {
        self.registry.table().to_string()
    }
}
