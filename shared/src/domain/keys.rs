//! The broker's signing keys and their ring.
//!
//! Two kinds of key live in one ring, each with its own lifecycle (next, active, retired):
//! - KMS keys (ECC_NIST_P256, SIGN_VERIFY): every signature is a KMS `Sign` call. Always present:
//!   revoke-fanout and rotate sign with them, and they never decrypt anything.
//! - envelope keys (signing mode `envelope`): P-256 key pairs made by KMS
//!   `GenerateDataKeyPairWithoutPlaintext`; the ring holds the public key and the private key
//!   encrypted under the secrets key (encryption context `nhi:purpose=signing-key`, `nhi:kid`).
//!   Only exchange decrypts it (once per execution environment) and signs in-process, past the
//!   per-account KMS request quota. They are short-lived: see `RotationConfig`.

use super::*;
use serde::{Deserialize, Serialize};

/// The `kid` prefix of envelope keys (KMS key ids are UUIDs or `mrk-...`).
pub const ENVELOPE_KID_PREFIX: &str = "env-";
/// Encryption-context value of `nhi:purpose` for envelope private keys.
pub const ENVELOPE_KEY_PURPOSE: &str = "signing-key";

/// How exchange signs the tokens it issues (`NHI_SIGNING_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SigningMode {
    /// Every token signed by KMS `Sign`: one CloudTrail record per signature.
    #[default]
    Kms,
    /// Tokens signed in-process with the active envelope key (KMS keys until one is active).
    Envelope,
}

impl SigningMode {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim() {
            "kms" => Some(Self::Kms),
            "envelope" => Some(Self::Envelope),
            _ => None,
        }
    }
}

/// The encryption context an envelope private key is bound to.
pub fn envelope_key_context(kid: &str) -> Vec<(String, String)> {
    vec![
        ("nhi:purpose".into(), ENVELOPE_KEY_PURPOSE.into()),
        ("nhi:kid".into(), kid.into()),
    ]
}

/// An envelope key's material as stored in the ring: nothing here is secret without KMS.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeKey {
    /// SubjectPublicKeyInfo DER, base64.
    pub public_key: String,
    /// The PKCS#8 private key as KMS encrypted it, base64.
    pub private_key_ciphertext: String,
}

impl std::fmt::Debug for EnvelopeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvelopeKey")
            .field(
                "private_key_ciphertext",
                &format_args!("<{} chars>", self.private_key_ciphertext.len()),
            )
            .finish_non_exhaustive()
    }
}

/// Lifecycle of a broker signing key (a KMS ECC_NIST_P256 key or an envelope key).
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
    /// Envelope keys only: their material (KMS keys have none here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope: Option<EnvelopeKey>,
}

impl SigningKey {
    /// A key created at `now`: published at once, signing from `activate_at`.
    pub fn next(key_id: String, now: UnixTime, activate_at: UnixTime, envelope: Option<EnvelopeKey>) -> Self {
        Self {
            key_id,
            state: SigningKeyState::Next,
            created_at: now,
            activate_at: Some(activate_at),
            activated_at: None,
            publish_until: None,
            envelope,
        }
    }

    pub fn is_envelope(&self) -> bool {
        self.envelope.is_some()
    }
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
                envelope: None,
            }],
            pending_deletion: Vec::new(),
            version: 0,
        }
    }

    /// The active KMS key: what every KMS signer (rotate, revoke-fanout, exchange in `kms` mode)
    /// signs with.
    pub fn active(&self) -> Option<&SigningKey> {
        self.with_state(SigningKeyState::Active, false)
    }

    /// The key of one kind (`envelope` or KMS) in `state`.
    pub fn with_state(&self, state: SigningKeyState, envelope: bool) -> Option<&SigningKey> {
        self.keys
            .iter()
            .find(|k| k.state == state && k.is_envelope() == envelope)
    }

    /// The key exchange signs with in `mode`: in envelope mode the active envelope key, or the
    /// active KMS key until the first envelope key is active.
    pub fn signing_key(&self, mode: SigningMode) -> Option<&SigningKey> {
        match mode {
            SigningMode::Kms => self.active(),
            SigningMode::Envelope => self.with_state(SigningKeyState::Active, true).or_else(|| self.active()),
        }
    }

    pub fn key(&self, kid: &str) -> Option<&SigningKey> {
        self.keys.iter().find(|k| k.key_id == kid)
    }
}
