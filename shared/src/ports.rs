//! Narrow ports owned by the domain. Each has an in-memory fake (`crate::fakes`) for unit tests and
//! an AWS adapter (`crate::aws`) tested against moto.

use crate::domain::{AuditEvent, Grant, Issuer, Lease, Revocation, Secret, Target, UnixTime};
use crate::error::Result;
use crate::redact::SecretString;
use async_trait::async_trait;
use jsonwebtoken::jwk::JwkSet;

/// Read side of the registry that exchange needs: an issuer with every grant for its subjects, and targets.
#[async_trait]
pub trait PolicyStore: Send + Sync {
    /// The issuer and all of its grants, in one read.
    async fn issuer_with_grants(&self, issuer: &str) -> Result<Option<(Issuer, Vec<Grant>)>>;
    async fn target(&self, id: &str) -> Result<Option<Target>>;
}

/// Marks a subject token as used, in the same write as the release it produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayGuard {
    /// SHA-256 of the token's issuer and `jti`.
    pub key: String,
    /// The guard must outlive the token it guards.
    pub expires_at: UnixTime,
}

/// Where releases and denials are recorded. A release is the lease, its audit event and (for
/// one-time tokens) its replay guard written atomically: all or nothing. A guard that already
/// exists fails the release with `TokenRejection::Replayed`.
#[async_trait]
pub trait LeaseLedger: Send + Sync {
    async fn record_release(&self, lease: &Lease, event: &AuditEvent, replay: Option<&ReplayGuard>) -> Result<()>;
    async fn record_denial(&self, event: &AuditEvent) -> Result<()>;
    async fn lease(&self, lease_id: &str) -> Result<Option<Lease>>;
    /// Mark an active lease revoked, with its revocation record and audit event, atomically.
    /// `Ok(false)` when the lease was no longer active (revocation is idempotent).
    async fn revoke_lease(&self, lease: &Lease, revocation: &Revocation, event: &AuditEvent) -> Result<bool>;
}

/// A secret's metadata with its CURRENT version id and that version's ciphertext, read together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentSecret {
    pub secret: Secret,
    pub version: String,
    pub ciphertext: Vec<u8>,
}

#[async_trait]
pub trait SecretStore: Send + Sync {
    /// The secret and its CURRENT version; `None` if unknown or never given a value.
    async fn current(&self, secret_id: &str) -> Result<Option<CurrentSecret>>;
}

/// Decrypts secret material (KMS in production). Only the exchange function holds this.
#[async_trait]
pub trait SecretDecryptor: Send + Sync {
    async fn decrypt(&self, ciphertext: &[u8], context: &[(String, String)]) -> Result<SecretString>;
}

/// Encrypts secret material (KMS in production). Writers (rotate, operators) hold this, never a decryptor.
#[async_trait]
pub trait SecretEncryptor: Send + Sync {
    async fn encrypt(&self, plaintext: &SecretString, context: &[(String, String)]) -> Result<Vec<u8>>;
}

/// What exchange asks STS for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRoleRequest {
    pub role_arn: String,
    pub session_name: String,
    /// The lease id, so a later revocation can deny exactly this session (`aws:SourceIdentity`).
    pub source_identity: String,
    pub tags: Vec<(String, String)>,
    pub session_policy: Option<String>,
    pub duration_seconds: i32,
}

#[derive(Debug, Clone)]
pub struct AwsSessionCredentials {
    pub access_key_id: String,
    pub secret_access_key: SecretString,
    pub session_token: SecretString,
    pub expiration: UnixTime,
}

#[async_trait]
pub trait RoleAssumer: Send + Sync {
    async fn assume_role(&self, request: &AssumeRoleRequest) -> Result<AwsSessionCredentials>;
}

/// The broker's token signing key (ES256), held in KMS in production.
#[async_trait]
pub trait TokenSigner: Send + Sync {
    /// The `kid` placed in token headers.
    fn key_id(&self) -> &str;
    /// Sign a JWS signing input; returns the 64-byte `r || s` signature JWS ES256 expects.
    async fn sign_es256(&self, signing_input: &[u8]) -> Result<[u8; 64]>;
    /// The public keys relying parties verify broker tokens with.
    async fn public_jwks(&self) -> Result<JwkSet>;
}

/// Public keys of subject-token issuers.
#[async_trait]
pub trait IssuerKeys: Send + Sync {
    /// The issuer's JWK Set; `refresh` asks for a fresh copy (rate-limited by the implementation)
    /// because the token names a `kid` the cached copy lacks.
    async fn jwks(&self, issuer: &Issuer, refresh: bool) -> Result<JwkSet>;
}

/// Time, injectable so tests can move it.
pub trait Clock: Send + Sync {
    fn now(&self) -> UnixTime;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }
}
