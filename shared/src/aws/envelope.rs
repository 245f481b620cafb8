//! In-process ES256 signing with envelope keys (signing mode `envelope`).
//!
//! An envelope key's private key is stored in the ring encrypted under the secrets key, bound to
//! the encryption context `nhi:purpose=signing-key`, `nhi:kid=<kid>`. Exchange decrypts it once
//! per execution environment, the first time that key signs, checks that it belongs to the
//! public key the ring publishes, and keeps only aws-lc's parsed key pair (aws-lc clears key
//! memory when it frees it); the decrypted PKCS#8 bytes are zeroized at once. Keys that left the
//! ring are dropped from memory at the next load.

use crate::domain::{EnvelopeKey, KeyRing, envelope_key_context};
use crate::error::{BrokerError, Result};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use aws_sdk_kms::primitives::Blob;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

pub struct EnvelopeKeys {
    client: aws_sdk_kms::Client,
    /// The key envelope private keys are encrypted under (the secrets key).
    wrapping_key_id: String,
    pairs: Mutex<HashMap<String, Arc<EcdsaKeyPair>>>,
    /// Held while a key is decrypted: concurrent first signatures cause one Decrypt.
    loading: tokio::sync::Mutex<()>,
    rng: SystemRandom,
}

impl EnvelopeKeys {
    pub fn new(client: aws_sdk_kms::Client, wrapping_key_id: impl Into<String>) -> Self {
        Self {
            client,
            wrapping_key_id: wrapping_key_id.into(),
            pairs: Mutex::new(HashMap::new()),
            loading: tokio::sync::Mutex::new(()),
            rng: SystemRandom::new(),
        }
    }

    fn cached(&self, kid: &str) -> Option<Arc<EcdsaKeyPair>> {
        self.pairs.lock().ok().and_then(|pairs| pairs.get(kid).cloned())
    }

    /// Sign `input` with envelope key `kid` of `ring` (any key pair held in memory whose key has
    /// left the ring is dropped when a new one is loaded).
    pub async fn sign(&self, kid: &str, material: &EnvelopeKey, input: &[u8], ring: &KeyRing) -> Result<[u8; 64]> {
        let pair = match self.cached(kid) {
            Some(pair) => pair,
            // Boxed: the load holds a KMS call, and inline it would make every signature's future
            // (allocated per JWT, `TokenSigner` being a trait object) as large as the SDK's, some
            // 6 kB, for a call made once per key and execution environment.
            None => Box::pin(self.load(kid, material, ring)).await?,
        };
        let signature = pair
            .sign(&self.rng, input)
            .map_err(|_| BrokerError::Internal("envelope signing failed".into()))?;
        signature
            .as_ref()
            .try_into()
            .map_err(|_| BrokerError::Internal("envelope signature has an unexpected length".into()))
    }

    async fn load(&self, kid: &str, material: &EnvelopeKey, ring: &KeyRing) -> Result<Arc<EcdsaKeyPair>> {
        let _loading = self.loading.lock().await;
        if let Some(pair) = self.cached(kid) {
            return Ok(pair);
        }
        let ciphertext = STANDARD
            .decode(&material.private_key_ciphertext)
            .map_err(|_| BrokerError::CorruptRecord("envelope key ciphertext".into()))?;
        let output = self
            .client
            .decrypt()
            .key_id(&self.wrapping_key_id)
            .ciphertext_blob(Blob::new(ciphertext))
            .set_encryption_context(Some(super::kms::context_map(&envelope_key_context(kid))))
            .send()
            .await
            .map_err(|e| BrokerError::aws("kms", "Decrypt", &e))?;
        let pkcs8 = Zeroizing::new(
            output
                .plaintext
                .ok_or_else(|| BrokerError::Internal("KMS Decrypt returned no plaintext".into()))?
                .into_inner(),
        );
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8)
            .map_err(|_| BrokerError::CorruptRecord("envelope key is not a P-256 PKCS#8 key".into()))?;
        drop(pkcs8);
        if pair.public_key().as_ref() != published_point(material)?.as_slice() {
            return Err(BrokerError::CorruptRecord(
                "envelope private key does not match its published public key".into(),
            ));
        }
        let pair = Arc::new(pair);
        if let Ok(mut pairs) = self.pairs.lock() {
            pairs.retain(|k, _| ring.key(k).is_some());
            pairs.insert(kid.to_string(), pair.clone());
        }
        Ok(pair)
    }
}

/// The uncompressed point of the public key the ring publishes for an envelope key.
fn published_point(material: &EnvelopeKey) -> Result<Vec<u8>> {
    let der = STANDARD
        .decode(&material.public_key)
        .map_err(|_| BrokerError::CorruptRecord("envelope public key".into()))?;
    crate::crypto::p256_spki_to_point(&der)
        .map(|point| point.to_vec())
        .ok_or_else(|| BrokerError::CorruptRecord("envelope public key is not P-256".into()))
}

/// An envelope key made locally, as KMS would (tests and the bench; production keys come from
/// `GenerateDataKeyPairWithoutPlaintext`): its public key and its PKCS#8 private key.
#[cfg(any(test, feature = "test-util"))]
pub fn generate_envelope_key_pair() -> (Vec<u8>, Zeroizing<Vec<u8>>) {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).expect("key generation");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).expect("pkcs8");
    let spki = crate::crypto::p256_point_to_spki(pair.public_key().as_ref()).expect("a P-256 point");
    (spki, Zeroizing::new(pkcs8.as_ref().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kms::operation::decrypt::DecryptOutput;
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    fn material(spki: &[u8]) -> EnvelopeKey {
        EnvelopeKey {
            public_key: STANDARD.encode(spki),
            private_key_ciphertext: STANDARD.encode(b"ciphertext"),
        }
    }

    fn keys_decrypting_to(pkcs8: Vec<u8>) -> (EnvelopeKeys, aws_smithy_mocks::Rule) {
        let rule = mock!(aws_sdk_kms::Client::decrypt)
            .then_output(move || DecryptOutput::builder().plaintext(Blob::new(pkcs8.clone())).build());
        let client = mock_client!(aws_sdk_kms, RuleMode::MatchAny, [&rule]);
        (EnvelopeKeys::new(client, "wrapping"), rule)
    }

    #[tokio::test]
    async fn a_key_is_decrypted_once_and_signs_verifiably() {
        let (spki, pkcs8) = generate_envelope_key_pair();
        let (keys, rule) = keys_decrypting_to(pkcs8.to_vec());
        let material = material(&spki);
        for _ in 0..3 {
            let signature = keys
                .sign("env-1", &material, b"header.payload", &KeyRing::bootstrap("env-1", 0))
                .await
                .unwrap();
            let point = published_point(&material).unwrap();
            aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(b"header.payload", &signature)
                .expect("verifies with the published key");
        }
        assert_eq!(rule.num_calls(), 1, "one Decrypt per execution environment");
    }

    #[tokio::test]
    async fn a_private_key_that_is_not_the_published_ones_never_signs() {
        let (published, _) = generate_envelope_key_pair();
        let (_, other_private) = generate_envelope_key_pair();
        let (keys, _) = keys_decrypting_to(other_private.to_vec());
        let err = keys
            .sign("env-1", &material(&published), b"x.y", &KeyRing::bootstrap("env-1", 0))
            .await
            .unwrap_err();
        assert!(matches!(err, BrokerError::CorruptRecord(_)), "{err:?}");
        assert!(
            format!("{:?}", material(&published)).contains("<"),
            "Debug shows no ciphertext"
        );
    }
}
