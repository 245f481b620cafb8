//! Introspection (RFC 7662) and self-revocation (RFC 7009) of what the broker released.
//!
//! A presented token is either a broker JWT (its signature must verify against the broker's own
//! keys; its `jti` is the lease id) or a bare lease id. Anything else resolves to nothing, which
//! introspection reports as `active: false` and revocation answers with 200, as the RFCs require.
//!
//! Who may do what (RFC 7009 2.1: the token must have been issued to the requester):
//! - introspection: a caller authenticated by its own workload token (Bearer), not revoked (deny
//!   list for broker tokens, fences for subjects and issuers), holding a grant on the reserved
//!   introspection target;
//! - revocation of a broker JWT: its possession (only its holder has it);
//! - revocation of a bare lease id: only with the holder's own workload token as Bearer (same
//!   issuer and subject as the lease). Anything else is answered 200 without revoking, and audited.

use crate::domain::{
    AuditAction, AuditEvent, AuditOutcome, INTROSPECTION_TARGET, Lease, LeaseStatus, Revocation, RevocationTarget,
    UnixTime,
};
use crate::error::{BrokerError, Result};
use crate::exchange::ExchangeService;
use crate::exchange::policy;
use crate::exchange::subject_token::{MAX_SUBJECT_TOKEN_BYTES, UnverifiedContext, VerifiedSubject};
use crate::redact::SecretString;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value, json};

impl ExchangeService {
    /// The lease behind a presented broker JWT or lease id, if there is one.
    pub async fn resolve_lease(&self, token: &SecretString) -> Result<Option<Lease>> {
        Ok(self.resolve_presented(token).await?.map(|(lease, _)| lease))
    }

    /// The lease behind a presented token, and whether the token was a signed broker JWT (whose
    /// possession proves holding it) rather than a bare lease id.
    async fn resolve_presented(&self, token: &SecretString) -> Result<Option<(Lease, bool)>> {
        if token.is_empty() || token.len() > MAX_SUBJECT_TOKEN_BYTES {
            return Ok(None);
        }
        let raw = token.expose();
        let (lease_id, signed) = if raw.split('.').count() == 3 {
            match self.verified_broker_jti(raw).await? {
                Some(jti) => (jti, true),
                None => return Ok(None),
            }
        } else if uuid::Uuid::try_parse(raw).is_ok() {
            (raw.to_string(), false)
        } else {
            return Ok(None);
        };
        Ok(self.ledger.lease(&lease_id).await?.map(|lease| (lease, signed)))
    }

    /// `jti` of a JWT this broker signed (any key still in its JWKS), else None.
    async fn verified_broker_jti(&self, raw: &str) -> Result<Option<String>> {
        let Ok(header) = jsonwebtoken::decode_header(raw) else {
            return Ok(None);
        };
        if header.alg != Algorithm::ES256 {
            return Ok(None);
        }
        let jwks = self.signer.public_jwks().await?;
        let Some(jwk) = header.kid.as_deref().and_then(|kid| jwks.find(kid)) else {
            return Ok(None);
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            return Ok(None);
        };
        let mut validation = Validation::new(Algorithm::ES256);
        validation.required_spec_claims.clear();
        // Expiry is judged from the lease, so an expired token still maps to its (inactive) lease.
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.set_issuer(&[&self.settings.broker_issuer]);
        Ok(jsonwebtoken::decode::<Map<String, Value>>(raw, &key, &validation)
            .ok()
            .and_then(|data| data.claims.get("jti").and_then(Value::as_str).map(str::to_string)))
    }

    /// Introspection callers present their own workload token and need a grant for the reserved
    /// introspection target.
    pub async fn authenticate_introspection_caller(
        &self,
        bearer: Option<&SecretString>,
        now: UnixTime,
    ) -> Result<VerifiedSubject> {
        let token = bearer.ok_or(BrokerError::Unauthenticated(
            "introspection requires the caller's workload token as a Bearer credential",
        ))?;
        let (caller, grants) = self.authenticate_workload(token, now).await?;
        // A revoked subject (or a disabled issuer) is disabled everywhere, not only at /token.
        if let Some(fence) = self.ledger.fence(&caller.issuer.issuer, &caller.subject).await? {
            tracing::info!(fence = %fence.scope(), "introspection caller is fenced");
            return Err(BrokerError::Unauthenticated("the caller's workload token is not valid"));
        }
        if !policy::allows_target(&grants, &caller, INTROSPECTION_TARGET, now) {
            tracing::info!(caller = %caller.subject, "introspection caller has no grant");
            return Err(BrokerError::Forbidden(
                "no grant allows this caller to introspect tokens",
            ));
        }
        Ok(caller)
    }

    /// A Bearer workload token verified (deny list included); a rejection is a 401.
    async fn authenticate_workload(
        &self,
        token: &SecretString,
        now: UnixTime,
    ) -> Result<(
        VerifiedSubject,
        Vec<std::sync::Arc<crate::exchange::policy::compiled::CompiledGrant>>,
    )> {
        self.verify_workload_token(token, now, &mut UnverifiedContext::default())
            .await
            .map_err(|e| match e {
                BrokerError::TokenRejected(r) => {
                    tracing::info!(reason = r.code(), caller_token = %token.fingerprint(), "caller's workload token refused");
                    BrokerError::Unauthenticated("the caller's workload token is not valid")
                }
                other => other,
            })
    }

    pub async fn introspect(
        &self,
        bearer: Option<&SecretString>,
        token: &SecretString,
        request_id: &str,
    ) -> Result<Value> {
        let now = self.clock.now();
        let caller = match self.authenticate_introspection_caller(bearer, now).await {
            Ok(caller) => caller,
            Err(err) => {
                if err.is_client_error() {
                    self.audit_introspection_refusal(bearer, &err, now, request_id).await;
                }
                return Err(err);
            }
        };
        let lease = self.resolve_lease(token).await?;
        let mut active = lease
            .as_ref()
            .filter(|l| l.status == LeaseStatus::Active && l.expires_at > now);
        // The deny list is written with every fanout revocation; a lease that still reads active
        // (e.g. restored from a backup) is not trusted over it.
        if let Some(l) = active
            && l.kind == crate::domain::TargetKind::Jwt
            && self.ledger.is_denied(&l.lease_id).await?
        {
            tracing::warn!(lease_id = %l.lease_id, "lease reads active but its jti is denied");
            active = None;
        }
        tracing::info!(
            caller = %caller.subject,
            lease_id = lease.as_ref().map(|l| l.lease_id.as_str()).unwrap_or_default(),
            active = active.is_some(),
            token = %token.fingerprint(),
            request_id,
            "introspection"
        );
        // An active answer discloses who holds what: like a release, it is given only once its
        // audit record is written (a failed write answers 503, revealing nothing).
        if let Some(l) = active {
            let event = AuditEvent {
                actor_issuer: Some(caller.issuer.issuer.clone()),
                actor_subject: Some(caller.subject.clone()),
                target: Some(l.target.clone()),
                grant_id: Some(l.grant_id.clone()),
                lease_id: Some(l.lease_id.clone()),
                token_fingerprint: Some(caller.fingerprint.clone()),
                request_id: Some(request_id.to_string()),
                ..AuditEvent::new(AuditAction::Introspect, AuditOutcome::Released, now)
            };
            self.ledger.record_denial(&event).await?;
        }
        Ok(match active {
            None => json!({ "active": false }),
            Some(l) => {
                let mut body = json!({
                    "active": true,
                    "iss": self.settings.broker_issuer,
                    "sub": l.subject,
                    "aud": l.target,
                    "exp": l.expires_at,
                    "iat": l.issued_at,
                    "jti": l.lease_id,
                    "client_id": l.grant_id,
                    "token_type": "Bearer",
                    "nhi_kind": l.kind.as_str(),
                    "nhi_environment": l.environment,
                });
                if !l.scope.is_empty() {
                    body["scope"] = l.scope.join(" ").into();
                }
                body
            }
        })
    }

    async fn audit_introspection_refusal(
        &self,
        bearer: Option<&SecretString>,
        err: &BrokerError,
        now: UnixTime,
        request_id: &str,
    ) {
        let reason = match err {
            BrokerError::Forbidden(_) => "introspection_no_grant",
            _ => "introspection_unauthenticated",
        };
        let event = AuditEvent {
            target: Some(INTROSPECTION_TARGET.into()),
            reason: Some(reason.into()),
            token_fingerprint: bearer.map(SecretString::fingerprint),
            request_id: Some(request_id.to_string()),
            ..AuditEvent::new(AuditAction::Introspect, AuditOutcome::Denied, now)
        };
        self.record_refusal(&event).await;
    }

    /// Revoke what `token` names, if it names an active lease the requester holds (see the module
    /// docs). Unknown tokens and refused requesters are not errors: 200 reveals nothing.
    pub async fn revoke(&self, bearer: Option<&SecretString>, token: &SecretString, request_id: &str) -> Result<()> {
        let Some((lease, signed)) = self.resolve_presented(token).await? else {
            tracing::info!(token = %token.fingerprint(), request_id, "revocation of an unknown token ignored");
            return Ok(());
        };
        let now = self.clock.now();
        if !signed && let Err(refusal) = self.check_holder(bearer, &lease, now).await? {
            let event = AuditEvent {
                target: Some(lease.target.clone()),
                grant_id: Some(lease.grant_id.clone()),
                lease_id: Some(lease.lease_id.clone()),
                reason: Some(refusal.into()),
                token_fingerprint: bearer.map(SecretString::fingerprint),
                request_id: Some(request_id.to_string()),
                ..AuditEvent::new(AuditAction::Revoke, AuditOutcome::Denied, now)
            };
            tracing::info!(lease_id = %lease.lease_id, reason = refusal, request_id, "revocation by a non-holder refused");
            self.record_refusal(&event).await;
            return Ok(());
        }
        if lease.status != LeaseStatus::Active {
            return Ok(());
        }
        let actor = format!("holder:{}#{}", lease.issuer, lease.subject);
        let (revocation, event) = lease_revocation(&lease, actor, "self-revocation", "self_revocation", now);
        let event = AuditEvent {
            token_fingerprint: Some(token.fingerprint()),
            request_id: Some(request_id.to_string()),
            ..event
        };
        let revoked = self.ledger.revoke_lease(&lease, &revocation, &event).await?;
        tracing::info!(lease_id = %lease.lease_id, revoked, request_id, "self-revocation");
        Ok(())
    }

    /// A bare lease id names a lease without proving anything: the requester must present the
    /// holder's own workload token. `Err` is the audit reason of the refusal.
    async fn check_holder(
        &self,
        bearer: Option<&SecretString>,
        lease: &Lease,
        now: UnixTime,
    ) -> Result<std::result::Result<(), &'static str>> {
        let Some(bearer) = bearer else {
            return Ok(Err("revoke_lease_id_without_holder_token"));
        };
        let caller = match self.authenticate_workload(bearer, now).await {
            Ok((caller, _)) => caller,
            Err(e) if e.is_client_error() => return Ok(Err("revoke_holder_token_invalid")),
            // Our own failure (AWS, an IdP's keys): retryable, not a refusal.
            Err(e) => return Err(e),
        };
        Ok(
            if caller.issuer.issuer == lease.issuer && caller.subject == lease.subject {
                Ok(())
            } else {
                Err("revoke_not_holder")
            },
        )
    }
}

/// The revocation record of one lease and its audit event (who, which grant and target), for the
/// exchange's own revocations: a holder's, and a lease whose token was never signed.
pub(crate) fn lease_revocation(
    lease: &Lease,
    actor: String,
    reason: &str,
    audit_reason: &str,
    now: i64,
) -> (Revocation, AuditEvent) {
    let revocation = Revocation {
        revocation_id: uuid::Uuid::now_v7().to_string(),
        target_kind: RevocationTarget::Lease,
        target_id: lease.lease_id.clone(),
        actor,
        reason: reason.into(),
        at: now,
    };
    let event = AuditEvent {
        actor_issuer: Some(lease.issuer.clone()),
        actor_subject: Some(lease.subject.clone()),
        target: Some(lease.target.clone()),
        grant_id: Some(lease.grant_id.clone()),
        lease_id: Some(lease.lease_id.clone()),
        reason: Some(audit_reason.into()),
        ..AuditEvent::new(AuditAction::Revoke, AuditOutcome::Revoked, now)
    };
    (revocation, event)
}
