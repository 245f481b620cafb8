//! Fakes of the fanout and sweeper flows' ports.

use crate::domain::{AuditEvent, Lease, LeaseStatus, Revocation, UnixTime};
use crate::error::{BrokerError, Result};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

// ---------------------------------------------------------------- revocation fanout

use crate::domain::{ChangeEvent, Delivery, DeliveryStatus, Destination, TargetKind};
use crate::ports::{
    DeliveryLedger, FanoutLedger, FanoutRegistry, LeasePage, LeaseScope, Notifier, NotifyFailure, SessionDenier,
};

/// Fanout's view of the one in-memory lease store (`InMemoryLedger`: leases, the jti deny list,
/// audit events) plus saved sweep progress, with the adapter's conditions. Its fields read
/// through to the store (`ledger.leases`), so a test can share one store between the exchange's
/// and fanout's fakes (`sharing`).
#[derive(Default)]
pub struct InMemoryFanoutLedger {
    pub store: std::sync::Arc<super::InMemoryLedger>,
    pub progress: Mutex<Vec<(String, String)>>,
    /// The next this many `revoke_derived` calls fail (a crash part-way through a page).
    pub fail_next_revocations: std::sync::atomic::AtomicU32,
}

impl InMemoryFanoutLedger {
    /// Fanout over the lease store the exchange's fake writes to.
    pub fn sharing(store: std::sync::Arc<super::InMemoryLedger>) -> Self {
        Self {
            store,
            ..Self::default()
        }
    }
}

impl std::ops::Deref for InMemoryFanoutLedger {
    type Target = super::InMemoryLedger;

    fn deref(&self) -> &Self::Target {
        &self.store
    }
}

fn in_scope(lease: &Lease, scope: &LeaseScope) -> bool {
    match scope {
        LeaseScope::Lease(id) => &lease.lease_id == id,
        LeaseScope::Grant(id) => &lease.grant_id == id,
        LeaseScope::Subject { issuer, subject } => &lease.issuer == issuer && &lease.subject == subject,
        LeaseScope::Secret(id) => lease.kind == TargetKind::Secret && &lease.target == id,
        LeaseScope::SecretVersion { secret_id, version } => {
            lease.kind == TargetKind::Secret
                && &lease.target == secret_id
                && lease.secret_version.as_deref() == Some(version.as_str())
        }
        LeaseScope::Nothing => false,
    }
}

#[async_trait]
impl crate::ports::LeaseReader for InMemoryFanoutLedger {
    async fn lease(&self, lease_id: &str) -> Result<Option<Lease>> {
        Ok(self.store.find_lease(lease_id))
    }
}

#[async_trait]
impl FanoutLedger for InMemoryFanoutLedger {
    async fn active_leases(
        &self,
        scope: &LeaseScope,
        now: UnixTime,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<LeasePage> {
        // The cursor is the position after the last lease read, as LastEvaluatedKey would be.
        let start: usize = cursor.and_then(|c| c.parse().ok()).unwrap_or(0);
        let leases = self.leases.lock().unwrap();
        let mut page = Vec::new();
        let mut position = start;
        while position < leases.len() && page.len() < limit {
            let lease = &leases[position];
            position += 1;
            if in_scope(lease, scope) && lease.status == LeaseStatus::Active && lease.expires_at > now {
                page.push(lease.clone());
            }
        }
        let next = (position < leases.len()).then(|| position.to_string());
        Ok(LeasePage { leases: page, next })
    }

    async fn revoke_derived(&self, lease: &Lease, _revocation: &Revocation, event: &AuditEvent) -> Result<bool> {
        if self
            .fail_next_revocations
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(BrokerError::Aws {
                service: "dynamodb",
                operation: "TransactWriteItems",
                code: "InternalServerError".into(),
                retryable: true,
            });
        }
        let mut leases = self.leases.lock().unwrap();
        let Some(stored) = leases
            .iter_mut()
            .find(|l| l.lease_id == lease.lease_id && l.status == LeaseStatus::Active)
        else {
            return Ok(false);
        };
        stored.status = LeaseStatus::Revoked;
        if stored.kind == TargetKind::Jwt {
            self.denied.lock().unwrap().insert(stored.lease_id.clone());
        }
        self.events.lock().unwrap().push(event.clone());
        Ok(true)
    }

    async fn save_progress(&self, revocation: &Revocation, cursor: &str) -> Result<()> {
        self.progress
            .lock()
            .unwrap()
            .push((revocation.revocation_id.clone(), cursor.to_string()));
        Ok(())
    }
}

/// Destinations, their links to secrets, and what revocations disabled.
#[derive(Default)]
pub struct InMemoryFanoutRegistry {
    pub destinations: Mutex<HashMap<String, Destination>>,
    pub disabled: Mutex<std::collections::HashSet<String>>,
}

impl InMemoryFanoutRegistry {
    pub fn with(destinations: impl IntoIterator<Item = Destination>) -> Self {
        let registry = Self::default();
        registry
            .destinations
            .lock()
            .unwrap()
            .extend(destinations.into_iter().map(|d| (d.id.clone(), d)));
        registry
    }
}

#[async_trait]
impl FanoutRegistry for InMemoryFanoutRegistry {
    async fn disable_target(&self, revocation: &Revocation) -> Result<bool> {
        Ok(self.disabled.lock().unwrap().insert(format!(
            "{}:{}",
            revocation.target_kind.as_str(),
            revocation.target_id
        )))
    }

    async fn destinations_of_secret(&self, secret_id: &str) -> Result<Vec<String>> {
        let mut ids: Vec<String> = self
            .destinations
            .lock()
            .unwrap()
            .values()
            .filter(|d| d.secrets.iter().any(|s| s == secret_id))
            .map(|d| d.id.clone())
            .collect();
        ids.sort();
        Ok(ids)
    }

    async fn destination(&self, id: &str) -> Result<Option<Destination>> {
        Ok(self.destinations.lock().unwrap().get(id).cloned())
    }
}

/// Delivery records keyed by (destination, event), changed only if unchanged since read.
#[derive(Default)]
pub struct InMemoryDeliveries {
    pub records: Mutex<HashMap<(String, String), Delivery>>,
    pub events: Mutex<Vec<AuditEvent>>,
}

impl InMemoryDeliveries {
    pub fn get(&self, destination_id: &str, event_id: &str) -> Option<Delivery> {
        self.records
            .lock()
            .unwrap()
            .get(&(destination_id.to_string(), event_id.to_string()))
            .cloned()
    }
}

#[async_trait]
impl DeliveryLedger for InMemoryDeliveries {
    async fn open(&self, delivery: &Delivery) -> Result<Delivery> {
        let key = (delivery.destination_id.clone(), delivery.event.event_id().to_string());
        Ok(self
            .records
            .lock()
            .unwrap()
            .entry(key)
            .or_insert_with(|| delivery.clone())
            .clone())
    }

    async fn update(&self, before: &Delivery, after: &Delivery, event: Option<&AuditEvent>) -> Result<bool> {
        let key = (before.destination_id.clone(), before.event.event_id().to_string());
        let mut records = self.records.lock().unwrap();
        match records.get(&key) {
            Some(stored) if stored.status == before.status && stored.attempts == before.attempts => {
                records.insert(key, after.clone());
                if let Some(event) = event {
                    self.events.lock().unwrap().push(event.clone());
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn due(&self, now: UnixTime, limit: usize) -> Result<Vec<Delivery>> {
        let mut due: Vec<Delivery> = self
            .records
            .lock()
            .unwrap()
            .values()
            .filter(|d| d.status == DeliveryStatus::Pending && d.next_attempt_at.is_some_and(|t| t <= now))
            .cloned()
            .collect();
        due.sort_by_key(|d| d.next_attempt_at);
        due.truncate(limit);
        Ok(due)
    }

    async fn overdue(&self, now: UnixTime, limit: usize) -> Result<Vec<Delivery>> {
        let mut overdue: Vec<Delivery> = self
            .records
            .lock()
            .unwrap()
            .values()
            .filter(|d| d.status == DeliveryStatus::Pending && d.confirm_by <= now)
            .cloned()
            .collect();
        overdue.sort_by_key(|d| d.confirm_by);
        overdue.truncate(limit);
        Ok(overdue)
    }
}

/// Records what would have been sent; destinations listed in `failing` do not acknowledge.
#[derive(Default)]
pub struct RecordingNotifier {
    pub sent: Mutex<Vec<(String, String, ChangeEvent)>>,
    pub failing: Mutex<std::collections::HashSet<String>>,
}

#[async_trait]
impl Notifier for RecordingNotifier {
    async fn notify(
        &self,
        destination: &Destination,
        event: &ChangeEvent,
        jti: &str,
    ) -> std::result::Result<String, NotifyFailure> {
        self.sent
            .lock()
            .unwrap()
            .push((destination.id.clone(), jti.to_string(), event.clone()));
        if self.failing.lock().unwrap().contains(&destination.id) {
            Err(NotifyFailure("http_500".into()))
        } else {
            Ok("http_202".into())
        }
    }
}

/// Records denied AWS sessions per role, in call order.
#[derive(Default)]
pub struct RecordingSessionDenier {
    pub denied: Mutex<Vec<(String, Vec<String>)>>,
}

#[async_trait]
impl SessionDenier for RecordingSessionDenier {
    async fn deny_sessions(&self, role_arn: &str, sessions: &[(String, UnixTime)], _now: UnixTime) -> Result<()> {
        self.denied.lock().unwrap().push((
            role_arn.to_string(),
            sessions.iter().map(|(id, _)| id.clone()).collect(),
        ));
        Ok(())
    }
}
