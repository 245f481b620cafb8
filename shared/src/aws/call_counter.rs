//! Counts AWS requests actually sent (every attempt, retries included), per operation. Installed on
//! every client the broker builds: the request log reports calls per request, and tests assert them.

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Default)]
pub struct CallCounter {
    total: Arc<AtomicU64>,
    /// Response body bytes received (what reads cost on the wire).
    bytes_received: Arc<AtomicU64>,
    by_operation: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl CallCounter {
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }

    pub fn bytes_received(&self) -> u64 {
        self.bytes_received.load(Ordering::SeqCst)
    }

    /// `service.Operation` → attempts.
    pub fn by_operation(&self) -> BTreeMap<String, u64> {
        self.by_operation.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn reset(&self) {
        self.total.store(0, Ordering::SeqCst);
        self.bytes_received.store(0, Ordering::SeqCst);
        if let Ok(mut m) = self.by_operation.lock() {
            m.clear();
        }
    }
}

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "nhi-broker-call-counter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.total.fetch_add(1, Ordering::SeqCst);
        let operation = cfg
            .load::<Metadata>()
            .map(|m| format!("{}.{}", m.service(), m.name()))
            .unwrap_or_else(|| "unknown".into());
        if let Ok(mut m) = self.by_operation.lock() {
            *m.entry(operation).or_default() += 1;
        }
        Ok(())
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let response = context.response();
        let length = response
            .body()
            .bytes()
            .map(|b| b.len() as u64)
            .or_else(|| response.headers().get("content-length").and_then(|v| v.parse().ok()));
        self.bytes_received.fetch_add(length.unwrap_or(0), Ordering::SeqCst);
        Ok(())
    }
}
