//! Audit chains in the audit table: every audited change is written in the same transaction as
//! its event.

use super::release_items::{audit_item, push_put_new};
use super::*;
use crate::audit::{AuditChain, ChainLink};
use crate::domain::AuditEvent;
use crate::error::{BrokerError, Result};
use aws_sdk_dynamodb::types::TransactWriteItem;

/// Attributes of an audit item besides the event's own fields and its index keys
/// ([`super::audit_query::INDEX_ATTRIBUTES`]): position, hashes and proofs.
pub const LINK_ATTRIBUTES: &[&str] = &[
    "chain",
    "seq",
    "prev_hash",
    "hash",
    "sig",
    "chain_key",
    "chain_cert",
    "chain_cert_key",
];

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
        mut items: Vec<TransactWriteItem>,
        event: &AuditEvent,
    ) -> Result<std::result::Result<(), TransactError>> {
        let mut chain = self.chain.lock().await;
        chain.ensure_certified().await?;
        let link = chain.next_link(event)?;
        push_put_new(&mut items, &self.table, audit_item(event, &link), "chain")?;
        // The token names this exact transaction (its audit link hashes the event, which names
        // what changes): a retry of it after a lost response is a no-op success in DynamoDB,
        // never a second application that fails its own conditions.
        let token = idempotency_token(&link);
        let mut pending = PendingAppend::new(&mut chain);
        // Boxed: the SDK's operation future is several kB, and every future awaiting it inline
        // would carry all of it (and copy it whenever it is moved, as `join!` does).
        let result = Box::pin(
            self.client
                .transact_write_items()
                .set_transact_items(Some(items))
                .client_request_token(token)
                .send(),
        )
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
        chain.ensure_certified().await?;
        let link = chain.next_link(event)?;
        let mut pending = PendingAppend::new(&mut chain);
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(audit_item(event, &link)))
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
pub(super) fn idempotency_token(link: &ChainLink) -> String {
    link.hash[..36].to_string()
}

/// An append in flight. Unless it is known to have landed, the chain restarts when this is
/// dropped: after an error, and also when the request's deadline drops the future mid-call (the
/// write may or may not have landed, and a chain must never fork).
pub(super) struct PendingAppend<'a> {
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
