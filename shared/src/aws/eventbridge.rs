//! EventBridge destinations: one `PutEvents` entry per change; confirmed only when the entry was
//! accepted (PutEvents reports per-entry failures with a 200).

use crate::fanout::secevent::{EVENT_SOURCE, EventBus};
use crate::ports::NotifyFailure;
use async_trait::async_trait;
use aws_sdk_eventbridge::error::ProvideErrorMetadata;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;

pub struct EventBridgeBus {
    client: aws_sdk_eventbridge::Client,
}

impl EventBridgeBus {
    pub fn new(client: aws_sdk_eventbridge::Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl EventBus for EventBridgeBus {
    async fn put_event(&self, bus_arn: &str, detail_type: &str, detail: &str) -> Result<String, NotifyFailure> {
        let entry = PutEventsRequestEntry::builder()
            .event_bus_name(bus_arn)
            .source(EVENT_SOURCE)
            .detail_type(detail_type)
            .detail(detail)
            .build();
        let output = self
            .client
            .put_events()
            .entries(entry)
            .send()
            .await
            .map_err(|e| NotifyFailure(format!("eventbridge_{}", e.code().unwrap_or("unreachable"))))?;
        let first = output.entries().first();
        match first.and_then(|e| e.event_id()) {
            Some(id) if output.failed_entry_count() == 0 => Ok(id.to_string()),
            _ => Err(NotifyFailure(format!(
                "failed_entry_{}",
                first.and_then(|e| e.error_code()).unwrap_or("unknown")
            ))),
        }
    }
}
