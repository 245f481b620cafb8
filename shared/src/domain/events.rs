//! Change events owed to destinations and the records of their delivery.

use super::*;
use serde::{Deserialize, Serialize};

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
        let digest = crate::crypto::sha256(format!("{}\n{}", self.event.event_id(), self.destination_id).as_bytes());
        hex::encode(&digest[..16])
    }
}
