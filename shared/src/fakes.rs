//! In-memory fakes of every port, for fast unit tests. The AWS adapters are tested against moto.

use crate::domain::{AuditEvent, Grant, Issuer, Lease, LeaseStatus, Revocation, Target, UnixTime};
use crate::error::{BrokerError, Result};
use crate::ports::{
    AssumeRoleRequest, AwsSessionCredentials, Clock, CurrentSecret, LeaseLedger, PolicyStore, ReplayGuard, RoleAssumer,
    SecretDecryptor, SecretEncryptor, SecretStore, TokenSigner,
};
use crate::redact::SecretString;
use async_trait::async_trait;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

#[derive(Default)]
pub struct InMemoryPolicy {
    pub issuers: Mutex<HashMap<String, Issuer>>,
    pub grants: Mutex<Vec<Grant>>,
    pub targets: Mutex<HashMap<String, Target>>,
}

impl InMemoryPolicy {
    pub fn with(issuers: Vec<Issuer>, grants: Vec<Grant>, targets: Vec<Target>) -> Self {
        Self {
            issuers: Mutex::new(issuers.into_iter().map(|i| (i.issuer.clone(), i)).collect()),
            grants: Mutex::new(grants),
            targets: Mutex::new(targets.into_iter().map(|t| (t.id.clone(), t)).collect()),
        }
    }
}

#[async_trait]
impl PolicyStore for InMemoryPolicy {
    async fn issuer_with_grants(&self, issuer: &str) -> Result<Option<(Issuer, Vec<Grant>)>> {
        let issuers = self.issuers.lock().unwrap();
        Ok(issuers.get(issuer).map(|i| {
            let grants = self
                .grants
                .lock()
                .unwrap()
                .iter()
                .filter(|g| g.issuer == issuer)
                .cloned()
                .collect();
            (i.clone(), grants)
        }))
    }

    async fn target(&self, id: &str) -> Result<Option<Target>> {
        Ok(self.targets.lock().unwrap().get(id).cloned())
    }
}

#[derive(Default)]
pub struct InMemoryLedger {
    pub leases: Mutex<Vec<Lease>>,
    pub events: Mutex<Vec<AuditEvent>>,
    pub replay_keys: Mutex<std::collections::HashSet<String>>,
    pub revocations: Mutex<Vec<Revocation>>,
    /// Revoked broker JWT ids (the jti deny list).
    pub denied: Mutex<std::collections::HashSet<String>>,
    /// When set, every write fails as DynamoDB would under throttling.
    pub fail_writes: std::sync::atomic::AtomicBool,
}

impl InMemoryLedger {
    fn check(&self) -> Result<()> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(BrokerError::Aws {
                service: "dynamodb",
                operation: "TransactWriteItems",
                code: "ThrottlingException".into(),
                retryable: true,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl LeaseLedger for InMemoryLedger {
    async fn record_release(&self, lease: &Lease, event: &AuditEvent, replay: Option<&ReplayGuard>) -> Result<()> {
        self.check()?;
        if let Some(guard) = replay
            && !self.replay_keys.lock().unwrap().insert(guard.key.clone())
        {
            return Err(BrokerError::TokenRejected(crate::error::TokenRejection::Replayed));
        }
        self.leases.lock().unwrap().push(lease.clone());
        self.events.lock().unwrap().push(event.clone());
        Ok(())
    }

    async fn record_denial(&self, event: &AuditEvent) -> Result<()> {
        self.check()?;
        self.events.lock().unwrap().push(event.clone());
        Ok(())
    }

    async fn lease(&self, lease_id: &str) -> Result<Option<Lease>> {
        Ok(self
            .leases
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.lease_id == lease_id)
            .cloned())
    }

    async fn is_denied(&self, jti: &str) -> Result<bool> {
        Ok(self.denied.lock().unwrap().contains(jti))
    }

    async fn revoke_lease(&self, lease: &Lease, revocation: &Revocation, event: &AuditEvent) -> Result<bool> {
        self.check()?;
        let mut leases = self.leases.lock().unwrap();
        let Some(stored) = leases
            .iter_mut()
            .find(|l| l.lease_id == lease.lease_id && l.status == LeaseStatus::Active)
        else {
            return Ok(false);
        };
        stored.status = LeaseStatus::Revoked;
        self.revocations.lock().unwrap().push(revocation.clone());
        self.events.lock().unwrap().push(event.clone());
        Ok(true)
    }
}

/// A local ES256 key standing in for KMS.
pub struct LocalSigner {
    key_id: String,
    pair: EcdsaKeyPair,
}

impl LocalSigner {
    pub fn generate(key_id: &str) -> Self {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .expect("P-256 key generation");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).expect("own pkcs8");
        Self {
            key_id: key_id.to_string(),
            pair,
        }
    }
}

#[async_trait]
impl TokenSigner for LocalSigner {
    async fn active_key_id(&self) -> Result<String> {
        Ok(self.key_id.clone())
    }

    async fn sign_es256(&self, key_id: &str, signing_input: &[u8]) -> Result<[u8; 64]> {
        if key_id != self.key_id {
            return Err(BrokerError::Internal("unknown signing key".into()));
        }
        let sig = self
            .pair
            .sign(&SystemRandom::new(), signing_input)
            .map_err(|_| BrokerError::Internal("signing failed".into()))?;
        let mut out = [0u8; 64];
        out.copy_from_slice(sig.as_ref());
        Ok(out)
    }

    async fn public_jwks(&self) -> Result<JwkSet> {
        let point = self.pair.public_key().as_ref();
        serde_json::from_value(serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.key_id,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }]}))
        .map_err(|e| BrokerError::Internal(e.to_string()))
    }
}

pub struct FixedClock(pub AtomicI64);

impl FixedClock {
    pub fn at(now: UnixTime) -> Self {
        Self(AtomicI64::new(now))
    }
}

impl Clock for FixedClock {
    fn now(&self) -> UnixTime {
        self.0.load(Ordering::SeqCst)
    }
}

/// Secrets by id with their CURRENT version.
#[derive(Default)]
pub struct InMemorySecrets(pub Mutex<HashMap<String, CurrentSecret>>);

#[async_trait]
impl SecretStore for InMemorySecrets {
    async fn current(&self, secret_id: &str) -> Result<Option<CurrentSecret>> {
        Ok(self.0.lock().unwrap().get(secret_id).cloned())
    }
}

/// Stands in for KMS: the "ciphertext" records its encryption context, and decryption under any
/// other context fails, as KMS does. Not encryption: tests only.
#[derive(Default)]
pub struct ContextBoundCipher;

fn seal(context: &[(String, String)]) -> String {
    context
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

#[async_trait]
impl SecretEncryptor for ContextBoundCipher {
    async fn encrypt(&self, plaintext: &SecretString, context: &[(String, String)]) -> Result<Vec<u8>> {
        Ok(format!("{}\n{}", seal(context), plaintext.expose()).into_bytes())
    }
}

#[async_trait]
impl SecretDecryptor for ContextBoundCipher {
    async fn decrypt(&self, ciphertext: &[u8], context: &[(String, String)]) -> Result<SecretString> {
        let text = std::str::from_utf8(ciphertext).map_err(|_| BrokerError::CorruptRecord("ciphertext".into()))?;
        match text.split_once('\n') {
            Some((sealed, value)) if sealed == seal(context) => Ok(SecretString::new(value.to_string())),
            _ => Err(BrokerError::Aws {
                service: "kms",
                operation: "Decrypt",
                code: "InvalidCiphertextException".into(),
                retryable: false,
            }),
        }
    }
}

/// Records what would be sent to STS and returns made-up credentials.
#[derive(Default)]
pub struct RecordingRoleAssumer(pub Mutex<Vec<AssumeRoleRequest>>);

#[async_trait]
impl RoleAssumer for RecordingRoleAssumer {
    async fn assume_role(&self, request: &AssumeRoleRequest) -> Result<AwsSessionCredentials> {
        self.0.lock().unwrap().push(request.clone());
        Ok(AwsSessionCredentials {
            access_key_id: "ASIAFAKEFAKEFAKE".into(),
            secret_access_key: SecretString::new(format!("fake-secret-{}", request.source_identity)),
            session_token: SecretString::new(format!("fake-session-{}", request.source_identity)),
            expiration: 0,
        })
    }
}

/// The broker wired entirely to fakes: one issuer (a static JWKS read through the production
/// `HttpIssuerKeys`), one JWT target and one grant for `subject` on it, at a fixed clock.
pub struct FakeBroker {
    pub api: crate::http_api::BrokerApi,
    pub ledger: std::sync::Arc<InMemoryLedger>,
    pub issuer: crate::demo_issuer::DemoIssuer,
}

impl FakeBroker {
    pub fn new(issuer: &str, grant: crate::domain::Grant, target: Target, now: UnixTime) -> Self {
        use crate::domain::JwksSource;
        use std::sync::Arc;
        let demo = crate::demo_issuer::DemoIssuer::generate(issuer).expect("key generation");
        let policy = InMemoryPolicy::with(
            vec![Issuer {
                issuer: issuer.into(),
                name: "fake-idp".into(),
                audiences: vec!["nhi-broker".into()],
                jwks: JwksSource::Static {
                    jwks: demo.jwks_json().to_string(),
                },
                algorithms: vec!["ES256".into()],
                enabled: true,
                one_time_jti: false,
            }],
            vec![grant],
            vec![target],
        );
        let ledger = Arc::new(InMemoryLedger::default());
        let service = crate::exchange::ExchangeService {
            policy: Arc::new(policy),
            ledger: ledger.clone(),
            signer: Arc::new(LocalSigner::generate("test-key")),
            issuer_keys: Arc::new(
                crate::jwks::HttpIssuerKeys::new(crate::jwks::JwksSettings::default()).expect("http client"),
            ),
            secrets: Arc::new(InMemorySecrets::default()),
            decryptor: Arc::new(ContextBoundCipher),
            roles: Arc::new(RecordingRoleAssumer::default()),
            clock: Arc::new(FixedClock::at(now)),
            settings: crate::exchange::ExchangeSettings {
                broker_issuer: "https://broker.example.com".into(),
                max_token_ttl_seconds: 3600,
                clock_leeway_seconds: 30,
            },
        };
        Self {
            api: crate::http_api::BrokerApi::new(service),
            ledger,
            issuer: demo,
        }
    }
}

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
}
