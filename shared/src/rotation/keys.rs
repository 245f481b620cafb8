//! The broker's signing-key ring: keys are published before they sign and after they retire,
//! and scheduled for deletion only once every token they signed has expired.
//!
//! KMS keys always have their lifecycle (rotate and revoke-fanout sign with them). In signing
//! mode `envelope` envelope keys have a second, shorter one beside it: the first run creates one
//! (published `overlap_seconds` before it signs), and each is replaced at
//! `envelope_max_age_seconds`. Back in mode `kms`, an active envelope key is retired (published
//! until its tokens expire, then dropped: it has no KMS key to delete).

use super::{MAX_ROUNDS, RotationService};
use crate::domain::{
    AuditAction, AuditEvent, AuditOutcome, ENVELOPE_KID_PREFIX, KeyRing, SigningKey, SigningKeyState, SigningMode,
    UnixTime,
};
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct KeyRotationSettings {
    /// The deployed key, active until the ring is first written.
    pub bootstrap_key_id: String,
    /// Age at which the active key is replaced; 0 never replaces it.
    pub max_age_seconds: i64,
    /// How long a next key is published before it signs: at least the longest token TTL, plus
    /// how long relying parties may cache the JWKS and functions the ring.
    pub overlap_seconds: i64,
    /// How long a retired key stays published: until every token it signed has expired.
    pub publish_after_retire_seconds: i64,
    pub deletion_window_days: i32,
    pub mode: SigningMode,
    /// Age at which an active envelope key is replaced (mode `envelope`).
    pub envelope_max_age_seconds: i64,
}

impl KeyRotationSettings {
    /// Overlap and publication windows that follow from the longest token TTL and the caches in
    /// front of the ring: the JWKS response (`max-age=300`) and each function's ring cache.
    pub fn derived(
        bootstrap_key_id: &str,
        max_age_seconds: i64,
        max_token_ttl_seconds: i64,
        ring_cache_seconds: i64,
        clock_leeway_seconds: i64,
        deletion_window_days: i32,
    ) -> Self {
        Self {
            bootstrap_key_id: bootstrap_key_id.to_string(),
            max_age_seconds,
            overlap_seconds: max_token_ttl_seconds + crate::http::JWKS_MAX_AGE_SECONDS + ring_cache_seconds,
            publish_after_retire_seconds: max_token_ttl_seconds + ring_cache_seconds + clock_leeway_seconds,
            deletion_window_days,
            mode: SigningMode::Kms,
            envelope_max_age_seconds: 86_400,
        }
    }

    pub fn with_envelope(self, mode: SigningMode, envelope_max_age_seconds: i64) -> Self {
        Self {
            mode,
            envelope_max_age_seconds,
            ..self
        }
    }
}

/// One signing-key ring transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyStep {
    /// Retired keys already removed from the ring, whose KMS deletion is not yet scheduled.
    ScheduleDeletion(String),
    /// A retired key past its publication window leaves the JWKS.
    Unpublish(String),
    Activate(String),
    /// A next KMS key (`false`) or envelope key (`true`).
    CreateNext {
        envelope: bool,
    },
    /// An active envelope key stops signing (mode `kms`).
    Retire(String),
    /// Persist the bootstrap ring, so the deployed key's age starts counting.
    Initialize,
}

/// The next ring transition at `now`, if any. Pure, so the schedule is unit-tested.
pub fn plan_key_step(ring: &KeyRing, stored: bool, now: UnixTime, settings: &KeyRotationSettings) -> Option<KeyStep> {
    if !stored {
        return Some(KeyStep::Initialize);
    }
    if let Some(kid) = ring.pending_deletion.first() {
        return Some(KeyStep::ScheduleDeletion(kid.clone()));
    }
    if let Some(k) = ring
        .keys
        .iter()
        .find(|k| k.state == SigningKeyState::Retired && k.publish_until.is_some_and(|t| t <= now))
    {
        return Some(KeyStep::Unpublish(k.key_id.clone()));
    }
    let envelope_mode = settings.mode == SigningMode::Envelope;
    if !envelope_mode && let Some(active) = ring.with_state(SigningKeyState::Active, true) {
        return Some(KeyStep::Retire(active.key_id.clone()));
    }
    plan_lineage(ring, false, settings.max_age_seconds, now).or_else(|| {
        envelope_mode
            .then(|| plan_lineage(ring, true, settings.envelope_max_age_seconds, now))
            .flatten()
    })
}

/// The next step of one kind's lifecycle: activate a due next key, or create one when the active
/// key is past `max_age` (or, for envelope keys, when there is none yet).
fn plan_lineage(ring: &KeyRing, envelope: bool, max_age: i64, now: UnixTime) -> Option<KeyStep> {
    if let Some(next) = ring.with_state(SigningKeyState::Next, envelope) {
        return next
            .activate_at
            .is_some_and(|t| t <= now)
            .then(|| KeyStep::Activate(next.key_id.clone()));
    }
    let Some(active) = ring.with_state(SigningKeyState::Active, envelope) else {
        return envelope.then_some(KeyStep::CreateNext { envelope });
    };
    let since = active.activated_at.unwrap_or(active.created_at);
    (max_age > 0 && since + max_age <= now).then_some(KeyStep::CreateNext { envelope })
}

impl RotationService {
    /// Advance the signing-key ring as far as `now` allows; returns what changed.
    pub async fn rotate_signing_keys(&self) -> Result<Vec<String>> {
        let settings = &self.settings.keys;
        let mut changes = Vec::new();
        for _ in 0..MAX_ROUNDS {
            let now = self.clock.now();
            let stored = self.key_ring.load().await?;
            let expected = stored.as_ref().map(|r| r.version);
            let mut ring = stored.unwrap_or_else(|| KeyRing::bootstrap(&settings.bootstrap_key_id, now));
            let Some(step) = plan_key_step(&ring, expected.is_some(), now, settings) else {
                break;
            };
            let replaced = match &step {
                KeyStep::Activate(kid) => ring
                    .key(kid)
                    .and_then(|next| ring.with_state(SigningKeyState::Active, next.is_envelope()))
                    .map(|k| k.key_id.clone()),
                _ => None,
            };
            let (reason, key_id) = match &step {
                KeyStep::Initialize => ("signing_key_ring_initialized", ring.active().map(|k| k.key_id.clone())),
                KeyStep::ScheduleDeletion(kid) => {
                    match self
                        .key_admin
                        .schedule_key_deletion(kid, settings.deletion_window_days)
                        .await
                    {
                        Ok(()) => {}
                        // Already pending deletion (a run died after scheduling it): done.
                        Err(e) if e.aws_code() == Some("KMSInvalidStateException") => {}
                        Err(e) => return Err(e),
                    }
                    ring.pending_deletion.retain(|k| k != kid);
                    ("signing_key_deletion_scheduled", Some(kid.clone()))
                }
                KeyStep::Unpublish(kid) => {
                    // An envelope key is gone with its ring entry; a KMS key is deleted next.
                    if ring.key(kid).is_some_and(|k| !k.is_envelope()) {
                        ring.pending_deletion.push(kid.clone());
                    }
                    ring.keys.retain(|k| &k.key_id != kid);
                    ("signing_key_unpublished", Some(kid.clone()))
                }
                KeyStep::Activate(kid) => {
                    let envelope = ring.key(kid).is_some_and(SigningKey::is_envelope);
                    for key in &mut ring.keys {
                        if key.state == SigningKeyState::Active && key.is_envelope() == envelope {
                            key.state = SigningKeyState::Retired;
                            key.publish_until = Some(now + settings.publish_after_retire_seconds);
                        } else if &key.key_id == kid {
                            key.state = SigningKeyState::Active;
                            key.activated_at = Some(now);
                        }
                    }
                    ("signing_key_activated", Some(kid.clone()))
                }
                KeyStep::Retire(kid) => {
                    for key in ring.keys.iter_mut().filter(|k| &k.key_id == kid) {
                        key.state = SigningKeyState::Retired;
                        key.publish_until = Some(now + settings.publish_after_retire_seconds);
                    }
                    ("signing_key_retired", Some(kid.clone()))
                }
                KeyStep::CreateNext { envelope } => {
                    let (kid, material) = if *envelope {
                        let kid = format!("{ENVELOPE_KID_PREFIX}{}", uuid::Uuid::now_v7().simple());
                        let material = self.key_admin.create_envelope_key(&kid).await?;
                        (kid, Some(material))
                    } else {
                        let kid = self
                            .key_admin
                            .create_signing_key("nhi-broker token signing key (ES256)")
                            .await?;
                        (kid, None)
                    };
                    ring.keys.push(SigningKey::next(
                        kid.clone(),
                        now,
                        now + settings.overlap_seconds,
                        material,
                    ));
                    ("signing_key_created", Some(kid))
                }
            };
            ring.version = expected.unwrap_or(0) + 1;
            let event = AuditEvent {
                actor_subject: Some("rotate".into()),
                target: Some(format!("signing-key:{}", key_id.as_deref().unwrap_or_default())),
                reason: Some(reason.into()),
                old_version: replaced,
                new_version: key_id.clone(),
                ..AuditEvent::new(AuditAction::Rotate, AuditOutcome::Rotated, now)
            };
            if self.key_ring.save(&ring, expected, &event).await? {
                tracing::info!(
                    reason,
                    key_id = key_id.as_deref().unwrap_or_default(),
                    "signing-key ring changed"
                );
                changes.push(format!("{reason}:{}", key_id.unwrap_or_default()));
            } else if let (KeyStep::CreateNext { envelope: false }, Some(kid)) = (&step, key_id) {
                // Another run added its own next key first; this one was never published (an
                // envelope key needs nothing: its material existed only in this run).
                self.key_admin
                    .schedule_key_deletion(&kid, settings.deletion_window_days)
                    .await?;
            }
        }
        Ok(changes)
    }
}
