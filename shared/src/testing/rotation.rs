//! Fakes of the rotation flow's ports.

use crate::domain::{AuditEvent, Revocation, UnixTime};
use crate::error::{BrokerError, Result};
use crate::redact::SecretString;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

/// Rotation state in memory, with the same conditions as the DynamoDB adapter.
#[derive(Default)]
pub struct InMemoryRotationStore {
    pub secrets: Mutex<HashMap<String, crate::domain::SecretRotationState>>,
    pub stages: Mutex<HashMap<(String, String), crate::domain::VersionStage>>,
    pub notices: Mutex<Vec<crate::domain::RotationNotice>>,
    pub events: Mutex<Vec<AuditEvent>>,
}

impl InMemoryRotationStore {
    pub fn insert(&self, state: crate::domain::SecretRotationState) {
        if let Some(v) = &state.current_version {
            self.stages.lock().unwrap().insert(
                (state.secret.id.clone(), v.clone()),
                crate::domain::VersionStage::Current,
            );
        }
        self.secrets.lock().unwrap().insert(state.secret.id.clone(), state);
    }

    fn due(&self, now: UnixTime) -> Vec<(UnixTime, String)> {
        let mut due: Vec<(UnixTime, String)> = self
            .secrets
            .lock()
            .unwrap()
            .values()
            .filter(|s| s.secret.rotation.is_some())
            .filter_map(|s| s.due_at.filter(|d| *d <= now).map(|d| (d, s.secret.id.clone())))
            .collect();
        due.sort();
        due
    }
}

#[async_trait]
impl crate::ports::RotationStore for InMemoryRotationStore {
    async fn due_secrets(&self, now: UnixTime, limit: usize) -> Result<Vec<String>> {
        Ok(self.due(now).into_iter().take(limit).map(|(_, id)| id).collect())
    }

    async fn count_due(&self, now: UnixTime) -> Result<u64> {
        Ok(self.due(now).len() as u64)
    }

    async fn rotation_state(&self, secret_id: &str) -> Result<Option<crate::domain::SecretRotationState>> {
        Ok(self.secrets.lock().unwrap().get(secret_id).cloned())
    }

    async fn version_stage(&self, secret_id: &str, version: &str) -> Result<Option<crate::domain::VersionStage>> {
        Ok(self
            .stages
            .lock()
            .unwrap()
            .get(&(secret_id.to_string(), version.to_string()))
            .copied())
    }

    async fn stage_pending(
        &self,
        secret_id: &str,
        expected_current: Option<&str>,
        version: &str,
        _ciphertext: Vec<u8>,
        _now: UnixTime,
    ) -> Result<bool> {
        let mut secrets = self.secrets.lock().unwrap();
        let Some(s) = secrets.get_mut(secret_id) else {
            return Ok(false);
        };
        if s.pending_version.is_some() || s.current_version.as_deref() != expected_current {
            return Ok(false);
        }
        s.pending_version = Some(version.into());
        s.rotation_step = Some(crate::domain::RotationStep::Created);
        self.stages
            .lock()
            .unwrap()
            .insert((secret_id.into(), version.into()), crate::domain::VersionStage::Pending);
        Ok(true)
    }

    async fn advance_step(
        &self,
        secret_id: &str,
        version: &str,
        from: crate::domain::RotationStep,
        to: crate::domain::RotationStep,
    ) -> Result<bool> {
        let mut secrets = self.secrets.lock().unwrap();
        let Some(s) = secrets.get_mut(secret_id) else {
            return Ok(false);
        };
        if s.pending_version.as_deref() != Some(version) || s.rotation_step != Some(from) {
            return Ok(false);
        }
        s.rotation_step = Some(to);
        Ok(true)
    }

    async fn destinations_for(&self, _secret_id: &str) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    async fn promote(
        &self,
        p: &crate::ports::Promotion,
        event: &AuditEvent,
        notice: &crate::domain::RotationNotice,
    ) -> Result<bool> {
        use crate::domain::{RotationStep, VersionStage};
        let mut secrets = self.secrets.lock().unwrap();
        let Some(s) = secrets.get_mut(&p.secret_id) else {
            return Ok(false);
        };
        if s.pending_version.as_deref() != Some(&p.new_version)
            || s.rotation_step != Some(RotationStep::Tested)
            || s.current_version != p.old_version
        {
            return Ok(false);
        }
        let mut stages = self.stages.lock().unwrap();
        stages.insert((p.secret_id.clone(), p.new_version.clone()), VersionStage::Current);
        if let Some(old) = &p.old_version {
            stages.insert((p.secret_id.clone(), old.clone()), VersionStage::Previous);
        }
        if let Some((deprecated, _)) = &p.deprecated {
            stages.insert((p.secret_id.clone(), deprecated.clone()), VersionStage::Deprecated);
        }
        s.previous_version = p.old_version.clone();
        s.previous_expires_at = p.old_version.as_ref().map(|_| p.previous_expires_at);
        s.current_version = Some(p.new_version.clone());
        s.pending_version = None;
        s.rotation_step = None;
        s.due_at = Some(p.next_due_at);
        self.notices.lock().unwrap().push(notice.clone());
        self.events.lock().unwrap().push(event.clone());
        Ok(true)
    }

    async fn retire_previous(
        &self,
        secret_id: &str,
        version: &str,
        next_due_at: UnixTime,
        _revocation: &Revocation,
        event: &AuditEvent,
    ) -> Result<bool> {
        let mut secrets = self.secrets.lock().unwrap();
        let Some(s) = secrets.get_mut(secret_id) else {
            return Ok(false);
        };
        if s.previous_version.as_deref() != Some(version) {
            return Ok(false);
        }
        s.previous_version = None;
        s.previous_expires_at = None;
        s.due_at = Some(next_due_at);
        self.stages.lock().unwrap().insert(
            (secret_id.into(), version.into()),
            crate::domain::VersionStage::Deprecated,
        );
        self.events.lock().unwrap().push(event.clone());
        Ok(true)
    }

    async fn reschedule(&self, secret_id: &str, due_at: UnixTime) -> Result<()> {
        if let Some(s) = self.secrets.lock().unwrap().get_mut(secret_id) {
            s.due_at = Some(due_at);
        }
        Ok(())
    }
}

/// A rotation hook that answers every call with `fail` (an unreachable owner) or with a value.
#[derive(Default)]
pub struct ScriptedHook {
    pub fail: std::sync::atomic::AtomicBool,
    pub calls: Mutex<Vec<(crate::ports::HookAction, String)>>,
}

#[async_trait]
impl crate::ports::RotationHook for ScriptedHook {
    async fn call(
        &self,
        _url: &str,
        action: crate::ports::HookAction,
        _secret_id: &str,
        version: &str,
    ) -> Result<Option<SecretString>> {
        self.calls.lock().unwrap().push((action, version.to_string()));
        if self.fail.load(Ordering::SeqCst) {
            return Err(BrokerError::RotationHookFailed("HTTP503".into()));
        }
        Ok((action == crate::ports::HookAction::Create).then(|| SecretString::new(format!("made-for-{version}"))))
    }
}

/// The signing-key ring in memory (conditional on its version, as the DynamoDB adapter is).
#[derive(Default)]
pub struct InMemoryKeyRing(pub Mutex<Option<crate::domain::KeyRing>>);

#[async_trait]
impl crate::ports::KeyRingStore for InMemoryKeyRing {
    async fn load(&self) -> Result<Option<crate::domain::KeyRing>> {
        Ok(self.0.lock().unwrap().clone())
    }

    async fn save(&self, ring: &crate::domain::KeyRing, expected: Option<i64>, _event: &AuditEvent) -> Result<bool> {
        let mut stored = self.0.lock().unwrap();
        if stored.as_ref().map(|r| r.version) != expected {
            return Ok(false);
        }
        *stored = Some(ring.clone());
        Ok(true)
    }
}

/// Hands out key ids and records deletions, in place of KMS.
#[derive(Default)]
pub struct RecordingKeyAdmin {
    pub created: Mutex<Vec<String>>,
    pub deleted: Mutex<Vec<String>>,
}

#[async_trait]
impl crate::ports::SigningKeyAdmin for RecordingKeyAdmin {
    async fn create_signing_key(&self, _description: &str) -> Result<String> {
        let mut created = self.created.lock().unwrap();
        let id = format!("key-{}", created.len() + 1);
        created.push(id.clone());
        Ok(id)
    }

    async fn schedule_key_deletion(&self, key_id: &str, _days: i32) -> Result<()> {
        self.deleted.lock().unwrap().push(key_id.to_string());
        Ok(())
    }

    /// A real public key; the "ciphertext" is a marker no KMS would decrypt.
    async fn create_envelope_key(&self, kid: &str) -> Result<crate::domain::EnvelopeKey> {
        use base64::Engine;
        self.created.lock().unwrap().push(kid.to_string());
        let (spki, _) = crate::aws::envelope::generate_envelope_key_pair();
        Ok(crate::domain::EnvelopeKey {
            public_key: base64::engine::general_purpose::STANDARD.encode(spki),
            private_key_ciphertext: "fake".into(),
        })
    }
}
