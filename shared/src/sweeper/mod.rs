//! expire-sweeper: expires leases and lapsed grants deterministically (DynamoDB TTL is lazy and
//! only deletes), and flags destinations that did not confirm a change in time (drift).
//!
//! Everything is found through sparse indexes keyed on the deadline, and every change is a
//! conditional write on the state read, so overlapping runs change each item exactly once.

use crate::domain::{AuditAction, AuditEvent, AuditOutcome, DeliveryStatus, Revocation, RevocationTarget, UnixTime};
use crate::error::Result;
use crate::fanout::unconfirmed_event;
use crate::ports::{Clock, DeliveryLedger, ExpiredLease, ExpiryStore, LapsedGrant};
use futures::StreamExt;
use serde::Serialize;
use std::sync::Arc;

/// Who the sweeper's revocation records name as actor.
pub const SWEEPER_ACTOR: &str = "system:expire-sweeper";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepSettings {
    /// Shards of the active-lease expiry index.
    pub shards: u32,
    /// Items read per query page.
    pub page_size: usize,
    /// Items changed per run, per kind (leases, grants, deliveries); the rest wait for the next run.
    pub max_per_run: usize,
    pub concurrency: usize,
}

impl Default for SweepSettings {
    fn default() -> Self {
        Self {
            shards: crate::aws::dynamo::ACTIVE_SHARDS,
            page_size: 100,
            max_per_run: 5000,
            concurrency: 8,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    pub leases_expired: u64,
    /// Expired leases whose copy lives at a destination: a revocation record tells it.
    pub destination_notices: u64,
    pub grants_revoked: u64,
    pub deliveries_unconfirmed: u64,
    /// Changed by an overlapping run between our read and our write.
    pub already_done: u64,
    /// Still due when this run stopped at `max_per_run` (a lower bound).
    pub remaining: u64,
    /// The audit digest this run wrote (None: no digest writer, or an overlapping run wrote it).
    pub digest_seq: Option<i64>,
    pub digest_heads: u64,
}

pub struct SweepService {
    pub store: Arc<dyn ExpiryStore>,
    pub deliveries: Arc<dyn DeliveryLedger>,
    pub clock: Arc<dyn Clock>,
    pub settings: SweepSettings,
    /// Signed digests of audit chain heads, one per run (None without an audit key).
    pub digests: Option<Arc<dyn crate::ports::AuditDigestWriter>>,
}

/// How many items one run may still handle, shared by the three index sweeps' page loops.
struct Budget(usize);

impl Budget {
    /// The part of a fetched page to handle now and whether the page was full (more may follow).
    /// `None` when the page is empty, or when the budget is spent (the page then counts as left
    /// for the next run).
    fn take<T>(&mut self, page: Vec<T>, page_size: usize, report: &mut SweepReport) -> Option<(Vec<T>, bool)> {
        if page.is_empty() {
            return None;
        }
        if self.0 == 0 {
            report.remaining += page.len() as u64;
            return None;
        }
        let full = page.len() == page_size;
        let take = page.len().min(self.0);
        self.0 -= take;
        Some((page.into_iter().take(take).collect(), full))
    }
}

impl SweepService {
    pub async fn run(&self) -> Result<SweepReport> {
        let now = self.clock.now();
        let mut report = SweepReport::default();
        self.expire_leases(now, &mut report).await?;
        self.revoke_lapsed_grants(now, &mut report).await?;
        self.flag_drift(now, &mut report).await?;
        if let Some(digests) = &self.digests {
            let digest = digests.write_digest(now).await?;
            report.digest_seq = digest.seq;
            report.digest_heads = digest.heads;
        }
        Ok(report)
    }

    async fn expire_leases(&self, now: UnixTime, report: &mut SweepReport) -> Result<()> {
        let mut budget = Budget(self.settings.max_per_run);
        for shard in 0..self.settings.shards {
            loop {
                let page = self.store.expired_leases(shard, now, self.settings.page_size).await?;
                let Some((page, full)) = budget.take(page, self.settings.page_size, report) else {
                    break;
                };
                let expiries: Vec<futures::future::BoxFuture<'_, Result<(bool, bool)>>> = page
                    .into_iter()
                    .map(|lease| {
                        Box::pin(async move {
                            let revocation = lease.destination.as_ref().map(|_| expiry_revocation(&lease, now));
                            let event = AuditEvent {
                                actor_subject: Some(SWEEPER_ACTOR.into()),
                                target: Some(lease.target.clone()),
                                grant_id: Some(lease.grant_id.clone()),
                                lease_id: Some(lease.lease_id.clone()),
                                reason: Some("lease_expired".into()),
                                ..AuditEvent::new(AuditAction::Expire, AuditOutcome::Expired, now)
                            };
                            let changed = self.store.expire_lease(&lease, revocation.as_ref(), &event).await?;
                            Ok((changed, revocation.is_some()))
                        }) as futures::future::BoxFuture<'_, Result<(bool, bool)>>
                    })
                    .collect();
                let results: Vec<Result<(bool, bool)>> = futures::stream::iter(expiries)
                    .buffer_unordered(self.settings.concurrency.max(1))
                    .collect()
                    .await;
                for result in results {
                    match result? {
                        (true, notified) => {
                            report.leases_expired += 1;
                            report.destination_notices += u64::from(notified);
                        }
                        (false, _) => report.already_done += 1,
                    }
                }
                if !full {
                    break;
                }
            }
        }
        Ok(())
    }

    async fn revoke_lapsed_grants(&self, now: UnixTime, report: &mut SweepReport) -> Result<()> {
        let mut budget = Budget(self.settings.max_per_run);
        loop {
            let page = self.store.lapsed_grants(now, self.settings.page_size).await?;
            let Some((page, full)) = budget.take(page, self.settings.page_size, report) else {
                break;
            };
            for grant in page {
                let revocation = lapsed_grant_revocation(&grant, now);
                let event = AuditEvent {
                    actor_subject: Some(SWEEPER_ACTOR.into()),
                    actor_issuer: Some(grant.issuer.clone()),
                    grant_id: Some(grant.grant_id.clone()),
                    reason: Some("approval_expired".into()),
                    ..AuditEvent::new(AuditAction::Expire, AuditOutcome::Revoked, now)
                };
                if self.store.revoke_lapsed_grant(&grant, &revocation, &event).await? {
                    report.grants_revoked += 1;
                } else {
                    report.already_done += 1;
                }
            }
            if !full {
                break;
            }
        }
        Ok(())
    }

    async fn flag_drift(&self, now: UnixTime, report: &mut SweepReport) -> Result<()> {
        let mut budget = Budget(self.settings.max_per_run);
        loop {
            let page = self.deliveries.overdue(now, self.settings.page_size).await?;
            let Some((page, full)) = budget.take(page, self.settings.page_size, report) else {
                break;
            };
            for delivery in page {
                let after = crate::domain::Delivery {
                    status: DeliveryStatus::Unconfirmed,
                    next_attempt_at: None,
                    last_error: Some(
                        delivery
                            .last_error
                            .clone()
                            .unwrap_or_else(|| "confirm_window_passed".into()),
                    ),
                    ..delivery.clone()
                };
                let event = unconfirmed_event(&after, now);
                if self.deliveries.update(&delivery, &after, Some(&event)).await? {
                    tracing::warn!(
                        destination_id = %delivery.destination_id,
                        event_id = %delivery.event.event_id(),
                        "destination did not confirm within the window: flagged unconfirmed"
                    );
                    report.deliveries_unconfirmed += 1;
                } else {
                    report.already_done += 1;
                }
            }
            if !full {
                break;
            }
        }
        Ok(())
    }
}

/// The record that makes fanout tell a lease's destination to drop its copy. Its id is derived
/// from the lease, so two runs expiring the same lease could only write the same record.
pub fn expiry_revocation(lease: &ExpiredLease, now: UnixTime) -> Revocation {
    Revocation {
        revocation_id: format!("expired-{}", lease.lease_id),
        target_kind: RevocationTarget::Lease,
        target_id: lease.lease_id.clone(),
        actor: SWEEPER_ACTOR.into(),
        reason: "lease_expired".into(),
        at: now,
    }
}

pub fn lapsed_grant_revocation(grant: &LapsedGrant, now: UnixTime) -> Revocation {
    Revocation {
        revocation_id: format!("approval-expired-{}-{}", grant.grant_id, grant.approval_expires_at),
        target_kind: RevocationTarget::Grant,
        target_id: grant.grant_id.clone(),
        actor: SWEEPER_ACTOR.into(),
        reason: "approval_expired".into(),
        at: now,
    }
}
