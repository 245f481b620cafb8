//! revoke-fanout: one revocation record (or rotation notice) becomes a complete sweep over every
//! lease derived from it and every destination holding a copy, with proof of delivery.
//!
//! Order matters for at-least-once delivery. For each page of affected leases: AWS sessions are
//! denied first and delivery records opened (due at once) before any lease is marked revoked, so
//! a run that dies part-way and is replayed finds the same leases still active and redoes only what
//! is missing; a delivery record once opened is found again by the retry schedule even if no
//! replay comes. Deliveries already confirmed are never sent again.
//!
//! Each attempt is claimed before it is sent: a conditional write counts the attempt and moves its
//! next try past the send's timeout, so a replay, an overlapping run or the retry schedule that
//! finds the same record cannot send it again at the same time (one attempt, one POST, recorded).
//! A run that dies after its claim leaves the attempt counted and the record due again later.

pub mod secevent;

use crate::domain::{
    AuditAction, AuditEvent, AuditOutcome, ChangeEvent, Delivery, DeliveryStatus, Lease, Revocation, RevocationTarget,
    RotationNotice, TargetKind, UnixTime,
};
use crate::error::{BrokerError, Result};
use crate::ports::{Clock, DeliveryLedger, FanoutLedger, FanoutRegistry, LeaseScope, Notifier, SessionDenier};
use futures::StreamExt;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutSettings {
    /// Leases read (and revoked) per page.
    pub page_size: usize,
    /// Leases revoked at once.
    pub concurrency: usize,
    /// Attempts before a delivery is given up as unconfirmed.
    pub max_attempts: u32,
    /// First retry delay; doubled per attempt, capped at an hour.
    pub backoff_seconds: i64,
    /// A delivery not confirmed within this window is unconfirmed whatever its retries say.
    pub confirm_window_seconds: i64,
    /// Due deliveries retried per scheduled run.
    pub retry_batch: usize,
    /// Stop and hand over to the next invocation when less than this is left before the deadline.
    pub deadline_margin: Duration,
    /// How long a claimed attempt keeps others off its record (longer than one send's timeout);
    /// a run that dies mid-attempt is retried after it.
    pub attempt_claim_seconds: i64,
}

impl Default for FanoutSettings {
    fn default() -> Self {
        Self {
            page_size: 100,
            concurrency: 16,
            max_attempts: 6,
            backoff_seconds: 30,
            confirm_window_seconds: 3600,
            retry_batch: 100,
            deadline_margin: Duration::from_secs(30),
            attempt_claim_seconds: 60,
        }
    }
}

/// What one record (or one retry run) did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FanoutReport {
    pub leases_revoked: u64,
    /// Leases another run revoked between our read and our write.
    pub leases_already_inactive: u64,
    pub sessions_denied: u64,
    pub deliveries_confirmed: u64,
    /// Failed this time, retried later.
    pub deliveries_pending: u64,
    pub deliveries_unconfirmed: u64,
    /// Already confirmed or given up by an earlier delivery of the same record.
    pub deliveries_skipped: u64,
    /// The sweep stopped before the deadline and saved its place; the record's stream entry resumes it.
    pub continued: bool,
}

impl FanoutReport {
    /// Sum another report into this one.
    pub fn add(&mut self, other: &FanoutReport) {
        self.leases_revoked += other.leases_revoked;
        self.leases_already_inactive += other.leases_already_inactive;
        self.sessions_denied += other.sessions_denied;
        self.deliveries_confirmed += other.deliveries_confirmed;
        self.deliveries_pending += other.deliveries_pending;
        self.deliveries_unconfirmed += other.deliveries_unconfirmed;
        self.deliveries_skipped += other.deliveries_skipped;
        self.continued |= other.continued;
    }
}

/// What a stream record asks of fanout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FanoutWork {
    /// A new revocation, or one resumed from a saved place.
    Revocation {
        revocation: Revocation,
        cursor: Option<String>,
    },
    Rotation(RotationNotice),
    /// Nothing to do (a TTL removal, a record's own progress marker being cleared...).
    Nothing(&'static str),
}

/// The leases a revocation reaches.
pub fn lease_scope(revocation: &Revocation) -> Result<LeaseScope> {
    let id = revocation.target_id.as_str();
    let bad = || BrokerError::CorruptRecord(format!("revocation {} names no valid target", revocation.revocation_id));
    if id.is_empty() {
        return Err(bad());
    }
    Ok(match revocation.target_kind {
        RevocationTarget::Lease => LeaseScope::Lease(id.into()),
        RevocationTarget::Grant => LeaseScope::Grant(id.into()),
        RevocationTarget::Secret => LeaseScope::Secret(id.into()),
        // Issuers are URLs without fragments, so the first '#' ends the issuer.
        RevocationTarget::Subject => {
            let (issuer, subject) = id
                .split_once('#')
                .filter(|(i, s)| !i.is_empty() && !s.is_empty())
                .ok_or_else(bad)?;
            LeaseScope::Subject {
                issuer: issuer.into(),
                subject: subject.into(),
            }
        }
        // Version ids never contain '#'; secret ids may.
        RevocationTarget::SecretVersion => {
            let (secret_id, version) = id
                .rsplit_once('#')
                .filter(|(s, v)| !s.is_empty() && !v.is_empty())
                .ok_or_else(bad)?;
            LeaseScope::SecretVersion {
                secret_id: secret_id.into(),
                version: version.into(),
            }
        }
        RevocationTarget::Destination => LeaseScope::Nothing,
    })
}

pub struct FanoutService {
    pub leases: Arc<dyn FanoutLedger>,
    pub registry: Arc<dyn FanoutRegistry>,
    pub deliveries: Arc<dyn DeliveryLedger>,
    pub notifier: Arc<dyn Notifier>,
    pub sessions: Arc<dyn SessionDenier>,
    pub clock: Arc<dyn Clock>,
    pub settings: FanoutSettings,
}

impl FanoutService {
    /// Do what one stream record asks. `deadline`: when the invocation ends (the sweep saves its
    /// place and returns before it).
    pub async fn process(&self, work: FanoutWork, deadline: Option<Instant>) -> Result<FanoutReport> {
        match work {
            FanoutWork::Revocation { revocation, cursor } => self.revoke(&revocation, cursor, deadline).await,
            FanoutWork::Rotation(notice) => self.rotation(&notice).await,
            FanoutWork::Nothing(_) => Ok(FanoutReport::default()),
        }
    }

    async fn revoke(
        &self,
        revocation: &Revocation,
        cursor: Option<String>,
        deadline: Option<Instant>,
    ) -> Result<FanoutReport> {
        let scope = lease_scope(revocation)?;
        let mut report = FanoutReport::default();
        let event = ChangeEvent::Revoked {
            event_id: revocation.revocation_id.clone(),
            target_kind: revocation.target_kind,
            target_id: revocation.target_id.clone(),
            reason: revocation.reason.clone(),
            at: revocation.at,
        };
        // First pass only (a continuation resumes the lease sweep): disable the target in the
        // registry, so nothing new is issued while the sweep runs, and tell the holders of the
        // revoked thing itself.
        let mut told: BTreeSet<String> = BTreeSet::new();
        if cursor.is_none() {
            self.registry.disable_target(revocation).await?;
            let mut holders = match &scope {
                LeaseScope::Secret(secret_id) | LeaseScope::SecretVersion { secret_id, .. } => {
                    self.registry.destinations_of_secret(secret_id).await?
                }
                _ => Vec::new(),
            };
            if revocation.target_kind == RevocationTarget::Destination {
                holders.push(revocation.target_id.clone());
            }
            // A lease revoked or expired on its own: its copy's holder is told even though the
            // lease is no longer active (the sweeper writes these records for expired leases).
            if let LeaseScope::Lease(lease_id) = &scope
                && let Some(destination) = self.leases.lease(lease_id).await?.and_then(|l| l.destination)
            {
                holders.push(destination);
            }
            self.deliver(&holders, &event, &mut told, &mut report).await?;
        }

        let mut cursor = cursor;
        loop {
            let now = self.clock.now();
            let page = self
                .leases
                .active_leases(&scope, now, cursor.as_deref(), self.settings.page_size)
                .await?;
            let page_report = self.revoke_page(revocation, &page.leases, &event, &mut told).await?;
            report.add(&page_report);
            let Some(next) = page.next else { break };
            if deadline.is_some_and(|d| d.saturating_duration_since(Instant::now()) < self.settings.deadline_margin) {
                self.leases.save_progress(revocation, &next).await?;
                report.continued = true;
                tracing::info!(revocation_id = %revocation.revocation_id, "revocation sweep continues in the next invocation");
                break;
            }
            cursor = Some(next);
        }
        Ok(report)
    }

    async fn revoke_page(
        &self,
        revocation: &Revocation,
        leases: &[Lease],
        event: &ChangeEvent,
        told: &mut BTreeSet<String>,
    ) -> Result<FanoutReport> {
        let mut report = FanoutReport::default();
        let now = self.clock.now();
        // 1. AWS sessions: denied before their leases are marked, so a replay still finds them.
        let mut sessions: BTreeMap<&str, Vec<(String, UnixTime)>> = BTreeMap::new();
        for lease in leases.iter().filter(|l| l.kind == TargetKind::AwsRole) {
            sessions
                .entry(lease.target.as_str())
                .or_default()
                .push((lease.lease_id.clone(), lease.expires_at));
        }
        for (role, list) in &sessions {
            self.sessions.deny_sessions(role, list, now).await?;
            report.sessions_denied += list.len() as u64;
        }
        // 2. Delivery records for destinations holding copies of these leases, opened before the
        //    leases change (the retry schedule finds them even if this run dies).
        let lease_destinations: Vec<String> = leases
            .iter()
            .filter_map(|l| l.destination.clone())
            .filter(|d| !told.contains(d))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut opened = Vec::new();
        for destination_id in &lease_destinations {
            opened.push(
                self.deliveries
                    .open(&self.new_delivery(destination_id, event, now))
                    .await?,
            );
        }
        // 3. The leases, each with its jti deny entry and audit event.
        // Boxed and collected first: a lazily mapped iterator of borrowing futures is not provably Send.
        let revocations: Vec<futures::future::BoxFuture<'_, Result<bool>>> = leases
            .iter()
            .map(|lease| {
                let audit = AuditEvent {
                    actor_subject: Some(revocation.actor.clone()),
                    actor_issuer: None,
                    target: Some(lease.target.clone()),
                    grant_id: Some(lease.grant_id.clone()),
                    lease_id: Some(lease.lease_id.clone()),
                    reason: Some(revocation.reason.clone()),
                    ..AuditEvent::new(AuditAction::Revoke, AuditOutcome::Revoked, now)
                };
                Box::pin(async move { self.leases.revoke_derived(lease, revocation, &audit).await })
                    as futures::future::BoxFuture<'_, Result<bool>>
            })
            .collect();
        let results: Vec<Result<bool>> = futures::stream::iter(revocations)
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;
        for result in results {
            match result? {
                true => report.leases_revoked += 1,
                false => report.leases_already_inactive += 1,
            }
        }
        // 4. Tell them.
        for delivery in opened {
            told.insert(delivery.destination_id.clone());
            self.attempt(delivery, &mut report).await?;
        }
        Ok(report)
    }

    async fn rotation(&self, notice: &RotationNotice) -> Result<FanoutReport> {
        let mut report = FanoutReport::default();
        let event = ChangeEvent::Rotated {
            event_id: notice.notice_id.clone(),
            secret_id: notice.secret_id.clone(),
            old_version: notice.old_version.clone(),
            new_version: notice.new_version.clone(),
            at: notice.at,
        };
        self.deliver(&notice.destinations, &event, &mut BTreeSet::new(), &mut report)
            .await?;
        Ok(report)
    }

    fn new_delivery(&self, destination_id: &str, event: &ChangeEvent, now: UnixTime) -> Delivery {
        Delivery {
            destination_id: destination_id.to_string(),
            event: event.clone(),
            status: DeliveryStatus::Pending,
            attempts: 0,
            created_at: now,
            confirm_by: now + self.settings.confirm_window_seconds,
            next_attempt_at: Some(now),
            last_attempt_at: None,
            confirmed_at: None,
            last_error: None,
            receipt: None,
        }
    }

    async fn deliver(
        &self,
        destination_ids: &[String],
        event: &ChangeEvent,
        told: &mut BTreeSet<String>,
        report: &mut FanoutReport,
    ) -> Result<()> {
        let now = self.clock.now();
        for destination_id in destination_ids {
            if !told.insert(destination_id.clone()) {
                continue;
            }
            let delivery = self
                .deliveries
                .open(&self.new_delivery(destination_id, event, now))
                .await?;
            self.attempt(delivery, report).await?;
        }
        Ok(())
    }

    /// One attempt at a pending delivery. Claimed first (the attempt counted, the record no longer
    /// due until the claim lapses), so nobody else sends it meanwhile; then sent; then its outcome
    /// recorded over the claim. Whoever loses the claim sends nothing and counts it as skipped.
    async fn attempt(&self, delivery: Delivery, report: &mut FanoutReport) -> Result<()> {
        if delivery.status != DeliveryStatus::Pending {
            report.deliveries_skipped += 1;
            return Ok(());
        }
        let now = self.clock.now();
        let attempts = delivery.attempts + 1;
        let claimed = Delivery {
            attempts,
            last_attempt_at: Some(now),
            next_attempt_at: Some(now + self.settings.attempt_claim_seconds.max(1)),
            ..delivery.clone()
        };
        if !self.deliveries.update(&delivery, &claimed, None).await? {
            report.deliveries_skipped += 1;
            return Ok(());
        }
        let outcome = match self.registry.destination(&delivery.destination_id).await? {
            Some(destination) => {
                self.notifier
                    .notify(&destination, &delivery.event, &delivery.jti())
                    .await
            }
            None => Err(crate::ports::NotifyFailure("unknown_destination".into())),
        };
        let mut after = claimed.clone();
        let mut audit = None;
        match outcome {
            Ok(receipt) => {
                after.status = DeliveryStatus::Confirmed;
                after.confirmed_at = Some(now);
                after.next_attempt_at = None;
                after.receipt = Some(receipt);
                after.last_error = None;
            }
            Err(failure) => {
                after.last_error = Some(failure.0.clone());
                let given_up = attempts >= self.settings.max_attempts
                    || now >= delivery.confirm_by
                    || failure.0 == "unknown_destination";
                if given_up {
                    after.status = DeliveryStatus::Unconfirmed;
                    after.next_attempt_at = None;
                    audit = Some(unconfirmed_event(&after, now));
                } else {
                    let exponent = (attempts - 1).min(16);
                    let delay = (self.settings.backoff_seconds << exponent).min(3600);
                    after.next_attempt_at = Some(now + delay);
                }
                tracing::warn!(
                    destination_id = %delivery.destination_id,
                    event_id = %delivery.event.event_id(),
                    attempts,
                    failure = %failure.0,
                    given_up,
                    "delivery not acknowledged"
                );
            }
        }
        if !self.deliveries.update(&claimed, &after, audit.as_ref()).await? {
            report.deliveries_skipped += 1;
            return Ok(());
        }
        match after.status {
            DeliveryStatus::Confirmed => report.deliveries_confirmed += 1,
            DeliveryStatus::Pending => report.deliveries_pending += 1,
            DeliveryStatus::Unconfirmed => report.deliveries_unconfirmed += 1,
        }
        Ok(())
    }

    /// Scheduled: retry every pending delivery whose backoff has passed.
    pub async fn retry_due(&self) -> Result<FanoutReport> {
        let mut report = FanoutReport::default();
        let due = self.deliveries.due(self.clock.now(), self.settings.retry_batch).await?;
        for delivery in due {
            self.attempt(delivery, &mut report).await?;
        }
        Ok(report)
    }
}

/// The audit event of a delivery given up: the destination is treated as exposed.
pub fn unconfirmed_event(delivery: &Delivery, now: UnixTime) -> AuditEvent {
    AuditEvent {
        target: Some(format!("destination:{}", delivery.destination_id)),
        reason: Some(format!(
            "delivery_unconfirmed:{}",
            delivery.last_error.as_deref().unwrap_or("confirm_window_passed")
        )),
        new_version: Some(delivery.event.event_id().to_string()),
        ..AuditEvent::new(AuditAction::Deliver, AuditOutcome::Unconfirmed, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revocation(kind: RevocationTarget, id: &str) -> Revocation {
        Revocation {
            revocation_id: "r1".into(),
            target_kind: kind,
            target_id: id.into(),
            actor: "operator:alice".into(),
            reason: "test".into(),
            at: 1,
        }
    }

    #[test]
    fn scopes_parse_their_composite_ids() {
        assert_eq!(
            lease_scope(&revocation(
                RevocationTarget::Subject,
                "https://token.actions.githubusercontent.com#repo:o/r:ref:refs/heads/main"
            ))
            .unwrap(),
            LeaseScope::Subject {
                issuer: "https://token.actions.githubusercontent.com".into(),
                subject: "repo:o/r:ref:refs/heads/main".into()
            }
        );
        assert_eq!(
            lease_scope(&revocation(RevocationTarget::SecretVersion, "db#main#v-1")).unwrap(),
            LeaseScope::SecretVersion {
                secret_id: "db#main".into(),
                version: "v-1".into()
            }
        );
        assert_eq!(
            lease_scope(&revocation(RevocationTarget::Destination, "d")).unwrap(),
            LeaseScope::Nothing
        );
        for (kind, id) in [
            (RevocationTarget::Subject, "no-separator"),
            (RevocationTarget::Subject, "#sub"),
            (RevocationTarget::SecretVersion, "secret#"),
            (RevocationTarget::Lease, ""),
        ] {
            assert!(
                matches!(lease_scope(&revocation(kind, id)), Err(BrokerError::CorruptRecord(_))),
                "{id}"
            );
        }
    }
}
