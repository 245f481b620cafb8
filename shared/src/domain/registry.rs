//! What operators register: issuers, targets, secrets (with rotation policy and version stages),
//! grants and destinations.

use super::*;
use serde::{Deserialize, Serialize};

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
    /// How much of a grant's `subject_pattern` must be literal for this issuer: at least this many
    /// whole segments (text ended by `:` or `/`) before the first wildcard, so that no pattern
    /// can reach across the issuer's tenants (2 for GitHub: `repo:<owner>/`).
    #[serde(default = "default_pattern_prefix_segments")]
    pub pattern_prefix_segments: u32,
}

fn default_pattern_prefix_segments() -> u32 {
    DEFAULT_PATTERN_PREFIX_SEGMENTS
}

/// Without an issuer setting, a pattern's first segment must be literal.
pub const DEFAULT_PATTERN_PREFIX_SEGMENTS: u32 = 1;

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
            SecretGenerator::Hook { url } if !crate::domain::is_allowed_url(url) => {
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
