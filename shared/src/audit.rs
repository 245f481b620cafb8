//! Tamper-evident audit chains, authenticated so that write access to the audit table is not
//! enough to forge them.
//!
//! Each writer (one Lambda execution environment) appends to its own chain, so appends never
//! contend and need no read: the writer remembers the last hash. Every event stores its position
//! (`chain`, `seq`), the previous event's hash and its own hash over both plus the event, so an
//! edited, deleted or reordered event breaks verification. After any failed write the writer starts
//! a fresh chain rather than guess whether the write landed.
//!
//! Authentication: a chain is born with its own P-256 key pair, made in memory. Before its first
//! event is written, KMS signs a statement naming the chain and its public key with the audit key
//! ([`ChainCertifier`]: one KMS call per chain, i.e. per cold start or failed write); the first
//! event carries that certificate, and every event carries the chain key's signature over its
//! hash. The private key never leaves the process. Whoever can write the table but cannot use the
//! audit key can neither start a chain that verifies nor add to an existing one.

use crate::domain::AuditEvent;
use crate::error::{BrokerError, Result};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::sync::{Arc, OnceLock};
use tokio::sync::{Mutex, MutexGuard};

pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Where an event sits in its chain, and its proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainLink {
    pub chain: String,
    pub seq: i64,
    pub prev_hash: String,
    pub hash: String,
    /// The chain key's ECDSA (DER, base64) signature over `hash`.
    pub signature: String,
    /// On the first event of a chain: its public key and KMS certificate.
    pub opening: Option<ChainOpening>,
}

/// What the first event of a chain carries: the chain's public key (SPKI-less uncompressed point,
/// base64) and the audit key's signature over [`chain_statement`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainOpening {
    pub public_key: String,
    pub certificate: String,
    pub certificate_key_id: String,
}

/// A KMS signature over a chain statement, and the key that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainCertificate {
    pub key_id: String,
    /// DER ECDSA P-256 / SHA-256.
    pub signature: Vec<u8>,
}

/// Certifies new chains with the audit key (KMS `Sign`, ECDSA_SHA_256, message type RAW).
#[async_trait::async_trait]
pub trait ChainCertifier: Send + Sync {
    async fn certify(&self, statement: &[u8]) -> Result<ChainCertificate>;
}

static CERTIFIER: OnceLock<Arc<dyn ChainCertifier>> = OnceLock::new();

/// Installed once by the composition root (`wiring`); every audit writer of the process uses it.
pub fn install_certifier(certifier: Arc<dyn ChainCertifier>) {
    let _ = CERTIFIER.set(certifier);
}

pub(crate) fn certifier() -> Option<&'static Arc<dyn ChainCertifier>> {
    CERTIFIER.get()
}

/// The bytes the audit key signs to certify a chain.
pub fn chain_statement(chain: &str, public_key_b64: &str) -> Vec<u8> {
    format!("nhi-broker audit chain v1\nchain={chain}\npublic_key={public_key_b64}\n").into_bytes()
}

/// A chain's public key as stored (base64 of the uncompressed point).
pub fn decode_chain_key(b64: &str) -> Option<Vec<u8>> {
    B64.decode(b64).ok()
}

/// The uncompressed P-256 point of a DER SubjectPublicKeyInfo (KMS `GetPublicKey`).
pub fn spki_to_point(spki_der: &[u8]) -> Result<Vec<u8>> {
    crate::crypto::p256_spki_to_point(spki_der)
        .map(|point| point.to_vec())
        .ok_or_else(|| BrokerError::Internal("the audit key is not a P-256 public key".into()))
}

/// Does `signature_b64` (DER) verify over `message` with the P-256 public key `public_key`
/// (uncompressed point)?
pub fn verify_p256(public_key: &[u8], message: &[u8], signature_b64: &str) -> bool {
    let Ok(signature) = B64.decode(signature_b64) else {
        return false;
    };
    aws_lc_rs::signature::UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, public_key)
        .verify(message, &signature)
        .is_ok()
}

/// SHA-256 over a canonical JSON of position, previous hash and event: `{"chain","seq",
/// "prev_hash","event":{...}}`, the event's members in the order `AuditEvent` declares them, its
/// absent optional members `null` except `old_version`, `new_version` and `request_id`, which are
/// left out (events from before they existed hash as they did). This is what serde_json makes of
/// the same values (the tests hold the two together and pin a known hash), written directly: it
/// runs on every audited request.
pub fn link_hash(chain: &str, seq: i64, prev_hash: &str, event: &AuditEvent) -> String {
    use crate::json_text::push_str;
    // Every member by name, none skipped: a member added to `AuditEvent` fails to compile here
    // until it is hashed.
    let AuditEvent {
        event_id,
        at,
        action,
        outcome,
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
    } = event;
    // Sized for a release's event (~600 bytes) so it is written without regrowing.
    let mut canonical = String::with_capacity(1024);
    canonical.push_str(r#"{"chain":"#);
    push_str(&mut canonical, chain);
    let mut digits = itoa::Buffer::new();
    canonical.push_str(r#","seq":"#);
    canonical.push_str(digits.format(seq));
    canonical.push_str(r#","prev_hash":"#);
    push_str(&mut canonical, prev_hash);
    canonical.push_str(r#","event":{"event_id":"#);
    push_str(&mut canonical, event_id);
    canonical.push_str(r#","at":"#);
    canonical.push_str(digits.format(*at));
    canonical.push_str(r#","action":"#);
    push_str(&mut canonical, action.as_str());
    canonical.push_str(r#","outcome":"#);
    push_str(&mut canonical, outcome.as_str());
    let mut member = |name: &str, value: &Option<String>, absent_as_null: bool| match value {
        Some(value) => {
            canonical.push_str(name);
            push_str(&mut canonical, value);
        }
        None if absent_as_null => {
            canonical.push_str(name);
            canonical.push_str("null");
        }
        None => {}
    };
    member(r#","actor_issuer":"#, actor_issuer, true);
    member(r#","actor_subject":"#, actor_subject, true);
    member(r#","target":"#, target, true);
    member(r#","grant_id":"#, grant_id, true);
    member(r#","lease_id":"#, lease_id, true);
    member(r#","reason":"#, reason, true);
    member(r#","token_fingerprint":"#, token_fingerprint, true);
    member(r#","old_version":"#, old_version, false);
    member(r#","new_version":"#, new_version, false);
    member(r#","request_id":"#, request_id, false);
    canonical.push_str("}}");
    crate::crypto::sha256_hex(canonical.as_bytes())
}

pub struct ChainState {
    chain: String,
    next_seq: i64,
    prev_hash: String,
    /// This chain's key: made in memory when the chain writes its first event (not when a writer
    /// is built: most writers of a process may never write), never stored.
    key: Option<EcdsaKeyPair>,
    certificate: Option<ChainCertificate>,
}

impl std::fmt::Debug for ChainState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainState")
            .field("chain", &self.chain)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl ChainState {
    fn fresh() -> Self {
        Self {
            chain: uuid::Uuid::now_v7().to_string(),
            next_seq: 0,
            prev_hash: GENESIS_HASH.to_string(),
            key: None,
            certificate: None,
        }
    }

    fn key(&mut self) -> &EcdsaKeyPair {
        self.key.get_or_insert_with(|| {
            EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).expect("aws-lc generates a P-256 key")
        })
    }

    fn public_key_b64(&mut self) -> String {
        B64.encode(self.key().public_key().as_ref())
    }

    /// Before the first event of a chain: have the audit key certify it (once per chain). Without
    /// an installed certifier (tests of adapters alone) the chain stays uncertified, which
    /// `audit verify` reports.
    pub async fn ensure_certified(&mut self) -> Result<()> {
        if self.certificate.is_some() || self.next_seq != 0 {
            return Ok(());
        }
        if let Some(certifier) = certifier() {
            let public_key = self.public_key_b64();
            let statement = chain_statement(&self.chain, &public_key);
            self.certificate = Some(certifier.certify(&statement).await?);
        }
        Ok(())
    }

    /// The link the next event would get.
    pub fn next_link(&mut self, event: &AuditEvent) -> Result<ChainLink> {
        let hash = link_hash(&self.chain, self.next_seq, &self.prev_hash, event);
        let signature = self
            .key()
            .sign(&SystemRandom::new(), hash.as_bytes())
            .map_err(|_| BrokerError::Internal("audit chain signature failed".into()))?;
        let public_key = (self.next_seq == 0).then(|| self.public_key_b64());
        let opening = public_key.map(|public_key| ChainOpening {
            public_key,
            certificate: self
                .certificate
                .as_ref()
                .map(|c| B64.encode(&c.signature))
                .unwrap_or_default(),
            certificate_key_id: self.certificate.as_ref().map(|c| c.key_id.clone()).unwrap_or_default(),
        });
        Ok(ChainLink {
            chain: self.chain.clone(),
            seq: self.next_seq,
            prev_hash: self.prev_hash.clone(),
            hash,
            signature: B64.encode(signature.as_ref()),
            opening,
        })
    }

    /// Call after the event carrying `link` was durably written.
    pub fn advance(&mut self, link: ChainLink) {
        self.next_seq = link.seq + 1;
        self.prev_hash = link.hash;
    }

    /// Call after a failed or ambiguous write.
    pub fn restart(&mut self) {
        *self = Self::fresh();
    }
}

/// One writer's chain. The lock is held across the write so appends stay ordered.
#[derive(Debug)]
pub struct AuditChain(Mutex<ChainState>);

impl Default for AuditChain {
    fn default() -> Self {
        Self(Mutex::new(ChainState::fresh()))
    }
}

impl AuditChain {
    pub async fn lock(&self) -> MutexGuard<'_, ChainState> {
        self.0.lock().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::strategies::{audit_event, text};
    use crate::domain::{AuditAction, AuditOutcome};

    fn event(id: &str) -> AuditEvent {
        AuditEvent {
            event_id: id.into(),
            at: 1,
            action: AuditAction::TokenExchange,
            outcome: AuditOutcome::Denied,
            actor_issuer: None,
            actor_subject: None,
            target: None,
            grant_id: None,
            lease_id: None,
            reason: Some("token_expired".into()),
            token_fingerprint: None,
            old_version: None,
            new_version: None,
            request_id: None,
        }
    }

    #[tokio::test]
    async fn links_chain_and_detect_edits() {
        let chain = AuditChain::default();
        let mut state = chain.lock().await;
        let first = state.next_link(&event("a")).unwrap();
        assert_eq!(first.seq, 0);
        assert_eq!(first.prev_hash, GENESIS_HASH);
        state.advance(first.clone());
        let second = state.next_link(&event("b")).unwrap();
        assert_eq!(second.seq, 1);
        assert_eq!(second.prev_hash, first.hash);
        // Any change to the event changes its hash.
        let mut edited = event("a");
        edited.reason = Some("policy_no_grant".into());
        assert_ne!(link_hash(&first.chain, 0, GENESIS_HASH, &edited), first.hash);
        state.restart();
        assert_eq!(state.next_link(&event("c")).unwrap().seq, 0);
    }

    struct FakeCertifier(EcdsaKeyPair);

    #[async_trait::async_trait]
    impl ChainCertifier for FakeCertifier {
        async fn certify(&self, statement: &[u8]) -> Result<ChainCertificate> {
            Ok(ChainCertificate {
                key_id: "audit-key".into(),
                signature: self.0.sign(&SystemRandom::new(), statement).unwrap().as_ref().to_vec(),
            })
        }
    }

    #[tokio::test]
    async fn a_chain_is_certified_once_and_every_event_is_signed_by_its_key() {
        let audit_key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        let audit_public = audit_key.public_key().as_ref().to_vec();
        install_certifier(Arc::new(FakeCertifier(audit_key)));
        let mut state = ChainState::fresh();
        state.ensure_certified().await.unwrap();
        let first = state.next_link(&event("a")).unwrap();
        let opening = first.opening.clone().expect("the first event opens the chain");
        let chain_key = B64.decode(&opening.public_key).unwrap();
        // The certificate binds this chain id to this key; another chain id does not verify.
        assert!(verify_p256(
            &audit_public,
            &chain_statement(&first.chain, &opening.public_key),
            &opening.certificate
        ));
        assert!(!verify_p256(
            &audit_public,
            &chain_statement("other", &opening.public_key),
            &opening.certificate
        ));
        assert!(verify_p256(&chain_key, first.hash.as_bytes(), &first.signature));
        state.advance(first.clone());
        let second = state.next_link(&event("b")).unwrap();
        assert!(second.opening.is_none());
        assert!(verify_p256(&chain_key, second.hash.as_bytes(), &second.signature));
        assert!(!verify_p256(&chain_key, first.hash.as_bytes(), &second.signature));
    }

    /// The canonical JSON as it was first defined: serde_json over these structs.
    fn serde_link_hash(chain: &str, seq: i64, prev_hash: &str, event: &AuditEvent) -> String {
        #[derive(serde::Serialize)]
        struct Hashed<'a> {
            chain: &'a str,
            seq: i64,
            prev_hash: &'a str,
            event: &'a AuditEvent,
        }
        let hashed = Hashed {
            chain,
            seq,
            prev_hash,
            event,
        };
        crate::crypto::sha256_hex(&serde_json::to_vec(&hashed).unwrap())
    }

    #[test]
    fn a_known_event_hashes_as_it_always_has() {
        // Stored chains are verified against this form: it must never change.
        let mut known = event("0193b7c2-a1d0-7b8e-9f0a-1b2c3d4e5f60");
        known.actor_subject = Some("repo:o/r:ref:\"main\"\n".into());
        known.request_id = Some("req-1".into());
        let expected = "ff8b790378eabb702f183ce513704b5aeae977da1e1d02d6a8c9c49a06b47cbe";
        assert_eq!(link_hash("chain-1", 7, GENESIS_HASH, &known), expected);
        assert_eq!(serde_link_hash("chain-1", 7, GENESIS_HASH, &known), expected);
    }

    proptest::proptest! {
        #[test]
        fn every_event_hashes_as_serde_json_would_write_it(
            (chain, prev_hash, seq) in (text(), text(), proptest::prelude::any::<i64>()),
            event in audit_event(),
        ) {
            proptest::prop_assert_eq!(
                link_hash(&chain, seq, &prev_hash, &event),
                serde_link_hash(&chain, seq, &prev_hash, &event)
            );
        }
    }
}
