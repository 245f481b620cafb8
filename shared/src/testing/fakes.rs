//! In-memory fakes of every port, for fast unit tests. The AWS adapters are tested against moto.

use crate::domain::{AuditEvent, Fence, Grant, Issuer, Lease, LeaseStatus, Revocation, Target, UnixTime};
use crate::error::{BrokerError, Result, TokenRejection};
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
    /// Standing fences, by `Fence::scope`.
    pub fences: Mutex<std::collections::HashSet<String>>,
}

impl InMemoryLedger {
    /// The subject's fence, else its issuer's, if raised.
    fn standing_fence(&self, issuer: &str, subject: &str) -> Option<Fence> {
        let fences = self.fences.lock().unwrap();
        [
            Fence::Subject {
                issuer: issuer.into(),
                subject: subject.into(),
            },
            Fence::Issuer(issuer.into()),
        ]
        .into_iter()
        .find(|f| fences.contains(&f.scope()))
    }

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
        match self.standing_fence(&lease.issuer, &lease.subject) {
            Some(Fence::Subject { .. }) => return Err(BrokerError::TokenRejected(TokenRejection::SubjectRevoked)),
            Some(Fence::Issuer(_)) => return Err(BrokerError::TokenRejected(TokenRejection::IssuerDisabled)),
            None => {}
        }
        if let Some(guard) = replay
            && !self.replay_keys.lock().unwrap().insert(guard.key.clone())
        {
            return Err(BrokerError::TokenRejected(TokenRejection::Replayed));
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

    async fn fence(&self, issuer: &str, subject: &str) -> Result<Option<Fence>> {
        Ok(self.standing_fence(issuer, subject))
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
        if stored.kind == crate::domain::TargetKind::Jwt {
            self.denied.lock().unwrap().insert(stored.lease_id.clone());
        }
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
    pub api: crate::http::BrokerApi,
    pub ledger: std::sync::Arc<InMemoryLedger>,
    pub issuer: crate::testing::demo_issuer::DemoIssuer,
}

impl FakeBroker {
    pub fn new(issuer: &str, grant: crate::domain::Grant, target: Target, now: UnixTime) -> Self {
        use crate::domain::JwksSource;
        use std::sync::Arc;
        let demo = crate::testing::demo_issuer::DemoIssuer::generate(issuer).expect("key generation");
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
                crate::exchange::jwks::HttpIssuerKeys::new(crate::exchange::jwks::JwksSettings::default())
                    .expect("http client"),
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
            api: crate::http::BrokerApi::new(service),
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

// ---------------------------------------------------------------- revocation fanout

use crate::domain::{ChangeEvent, Delivery, DeliveryStatus, Destination, TargetKind};
use crate::ports::{
    DeliveryLedger, FanoutLedger, FanoutRegistry, LeasePage, LeaseScope, Notifier, NotifyFailure, SessionDenier,
};

/// Leases, the jti deny list and saved sweep progress, with the adapter's conditions.
#[derive(Default)]
pub struct InMemoryFanoutLedger {
    pub leases: Mutex<Vec<Lease>>,
    pub denied: Mutex<std::collections::HashSet<String>>,
    pub events: Mutex<Vec<AuditEvent>>,
    pub progress: Mutex<Vec<(String, String)>>,
    /// The next this many `revoke_derived` calls fail (a crash part-way through a page).
    pub fail_next_revocations: std::sync::atomic::AtomicU32,
}

fn in_scope(lease: &Lease, scope: &LeaseScope) -> bool {
    match scope {
        LeaseScope::Lease(id) => &lease.lease_id == id,
        LeaseScope::Grant(id) => &lease.grant_id == id,
        LeaseScope::Subject { issuer, subject } => &lease.issuer == issuer && &lease.subject == subject,
        LeaseScope::Secret(id) => lease.kind == TargetKind::Secret && &lease.target == id,
        LeaseScope::SecretVersion { secret_id, version } => {
            lease.kind == TargetKind::Secret
                && &lease.target == secret_id
                && lease.secret_version.as_deref() == Some(version.as_str())
        }
        LeaseScope::Nothing => false,
    }
}

#[async_trait]
impl FanoutLedger for InMemoryFanoutLedger {
    async fn active_leases(
        &self,
        scope: &LeaseScope,
        now: UnixTime,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<LeasePage> {
        // The cursor is the position after the last lease read, as LastEvaluatedKey would be.
        let start: usize = cursor.and_then(|c| c.parse().ok()).unwrap_or(0);
        let leases = self.leases.lock().unwrap();
        let mut page = Vec::new();
        let mut position = start;
        while position < leases.len() && page.len() < limit {
            let lease = &leases[position];
            position += 1;
            if in_scope(lease, scope) && lease.status == LeaseStatus::Active && lease.expires_at > now {
                page.push(lease.clone());
            }
        }
        let next = (position < leases.len()).then(|| position.to_string());
        Ok(LeasePage { leases: page, next })
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

    async fn revoke_derived(&self, lease: &Lease, _revocation: &Revocation, event: &AuditEvent) -> Result<bool> {
        if self
            .fail_next_revocations
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(BrokerError::Aws {
                service: "dynamodb",
                operation: "TransactWriteItems",
                code: "InternalServerError".into(),
                retryable: true,
            });
        }
        let mut leases = self.leases.lock().unwrap();
        let Some(stored) = leases
            .iter_mut()
            .find(|l| l.lease_id == lease.lease_id && l.status == LeaseStatus::Active)
        else {
            return Ok(false);
        };
        stored.status = LeaseStatus::Revoked;
        if stored.kind == TargetKind::Jwt {
            self.denied.lock().unwrap().insert(stored.lease_id.clone());
        }
        self.events.lock().unwrap().push(event.clone());
        Ok(true)
    }

    async fn save_progress(&self, revocation: &Revocation, cursor: &str) -> Result<()> {
        self.progress
            .lock()
            .unwrap()
            .push((revocation.revocation_id.clone(), cursor.to_string()));
        Ok(())
    }
}

/// Destinations, their links to secrets, and what revocations disabled.
#[derive(Default)]
pub struct InMemoryFanoutRegistry {
    pub destinations: Mutex<HashMap<String, Destination>>,
    pub disabled: Mutex<std::collections::HashSet<String>>,
}

impl InMemoryFanoutRegistry {
    pub fn with(destinations: impl IntoIterator<Item = Destination>) -> Self {
        let registry = Self::default();
        registry
            .destinations
            .lock()
            .unwrap()
            .extend(destinations.into_iter().map(|d| (d.id.clone(), d)));
        registry
    }
}

#[async_trait]
impl FanoutRegistry for InMemoryFanoutRegistry {
    async fn disable_target(&self, revocation: &Revocation) -> Result<bool> {
        Ok(self.disabled.lock().unwrap().insert(format!(
            "{}:{}",
            revocation.target_kind.as_str(),
            revocation.target_id
        )))
    }

    async fn destinations_of_secret(&self, secret_id: &str) -> Result<Vec<String>> {
        let mut ids: Vec<String> = self
            .destinations
            .lock()
            .unwrap()
            .values()
            .filter(|d| d.secrets.iter().any(|s| s == secret_id))
            .map(|d| d.id.clone())
            .collect();
        ids.sort();
        Ok(ids)
    }

    async fn destination(&self, id: &str) -> Result<Option<Destination>> {
        Ok(self.destinations.lock().unwrap().get(id).cloned())
    }
}

/// Delivery records keyed by (destination, event), changed only if unchanged since read.
#[derive(Default)]
pub struct InMemoryDeliveries {
    pub records: Mutex<HashMap<(String, String), Delivery>>,
    pub events: Mutex<Vec<AuditEvent>>,
}

impl InMemoryDeliveries {
    pub fn get(&self, destination_id: &str, event_id: &str) -> Option<Delivery> {
        self.records
            .lock()
            .unwrap()
            .get(&(destination_id.to_string(), event_id.to_string()))
            .cloned()
    }
}

#[async_trait]
impl DeliveryLedger for InMemoryDeliveries {
    async fn open(&self, delivery: &Delivery) -> Result<Delivery> {
        let key = (delivery.destination_id.clone(), delivery.event.event_id().to_string());
        Ok(self
            .records
            .lock()
            .unwrap()
            .entry(key)
            .or_insert_with(|| delivery.clone())
            .clone())
    }

    async fn update(&self, before: &Delivery, after: &Delivery, event: Option<&AuditEvent>) -> Result<bool> {
        let key = (before.destination_id.clone(), before.event.event_id().to_string());
        let mut records = self.records.lock().unwrap();
        match records.get(&key) {
            Some(stored) if stored.status == before.status && stored.attempts == before.attempts => {
                records.insert(key, after.clone());
                if let Some(event) = event {
                    self.events.lock().unwrap().push(event.clone());
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn due(&self, now: UnixTime, limit: usize) -> Result<Vec<Delivery>> {
        let mut due: Vec<Delivery> = self
            .records
            .lock()
            .unwrap()
            .values()
            .filter(|d| d.status == DeliveryStatus::Pending && d.next_attempt_at.is_some_and(|t| t <= now))
            .cloned()
            .collect();
        due.sort_by_key(|d| d.next_attempt_at);
        due.truncate(limit);
        Ok(due)
    }

    async fn overdue(&self, now: UnixTime, limit: usize) -> Result<Vec<Delivery>> {
        let mut overdue: Vec<Delivery> = self
            .records
            .lock()
            .unwrap()
            .values()
            .filter(|d| d.status == DeliveryStatus::Pending && d.confirm_by <= now)
            .cloned()
            .collect();
        overdue.sort_by_key(|d| d.confirm_by);
        overdue.truncate(limit);
        Ok(overdue)
    }
}

/// Records what would have been sent; destinations listed in `failing` do not acknowledge.
#[derive(Default)]
pub struct RecordingNotifier {
    pub sent: Mutex<Vec<(String, String, ChangeEvent)>>,
    pub failing: Mutex<std::collections::HashSet<String>>,
}

#[async_trait]
impl Notifier for RecordingNotifier {
    async fn notify(
        &self,
        destination: &Destination,
        event: &ChangeEvent,
        jti: &str,
    ) -> std::result::Result<String, NotifyFailure> {
        self.sent
            .lock()
            .unwrap()
            .push((destination.id.clone(), jti.to_string(), event.clone()));
        if self.failing.lock().unwrap().contains(&destination.id) {
            Err(NotifyFailure("http_500".into()))
        } else {
            Ok("http_202".into())
        }
    }
}

/// Records denied AWS sessions per role, in call order.
#[derive(Default)]
pub struct RecordingSessionDenier {
    pub denied: Mutex<Vec<(String, Vec<String>)>>,
}

#[async_trait]
impl SessionDenier for RecordingSessionDenier {
    async fn deny_sessions(&self, role_arn: &str, sessions: &[(String, UnixTime)], _now: UnixTime) -> Result<()> {
        self.denied.lock().unwrap().push((
            role_arn.to_string(),
            sessions.iter().map(|(id, _)| id.clone()).collect(),
        ));
        Ok(())
    }
}
