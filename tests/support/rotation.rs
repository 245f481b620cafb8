//! Rotation against moto: the production adapters (DynamoDB registry, KMS encrypt and key
//! lifecycle, the HTTP hook client) behind a controllable clock, and a store wrapper that makes one
//! adapter call fail, before or after it lands, to stand in for a run killed at that point.

use crate::{Harness, attr, now};
use async_trait::async_trait;
use nhi_broker::aws::dynamo::Item;
use nhi_broker::aws::dynamo::{DynamoKeyRing, DynamoRotationStore};
use nhi_broker::aws::kms::{KmsKeyAdmin, KmsSecretCipher, KmsSigner};
use nhi_broker::domain::{
    Alphabet, AuditEvent, RotationNotice, RotationPolicy, RotationStep, Secret, SecretGenerator, SecretRotationState,
    UnixTime, VersionStage, secret_encryption_context,
};
use nhi_broker::error::{BrokerError, Result};
use nhi_broker::ports::{Clock, Promotion, RotationStore, SecretEncryptor};
use nhi_broker::redact::SecretString;
use nhi_broker::rotation::{HttpRotationHook, KeyRotationSettings, RotationService, RotationSettings};
use nhi_broker::testing::FixedClock;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Which adapter call fails, and whether it fails before reaching DynamoDB or after landing there
/// (the run dies before learning it succeeded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    Before(&'static str),
    After(&'static str),
}

/// Delegates to the DynamoDB store; fails the named call once.
pub struct CrashingStore {
    pub inner: DynamoRotationStore,
    pub crash: Mutex<Option<Crash>>,
}

impl CrashingStore {
    fn crashed() -> BrokerError {
        BrokerError::Internal("simulated crash".into())
    }

    /// Fail before the call when armed for it.
    fn before(&self, call: &'static str) -> Result<()> {
        let mut crash = self.crash.lock().unwrap();
        if *crash == Some(Crash::Before(call)) {
            *crash = None;
            return Err(Self::crashed());
        }
        Ok(())
    }

    /// Fail after the call landed when armed for it.
    fn after<T>(&self, call: &'static str, result: Result<T>) -> Result<T> {
        let mut crash = self.crash.lock().unwrap();
        if result.is_ok() && *crash == Some(Crash::After(call)) {
            *crash = None;
            return Err(Self::crashed());
        }
        result
    }
}

#[async_trait]
impl RotationStore for CrashingStore {
    async fn due_secrets(&self, now: UnixTime, limit: usize) -> Result<Vec<String>> {
        self.inner.due_secrets(now, limit).await
    }
    async fn count_due(&self, now: UnixTime) -> Result<u64> {
        self.inner.count_due(now).await
    }
    async fn rotation_state(&self, secret_id: &str) -> Result<Option<SecretRotationState>> {
        self.inner.rotation_state(secret_id).await
    }
    async fn version_stage(&self, secret_id: &str, version: &str) -> Result<Option<VersionStage>> {
        self.inner.version_stage(secret_id, version).await
    }
    async fn stage_pending(
        &self,
        secret_id: &str,
        expected_current: Option<&str>,
        version: &str,
        ciphertext: Vec<u8>,
        now: UnixTime,
    ) -> Result<bool> {
        self.before("stage_pending")?;
        let result = self
            .inner
            .stage_pending(secret_id, expected_current, version, ciphertext, now)
            .await;
        self.after("stage_pending", result)
    }
    async fn advance_step(&self, secret_id: &str, version: &str, from: RotationStep, to: RotationStep) -> Result<bool> {
        let call = match to {
            RotationStep::Set => "set",
            _ => "test",
        };
        self.before(call)?;
        let result = self.inner.advance_step(secret_id, version, from, to).await;
        self.after(call, result)
    }
    async fn destinations_for(&self, secret_id: &str) -> Result<Vec<String>> {
        self.inner.destinations_for(secret_id).await
    }
    async fn promote(&self, promotion: &Promotion, event: &AuditEvent, notice: &RotationNotice) -> Result<bool> {
        self.before("promote")?;
        let result = self.inner.promote(promotion, event, notice).await;
        self.after("promote", result)
    }
    async fn retire_previous(
        &self,
        secret_id: &str,
        version: &str,
        next_due_at: UnixTime,
        revocation: &nhi_broker::domain::Revocation,
        event: &AuditEvent,
    ) -> Result<bool> {
        self.inner
            .retire_previous(secret_id, version, next_due_at, revocation, event)
            .await
    }
    async fn reschedule(&self, secret_id: &str, due_at: UnixTime) -> Result<()> {
        self.inner.reschedule(secret_id, due_at).await
    }
    async fn record_failure(&self, secret_id: &str, failure: &str, at: UnixTime) -> Result<()> {
        self.inner.record_failure(secret_id, failure, at).await
    }
}

/// One rotate "execution environment": its own store (and audit chain), clock and key ring.
pub struct Rotator {
    pub service: RotationService,
    pub clock: Arc<FixedClock>,
    pub store: Arc<CrashingStore>,
    /// Every AWS request this rotator sent.
    pub calls: nhi_broker::aws::call_counter::CallCounter,
}

impl Rotator {
    /// Rotate wired to moto, with the clock at `at`, signing through the key ring `ring`.
    pub async fn new(h: &Harness, at: UnixTime, ring: &str, bootstrap_key: &str) -> Self {
        let sdk = nhi_broker::aws::sdk_config().await;
        let clients = nhi_broker::aws::Clients::new(&sdk);
        let config = &h.config;
        let clock = Arc::new(FixedClock::at(at));
        let key_ring = Arc::new(DynamoKeyRing::new(
            clients.dynamo.clone(),
            &config.registry_table,
            &config.audit_table,
            ring,
        ));
        let signer = Arc::new(KmsSigner::with_ring(
            clients.kms.clone(),
            bootstrap_key,
            key_ring.clone(),
            std::time::Duration::ZERO,
        ));
        let store = Arc::new(CrashingStore {
            inner: DynamoRotationStore::new(
                clients.dynamo.clone(),
                &config.registry_table,
                &config.audit_table,
                &config.revocations_table,
            ),
            crash: Mutex::new(None),
        });
        let service = RotationService {
            store: store.clone(),
            encryptor: Arc::new(KmsSecretCipher::new(clients.kms.clone(), &config.secrets_key_id)),
            hook: Arc::new(HttpRotationHook::new(signer, clock.clone(), &config.broker_issuer).unwrap()),
            key_ring,
            key_admin: Arc::new(
                KmsKeyAdmin::new(clients.kms.clone(), config.rotation.signing_key_policy())
                    .with_wrapping_key(&config.secrets_key_id),
            ),
            clock: clock.clone(),
            settings: RotationSettings {
                batch_size: config.rotation.batch_size,
                concurrency: config.rotation.concurrency,
                keys: KeyRotationSettings::derived(bootstrap_key, KEY_MAX_AGE, config.max_token_ttl_seconds, 0, 30, 7),
            },
        };
        Self {
            service,
            clock,
            store,
            calls: clients.calls,
        }
    }

    /// Rotate on the harness' deployed signing key, in a ring no other test touches.
    pub async fn for_secrets(h: &Harness, at: UnixTime) -> Self {
        Self::new(h, at, &format!("secrets-{}", h.id), &h.config.signing_key_id).await
    }

    pub fn set_clock(&self, at: UnixTime) {
        self.clock.0.store(at, Ordering::SeqCst);
    }

    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }

    pub fn crash_at(&self, crash: Crash) {
        *self.store.crash.lock().unwrap() = Some(crash);
    }
}

pub const INTERVAL: i64 = 3600;
/// Signing keys are replaced at this age in tests (longer than every publication window).
pub const KEY_MAX_AGE: i64 = 86_400;
pub const GRACE: i64 = 900;

pub fn random_policy() -> RotationPolicy {
    RotationPolicy {
        interval_seconds: INTERVAL,
        grace_seconds: GRACE,
        generator: SecretGenerator::Random {
            length: 40,
            alphabet: Alphabet::Alphanumeric,
        },
    }
}

/// A secret with a first value `v1` (encrypted by KMS under its context) and `policy`, so its
/// first rotation is due one interval after now.
pub async fn secret_with_value(h: &Harness, name: &str, policy: RotationPolicy, value: &str) -> String {
    let id = format!("{name}-{}", h.id);
    let mut secret = Secret {
        id: id.clone(),
        owner: "team".into(),
        environment: "prod".into(),
        enabled: true,
        description: "rotation test".into(),
        rotation: None,
    };
    h.registry.put_secret(&secret).await.unwrap();
    let sdk = nhi_broker::aws::sdk_config().await;
    let cipher = KmsSecretCipher::new(aws_sdk_kms::Client::new(&sdk), &h.config.secrets_key_id);
    let ciphertext = cipher
        .encrypt(
            &SecretString::new(value.into()),
            &secret_encryption_context(&id, "v1", "prod"),
        )
        .await
        .unwrap();
    h.registry
        .set_current_version(&id, "v1", ciphertext, now())
        .await
        .unwrap();
    secret.rotation = Some(policy);
    h.registry.put_secret(&secret).await.unwrap();
    id
}

/// Every item in a secret's collection: the secret, its versions and destination links.
pub async fn secret_items(h: &Harness, secret_id: &str) -> Vec<Item> {
    h.registry.collection(&format!("SECRET#{secret_id}")).await.unwrap()
}

/// (version, stage) of every stored version, sorted by version.
pub async fn version_stages(h: &Harness, secret_id: &str) -> Vec<(String, String)> {
    let mut stages: Vec<(String, String)> = secret_items(h, secret_id)
        .await
        .iter()
        .filter(|i| attr(i, "sk").starts_with("VERSION#"))
        .map(|i| (attr(i, "version").to_string(), attr(i, "stage").to_string()))
        .collect();
    stages.sort();
    stages
}

pub async fn secret_item(h: &Harness, secret_id: &str) -> Item {
    secret_items(h, secret_id)
        .await
        .into_iter()
        .find(|i| attr(i, "sk") == "#SECRET")
        .expect("secret item")
}

/// `secret_rotated` audit events and rotation notices recorded for a secret.
pub async fn rotation_records(h: &Harness, secret_id: &str) -> (Vec<Item>, Vec<Item>) {
    let events = h
        .scan(
            &h.config.audit_table,
            "target = :t AND reason = :r",
            &[(":t", secret_id), (":r", "secret_rotated")],
        )
        .await;
    let notices = h
        .scan(
            &h.config.revocations_table,
            "pk = :pk",
            &[(":pk", &format!("rotation#{secret_id}"))],
        )
        .await;
    (events, notices)
}
