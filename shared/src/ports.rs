//! Narrow ports owned by the domain. Each has an in-memory fake (`crate::testing`) for unit tests and
//! an AWS adapter (`crate::aws`) tested against moto.

use crate::domain::{
    AuditEvent, ChangeEvent, Delivery, Destination, Fence, Grant, Issuer, KeyRing, Lease, Revocation, RotationNotice,
    RotationStep, Secret, SecretRotationState, Target, UnixTime, VersionStage,
};
use crate::error::Result;
use crate::exchange::key_set::IssuerKeySet;
use crate::redact::SecretString;
use async_trait::async_trait;
use jsonwebtoken::jwk::JwkSet;

/// Read side of the registry that exchange needs: an issuer with every grant for its subjects, and targets.
#[async_trait]
pub trait PolicyStore: Send + Sync {
    /// The issuer and its policy generation, in one read. The generation is an opaque value that
    /// changes with every operator write of the issuer's grants (what a compiled policy is keyed
    /// by); issuers whose grants were never written have `""`.
    async fn issuer_head(&self, issuer: &str) -> Result<Option<(Issuer, String)>>;
    /// The issuer's grants whose subject is exactly `subject` (found by key, whatever their number).
    async fn exact_grants(&self, issuer: &str, subject: &str) -> Result<Vec<Grant>>;
    /// The issuer's grants with a `subject_pattern` (read when its generation changes).
    async fn pattern_grants(&self, issuer: &str) -> Result<Vec<Grant>>;
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

/// One lease by id, whatever its status: what both the exchange's ledger (holder-bound
/// revocation) and fanout (a lease's copy holder) read.
#[async_trait]
pub trait LeaseReader: Send + Sync {
    async fn lease(&self, lease_id: &str) -> Result<Option<Lease>>;
}

/// Where releases and denials are recorded. A release is the lease, its audit event and (for
/// one-time tokens) its replay guard written atomically: all or nothing, and idempotent (a retry
/// of the same release after a lost response succeeds without writing twice). It also re-checks,
/// inside the same write, what a cache may have missed: a guard that already exists fails it with
/// `TokenRejection::Replayed`, a fenced subject with `SubjectRevoked`, a fenced issuer with
/// `IssuerDisabled`, a grant no longer active with `PolicyDenial::GrantRevoked`, a disabled secret
/// with `InvalidTarget`. Contention (conflicts, throttling) is a retryable error, never a denial.
#[async_trait]
pub trait LeaseLedger: LeaseReader {
    async fn record_release(&self, lease: &Lease, event: &AuditEvent, replay: Option<&ReplayGuard>) -> Result<()>;
    async fn record_denial(&self, event: &AuditEvent) -> Result<()>;
    /// Mark an active lease revoked, with its revocation record and audit event, atomically.
    /// `Ok(false)` when the lease was no longer active (revocation is idempotent).
    async fn revoke_lease(&self, lease: &Lease, revocation: &Revocation, event: &AuditEvent) -> Result<bool>;
    /// Whether a broker JWT `jti` is on the deny list (revoked before it expired).
    async fn is_denied(&self, jti: &str) -> Result<bool>;
    /// The fence standing against this identity (its subject revoked, or its issuer disabled), read
    /// fresh, never cached: for callers that are not releases (introspection).
    async fn fence(&self, issuer: &str, subject: &str) -> Result<Option<Fence>>;
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
    /// A new P-256 envelope key for `kid`: its public key and its private key encrypted under the
    /// wrapping key, bound to `envelope_key_context(kid)`. The plaintext private key is never seen
    /// by the caller (KMS GenerateDataKeyPairWithoutPlaintext).
    async fn create_envelope_key(&self, kid: &str) -> Result<crate::domain::EnvelopeKey>;
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
    /// Note on the secret that a rotation attempt failed (`failure`: what went wrong, no value), so
    /// an operator waiting for it (`brokerctl rotate --wait`) learns it. Best effort.
    async fn record_failure(&self, secret_id: &str, failure: &str, at: UnixTime) -> Result<()> {
        let _ = (secret_id, failure, at);
        Ok(())
    }
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

/// Which leases a revocation reaches, resolved through an index on each relation (never a scan).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseScope {
    Lease(String),
    Grant(String),
    Subject {
        issuer: String,
        subject: String,
    },
    Secret(String),
    SecretVersion {
        secret_id: String,
        version: String,
    },
    /// Destinations hold copies of secrets, not leases.
    Nothing,
}

/// One page of active leases and where the next page starts (opaque).
#[derive(Debug, Clone, Default)]
pub struct LeasePage {
    pub leases: Vec<Lease>,
    pub next: Option<String>,
}

/// The leases side of revocation fanout.
#[async_trait]
pub trait FanoutLedger: LeaseReader {
    /// Active, unexpired leases in `scope`, one page at a time from `cursor`.
    async fn active_leases(
        &self,
        scope: &LeaseScope,
        now: UnixTime,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<LeasePage>;
    /// Mark one lease revoked (if still active), deny its JWT `jti` until the token expires, and
    /// record its audit event, atomically. `Ok(false)`: it was no longer active.
    async fn revoke_derived(&self, lease: &Lease, revocation: &Revocation, event: &AuditEvent) -> Result<bool>;
    /// Remember where a revocation's sweep stopped; the record's stream entry resumes it.
    async fn save_progress(&self, revocation: &Revocation, cursor: &str) -> Result<()>;
}

/// The registry side of revocation fanout.
#[async_trait]
pub trait FanoutRegistry: Send + Sync {
    /// Disable what the revocation names in the registry (grant revoked, secret or destination
    /// disabled). Idempotent; `Ok(false)` when there was nothing (left) to change.
    async fn disable_target(&self, revocation: &Revocation) -> Result<bool>;
    /// Ids of the destinations registered as holding a copy of the secret.
    async fn destinations_of_secret(&self, secret_id: &str) -> Result<Vec<String>>;
    async fn destination(&self, id: &str) -> Result<Option<Destination>>;
}

/// Delivery records: one per (destination, change event), changed only by conditional writes.
#[async_trait]
pub trait DeliveryLedger: Send + Sync {
    /// Create the record (pending, due now) unless it exists; returns the stored record.
    async fn open(&self, delivery: &Delivery) -> Result<Delivery>;
    /// Replace `before` with `after` if nobody changed it since `before` was read (same status and
    /// attempt count). A move to `Unconfirmed` also flags the destination and records `event`.
    async fn update(&self, before: &Delivery, after: &Delivery, event: Option<&AuditEvent>) -> Result<bool>;
    /// Pending deliveries whose next attempt is due, earliest first.
    async fn due(&self, now: UnixTime, limit: usize) -> Result<Vec<Delivery>>;
    /// Pending deliveries past their confirmation window (drift), earliest first.
    async fn overdue(&self, now: UnixTime, limit: usize) -> Result<Vec<Delivery>>;
}

/// Why a destination did not acknowledge: a short code for the record, never a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyFailure(pub String);

/// Tells a destination about a change: a signed SET to a webhook, an event on a bus.
#[async_trait]
pub trait Notifier: Send + Sync {
    /// `Ok(receipt)` only when the destination acknowledged the event.
    async fn notify(
        &self,
        destination: &Destination,
        event: &ChangeEvent,
        jti: &str,
    ) -> std::result::Result<String, NotifyFailure>;
}

/// Denies exactly the AWS role sessions of revoked leases (their `SourceIdentity` is the lease id)
/// until they would have expired.
#[async_trait]
pub trait SessionDenier: Send + Sync {
    async fn deny_sessions(&self, role_arn: &str, sessions: &[(String, UnixTime)], now: UnixTime) -> Result<()>;
}

/// An active lease past its expiry, as the sparse expiry index holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredLease {
    pub lease_id: String,
    pub expires_at: UnixTime,
    pub grant_id: String,
    pub target: String,
    pub destination: Option<String>,
}

/// A grant whose approval has run out while it is still active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LapsedGrant {
    pub issuer: String,
    pub grant_id: String,
    pub approval_expires_at: UnixTime,
}

/// What one audit digest run did (`aws::dynamo::digest`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DigestOutcome {
    /// The digest written (None: an overlapping run wrote this one).
    pub seq: Option<i64>,
    pub heads: u64,
    /// Chains seen beyond the per-digest cap (the next digest's window reaches back for them).
    pub heads_left: u64,
}

/// Writes the next signed digest of audit chain heads (expire-sweeper, every run). Overlapping
/// runs write each digest once.
#[async_trait]
pub trait AuditDigestWriter: Send + Sync {
    async fn write_digest(&self, now: UnixTime) -> Result<DigestOutcome>;
}

/// What expire-sweeper reads and changes. Every change is conditional on the state it was read in,
/// so overlapping runs change each item once.
#[async_trait]
pub trait ExpiryStore: Send + Sync {
    /// Active leases that expired at or before `now` in one shard of the expiry index.
    async fn expired_leases(&self, shard: u32, now: UnixTime, limit: usize) -> Result<Vec<ExpiredLease>>;
    /// Mark it expired (if still active), with its audit event and, when a destination holds a
    /// copy, the revocation record that makes fanout tell it; atomically.
    async fn expire_lease(
        &self,
        lease: &ExpiredLease,
        revocation: Option<&Revocation>,
        event: &AuditEvent,
    ) -> Result<bool>;
    async fn lapsed_grants(&self, now: UnixTime, limit: usize) -> Result<Vec<LapsedGrant>>;
    /// Revoke it (if still active) with the revocation record fanout sweeps its leases from.
    async fn revoke_lapsed_grant(
        &self,
        grant: &LapsedGrant,
        revocation: &Revocation,
        event: &AuditEvent,
    ) -> Result<bool>;
}

/// Public keys of subject-token issuers.
#[async_trait]
pub trait IssuerKeys: Send + Sync {
    /// The issuer's JWK Set, with the verification keys built from it; `refresh` asks for a fresh
    /// copy (rate-limited by the implementation) because the token names a `kid` the cached copy
    /// lacks.
    async fn jwks(&self, issuer: &Issuer, refresh: bool) -> Result<std::sync::Arc<IssuerKeySet>>;
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
