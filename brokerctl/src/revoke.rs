//! Revoking anything, and lifting a subject revocation.

use crate::{CliError, CliResult, Ctl, Report, to_json};
use nhi_broker::domain::{AuditAction, AuditEvent, AuditOutcome, Revocation, RevocationTarget};
use serde_json::json;

impl Ctl {
    /// Record a revocation (and its audit event) for revoke-fanout to sweep.
    pub async fn revoke(&self, kind: RevocationTarget, id: &str, reason: &str) -> CliResult<Report> {
        if reason.trim().is_empty() {
            return Err(CliError::usage("a reason is required"));
        }
        self.check_exists(kind, id).await?;
        let revocation = Revocation {
            revocation_id: uuid::Uuid::now_v7().to_string(),
            target_kind: kind,
            target_id: id.into(),
            actor: self.actor(),
            reason: reason.into(),
            at: self.now,
        };
        let event = AuditEvent {
            actor_subject: Some(self.actor()),
            target: Some(format!("{}:{id}", kind.as_str())),
            reason: Some(reason.into()),
            ..AuditEvent::new(AuditAction::Revoke, AuditOutcome::Revoked, self.now)
        };
        self.ledger.record_revocation(&revocation, &event).await?;
        Ok(Report::new(
            format!(
                "revocation {} of {} {id} recorded; revoke-fanout sweeps its leases and tells every destination",
                revocation.revocation_id,
                kind.as_str()
            ),
            to_json(&revocation),
        ))
    }

    /// Lift a subject revocation: the subject may exchange again (its revoked leases stay revoked).
    pub async fn unrevoke_subject(&self, id: &str, reason: &str) -> CliResult<Report> {
        if reason.trim().is_empty() {
            return Err(CliError::usage("a reason is required"));
        }
        let fence = nhi_broker::domain::Fence::subject_from_id(id)
            .ok_or_else(|| CliError::usage("a subject is named <issuer>#<sub>"))?;
        let event = AuditEvent {
            actor_subject: Some(self.actor()),
            target: Some(format!("subject:{id}")),
            reason: Some(reason.into()),
            ..AuditEvent::new(AuditAction::Unrevoke, AuditOutcome::Lifted, self.now)
        };
        if !self.ledger.lift_subject_fence(&fence, &event).await? {
            return Err(CliError {
                message: format!("subject {id:?} is not revoked"),
                code: 1,
            });
        }
        Ok(Report::new(
            format!("subject {id} may exchange again (its revoked leases stay revoked)"),
            json!({ "subject": id, "unrevoked": true, "reason": reason }),
        ))
    }

    async fn check_exists(&self, kind: RevocationTarget, id: &str) -> CliResult<()> {
        let unknown = |what: &str| CliError {
            message: format!("no {what} with id {id:?}"),
            code: 1,
        };
        match kind {
            RevocationTarget::Secret => {
                self.reads.secret(id).await?.ok_or_else(|| unknown("secret"))?;
            }
            RevocationTarget::SecretVersion => {
                let (secret, version) = id
                    .rsplit_once('#')
                    .ok_or_else(|| CliError::usage("a version is named <secret id>#<version>"))?;
                self.reads
                    .secret_version(secret, version)
                    .await?
                    .ok_or_else(|| unknown("secret version"))?;
            }
            RevocationTarget::Grant => {
                if self.registry.find("grant", id).await?.is_empty() {
                    return Err(unknown("grant"));
                }
            }
            RevocationTarget::Destination => {
                self.reads
                    .destination(id)
                    .await?
                    .ok_or_else(|| unknown("destination"))?;
            }
            RevocationTarget::Lease => {
                nhi_broker::ports::LeaseReader::lease(&self.ledger, id)
                    .await?
                    .ok_or_else(|| unknown("lease"))?;
            }
            RevocationTarget::Subject => {
                if id.split_once('#').is_none_or(|(i, s)| i.is_empty() || s.is_empty()) {
                    return Err(CliError::usage("a subject is named <issuer>#<sub>"));
                }
            }
        }
        Ok(())
    }
}
