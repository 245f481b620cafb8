//! The broker's signing keys and their ring.

use super::*;
use serde::{Deserialize, Serialize};

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
