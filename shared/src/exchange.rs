//! The token exchange use case (RFC 8693), independent of HTTP and AWS.

use crate::broker_token::{self, ActorClaim, BrokerClaims};
use crate::domain::{AuditAction, AuditEvent, AuditOutcome, Lease, LeaseStatus, TOKEN_TYPE_JWT, TargetKind};
use crate::error::TokenRejection;
use crate::error::{BrokerError, Result};
use crate::policy::{self, PolicyRequest};
use crate::ports::{Clock, IssuerKeys, LeaseLedger, PolicyStore, ReplayGuard, TokenSigner};
use crate::redact::SecretString;
use crate::subject_token::{SubjectTokenVerifier, UnverifiedContext, VerifiedSubject};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// A syntactically valid exchange request.
#[derive(Debug)]
pub struct ExchangeRequest {
    pub subject_token: SecretString,
    pub target: String,
    pub scope: Vec<String>,
    pub requested_ttl_seconds: Option<i64>,
}

#[derive(Debug)]
pub struct IssuedToken {
    pub access_token: SecretString,
    pub issued_token_type: &'static str,
    pub expires_in: i64,
    pub scope: Vec<String>,
    pub lease_id: String,
}

#[derive(Debug, Clone)]
pub struct ExchangeSettings {
    pub broker_issuer: String,
    pub max_token_ttl_seconds: i64,
    pub clock_leeway_seconds: i64,
}

/// Everything exchange depends on, behind ports.
#[derive(Clone)]
pub struct ExchangeService {
    pub policy: Arc<dyn PolicyStore>,
    pub ledger: Arc<dyn LeaseLedger>,
    pub signer: Arc<dyn TokenSigner>,
    pub issuer_keys: Arc<dyn IssuerKeys>,
    pub clock: Arc<dyn Clock>,
    pub settings: ExchangeSettings,
}

impl ExchangeService {
    /// Verify, decide, sign, record. Every denial is audited with its reason and the token's
    /// fingerprint; nothing is released unless the lease and its audit event were written together.
    pub async fn exchange(&self, request: ExchangeRequest) -> Result<IssuedToken> {
        let now = self.clock.now();
        let mut context = UnverifiedContext::default();
        match self.try_exchange(&request, now, &mut context).await {
            Ok(issued) => Ok(issued),
            Err(err) => {
                if err.is_client_error() {
                    self.audit_denial(&request, &context, &err, now).await;
                }
                Err(err)
            }
        }
    }

    async fn try_exchange(
        &self,
        request: &ExchangeRequest,
        now: i64,
        context: &mut UnverifiedContext,
    ) -> Result<IssuedToken> {
        let verifier = SubjectTokenVerifier {
            policy: self.policy.as_ref(),
            keys: self.issuer_keys.as_ref(),
            leeway_seconds: self.settings.clock_leeway_seconds,
        };
        let (subject, grants) = verifier.verify(&request.subject_token, now, context).await?;

        let target = match self.policy.target(&request.target).await? {
            Some(t) if t.enabled && t.kind == TargetKind::Jwt => t,
            _ => {
                return Err(BrokerError::InvalidTarget(
                    "the broker does not issue tokens for this target",
                ));
            }
        };
        let decision = policy::evaluate(
            &grants,
            &subject,
            &target,
            &PolicyRequest {
                scope: &request.scope,
                requested_ttl_seconds: request.requested_ttl_seconds,
            },
            now,
            self.settings.max_token_ttl_seconds,
        )
        .map_err(BrokerError::PolicyDenied)?;

        let lease_id = uuid::Uuid::new_v4().to_string();
        let expires_at = now + decision.ttl_seconds;
        let claims = BrokerClaims {
            iss: self.settings.broker_issuer.clone(),
            sub: subject.subject.clone(),
            aud: target.id.clone(),
            exp: expires_at,
            iat: now,
            nbf: now,
            jti: lease_id.clone(),
            scope: decision.scope.join(" "),
            client_id: decision.grant.id.clone(),
            act: ActorClaim {
                iss: subject.issuer.issuer.clone(),
                sub: subject.subject.clone(),
            },
            env: target.environment.clone(),
        };
        let access_token = broker_token::mint(self.signer.as_ref(), &claims).await?;

        let lease = Lease {
            lease_id: lease_id.clone(),
            kind: TargetKind::Jwt,
            issuer: subject.issuer.issuer.clone(),
            subject: subject.subject.clone(),
            grant_id: decision.grant.id.clone(),
            target: target.id.clone(),
            environment: target.environment.clone(),
            scope: decision.scope.clone(),
            subject_token_fingerprint: subject.fingerprint.clone(),
            key_id: self.signer.key_id().to_string(),
            issued_at: now,
            expires_at,
            status: LeaseStatus::Active,
        };
        let event = AuditEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            at: now,
            action: AuditAction::TokenExchange,
            outcome: AuditOutcome::Released,
            actor_issuer: Some(lease.issuer.clone()),
            actor_subject: Some(lease.subject.clone()),
            target: Some(lease.target.clone()),
            grant_id: Some(lease.grant_id.clone()),
            lease_id: Some(lease_id.clone()),
            reason: None,
            token_fingerprint: Some(subject.fingerprint.clone()),
        };
        let replay = replay_guard(&subject, self.settings.clock_leeway_seconds)?;
        self.ledger.record_release(&lease, &event, replay.as_ref()).await?;
        tracing::info!(
            lease_id = %lease_id,
            grant_id = %lease.grant_id,
            target = %lease.target,
            subject = %lease.subject,
            expires_in = decision.ttl_seconds,
            subject_token = %subject.fingerprint,
            issued_token = %access_token.fingerprint(),
            "token released"
        );
        Ok(IssuedToken {
            access_token,
            issued_token_type: TOKEN_TYPE_JWT,
            expires_in: decision.ttl_seconds,
            scope: decision.scope,
            lease_id,
        })
    }
}

/// For issuers configured for one-time use: the guard that makes a second exchange of the same
/// token fail inside the release transaction.
fn replay_guard(subject: &VerifiedSubject, leeway: i64) -> Result<Option<ReplayGuard>> {
    if !subject.issuer.one_time_jti {
        return Ok(None);
    }
    let jti = subject
        .claims
        .get("jti")
        .and_then(|v| v.as_str())
        .filter(|j| !j.is_empty())
        .ok_or(BrokerError::TokenRejected(TokenRejection::MissingJti))?;
    let exp = subject.claims.get("exp").and_then(|v| v.as_f64()).unwrap_or_default() as i64;
    let digest = Sha256::digest(format!("{}\n{jti}", subject.issuer.issuer));
    Ok(Some(ReplayGuard {
        key: hex::encode(digest),
        expires_at: exp + leeway,
    }))
}

impl ExchangeService {
    async fn audit_denial(&self, request: &ExchangeRequest, context: &UnverifiedContext, err: &BrokerError, now: i64) {
        let reason = match err {
            BrokerError::TokenRejected(r) => r.code(),
            BrokerError::PolicyDenied(d) => d.code(),
            BrokerError::InvalidTarget(_) => "invalid_target",
            BrokerError::InvalidScope(_) => "invalid_scope",
            _ => "invalid_request",
        };
        let fingerprint = request.subject_token.fingerprint();
        let event = AuditEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            at: now,
            action: AuditAction::TokenExchange,
            outcome: AuditOutcome::Denied,
            actor_issuer: context.issuer.clone(),
            actor_subject: context.subject.clone(),
            target: Some(request.target.clone()),
            grant_id: None,
            lease_id: None,
            reason: Some(reason.to_string()),
            token_fingerprint: Some(fingerprint.clone()),
        };
        tracing::info!(reason, subject_token = %fingerprint, "token exchange denied");
        // A failed audit write must not turn a denial into a release or a 500: log it loudly.
        if let Err(e) = self.ledger.record_denial(&event).await {
            tracing::error!(error = %e, reason, "failed to record denial audit event");
        }
    }
}
