//! Audit events.

use super::*;
use serde::{Deserialize, Serialize};

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

impl AuditAction {
    /// The stored name (as serde names it).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokenExchange => "token_exchange",
            Self::Introspect => "introspect",
            Self::Revoke => "revoke",
            Self::Rotate => "rotate",
            Self::Expire => "expire",
            Self::Deliver => "deliver",
            Self::Unrevoke => "unrevoke",
            Self::Register => "register",
        }
    }
}

impl AuditOutcome {
    /// The stored name (as serde names it).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Released => "released",
            Self::Denied => "denied",
            Self::Revoked => "revoked",
            Self::Rotated => "rotated",
            Self::Expired => "expired",
            Self::Unconfirmed => "unconfirmed",
            Self::Lifted => "lifted",
            Self::Applied => "applied",
            Self::Resolved => "resolved",
        }
    }
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
            event_id: super::id_text(uuid::Uuid::now_v7()),
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

/// Arbitrary audit events for property tests: every action and outcome, any text.
#[cfg(test)]
pub mod strategies {
    use super::*;
    use proptest::prelude::*;

    pub const ACTIONS: [AuditAction; 8] = [
        AuditAction::TokenExchange,
        AuditAction::Introspect,
        AuditAction::Revoke,
        AuditAction::Rotate,
        AuditAction::Expire,
        AuditAction::Deliver,
        AuditAction::Unrevoke,
        AuditAction::Register,
    ];
    pub const OUTCOMES: [AuditOutcome; 9] = [
        AuditOutcome::Released,
        AuditOutcome::Denied,
        AuditOutcome::Revoked,
        AuditOutcome::Rotated,
        AuditOutcome::Expired,
        AuditOutcome::Unconfirmed,
        AuditOutcome::Lifted,
        AuditOutcome::Applied,
        AuditOutcome::Resolved,
    ];

    /// Empty, id-like (with the characters JSON escapes), or anything.
    pub fn text() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[a-z0-9:/#._\\- \"\\\\]{1,24}", any::<String>()]
    }

    /// A struct literal: a member added to `AuditEvent` must be added here too.
    pub fn audit_event() -> impl Strategy<Value = AuditEvent> {
        let optional = || proptest::option::of(text());
        (
            (text(), any::<i64>(), 0..ACTIONS.len(), 0..OUTCOMES.len()),
            (optional(), optional(), optional(), optional(), optional()),
            (optional(), optional(), optional(), optional(), optional()),
        )
            .prop_map(
                |(
                    (event_id, at, action, outcome),
                    (actor_issuer, actor_subject, target, grant_id, lease_id),
                    (reason, token_fingerprint, old_version, new_version, request_id),
                )| AuditEvent {
                    event_id,
                    at,
                    action: ACTIONS[action],
                    outcome: OUTCOMES[outcome],
                    actor_issuer,
                    actor_subject,
                    target,
                    grant_id,
                    lease_id,
                    reason,
                    token_fingerprint,
                    old_version,
                    new_version,
                    request_id,
                },
            )
    }
}
