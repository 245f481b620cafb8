//! The token exchange use case (RFC 8693), independent of HTTP and AWS.

pub mod broker_token;
pub mod claim_set;
pub mod jwks;
pub mod key_set;
pub mod policy;
pub mod subject_token;
pub mod token_admin;

use crate::domain::{
    AuditAction, AuditEvent, AuditOutcome, Lease, LeaseStatus, STS_MAX_SESSION_SECONDS, STS_MIN_SESSION_SECONDS,
    TOKEN_TYPE_AWS_CREDENTIALS, TOKEN_TYPE_JWT, TOKEN_TYPE_SECRET, TargetKind, secret_encryption_context,
};
use crate::error::TokenRejection;
use crate::error::{BrokerError, Result};
use crate::exchange::subject_token::{SubjectTokenVerifier, UnverifiedContext, VerifiedSubject};
use crate::ports::{
    AssumeRoleRequest, Clock, IssuerKeys, LeaseLedger, ReplayGuard, RoleAssumer, SecretDecryptor, SecretStore,
    TokenSigner,
};
use crate::redact::SecretString;
use broker_token::{ActorClaim, BrokerClaims};
use policy::PolicyRequest;
use policy::catalog::{IssuerPolicy, PolicyCatalog};
use policy::compiled::CompiledGrant;
use std::sync::Arc;

/// A syntactically valid exchange request.
#[derive(Debug)]
pub struct ExchangeRequest {
    pub subject_token: SecretString,
    pub requested: RequestedCredential,
    pub target: String,
    pub scope: Vec<String>,
    pub requested_ttl_seconds: Option<i64>,
    /// Carried into audit events and log lines (the caller sees it in every error response).
    pub request_id: String,
}

/// What kind of credential the caller asked for (`requested_token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestedCredential {
    Jwt,
    Secret,
    AwsCredentials,
}

impl RequestedCredential {
    /// The `requested_token_type` URI this stands for.
    pub fn token_type(self) -> &'static str {
        match self {
            Self::Jwt => TOKEN_TYPE_JWT,
            Self::Secret => TOKEN_TYPE_SECRET,
            Self::AwsCredentials => TOKEN_TYPE_AWS_CREDENTIALS,
        }
    }
}

#[derive(Debug)]
pub struct IssuedToken {
    /// The credential: a broker JWT, or a secret's value.
    pub access_token: SecretString,
    pub issued_token_type: &'static str,
    /// `Bearer` for JWTs; `N_A` for what is not an OAuth access token (RFC 8693 2.2.1).
    pub token_type: &'static str,
    pub expires_in: i64,
    pub scope: Vec<String>,
    pub lease_id: String,
    pub secret_version: Option<String>,
    /// For AWS credentials: access key id and secret access key (the session token is `access_token`).
    pub aws_credentials: Option<(String, SecretString)>,
}

/// A credential made before its lease is recorded, or a JWT whose signature is made alongside.
enum Pending {
    Ready(SecretString),
    Jwt(broker_token::Unsigned),
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
    pub policy: Arc<PolicyCatalog>,
    pub ledger: Arc<dyn LeaseLedger>,
    pub signer: Arc<dyn TokenSigner>,
    pub roles: Arc<dyn RoleAssumer>,
    pub issuer_keys: Arc<dyn IssuerKeys>,
    pub secrets: Arc<dyn SecretStore>,
    pub decryptor: Arc<dyn SecretDecryptor>,
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

    /// A workload token presented as a credential anywhere (subject token, introspection caller,
    /// revocation holder): verified as a subject token, and, when the broker itself issued it
    /// (the broker registered as an issuer), refused once its `jti` is on the deny list: a revoked
    /// broker token is dead everywhere, though its signature still verifies.
    pub(crate) async fn verify_workload_token(
        &self,
        token: &SecretString,
        now: i64,
        context: &mut UnverifiedContext,
    ) -> Result<(VerifiedSubject, Vec<Arc<CompiledGrant>>)> {
        let verifier = SubjectTokenVerifier {
            policy: self.policy.as_ref(),
            keys: self.issuer_keys.as_ref(),
            leeway_seconds: self.settings.clock_leeway_seconds,
        };
        let (subject, issuer_policy) = verifier.verify(token, now, context).await?;
        if subject.issuer.issuer == self.settings.broker_issuer
            && let Some(jti) = subject.claims.get_str("jti")
            && self.ledger.is_denied(&jti).await?
        {
            return Err(BrokerError::TokenRejected(TokenRejection::Revoked));
        }
        let candidates = self.candidates(&issuer_policy, &subject).await?;
        Ok((subject, candidates))
    }

    /// The grants that can apply to this subject: found by its `sub` (exact grants by key,
    /// pattern grants through the issuer's pattern index), never by reading all of them.
    async fn candidates(&self, policy: &IssuerPolicy, subject: &VerifiedSubject) -> Result<Vec<Arc<CompiledGrant>>> {
        self.policy.candidates(policy, &subject.subject).await
    }

    /// The audit record of a request refused before (or instead of) the main flow: malformed
    /// forms, and callers of `/introspect` and `/revoke` that are not let in. Failures to write it
    /// are logged loudly, never turned into a release or a 500.
    pub async fn audit_refusal(
        &self,
        action: AuditAction,
        err: &BrokerError,
        subject_token: Option<&SecretString>,
        bearer: Option<&SecretString>,
        request_id: &str,
    ) {
        let reason = err.reason_code();
        let event = AuditEvent {
            reason: Some(reason.to_string()),
            token_fingerprint: subject_token.or(bearer).map(SecretString::fingerprint),
            request_id: Some(request_id.to_string()),
            ..AuditEvent::new(action, AuditOutcome::Denied, self.clock.now())
        };
        tracing::info!(reason, request_id, action = ?action, "request refused and audited");
        self.record_refusal(&event).await;
    }

    /// Write a refusal's audit event. A failed write must not turn a refusal into a release or a
    /// 500: it is logged loudly instead.
    pub(crate) async fn record_refusal(&self, event: &AuditEvent) {
        if let Err(e) = self.ledger.record_denial(event).await {
            crate::telemetry::audit_write_failed("exchange");
            tracing::error!(
                error = %e,
                reason = event.reason.as_deref().unwrap_or_default(),
                request_id = event.request_id.as_deref().unwrap_or_default(),
                "failed to record refusal audit event"
            );
        }
    }

    async fn try_exchange(
        &self,
        request: &ExchangeRequest,
        now: i64,
        context: &mut UnverifiedContext,
    ) -> Result<IssuedToken> {
        let (subject, grants) = self.verify_workload_token(&request.subject_token, now, context).await?;

        // Resolve what is asked for before policy: an unknown target is `invalid_target`.
        let (target, current_secret) = match request.requested {
            RequestedCredential::Jwt => match self.policy.target(&request.target).await? {
                Some(t) if t.enabled && t.kind == TargetKind::Jwt => (t, None),
                _ => {
                    return Err(BrokerError::InvalidTarget(
                        "the broker does not issue tokens for this target",
                    ));
                }
            },
            RequestedCredential::AwsCredentials => match self.policy.target(&request.target).await? {
                Some(t) if t.enabled && t.kind == TargetKind::AwsRole => (t, None),
                _ => {
                    return Err(BrokerError::InvalidTarget(
                        "the broker does not issue credentials for this role",
                    ));
                }
            },
            RequestedCredential::Secret => match self.secrets.current(&request.target).await? {
                Some(current) if current.secret.enabled => (Arc::new(current.secret.as_target()), Some(current)),
                Some(_) => return Err(BrokerError::InvalidTarget("the secret is disabled")),
                None => {
                    return Err(BrokerError::InvalidTarget(
                        "the broker holds no releasable secret with this id",
                    ));
                }
            },
        };
        let decision = policy::evaluate(
            &grants,
            &subject,
            &target,
            &PolicyRequest {
                scope: &request.scope,
                requested_ttl_seconds: request.requested_ttl_seconds,
                requested_token_type: request.requested.token_type(),
            },
            now,
            self.settings.max_token_ttl_seconds,
        )?;

        let lease_id = crate::domain::id_text(uuid::Uuid::new_v4());
        let expires_at = now + decision.ttl_seconds;
        let mut lease = Lease {
            lease_id: lease_id.clone(),
            kind: target.kind,
            issuer: subject.issuer.issuer.clone(),
            subject: subject.subject.clone(),
            grant_id: decision.grant.id.clone(),
            target: target.id.clone(),
            environment: target.environment.clone(),
            scope: decision.scope.clone(),
            subject_token_fingerprint: subject.fingerprint.clone(),
            key_id: String::new(),
            secret_version: None,
            aws_access_key_id: None,
            issued_at: now,
            expires_at,
            status: LeaseStatus::Active,
            destination: decision.grant.delivers_to.clone(),
        };
        // The credential is produced before the lease is recorded (a JWT's signature alongside the
        // record) and returned only after: a failed write releases nothing.
        let mut aws_secret_access_key = None;
        let (credential, issued_token_type, token_type) = match current_secret {
            None if request.requested == RequestedCredential::AwsCredentials => {
                if decision.ttl_seconds < STS_MIN_SESSION_SECONDS {
                    return Err(BrokerError::InvalidRequest(
                        "the grant allows less than the 900 s minimum AWS session; nothing was issued",
                    ));
                }
                let credentials = self
                    .roles
                    .assume_role(&AssumeRoleRequest {
                        role_arn: target.id.clone(),
                        session_name: format!("nhi-{lease_id}"),
                        source_identity: lease_id.clone(),
                        tags: vec![
                            ("nhi:grant".into(), decision.grant.id.clone()),
                            ("nhi:subject".into(), subject.subject.clone()),
                            ("nhi:lease".into(), lease_id.clone()),
                        ],
                        session_policy: decision.grant.session_policy.clone(),
                        duration_seconds: decision.ttl_seconds.min(STS_MAX_SESSION_SECONDS) as i32,
                    })
                    .await?;
                lease.aws_access_key_id = Some(credentials.access_key_id.clone());
                aws_secret_access_key = Some((credentials.access_key_id, credentials.secret_access_key));
                (
                    Pending::Ready(credentials.session_token),
                    TOKEN_TYPE_AWS_CREDENTIALS,
                    "N_A",
                )
            }
            None => {
                let scope = decision.scope.join(" ");
                let claims = BrokerClaims {
                    iss: &self.settings.broker_issuer,
                    sub: &subject.subject,
                    aud: &target.id,
                    exp: expires_at,
                    iat: now,
                    nbf: now,
                    jti: &lease_id,
                    scope: &scope,
                    client_id: &decision.grant.id,
                    act: ActorClaim {
                        iss: &subject.issuer.issuer,
                        sub: &subject.subject,
                    },
                    env: &target.environment,
                };
                let unsigned = broker_token::prepare_access(self.signer.as_ref(), &claims).await?;
                lease.key_id = unsigned.key_id.clone();
                (Pending::Jwt(unsigned), TOKEN_TYPE_JWT, "Bearer")
            }
            Some(current) => {
                let context =
                    secret_encryption_context(&current.secret.id, &current.version, &current.secret.environment);
                let value = self.decryptor.decrypt(&current.ciphertext, &context).await?;
                lease.secret_version = Some(current.version);
                (Pending::Ready(value), TOKEN_TYPE_SECRET, "N_A")
            }
        };

        let event = AuditEvent {
            actor_issuer: Some(lease.issuer.clone()),
            actor_subject: Some(lease.subject.clone()),
            target: Some(lease.target.clone()),
            grant_id: Some(lease.grant_id.clone()),
            lease_id: Some(lease_id.clone()),
            token_fingerprint: Some(subject.fingerprint.clone()),
            request_id: Some(request.request_id.clone()),
            ..AuditEvent::new(AuditAction::TokenExchange, AuditOutcome::Released, now)
        };
        let replay = replay_guard(&subject, self.settings.clock_leeway_seconds)?;
        let credential = match credential {
            Pending::Ready(value) => {
                self.ledger.record_release(&lease, &event, replay.as_ref()).await?;
                value
            }
            // Signature and release transaction need nothing from each other: made together, a
            // JWT costs the slower of the two round trips, not their sum. The token leaves only
            // if both succeeded; a lease recorded for a signature that failed released nothing
            // (no token carries its id) and is revoked at once, so inventory never counts it.
            Pending::Jwt(unsigned) => {
                let (signed, recorded) = futures::join!(
                    unsigned.sign(self.signer.as_ref()),
                    self.ledger.record_release(&lease, &event, replay.as_ref())
                );
                recorded?;
                match signed {
                    Ok(signed) => signed.token,
                    Err(e) => {
                        self.revoke_unsigned(&lease, &request.request_id, now).await;
                        return Err(e);
                    }
                }
            }
        };
        // What was released is named by its lease id, which a JWT carries as its `jti`: anyone
        // holding a leaked token finds its line. Never by a hash of the credential: for a secret
        // value or AWS session, 64 bits of an unsalted hash in every log reader's hands could be
        // tested against guesses offline (and for a JWT it would only repeat the lease id).
        tracing::info!(
            lease_id = lease_id.as_str(),
            kind = lease.kind.as_str(),
            grant_id = lease.grant_id.as_str(),
            target = lease.target.as_str(),
            secret_version = lease.secret_version.as_deref().unwrap_or_default(),
            subject = lease.subject.as_str(),
            expires_in = decision.ttl_seconds,
            subject_token = subject.fingerprint.as_str(),
            request_id = request.request_id.as_str(),
            "credential released"
        );
        Ok(IssuedToken {
            access_token: credential,
            issued_token_type,
            token_type,
            expires_in: decision.ttl_seconds,
            scope: decision.scope,
            lease_id,
            secret_version: lease.secret_version,
            aws_credentials: aws_secret_access_key,
        })
    }

    /// The lease of a JWT whose signature failed after the lease was recorded: revoked with its
    /// reason (best effort; if this fails too, the lease expires with the token that never was).
    async fn revoke_unsigned(&self, lease: &Lease, request_id: &str, now: i64) {
        let (revocation, event) = token_admin::lease_revocation(
            lease,
            "broker".into(),
            "signing failed after the lease was recorded; no token was issued",
            "signing_failed_after_record",
            now,
        );
        let event = AuditEvent {
            request_id: Some(request_id.to_string()),
            ..event
        };
        if let Err(e) = self.ledger.revoke_lease(lease, &revocation, &event).await {
            tracing::error!(error = %e, lease_id = %lease.lease_id, "could not revoke the lease of an unsigned token");
        }
    }

    async fn audit_denial(&self, request: &ExchangeRequest, context: &UnverifiedContext, err: &BrokerError, now: i64) {
        let reason = err.reason_code();
        let fingerprint = request.subject_token.fingerprint();
        let event = AuditEvent {
            actor_issuer: context.issuer.clone(),
            actor_subject: context.subject.clone(),
            target: Some(request.target.clone()),
            reason: Some(reason.to_string()),
            token_fingerprint: Some(fingerprint.clone()),
            request_id: Some(request.request_id.clone()),
            ..AuditEvent::new(AuditAction::TokenExchange, AuditOutcome::Denied, now)
        };
        tracing::info!(
            reason,
            subject_token = fingerprint.as_str(),
            request_id = request.request_id.as_str(),
            "token exchange denied"
        );
        self.record_refusal(&event).await;
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
        .get_str("jti")
        .filter(|j| !j.is_empty())
        .ok_or(BrokerError::TokenRejected(TokenRejection::MissingJti))?;
    Ok(Some(ReplayGuard {
        key: crate::crypto::sha256_hex(format!("{}\n{jti}", subject.issuer.issuer).as_bytes()),
        expires_at: subject.expires_at.saturating_add(leeway),
    }))
}
