//! Narrow ports owned by the domain. Each has an in-memory fake (`crate::fakes`) for unit tests and
//! an AWS adapter (`crate::aws`) tested against moto.

use crate::domain::{
    AuditEvent, Grant, Issuer, KeyRing, Lease, Revocation, RotationNotice, RotationStep, Secret, SecretRotationState,
    Target, UnixTime, VersionStage,
};
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

/// The broker's token signing keys (ES256), held in KMS in production.
#[async_trait]
pub trait TokenSigner: Send + Sync {
    /// The key that signs now: the `kid` placed in token headers.
    async fn active_key_id(&self) -> Result<String>;
    /// Sign a JWS signing input with `key_id`; returns the 64-byte `r || s` signature ES256 wants.
    async fn sign_es256(&self, key_id: &str, signing_input: &[u8]) -> Result<[u8; 64]>;
    /// The public keys relying parties verify broker tokens with: next, active and retired keys.
    async fn public_jwks(&self) -> Result<JwkSet>;
}

/// Where the signing-key ring is kept. Changes are conditional on the version read, and recorded
/// with their audit event atomically.
#[async_trait]
pub trait KeyRingStore: Send + Sync {
    async fn load(&self) -> Result<Option<KeyRing>>;
    /// Write `ring` if the stored ring is still at `expected_version` (`None`: no ring stored yet).
    /// `Ok(false)` when another writer got there first.
    async fn save(&self, ring: &KeyRing, expected_version: Option<i64>, event: &AuditEvent) -> Result<bool>;
}

/// Creates and deletes signing keys (KMS in production). Never signs and never decrypts.
#[async_trait]
pub trait SigningKeyAdmin: Send + Sync {
    /// A new ECC_NIST_P256 SIGN_VERIFY key usable by the broker's signers; returns its key id.
    async fn create_signing_key(&self, description: &str) -> Result<String>;
    async fn schedule_key_deletion(&self, key_id: &str, pending_window_days: i32) -> Result<()>;
}

/// A PENDING version promoted to CURRENT, with what it replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promotion {
    pub secret_id: String,
    pub new_version: String,
    /// The CURRENT being replaced; it becomes PREVIOUS until `previous_expires_at`.
    pub old_version: Option<String>,
    pub previous_expires_at: UnixTime,
    /// A PREVIOUS still inside its grace period is deprecated early, with this revocation.
    pub deprecated: Option<(String, Revocation)>,
    pub next_due_at: UnixTime,
}

/// The rotate function's view of the secrets registry. Every state change is conditional on the
/// state it was decided from; `Ok(false)` means another run changed it first (re-read and resume).
#[async_trait]
pub trait RotationStore: Send + Sync {
    /// Ids of secrets with work due at `now` (through an index on the due time, never a scan),
    /// earliest first, at most `limit`.
    async fn due_secrets(&self, now: UnixTime, limit: usize) -> Result<Vec<String>>;
    /// How many secrets have work due at `now`.
    async fn count_due(&self, now: UnixTime) -> Result<u64>;
    async fn rotation_state(&self, secret_id: &str) -> Result<Option<SecretRotationState>>;
    /// The stage of one stored version, `None` if it does not exist or has no ciphertext.
    async fn version_stage(&self, secret_id: &str, version: &str) -> Result<Option<VersionStage>>;
    /// Store an encrypted PENDING version and point the secret at it (step `Created`), if the
    /// secret's CURRENT is still `expected_current` and no rotation is in progress.
    async fn stage_pending(
        &self,
        secret_id: &str,
        expected_current: Option<&str>,
        version: &str,
        ciphertext: Vec<u8>,
        now: UnixTime,
    ) -> Result<bool>;
    /// Move the rotation of `version` from step `from` to `to`.
    async fn advance_step(&self, secret_id: &str, version: &str, from: RotationStep, to: RotationStep) -> Result<bool>;
    /// Ids of the destinations registered as holding a copy of the secret.
    async fn destinations_for(&self, secret_id: &str) -> Result<Vec<String>>;
    /// Promote PENDING to CURRENT, with its audit event and the notice to destinations, atomically.
    async fn promote(&self, promotion: &Promotion, event: &AuditEvent, notice: &RotationNotice) -> Result<bool>;
    /// Deprecate PREVIOUS after its grace period, with the revocation of its leases and its audit
    /// event, atomically.
    async fn retire_previous(
        &self,
        secret_id: &str,
        version: &str,
        next_due_at: UnixTime,
        revocation: &Revocation,
        event: &AuditEvent,
    ) -> Result<bool>;
    /// Move a secret's due time (e.g. a secret without work, or one whose rotation cannot run).
    async fn reschedule(&self, secret_id: &str, due_at: UnixTime) -> Result<()>;
}

/// What rotate asks a secret's rotation hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookAction {
    /// Make a new credential for this version and return it (idempotent per version id).
    Create,
    /// The version is staged PENDING in the broker.
    Set,
    /// Confirm the new credential works (a non-2xx answer fails the rotation step).
    Test,
    /// The version is now CURRENT; the one before it is PREVIOUS.
    Finish,
}

impl HookAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Set => "set",
            Self::Test => "test",
            Self::Finish => "finish",
        }
    }
}

/// The owning system's rotation endpoint.
#[async_trait]
pub trait RotationHook: Send + Sync {
    /// Call `url` for `action` on one version. `Create` returns the new value; other actions `None`.
    async fn call(&self, url: &str, action: HookAction, secret_id: &str, version: &str)
    -> Result<Option<SecretString>>;
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
