//! The broker's data model. Plain data: storage layout lives in the adapters, rules in `policy`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Unix time in seconds.
pub type UnixTime = i64;

/// Token type URIs (RFC 8693 section 3).
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const GRANT_TYPE_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// A lease on a stored secret's CURRENT value (broker-defined token type).
pub const TOKEN_TYPE_SECRET: &str = "urn:nhi-broker:token-type:secret";
/// AWS STS session credentials for a role the grant allows (broker-defined token type).
pub const TOKEN_TYPE_AWS_CREDENTIALS: &str = "urn:nhi-broker:token-type:aws-credentials";
/// STS session bounds: shorter sessions cannot be issued, so grants below the minimum are refused.
pub const STS_MIN_SESSION_SECONDS: i64 = 900;
pub const STS_MAX_SESSION_SECONDS: i64 = 43_200;

/// How the broker obtains an issuer's public keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JwksSource {
    /// Fetched over HTTPS (plain HTTP only to loopback, for local runs), cached in memory.
    Url { url: String },
    /// Stored with the issuer, for private clusters that publish no JWKS endpoint. A JSON JWK Set.
    Static { jwks: String },
}

/// A trusted identity provider whose tokens the broker accepts as subject tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issuer {
    /// The exact `iss` value its tokens carry; also the issuer's identity in the registry.
    pub issuer: String,
    /// Human-friendly name ("github-actions", "prod-eks").
    pub name: String,
    /// Tokens must name one of these in `aud` (the broker's audience at this issuer).
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    /// Signature algorithms accepted from this issuer. Asymmetric only; see `tokens::ALLOWED_ALGS`.
    pub algorithms: Vec<String>,
    pub enabled: bool,
    /// Each subject token (by `jti`) may be exchanged once; tokens without `jti` are refused.
    #[serde(default)]
    pub one_time_jti: bool,
}

/// What kind of credential a target is released as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// A broker-signed JWT whose `aud` is the target id.
    Jwt,
    /// The CURRENT value of a stored secret whose id is the target id.
    Secret,
    /// STS session credentials for the IAM role whose ARN is the target id.
    AwsRole,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jwt => "jwt",
            Self::Secret => "secret",
            Self::AwsRole => "aws_role",
        }
    }
}

/// A stored secret. Its material lives in versions, encrypted under KMS with an encryption context
/// binding each ciphertext to secret id, version and environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    pub id: String,
    pub owner: String,
    pub environment: String,
    pub enabled: bool,
    #[serde(default)]
    pub description: String,
    /// How and how often new versions are made; `None`: the secret is never rotated by schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationPolicy>,
}

impl Secret {
    /// The release target a grant names to allow leases on this secret.
    pub fn as_target(&self) -> Target {
        Target {
            id: self.id.clone(),
            kind: TargetKind::Secret,
            environment: self.environment.clone(),
            owner: self.owner.clone(),
            enabled: self.enabled,
        }
    }
}

/// A secret's rotation policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationPolicy {
    /// Time from one rotation to the next is due.
    pub interval_seconds: i64,
    /// How long the replaced version stays PREVIOUS (still decryptable, its leases still valid)
    /// before it is deprecated and its leases revoked.
    pub grace_seconds: i64,
    pub generator: SecretGenerator,
}

/// Bounds operators may choose within (rotate also enforces them on stored records).
pub const MIN_ROTATION_INTERVAL_SECONDS: i64 = 60;
pub const MAX_GRACE_SECONDS: i64 = 30 * 24 * 3600;

impl RotationPolicy {
    /// Why this policy cannot be used, if it cannot.
    pub fn problem(&self) -> Option<&'static str> {
        if self.interval_seconds < MIN_ROTATION_INTERVAL_SECONDS {
            return Some("rotation interval is below 60 s");
        }
        if !(0..=MAX_GRACE_SECONDS).contains(&self.grace_seconds) {
            return Some("grace period must be between 0 and 30 days");
        }
        match &self.generator {
            SecretGenerator::Random { length, .. } if !(16..=4096).contains(length) => {
                Some("random secrets must be 16 to 4096 characters long")
            }
            SecretGenerator::Hook { url } if !crate::exchange::jwks::is_allowed_url(url) => {
                Some("rotation hook must be an https URL (http only to loopback)")
            }
            _ => None,
        }
    }
}

/// Where a new secret version comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SecretGenerator {
    /// Random characters from an alphabet, from the OS CSPRNG.
    Random { length: usize, alphabet: Alphabet },
    /// The owning system's rotation endpoint makes the credential (e.g. a new API key) and returns
    /// it; it is told when the version is staged, tested and promoted.
    Hook { url: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Alphabet {
    /// A-Z a-z 0-9
    Alphanumeric,
    /// 0-9 a-f
    Hex,
    /// A-Z a-z 0-9 - _
    Base64url,
    /// Printable ASCII without space, quotes or backslash.
    Printable,
}

impl Alphabet {
    pub fn chars(self) -> &'static [u8] {
        match self {
            Self::Alphanumeric => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            Self::Hex => b"0123456789abcdef",
            Self::Base64url => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
            Self::Printable => {
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&()*+,-./:;<=>?@[]^_{|}~"
            }
        }
    }
}

/// Stage labels of secret versions (as in AWS Secrets Manager). Exactly one version is CURRENT;
/// at most one is PENDING (a rotation in progress) and one PREVIOUS (within its grace period).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VersionStage {
    Pending,
    Current,
    Previous,
    /// Past its grace period: never released again, its leases revoked.
    Deprecated,
}

impl VersionStage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Current => "CURRENT",
            Self::Previous => "PREVIOUS",
            Self::Deprecated => "DEPRECATED",
        }
    }
}

/// Where a rotation in progress stands. Each step is a conditional write, so a crashed run resumes
/// at the step it reached and overlapping runs cannot both advance it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RotationStep {
    /// PENDING version generated, encrypted and stored.
    Created,
    /// The owning system was told (hook secrets) that PENDING is staged.
    Set,
    /// PENDING passed its test; next is promotion to CURRENT.
    Tested,
}

impl RotationStep {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Set => "set",
            Self::Tested => "tested",
        }
    }
}

/// A secret's rotation bookkeeping, as rotate reads it (never the material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRotationState {
    pub secret: Secret,
    pub current_version: Option<String>,
    pub previous_version: Option<String>,
    /// When PREVIOUS stops being valid.
    pub previous_expires_at: Option<UnixTime>,
    pub pending_version: Option<String>,
    pub rotation_step: Option<RotationStep>,
    /// When rotate next has work for this secret (rotation due, or PREVIOUS's grace over).
    pub due_at: Option<UnixTime>,
}

/// Something outside the broker that holds a copy of one or more secrets and must be told when
/// they rotate or are revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    pub id: String,
    pub kind: DestinationKind,
    /// Ids of the secrets this destination holds a copy of.
    pub secrets: Vec<String>,
    pub owner: String,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DestinationKind {
    /// Receives Security Event Tokens (RFC 8417) pushed over HTTPS (RFC 8935).
    Webhook { url: String },
    /// Receives events through EventBridge `PutEvents` on this bus.
    EventBridge { event_bus_arn: String },
}

/// A rotation, queued for delivery to every destination holding the secret (revoke-fanout
/// delivers it from the revocations table's stream). Version ids only, never values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationNotice {
    pub notice_id: String,
    pub secret_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_version: Option<String>,
    pub new_version: String,
    /// Destination ids registered for the secret when it rotated.
    pub destinations: Vec<String>,
    pub at: UnixTime,
}

/// Lifecycle of a broker signing key (a KMS ECC_NIST_P256 key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SigningKeyState {
    /// Published in the JWKS, not signing yet, so relying parties learn it before its first token.
    Next,
    /// Signs every new token. Exactly one key is active.
    Active,
    /// Signs nothing; published until every token it signed has expired.
    Retired,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKey {
    /// KMS key id; also the JWS `kid`.
    pub key_id: String,
    pub state: SigningKeyState,
    pub created_at: UnixTime,
    /// Next keys: when they may become active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activate_at: Option<UnixTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_at: Option<UnixTime>,
    /// Retired keys: stay in the JWKS until then, then are scheduled for deletion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_until: Option<UnixTime>,
}

/// Every signing key the broker currently publishes, stored as one item and changed only by a
/// conditional write on `version`, so overlapping rotate runs cannot both change it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRing {
    pub keys: Vec<SigningKey>,
    /// Keys already unpublished whose KMS deletion is still to be scheduled (kept so a run that
    /// dies in between leaves no orphan key).
    #[serde(default)]
    pub pending_deletion: Vec<String>,
    /// Incremented by every change.
    pub version: i64,
}

impl KeyRing {
    /// The ring before rotate first runs: the deployed key, active.
    pub fn bootstrap(key_id: &str, now: UnixTime) -> Self {
        Self {
            keys: vec![SigningKey {
                key_id: key_id.to_string(),
                state: SigningKeyState::Active,
                created_at: now,
                activate_at: None,
                activated_at: Some(now),
                publish_until: None,
            }],
            pending_deletion: Vec::new(),
            version: 0,
        }
    }

    pub fn active(&self) -> Option<&SigningKey> {
        self.keys.iter().find(|k| k.state == SigningKeyState::Active)
    }

    pub fn with_state(&self, state: SigningKeyState) -> Option<&SigningKey> {
        self.keys.iter().find(|k| k.state == state)
    }
}

/// KMS encryption context of one secret version: a ciphertext moved to another record, version or
/// environment no longer decrypts.
pub fn secret_encryption_context(secret_id: &str, version: &str, environment: &str) -> Vec<(String, String)> {
    vec![
        ("nhi:secret_id".into(), secret_id.into()),
        ("nhi:version".into(), version.into()),
        ("nhi:environment".into(), environment.into()),
    ]
}

/// Something the broker issues credentials for: for JWTs, an audience (an API, a service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The `audience`/`resource` value callers ask for.
    pub id: String,
    pub kind: TargetKind,
    /// The environment the target lives in ("prod", "staging"); grants must be for the same one.
    pub environment: String,
    pub owner: String,
    pub enabled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantStatus {
    Active,
    Revoked,
}

/// Who may obtain what. A grant matches a subject token when the issuer and `sub` match exactly and
/// every listed claim has one of its allowed values. Nothing matches by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    /// The issuer (`iss`) whose subjects this grant is for.
    pub issuer: String,
    /// Exact `sub` of the workload.
    pub subject: String,
    /// Extra claim conditions: each claim must be a string equal to one of the values.
    #[serde(default)]
    pub claims: BTreeMap<String, Vec<String>>,
    pub environment: String,
    /// Target ids this grant allows.
    pub targets: Vec<String>,
    /// Scopes this grant allows; requested scopes must be a subset. Empty: no scope may be requested.
    #[serde(default)]
    pub scopes: Vec<String>,
    pub max_ttl_seconds: i64,
    /// For AWS role targets: an IAM policy (JSON) attached to every session, which can only narrow
    /// what the role allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_policy: Option<String>,
    /// The approval for this access ends here; nothing is issued past it, and TTLs are cut to it.
    pub approval_expires_at: UnixTime,
    pub owner: String,
    pub justification: String,
    pub status: GrantStatus,
    pub created_at: UnixTime,
    /// The subject copies what it obtains into this destination (a sync job): its leases' copies
    /// live there, so the destination is told when they are revoked or expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivers_to: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseStatus {
    Active,
    Revoked,
    Expired,
}

impl LeaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        }
    }
}

/// One credential released to one subject: the unit of inventory, revocation and expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Also the `jti` of the broker JWT, so a token maps to its lease without an index.
    pub lease_id: String,
    pub kind: TargetKind,
    pub issuer: String,
    pub subject: String,
    pub grant_id: String,
    pub target: String,
    pub environment: String,
    pub scope: Vec<String>,
    /// Fingerprint of the subject token that was exchanged (never the token).
    pub subject_token_fingerprint: String,
    /// Signing key (`kid`) of the issued token; empty for non-JWT leases.
    pub key_id: String,
    /// For secret leases: the version released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_version: Option<String>,
    /// For AWS credential leases: the session's access key id (not secret; correlates CloudTrail).
    /// The session's `SourceIdentity` is the lease id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_access_key_id: Option<String>,
    pub issued_at: UnixTime,
    pub expires_at: UnixTime,
    pub status: LeaseStatus,
    /// Destination holding a copy of what this lease released (from the grant's `delivers_to`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
}

/// What happened, for the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    TokenExchange,
    Introspect,
    Revoke,
    /// A secret version promoted or retired, or a signing key created, activated, retired or deleted.
    Rotate,
    /// A lease or grant reached its end and was swept.
    Expire,
    /// A change event could not be confirmed by a destination.
    Deliver,
    /// An operator lifted a subject revocation (the block on new exchanges).
    Unrevoke,
    /// An operator changed the registry (apply, secret put, issuer or target put, destination
    /// resolve or redeliver).
    Register,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    Released,
    Denied,
    Revoked,
    Rotated,
    Expired,
    Unconfirmed,
    /// A block was lifted.
    Lifted,
    /// An operator's registry change was written.
    Applied,
    /// An operator resolved a destination's exposure (it confirmed what it had missed).
    Resolved,
}

/// A standing block on new releases, checked inside every release transaction, so no cache of
/// any warm execution environment can outlive it. Raised by a subject revocation (lifted only by
/// an operator's unrevoke) or by disabling an issuer (lifted by enabling it again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fence {
    Subject { issuer: String, subject: String },
    Issuer(String),
}

impl Fence {
    /// `<issuer>#<sub>`, as subject revocations name it; the issuer contains no `#` (OIDC issuers
    /// are URLs without fragments), the subject may.
    pub fn subject_from_id(id: &str) -> Option<Self> {
        let (issuer, subject) = id.split_once('#')?;
        (!issuer.is_empty() && !subject.is_empty()).then(|| Self::Subject {
            issuer: issuer.into(),
            subject: subject.into(),
        })
    }

    /// The fence's identity in storage: `subject#<iss>#<sub>` or `issuer#<iss>`.
    pub fn scope(&self) -> String {
        match self {
            Self::Subject { issuer, subject } => format!("subject#{issuer}#{subject}"),
            Self::Issuer(issuer) => format!("issuer#{issuer}"),
        }
    }
}

/// What a revocation names; revoke-fanout finds every lease and copy derived from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationTarget {
    Lease,
    /// One version of a secret (`<secret id>#<version>`), e.g. a PREVIOUS version past its grace.
    SecretVersion,
    /// A whole secret: every version, every lease, every destination holding it.
    Secret,
    /// A grant (by id): it stops matching, and its leases go with it.
    Grant,
    /// A workload identity (`<issuer>#<sub>`): every lease it holds.
    Subject,
    /// A destination: told to drop what it holds, and never told anything again.
    Destination,
}

impl RevocationTarget {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lease => "lease",
            Self::SecretVersion => "secret_version",
            Self::Secret => "secret",
            Self::Grant => "grant",
            Self::Subject => "subject",
            Self::Destination => "destination",
        }
    }

    pub fn parse(kind: &str) -> Option<Self> {
        [
            Self::Lease,
            Self::SecretVersion,
            Self::Secret,
            Self::Grant,
            Self::Subject,
            Self::Destination,
        ]
        .into_iter()
        .find(|k| k.as_str() == kind)
    }
}

/// What a destination is told: a revocation or a rotation, never a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum ChangeEvent {
    Revoked {
        event_id: String,
        target_kind: RevocationTarget,
        target_id: String,
        reason: String,
        at: UnixTime,
    },
    Rotated {
        event_id: String,
        secret_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        old_version: Option<String>,
        new_version: String,
        at: UnixTime,
    },
}

impl ChangeEvent {
    /// The revocation id or rotation notice id.
    pub fn event_id(&self) -> &str {
        match self {
            Self::Revoked { event_id, .. } | Self::Rotated { event_id, .. } => event_id,
        }
    }

    /// `<kind>:<id>` of what changed (the SET `sub_id`).
    pub fn subject(&self) -> String {
        match self {
            Self::Revoked {
                target_kind, target_id, ..
            } => format!("{}:{target_id}", target_kind.as_str()),
            Self::Rotated { secret_id, .. } => format!("secret:{secret_id}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not yet acknowledged; retried with backoff.
    Pending,
    /// The destination acknowledged it (webhook 2xx, EventBridge entry accepted).
    Confirmed,
    /// Retries exhausted or the confirmation window passed: the destination is treated as exposed.
    Unconfirmed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Confirmed => "confirmed",
            Self::Unconfirmed => "unconfirmed",
        }
    }
}

/// One change event owed to one destination, and the proof of what happened to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub destination_id: String,
    pub event: ChangeEvent,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub created_at: UnixTime,
    /// Unconfirmed after this, whatever the retries say (drift).
    pub confirm_by: UnixTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<UnixTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<UnixTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_at: Option<UnixTime>,
    /// A short code (`http_500`, `unreachable`, `failed_entry`), never a response body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What the destination answered when it confirmed (HTTP status or EventBridge event id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<String>,
}

impl Delivery {
    /// The SET `jti`: the same for every attempt, so receivers drop duplicates (RFC 8417 2.2).
    pub fn jti(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(format!("{}\n{}", self.event.event_id(), self.destination_id));
        hex::encode(&digest[..16])
    }
}

/// A revocation record: written once, propagated by revoke-fanout from the revocations stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub revocation_id: String,
    pub target_kind: RevocationTarget,
    pub target_id: String,
    /// Who revoked: `holder:<iss>#<sub>` for self-revocation, `operator:<name>` for operators.
    pub actor: String,
    pub reason: String,
    pub at: UnixTime,
}

/// The reserved target a grant must list to let its subject call the introspection endpoint.
pub const INTROSPECTION_TARGET: &str = "urn:nhi-broker:introspection";

/// One audit event, as the domain sees it. The ledger adds the chain position and hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub event_id: String,
    pub at: UnixTime,
    pub action: AuditAction,
    pub outcome: AuditOutcome,
    /// `iss` of the actor, if the subject token got far enough to name one.
    pub actor_issuer: Option<String>,
    pub actor_subject: Option<String>,
    pub target: Option<String>,
    pub grant_id: Option<String>,
    pub lease_id: Option<String>,
    /// Stable reason code for denials (`token_expired`, `policy_no_grant`...).
    pub reason: Option<String>,
    /// SHA-256 fingerprint of the presented subject token.
    pub token_fingerprint: Option<String>,
    /// Rotations: the version (or signing key) replaced and the one that replaced it. Never values.
    /// Absent from events without them, so older events hash as they did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_version: Option<String>,
    /// The API request that caused the event (its id is in the response the caller saw and in the
    /// log line), so an operator can go from what a caller reports to the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl AuditEvent {
    /// A new event (time-ordered id) with no actor, target or reason yet: set those with struct update.
    pub fn new(action: AuditAction, outcome: AuditOutcome, at: UnixTime) -> Self {
        Self {
            event_id: uuid::Uuid::now_v7().to_string(),
            at,
            action,
            outcome,
            actor_issuer: None,
            actor_subject: None,
            target: None,
            grant_id: None,
            lease_id: None,
            reason: None,
            token_fingerprint: None,
            old_version: None,
            new_version: None,
            request_id: None,
        }
    }
}
