//! Fakes of the exchange flow's ports: policy, ledger, signer, clock, secrets, KMS, STS, and the
//! broker wired to them.

use crate::domain::{AuditEvent, Fence, Grant, Issuer, Lease, LeaseStatus, Revocation, SubjectMatch, Target, UnixTime};
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
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

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

impl InMemoryPolicy {
    fn grants_where(&self, issuer: &str, keep: impl Fn(&SubjectMatch) -> bool) -> Vec<Grant> {
        let grants = self.grants.lock().unwrap();
        grants
            .iter()
            .filter(|g| g.issuers.iter().any(|i| i == issuer) && keep(&g.subject))
            .cloned()
            .collect()
    }
}

/// Like the registry: every change of the grants is a new generation (here, their count and a
/// digest of their ids and statuses).
#[async_trait]
impl PolicyStore for InMemoryPolicy {
    async fn issuer_head(&self, issuer: &str) -> Result<Option<(Issuer, String)>> {
        let found = self.issuers.lock().unwrap().get(issuer).cloned();
        let generation = format!("{:?}", self.grants.lock().unwrap());
        Ok(found.map(|i| (i, generation)))
    }

    async fn exact_grants(&self, issuer: &str, subject: &str) -> Result<Vec<Grant>> {
        Ok(self.grants_where(issuer, |s| matches!(s, SubjectMatch::Exact(e) if e == subject)))
    }

    async fn pattern_grants(&self, issuer: &str) -> Result<Vec<Grant>> {
        Ok(self.grants_where(issuer, |s| matches!(s, SubjectMatch::Pattern(_))))
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
    /// When set, a release waits here (with the signer: proves the two overlap).
    pub rendezvous: Mutex<Option<Arc<tokio::sync::Barrier>>>,
}

impl InMemoryLedger {
    /// One lease by id, whatever its status (the one lease read both ledgers' fakes use).
    pub fn find_lease(&self, lease_id: &str) -> Option<Lease> {
        self.leases
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.lease_id == lease_id)
            .cloned()
    }

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
impl crate::ports::LeaseReader for InMemoryLedger {
    async fn lease(&self, lease_id: &str) -> Result<Option<Lease>> {
        Ok(self.find_lease(lease_id))
    }
}

#[async_trait]
impl LeaseLedger for InMemoryLedger {
    async fn record_release(&self, lease: &Lease, event: &AuditEvent, replay: Option<&ReplayGuard>) -> Result<()> {
        let rendezvous = self.rendezvous.lock().unwrap().clone();
        if let Some(barrier) = rendezvous {
            barrier.wait().await;
        }
        self.check()?;
        match self.standing_fence(&lease.issuer, &lease.subject) {
            Some(Fence::Subject { .. }) => return Err(BrokerError::TokenRejected(TokenRejection::SubjectRevoked)),
            Some(Fence::Issuer(_)) => return Err(BrokerError::TokenRejected(TokenRejection::IssuerDisabled)),
            Some(Fence::Grant(_) | Fence::Secret(_)) | None => {}
        }
        // As the registry's fences: a revoked grant or secret releases nothing, whatever was read.
        let fences = self.fences.lock().unwrap().clone();
        if fences.contains(&Fence::Grant(lease.grant_id.clone()).scope()) {
            return Err(BrokerError::PolicyDenied(crate::error::PolicyDenial::GrantRevoked));
        }
        if lease.kind == crate::domain::TargetKind::Secret
            && fences.contains(&Fence::Secret(lease.target.clone()).scope())
        {
            return Err(BrokerError::InvalidTarget("the secret is revoked"));
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
    /// When set, a signature waits here (with the ledger: proves the two overlap).
    pub rendezvous: Mutex<Option<Arc<tokio::sync::Barrier>>>,
    /// When set, signing fails as KMS would when the key is unusable.
    pub fail: std::sync::atomic::AtomicBool,
}

impl LocalSigner {
    pub fn generate(key_id: &str) -> Self {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .expect("P-256 key generation");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).expect("own pkcs8");
        Self {
            key_id: key_id.to_string(),
            pair,
            rendezvous: Mutex::new(None),
            fail: Default::default(),
        }
    }
}

#[async_trait]
impl TokenSigner for LocalSigner {
    async fn active_key_id(&self) -> Result<String> {
        Ok(self.key_id.clone())
    }

    async fn sign_es256(&self, key_id: &str, signing_input: &[u8]) -> Result<[u8; 64]> {
        let rendezvous = self.rendezvous.lock().unwrap().clone();
        if let Some(barrier) = rendezvous {
            barrier.wait().await;
        }
        if key_id != self.key_id || self.fail.load(Ordering::SeqCst) {
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
    pub signer: std::sync::Arc<LocalSigner>,
    pub issuer: crate::testing::demo_issuer::DemoIssuer,
}

impl FakeBroker {
    pub fn new(issuer: &str, grant: crate::domain::Grant, target: Target, now: UnixTime) -> Self {
        Self::with_grants(issuer, vec![grant], target, now, std::time::Duration::ZERO)
    }

    /// As `new`, with any number of grants and the policy catalog kept for `policy_ttl` (as the
    /// exchange keeps it on AWS; zero reads the fake registry on every request).
    pub fn with_grants(
        issuer: &str,
        grants: Vec<crate::domain::Grant>,
        target: Target,
        now: UnixTime,
        policy_ttl: std::time::Duration,
    ) -> Self {
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
                pattern_prefix_segments: 1,
            }],
            grants,
            vec![target],
        );
        let ledger = Arc::new(InMemoryLedger::default());
        let signer = Arc::new(LocalSigner::generate("test-key"));
        let service = crate::exchange::ExchangeService {
            policy: Arc::new(crate::exchange::policy::catalog::PolicyCatalog::new(
                Arc::new(policy),
                policy_ttl,
            )),
            ledger: ledger.clone(),
            signer: signer.clone(),
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
            signer,
            issuer: demo,
        }
    }
}
