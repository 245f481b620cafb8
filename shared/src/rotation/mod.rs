//! Rotation of stored secrets and of the broker's signing keys, independent of AWS.
//!
//! A secret rotates through four steps, as AWS Secrets Manager rotation functions do:
//! **create** (new material, encrypted under the new version's context, staged PENDING),
//! **set** (a hook secret's owning system is told the version is staged), **test** (the hook
//! confirms the credential works; a generated one is checked to be stored), **finish** (PENDING
//! becomes CURRENT, CURRENT becomes PREVIOUS for the grace period, the audit event and the notice
//! to every destination are written in the same transaction). Every step is a conditional write
//! on the state it was decided from, so a run that dies anywhere is resumed by the next, and two
//! overlapping runs advance each step once: one CURRENT, one PREVIOUS, one new version.
//!
//! Version ids are derived from the secret and the version they replace, so a run that dies
//! after a hook made a credential asks the hook again for the same version (hooks are idempotent
//! per version id) instead of orphaning it.

use crate::domain::{
    Alphabet, AuditAction, AuditEvent, AuditOutcome, Revocation, RevocationTarget, RotationNotice, RotationPolicy,
    RotationStep, SecretGenerator, SecretRotationState, UnixTime, VersionStage, secret_encryption_context,
};
use crate::error::{BrokerError, Result};
use crate::ports::{
    Clock, HookAction, KeyRingStore, Promotion, RotationHook, RotationStore, SecretEncryptor, SigningKeyAdmin,
};
use crate::redact::SecretString;
use futures::StreamExt;
use serde::Serialize;
use std::sync::Arc;
use zeroize::Zeroizing;

mod hook;
mod keys;

pub use hook::HttpRotationHook;
pub use keys::{KeyRotationSettings, KeyStep, plan_key_step};

/// A secret that failed to rotate waits this long before it is tried again, so a broken hook
/// cannot hold the head of the due index and starve every other secret.
pub const RETRY_BACKOFF_SECONDS: i64 = 300;
/// Re-reads per secret and call before giving up (each step is one; contention adds a few).
const MAX_ROUNDS: usize = 12;

#[derive(Debug, Clone)]
pub struct RotationSettings {
    pub batch_size: usize,
    pub concurrency: usize,
    pub keys: KeyRotationSettings,
}

pub struct RotationService {
    pub store: Arc<dyn RotationStore>,
    /// Rotate encrypts new material; it holds no decryptor.
    pub encryptor: Arc<dyn SecretEncryptor>,
    pub hook: Arc<dyn RotationHook>,
    pub key_ring: Arc<dyn KeyRingStore>,
    pub key_admin: Arc<dyn SigningKeyAdmin>,
    pub clock: Arc<dyn Clock>,
    pub settings: RotationSettings,
}

/// What one secret's rotation call did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SecretOutcome {
    Rotated {
        old_version: Option<String>,
        new_version: String,
    },
    /// PREVIOUS passed its grace period and was deprecated (its leases revoked); not due otherwise.
    PreviousRetired {
        version: String,
    },
    NotDue,
    /// Another run finished this rotation first.
    AlreadyRotated,
    Skipped {
        reason: &'static str,
    },
}

/// What one step of a rotation in progress did.
enum Advance {
    /// This run promoted PENDING.
    Done(SecretOutcome),
    /// This run's write moved the rotation to this step.
    To(RotationStep),
    /// Another run changed the state first.
    Lost,
}

/// A scheduled run's counts, logged as structured fields and returned to the invoker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunReport {
    pub rotated: u64,
    pub previous_retired: u64,
    pub not_due: u64,
    pub skipped: u64,
    pub failed: u64,
    /// Secrets still due after this run (left for the next one).
    pub remaining: u64,
    pub signing_key_changes: Vec<String>,
}

/// The id of the version that replaces `current` (see the module docs for why it is derived).
pub fn next_version_id(secret_id: &str, current: Option<&str>) -> String {
    let digest = crate::crypto::sha256(format!("{secret_id}\n{}", current.unwrap_or("")).as_bytes());
    format!("v-{}", hex::encode(&digest[..8]))
}

/// `length` characters drawn uniformly from `alphabet` with the OS CSPRNG (rejection sampling,
/// so no character is likelier than another).
pub fn random_secret(length: usize, alphabet: Alphabet) -> Result<SecretString> {
    let chars = alphabet.chars();
    let limit = 256 - (256 % chars.len());
    let mut out = Zeroizing::new(String::with_capacity(length));
    let mut buffer = Zeroizing::new([0u8; 64]);
    while out.len() < length {
        aws_lc_rs::rand::fill(&mut buffer[..]).map_err(|_| BrokerError::Internal("random source failed".into()))?;
        for &byte in buffer.iter().filter(|b| (**b as usize) < limit) {
            out.push(chars[byte as usize % chars.len()] as char);
            if out.len() == length {
                break;
            }
        }
    }
    Ok(SecretString::new(std::mem::take(&mut *out)))
}

fn rotation_event(secret_id: &str, reason: &str, old: Option<&str>, new: Option<&str>, now: UnixTime) -> AuditEvent {
    AuditEvent {
        actor_subject: Some("rotate".into()),
        target: Some(secret_id.to_string()),
        reason: Some(reason.to_string()),
        old_version: old.map(str::to_string),
        new_version: new.map(str::to_string),
        ..AuditEvent::new(AuditAction::Rotate, AuditOutcome::Rotated, now)
    }
}

fn version_revocation(secret_id: &str, version: &str, reason: &str, now: UnixTime) -> Revocation {
    Revocation {
        revocation_id: uuid::Uuid::now_v7().to_string(),
        target_kind: RevocationTarget::SecretVersion,
        target_id: format!("{secret_id}#{version}"),
        actor: "rotate".into(),
        reason: reason.into(),
        at: now,
    }
}

impl RotationService {
    /// A scheduled run: signing keys first, then one bounded batch of due secrets.
    pub async fn run_scheduled(&self) -> Result<RunReport> {
        let mut report = RunReport::default();
        match self.rotate_signing_keys().await {
            Ok(changes) => report.signing_key_changes = changes,
            Err(e) => {
                tracing::error!(error = %e, "signing-key rotation failed");
                report.failed += 1;
            }
        }
        let due = self
            .store
            .due_secrets(self.clock.now(), self.settings.batch_size)
            .await?;
        let outcomes: Vec<(String, Result<SecretOutcome>)> = futures::stream::iter(due)
            .map(|id| async move {
                let outcome = self.rotate_secret(&id, false).await;
                (id, outcome)
            })
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;
        for (secret_id, outcome) in outcomes {
            match outcome {
                Ok(SecretOutcome::Rotated { .. }) => report.rotated += 1,
                Ok(SecretOutcome::PreviousRetired { .. }) => report.previous_retired += 1,
                Ok(SecretOutcome::NotDue | SecretOutcome::AlreadyRotated) => report.not_due += 1,
                Ok(SecretOutcome::Skipped { reason }) => {
                    tracing::warn!(secret_id = %secret_id, reason, "secret skipped by rotation");
                    report.skipped += 1;
                }
                Err(e) => {
                    tracing::error!(secret_id = %secret_id, error = %e, "secret rotation failed; will resume");
                    report.failed += 1;
                    let retry_at = self.clock.now() + RETRY_BACKOFF_SECONDS;
                    if let Err(e) = self.store.reschedule(&secret_id, retry_at).await {
                        tracing::error!(secret_id = %secret_id, error = %e, "could not reschedule failed secret");
                    }
                    self.note_failure(&secret_id, &e.to_string()).await;
                }
            }
        }
        report.remaining = self.store.count_due(self.clock.now()).await?;
        Ok(report)
    }

    /// An operator's on-demand rotation (`brokerctl rotate`): rotate now, and note on the secret
    /// why it did not (a failure or a skip), for an operator waiting on it.
    pub async fn rotate_on_demand(&self, secret_id: &str) -> Result<SecretOutcome> {
        let outcome = self.rotate_secret(secret_id, true).await;
        match &outcome {
            Err(e) => self.note_failure(secret_id, &e.to_string()).await,
            Ok(SecretOutcome::Skipped { reason }) => self.note_failure(secret_id, &format!("skipped: {reason}")).await,
            Ok(_) => {}
        }
        outcome
    }

    async fn note_failure(&self, secret_id: &str, failure: &str) {
        let failure: String = failure.chars().take(300).collect();
        if let Err(e) = self.store.record_failure(secret_id, &failure, self.clock.now()).await {
            tracing::warn!(secret_id, error = %e, "could not note the rotation failure on the secret");
        }
    }

    /// Bring one secret to its rotation policy: resume a rotation in progress, deprecate a PREVIOUS
    /// past its grace period, and rotate when due (or at once when `force`, for on-demand runs).
    pub async fn rotate_secret(&self, secret_id: &str, force: bool) -> Result<SecretOutcome> {
        let mut started_from: Option<Option<String>> = None;
        let mut retired = None;
        // The state this run's own last write produced, when it landed: no need to read it back.
        let mut known: Option<SecretRotationState> = None;
        for _ in 0..MAX_ROUNDS {
            let now = self.clock.now();
            let state = match known.take() {
                Some(state) => state,
                None => match self.store.rotation_state(secret_id).await? {
                    Some(state) => state,
                    None => {
                        return Ok(SecretOutcome::Skipped {
                            reason: "unknown secret",
                        });
                    }
                },
            };
            let started = started_from
                .get_or_insert_with(|| state.current_version.clone())
                .clone();
            let Some(policy) = state.secret.rotation.clone() else {
                return Ok(SecretOutcome::Skipped {
                    reason: "the secret has no rotation policy",
                });
            };
            if let Some(reason) = policy.problem() {
                self.store.reschedule(secret_id, now + 86_400).await?;
                return Ok(SecretOutcome::Skipped { reason });
            }
            if !state.secret.enabled {
                self.store.reschedule(secret_id, now + policy.interval_seconds).await?;
                return Ok(SecretOutcome::Skipped {
                    reason: "the secret is disabled",
                });
            }
            match (&state.pending_version, state.rotation_step) {
                (Some(version), Some(step)) => {
                    match self.advance(&state, &policy, version, step, now).await? {
                        Advance::Done(outcome) => return Ok(outcome),
                        Advance::To(next) => {
                            known = Some(SecretRotationState {
                                rotation_step: Some(next),
                                ..state.clone()
                            });
                        }
                        // Another run moved it first: read what it did.
                        Advance::Lost => {}
                    }
                    continue;
                }
                (None, None) => {}
                _ => {
                    return Err(BrokerError::CorruptRecord(
                        "secret: pending version without step".into(),
                    ));
                }
            }
            if state.current_version != started {
                return Ok(SecretOutcome::AlreadyRotated);
            }
            if let (Some(previous), Some(expires_at)) = (&state.previous_version, state.previous_expires_at)
                && expires_at <= now
            {
                let next_due = expires_at - policy.grace_seconds + policy.interval_seconds;
                let event = rotation_event(secret_id, "previous_version_deprecated", Some(previous), None, now);
                let revocation = version_revocation(secret_id, previous, "previous version past its grace period", now);
                if self
                    .store
                    .retire_previous(secret_id, previous, next_due, &revocation, &event)
                    .await?
                {
                    tracing::info!(secret_id, version = %previous, "previous version deprecated");
                    retired = Some(previous.clone());
                }
                continue;
            }
            if !(force || state.due_at.is_some_and(|d| d <= now)) {
                return Ok(match retired {
                    Some(version) => SecretOutcome::PreviousRetired { version },
                    None => SecretOutcome::NotDue,
                });
            }
            if let Some(version) = self.create_pending(&state, &policy, now).await? {
                known = Some(SecretRotationState {
                    pending_version: Some(version),
                    rotation_step: Some(RotationStep::Created),
                    ..state
                });
            }
        }
        Err(BrokerError::Internal(format!("rotation of {secret_id} did not settle")))
    }

    /// Step 1: new material, encrypted under the new version's context, staged PENDING. Returns
    /// the version when this run's write landed.
    async fn create_pending(
        &self,
        state: &SecretRotationState,
        policy: &RotationPolicy,
        now: UnixTime,
    ) -> Result<Option<String>> {
        let secret = &state.secret;
        let version = next_version_id(&secret.id, state.current_version.as_deref());
        let value = match &policy.generator {
            SecretGenerator::Random { length, alphabet } => random_secret(*length, *alphabet)?,
            SecretGenerator::Hook { url } => self
                .hook
                .call(url, HookAction::Create, &secret.id, &version)
                .await?
                .ok_or(BrokerError::Internal("rotation hook returned no value".into()))?,
        };
        let context = secret_encryption_context(&secret.id, &version, &secret.environment);
        let ciphertext = self.encryptor.encrypt(&value, &context).await?;
        let staged = self
            .store
            .stage_pending(&secret.id, state.current_version.as_deref(), &version, ciphertext, now)
            .await?;
        // Not the value's fingerprint: a short or hook-made value could be guessed against it.
        tracing::info!(secret_id = %secret.id, version = %version, staged, "pending version created");
        Ok(staged.then_some(version))
    }

    /// Steps 2-4 for the rotation in progress.
    async fn advance(
        &self,
        state: &SecretRotationState,
        policy: &RotationPolicy,
        version: &str,
        step: RotationStep,
        now: UnixTime,
    ) -> Result<Advance> {
        let secret_id = state.secret.id.as_str();
        let hook_url = match &policy.generator {
            SecretGenerator::Hook { url } => Some(url.as_str()),
            SecretGenerator::Random { .. } => None,
        };
        match step {
            RotationStep::Created => {
                if let Some(url) = hook_url {
                    self.hook.call(url, HookAction::Set, secret_id, version).await?;
                }
                self.step(secret_id, version, RotationStep::Created, RotationStep::Set)
                    .await
            }
            RotationStep::Set => {
                match hook_url {
                    Some(url) => {
                        self.hook.call(url, HookAction::Test, secret_id, version).await?;
                    }
                    // Rotate cannot decrypt: a generated value is tested by being stored, encrypted
                    // and still PENDING.
                    None => {
                        if self.store.version_stage(secret_id, version).await? != Some(VersionStage::Pending) {
                            return Err(BrokerError::CorruptRecord(
                                "pending version is not stored as PENDING".into(),
                            ));
                        }
                    }
                }
                self.step(secret_id, version, RotationStep::Set, RotationStep::Tested)
                    .await
            }
            RotationStep::Tested => {
                let old = state.current_version.clone();
                // A PREVIOUS still in its grace period is replaced, so it is deprecated now.
                let deprecated = state.previous_version.as_ref().map(|previous| {
                    (
                        previous.clone(),
                        version_revocation(secret_id, previous, "replaced by a newer rotation", now),
                    )
                });
                let previous_expires_at = now + policy.grace_seconds;
                let next_due_at = match old {
                    Some(_) => previous_expires_at.min(now + policy.interval_seconds),
                    None => now + policy.interval_seconds,
                };
                let promotion = Promotion {
                    secret_id: secret_id.to_string(),
                    new_version: version.to_string(),
                    old_version: old.clone(),
                    previous_expires_at,
                    deprecated,
                    next_due_at,
                };
                let notice = RotationNotice {
                    notice_id: uuid::Uuid::now_v7().to_string(),
                    secret_id: secret_id.to_string(),
                    old_version: old.clone(),
                    new_version: version.to_string(),
                    destinations: self.store.destinations_for(secret_id).await?,
                    at: now,
                };
                let event = rotation_event(secret_id, "secret_rotated", old.as_deref(), Some(version), now);
                if !self.store.promote(&promotion, &event, &notice).await? {
                    return Ok(Advance::Lost);
                }
                tracing::info!(
                    secret_id,
                    old_version = old.as_deref().unwrap_or_default(),
                    new_version = version,
                    destinations = notice.destinations.len(),
                    "secret rotated"
                );
                if let Some(url) = hook_url
                    && let Err(e) = self.hook.call(url, HookAction::Finish, secret_id, version).await
                {
                    // The rotation is complete; the owner learns it from its next test or notice.
                    tracing::warn!(secret_id, error = %e, "rotation hook finish call failed");
                }
                Ok(Advance::Done(SecretOutcome::Rotated {
                    old_version: old,
                    new_version: version.to_string(),
                }))
            }
        }
    }

    async fn step(&self, secret_id: &str, version: &str, from: RotationStep, to: RotationStep) -> Result<Advance> {
        Ok(if self.store.advance_step(secret_id, version, from, to).await? {
            Advance::To(to)
        } else {
            Advance::Lost
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{KeyRing, SigningKey, SigningKeyState};

    fn settings() -> KeyRotationSettings {
        KeyRotationSettings::derived("k0", 1000, 600, 60, 30, 7)
    }

    fn stored(ring: &KeyRing) -> KeyRing {
        KeyRing {
            version: 1,
            ..ring.clone()
        }
    }

    #[test]
    fn key_ring_schedule_publishes_before_signing_and_after_retiring() {
        let s = settings();
        assert_eq!(s.overlap_seconds, 600 + 300 + 60);
        let ring = KeyRing::bootstrap("k0", 0);
        assert_eq!(plan_key_step(&ring, false, 0, &s), Some(KeyStep::Initialize));
        let ring = stored(&ring);
        assert_eq!(plan_key_step(&ring, true, 999, &s), None);
        assert_eq!(
            plan_key_step(&ring, true, 1000, &s),
            Some(KeyStep::CreateNext { envelope: false })
        );
        let mut ring = ring;
        ring.keys
            .push(SigningKey::next("k1".into(), 1000, 1000 + s.overlap_seconds, None));
        // Published, not signing, until the overlap has passed.
        assert_eq!(plan_key_step(&ring, true, 1000 + s.overlap_seconds - 1, &s), None);
        assert_eq!(
            plan_key_step(&ring, true, 1000 + s.overlap_seconds, &s),
            Some(KeyStep::Activate("k1".into()))
        );
        ring.keys[0].state = SigningKeyState::Retired;
        ring.keys[0].publish_until = Some(5000);
        ring.keys[1].state = SigningKeyState::Active;
        ring.keys[1].activated_at = Some(4000);
        assert_eq!(plan_key_step(&ring, true, 4999, &s), None);
        assert_eq!(
            plan_key_step(&ring, true, 5000, &s),
            Some(KeyStep::Unpublish("k0".into()))
        );
        ring.keys.remove(0);
        ring.pending_deletion.push("k0".into());
        assert_eq!(
            plan_key_step(&ring, true, 5000, &s),
            Some(KeyStep::ScheduleDeletion("k0".into()))
        );
    }

    #[test]
    fn envelope_keys_live_beside_kms_keys_with_their_own_shorter_lifecycle() {
        use crate::domain::{EnvelopeKey, SigningMode};
        let s = settings().with_envelope(SigningMode::Envelope, 5000);
        let mut ring = stored(&KeyRing::bootstrap("k0", 0));
        // The first run in envelope mode creates one at once; the KMS key keeps signing meanwhile.
        assert_eq!(
            plan_key_step(&ring, true, 10, &s),
            Some(KeyStep::CreateNext { envelope: true })
        );
        let material = EnvelopeKey {
            public_key: "p".into(),
            private_key_ciphertext: "c".into(),
        };
        ring.keys.push(SigningKey::next(
            "env-1".into(),
            10,
            10 + s.overlap_seconds,
            Some(material),
        ));
        assert_eq!(ring.signing_key(SigningMode::Envelope).unwrap().key_id, "k0");
        assert_eq!(plan_key_step(&ring, true, 9 + s.overlap_seconds, &s), None);
        assert_eq!(
            plan_key_step(&ring, true, 10 + s.overlap_seconds, &s),
            Some(KeyStep::Activate("env-1".into()))
        );
        ring.keys[1].state = SigningKeyState::Active;
        ring.keys[1].activated_at = Some(1000);
        assert_eq!(ring.signing_key(SigningMode::Envelope).unwrap().key_id, "env-1");
        assert_eq!(ring.signing_key(SigningMode::Kms).unwrap().key_id, "k0");
        assert_eq!(ring.active().unwrap().key_id, "k0", "KMS signers keep the KMS key");
        // Each lifecycle has its own max age: the KMS key's (1000) comes first.
        assert_eq!(
            plan_key_step(&ring, true, 1000, &s),
            Some(KeyStep::CreateNext { envelope: false })
        );
        ring.keys[0].activated_at = Some(10_000);
        assert_eq!(plan_key_step(&ring, true, 5999, &s), None);
        assert_eq!(
            plan_key_step(&ring, true, 6000, &s),
            Some(KeyStep::CreateNext { envelope: true })
        );
        // Back in kms mode the envelope key is retired (and later dropped, never KMS-deleted).
        let kms_mode = settings();
        assert_eq!(
            plan_key_step(&ring, true, 6000, &kms_mode),
            Some(KeyStep::Retire("env-1".into()))
        );
    }

    #[test]
    fn random_secrets_have_the_declared_length_and_alphabet() {
        for alphabet in [
            Alphabet::Alphanumeric,
            Alphabet::Hex,
            Alphabet::Base64url,
            Alphabet::Printable,
        ] {
            let value = random_secret(300, alphabet).unwrap();
            assert_eq!(value.len(), 300);
            assert!(value.expose().bytes().all(|b| alphabet.chars().contains(&b)));
        }
        // Every hex digit shows up in 4,096 draws; two draws differ.
        let value = random_secret(4096, Alphabet::Hex).unwrap();
        assert!(
            Alphabet::Hex
                .chars()
                .iter()
                .all(|c| value.expose().as_bytes().contains(c))
        );
        assert_ne!(
            random_secret(32, Alphabet::Hex).unwrap(),
            random_secret(32, Alphabet::Hex).unwrap()
        );
    }

    #[test]
    fn version_ids_follow_from_the_version_they_replace() {
        assert_eq!(next_version_id("s", Some("v1")), next_version_id("s", Some("v1")));
        assert_ne!(next_version_id("s", Some("v1")), next_version_id("s", Some("v2")));
        assert_ne!(next_version_id("s", None), next_version_id("t", None));
    }
}
