//! Delivery records of change events owed to destinations (registry table, `DEST#` collections).

use super::fanout::{DELIVERY_DUE_INDEX, DELIVERY_OVERDUE_INDEX};
use super::{
    AuditWriter, DueIndex, Item, build_err, from_item, is_conditional_check_failed, keys, landed, n, s, to_item,
};
use crate::domain::{AuditEvent, Delivery, DeliveryStatus, UnixTime};
use crate::error::{BrokerError, Result};
use crate::ports::DeliveryLedger;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};

pub struct DynamoDeliveryLedger {
    client: aws_sdk_dynamodb::Client,
    table: String,
    audit: AuditWriter,
}

impl DynamoDeliveryLedger {
    pub fn new(client: aws_sdk_dynamodb::Client, registry_table: &str, audit_table: &str) -> Self {
        Self {
            audit: AuditWriter::new(client.clone(), audit_table),
            client,
            table: registry_table.into(),
        }
    }

    fn item(delivery: &Delivery) -> Result<Item> {
        let mut extra = vec![
            ("pk", s(keys::destination_pk(&delivery.destination_id))),
            ("sk", s(keys::delivery_sk(delivery.event.event_id()))),
            ("record_type", s("delivery")),
        ];
        if delivery.status == DeliveryStatus::Pending {
            extra.push(("delivery_shard", s(keys::DELIVERY_SHARD)));
        }
        to_item(delivery, extra)
    }

    async fn query_index(&self, index: &str, sort_key: &str, now: UnixTime, limit: usize) -> Result<Vec<Delivery>> {
        let index = DueIndex {
            table: &self.table,
            index,
            shard_attr: "delivery_shard",
            shard: keys::DELIVERY_SHARD.into(),
            due_attr: sort_key,
        };
        index
            .due(&self.client, now, limit)
            .await?
            .into_iter()
            .map(|i| from_item(i, "delivery"))
            .collect()
    }
}

#[async_trait]
impl DeliveryLedger for DynamoDeliveryLedger {
    async fn open(&self, delivery: &Delivery) -> Result<Delivery> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(Self::item(delivery)?))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(delivery.clone()),
            Err(e) if is_conditional_check_failed(&e) => {
                let item = self
                    .client
                    .get_item()
                    .table_name(&self.table)
                    .key("pk", s(keys::destination_pk(&delivery.destination_id)))
                    .key("sk", s(keys::delivery_sk(delivery.event.event_id())))
                    .consistent_read(true)
                    .send()
                    .await
                    .map_err(|e| BrokerError::aws("dynamodb", "GetItem", &e))?
                    .item
                    .ok_or_else(|| BrokerError::Internal("delivery record vanished".into()))?;
                from_item(item, "delivery")
            }
            Err(e) => Err(BrokerError::aws("dynamodb", "PutItem", &e)),
        }
    }

    async fn update(&self, before: &Delivery, after: &Delivery, event: Option<&AuditEvent>) -> Result<bool> {
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(Self::item(after)?))
            .condition_expression("#status = :status AND attempts = :attempts")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":status", s(before.status.as_str()))
            .expression_attribute_values(":attempts", n(i64::from(before.attempts)))
            .build()
            .map_err(build_err)?;
        let Some(event) = event else {
            let result = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(put.item))
                .condition_expression("#status = :status AND attempts = :attempts")
                .set_expression_attribute_names(put.expression_attribute_names)
                .set_expression_attribute_values(put.expression_attribute_values)
                .send()
                .await;
            return match result {
                Ok(_) => Ok(true),
                Err(e) if is_conditional_check_failed(&e) => Ok(false),
                Err(e) => Err(BrokerError::aws("dynamodb", "PutItem", &e)),
            };
        };
        let mut items = vec![TransactWriteItem::builder().put(put).build()];
        if after.status == DeliveryStatus::Unconfirmed && after.last_error.as_deref() != Some("unknown_destination") {
            // The destination is flagged exposed: inventory and metrics read it from here.
            let flag = Update::builder()
                .table_name(&self.table)
                .key("pk", s(keys::destination_pk(&after.destination_id)))
                .key("sk", s(keys::DESTINATION_SK))
                .update_expression(
                    "SET exposed = :true, exposed_since = if_not_exists(exposed_since, :now), \
                     last_unconfirmed_event = :event ADD unconfirmed_deliveries :one",
                )
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_values(":true", AttributeValue::Bool(true))
                .expression_attribute_values(":now", n(event.at))
                .expression_attribute_values(":event", s(after.event.event_id()))
                .expression_attribute_values(":one", n(1))
                .build()
                .map_err(build_err)?;
            items.push(TransactWriteItem::builder().update(flag).build());
        }
        landed(self.audit.transact(items, event).await?)
    }

    async fn due(&self, now: UnixTime, limit: usize) -> Result<Vec<Delivery>> {
        self.query_index(DELIVERY_DUE_INDEX, "next_attempt_at", now, limit)
            .await
    }

    async fn overdue(&self, now: UnixTime, limit: usize) -> Result<Vec<Delivery>> {
        self.query_index(DELIVERY_OVERDUE_INDEX, "confirm_by", now, limit).await
    }
}
