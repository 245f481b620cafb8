//! ES256 signing with a KMS asymmetric key (ECC_NIST_P256, SIGN_VERIFY), or, for exchange in
//! signing mode `envelope`, in-process with the ring's active envelope key (`super::envelope`).
//!
//! KMS returns DER-encoded ECDSA signatures; JWS wants the fixed 64-byte `r || s`. The message is
//! sent with `MessageType=RAW` (KMS hashes it), which is also the mode moto signs correctly.

use crate::domain::{EnvelopeKey, KeyRing, SigningMode, envelope_key_context};
use crate::error::{BrokerError, Result};
use crate::ports::{KeyRingStore, SecretDecryptor, SecretEncryptor, SigningKeyAdmin, TokenSigner};
use crate::redact::SecretString;
use async_trait::async_trait;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeyPairSpec, KeySpec, KeyUsageType, MessageType, SigningAlgorithmSpec};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::JwkSet;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Signs with the active key of the signing-key ring and publishes every key in it. The ring is
/// re-read at most every `ring_ttl`; public keys never change for a key id, so each is fetched once
/// per execution environment.
pub struct KmsSigner {
    client: aws_sdk_kms::Client,
    ring: Option<Arc<dyn KeyRingStore>>,
    /// The deployed key: the active key until rotate first writes the ring.
    bootstrap_key_id: String,
    ring_ttl: Duration,
    cached_ring: Mutex<Option<(Instant, Arc<KeyRing>)>>,
    public_keys: Mutex<HashMap<String, serde_json::Value>>,
    /// Envelope signing (exchange only: it alone may decrypt the keys); `None` signs with KMS.
    envelope: Option<super::envelope::EnvelopeKeys>,
}

impl KmsSigner {
    /// One fixed key, no ring (tools and tests).
    pub fn new(client: aws_sdk_kms::Client, key_id: impl Into<String>) -> Self {
        Self::build(client, key_id.into(), None, Duration::ZERO)
    }

    pub fn with_ring(
        client: aws_sdk_kms::Client,
        bootstrap_key_id: impl Into<String>,
        ring: Arc<dyn KeyRingStore>,
        ring_ttl: Duration,
    ) -> Self {
        Self::build(client, bootstrap_key_id.into(), Some(ring), ring_ttl)
    }

    fn build(
        client: aws_sdk_kms::Client,
        bootstrap_key_id: String,
        ring: Option<Arc<dyn KeyRingStore>>,
        ring_ttl: Duration,
    ) -> Self {
        Self {
            client,
            ring,
            bootstrap_key_id,
            ring_ttl,
            cached_ring: Mutex::new(None),
            public_keys: Mutex::new(HashMap::new()),
            envelope: None,
        }
    }

    /// Sign in-process with the ring's active envelope key once there is one (mode `envelope`).
    pub fn with_envelope_keys(self, keys: super::envelope::EnvelopeKeys) -> Self {
        Self {
            envelope: Some(keys),
            ..self
        }
    }

    fn mode(&self) -> SigningMode {
        if self.envelope.is_some() {
            SigningMode::Envelope
        } else {
            SigningMode::Kms
        }
    }

    /// The ring as stored, or the bootstrap ring before rotate has written one.
    async fn ring(&self) -> Result<Arc<KeyRing>> {
        let Some(store) = &self.ring else {
            return Ok(Arc::new(KeyRing::bootstrap(&self.bootstrap_key_id, 0)));
        };
        if let Some((at, ring)) = self.cached_ring.lock().ok().and_then(|c| c.clone())
            && at.elapsed() < self.ring_ttl
        {
            return Ok(ring);
        }
        let ring = Arc::new(
            store
                .load()
                .await?
                .unwrap_or_else(|| KeyRing::bootstrap(&self.bootstrap_key_id, 0)),
        );
        if let Ok(mut cached) = self.cached_ring.lock() {
            *cached = Some((Instant::now(), ring.clone()));
        }
        Ok(ring)
    }

    async fn public_jwk(&self, key: &crate::domain::SigningKey) -> Result<serde_json::Value> {
        let key_id = key.key_id.as_str();
        if let Some(jwk) = self.public_keys.lock().ok().and_then(|k| k.get(key_id).cloned()) {
            return Ok(jwk);
        }
        let der = match &key.envelope {
            Some(material) => STANDARD
                .decode(&material.public_key)
                .map_err(|_| BrokerError::CorruptRecord("envelope public key".into()))?,
            None => self.kms_public_key(key_id).await?,
        };
        let jwk = spki_to_jwk(&der, key_id)?;
        if let Ok(mut keys) = self.public_keys.lock() {
            keys.insert(key_id.to_string(), jwk.clone());
        }
        Ok(jwk)
    }

    async fn kms_public_key(&self, key_id: &str) -> Result<Vec<u8>> {
        let output = self
            .client
            .get_public_key()
            .key_id(key_id)
            .send()
            .await
            .map_err(|e| BrokerError::aws("kms", "GetPublicKey", &e))?;
        output
            .public_key
            .map(|der| der.into_inner())
            .ok_or_else(|| BrokerError::Internal("KMS GetPublicKey returned no key".into()))
    }
}

/// DER ECDSA signature to JWS `r || s` (RFC 7518 3.4).
pub fn der_to_jws_signature(der: &[u8]) -> Result<[u8; 64]> {
    crate::crypto::p256_der_signature_to_fixed(der)
        .ok_or_else(|| BrokerError::Internal("KMS returned a malformed ECDSA signature".into()))
}

/// SubjectPublicKeyInfo DER of a P-256 key to a JWK for `kid`.
pub fn spki_to_jwk(spki_der: &[u8], kid: &str) -> Result<serde_json::Value> {
    let point = crate::crypto::p256_spki_to_point(spki_der)
        .ok_or_else(|| BrokerError::Internal("signing key is not an uncompressed P-256 public key".into()))?;
    let (x, y) = (&point[1..33], &point[33..]);
    Ok(serde_json::json!({
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
    }))
}

#[async_trait]
impl TokenSigner for KmsSigner {
    async fn active_key_id(&self) -> Result<String> {
        let ring = self.ring().await?;
        ring.signing_key(self.mode())
            .map(|k| k.key_id.clone())
            .ok_or_else(|| BrokerError::CorruptRecord("signing-key ring has no active key".into()))
    }

    async fn sign_es256(&self, key_id: &str, signing_input: &[u8]) -> Result<[u8; 64]> {
        if let Some(envelope) = &self.envelope {
            let ring = self.ring().await?;
            if let Some(material) = ring.key(key_id).and_then(|k| k.envelope.as_ref()) {
                return envelope.sign(key_id, material, signing_input, &ring).await;
            }
        }
        let (der, _) = sign_raw_es256(&self.client, key_id, signing_input).await?;
        der_to_jws_signature(&der)
    }

    /// Next, active and retired keys alike: a token verifies from before its key signs (next) until
    /// after it stops signing (retired, until every token it signed has expired).
    async fn public_jwks(&self) -> Result<JwkSet> {
        let ring = self.ring().await?;
        let mut keys = Vec::with_capacity(ring.keys.len());
        for key in &ring.keys {
            keys.push(self.public_jwk(key).await?);
        }
        serde_json::from_value(serde_json::json!({ "keys": keys })).map_err(|e| BrokerError::Internal(e.to_string()))
    }
}

/// KMS `Sign` of `message` itself (RAW, ECDSA_SHA_256): the DER signature and the key's ARN.
async fn sign_raw_es256(
    client: &aws_sdk_kms::Client,
    key_id: &str,
    message: &[u8],
) -> Result<(Vec<u8>, Option<String>)> {
    // Boxed, as the release transaction is (`AuditWriter::transact`): `sign_es256`'s future holds
    // this call even when it signs in process (envelope mode), and would be as large as the SDK's.
    let output = Box::pin(
        client
            .sign()
            .key_id(key_id)
            .message(Blob::new(message))
            .message_type(MessageType::Raw)
            .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
            .send(),
    )
    .await
    .map_err(|e| BrokerError::aws("kms", "Sign", &e))?;
    let der = output
        .signature
        .ok_or_else(|| BrokerError::Internal("KMS Sign returned no signature".into()))?;
    Ok((der.into_inner(), output.key_id))
}

/// Certifies audit chains with the audit key (never a token key: nothing it signs is a JWT).
pub struct KmsChainCertifier {
    client: aws_sdk_kms::Client,
    key_id: String,
}

impl KmsChainCertifier {
    pub fn new(client: aws_sdk_kms::Client, key_id: &str) -> Self {
        Self {
            client,
            key_id: key_id.to_string(),
        }
    }
}

#[async_trait]
impl crate::audit::ChainCertifier for KmsChainCertifier {
    async fn certify(&self, statement: &[u8]) -> Result<crate::audit::ChainCertificate> {
        let (signature, key_id) = sign_raw_es256(&self.client, &self.key_id, statement).await?;
        Ok(crate::audit::ChainCertificate {
            key_id: key_id.unwrap_or_else(|| self.key_id.clone()),
            signature,
        })
    }
}

/// Creates signing keys whose key policy lets only the named roles sign, and deletes retired ones;
/// creates envelope keys under the wrapping (secrets) key.
pub struct KmsKeyAdmin {
    client: aws_sdk_kms::Client,
    /// The key policy every new signing key gets; `None` leaves KMS's default (local emulator only).
    key_policy: Option<String>,
    /// The symmetric key envelope private keys are encrypted under (signing mode `envelope`).
    wrapping_key_id: Option<String>,
}

impl KmsKeyAdmin {
    pub fn new(client: aws_sdk_kms::Client, key_policy: Option<String>) -> Self {
        Self {
            client,
            key_policy,
            wrapping_key_id: None,
        }
    }

    pub fn with_wrapping_key(self, key_id: impl Into<String>) -> Self {
        Self {
            wrapping_key_id: Some(key_id.into()),
            ..self
        }
    }
}

/// The key policy of a rotated-in signing key, the same shape as the deployed one: the account
/// administers but cannot use it; `signers` may sign (ES256 only) and read the public key; `admin`
/// (rotate) may describe, re-apply the policy (KMS requires the creator to keep that) and schedule
/// deletion.
pub fn signing_key_policy(account_root_arn: &str, signers: &[String], admin: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AccountAdministersButCannotUse",
                "Effect": "Allow",
                "Principal": { "AWS": account_root_arn },
                "Action": [
                    "kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*",
                    "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*", "kms:TagResource",
                    "kms:UntagResource", "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion"
                ],
                "Resource": "*"
            },
            {
                "Sid": "BrokerSigns",
                "Effect": "Allow",
                "Principal": { "AWS": signers },
                "Action": ["kms:Sign", "kms:GetPublicKey"],
                "Resource": "*",
                "Condition": { "StringEquals": { "kms:SigningAlgorithm": "ECDSA_SHA_256" } }
            },
            {
                "Sid": "RotateManagesLifecycle",
                "Effect": "Allow",
                "Principal": { "AWS": admin },
                "Action": ["kms:DescribeKey", "kms:PutKeyPolicy", "kms:ScheduleKeyDeletion"],
                "Resource": "*"
            }
        ]
    })
    .to_string()
}

#[async_trait]
impl SigningKeyAdmin for KmsKeyAdmin {
    async fn create_signing_key(&self, description: &str) -> Result<String> {
        let output = self
            .client
            .create_key()
            .key_spec(KeySpec::EccNistP256)
            .key_usage(KeyUsageType::SignVerify)
            .description(description)
            .set_policy(self.key_policy.clone())
            .send()
            .await
            .map_err(|e| BrokerError::aws("kms", "CreateKey", &e))?;
        output
            .key_metadata
            .map(|m| m.key_id)
            .ok_or_else(|| BrokerError::Internal("KMS CreateKey returned no key".into()))
    }

    async fn schedule_key_deletion(&self, key_id: &str, pending_window_days: i32) -> Result<()> {
        self.client
            .schedule_key_deletion()
            .key_id(key_id)
            .pending_window_in_days(pending_window_days)
            .send()
            .await
            .map_err(|e| BrokerError::aws("kms", "ScheduleKeyDeletion", &e))?;
        Ok(())
    }

    async fn create_envelope_key(&self, kid: &str) -> Result<EnvelopeKey> {
        let wrapping_key = self
            .wrapping_key_id
            .as_deref()
            .ok_or_else(|| BrokerError::Config("envelope signing needs the secrets key (NHI_SECRETS_KEY_ID)".into()))?;
        let output = self
            .client
            .generate_data_key_pair_without_plaintext()
            .key_id(wrapping_key)
            .key_pair_spec(DataKeyPairSpec::EccNistP256)
            .set_encryption_context(Some(context_map(&envelope_key_context(kid))))
            .send()
            .await
            .map_err(|e| BrokerError::aws("kms", "GenerateDataKeyPairWithoutPlaintext", &e))?;
        let (Some(public_key), Some(ciphertext)) = (output.public_key, output.private_key_ciphertext_blob) else {
            return Err(BrokerError::Internal("KMS returned no key pair".into()));
        };
        // Refuse anything but a P-256 public key before it is ever published.
        spki_to_jwk(public_key.as_ref(), kid)?;
        Ok(EnvelopeKey {
            public_key: STANDARD.encode(public_key.as_ref()),
            private_key_ciphertext: STANDARD.encode(ciphertext.as_ref()),
        })
    }
}

/// Secret material under the symmetric secrets key, always with the version's encryption context.
pub struct KmsSecretCipher {
    client: aws_sdk_kms::Client,
    key_id: String,
}

impl KmsSecretCipher {
    pub fn new(client: aws_sdk_kms::Client, key_id: impl Into<String>) -> Self {
        Self {
            client,
            key_id: key_id.into(),
        }
    }
}

pub(crate) fn context_map(context: &[(String, String)]) -> std::collections::HashMap<String, String> {
    context.iter().cloned().collect()
}

#[async_trait]
impl SecretDecryptor for KmsSecretCipher {
    async fn decrypt(&self, ciphertext: &[u8], context: &[(String, String)]) -> Result<SecretString> {
        let output = self
            .client
            .decrypt()
            // Naming the key refuses ciphertexts from any other key.
            .key_id(&self.key_id)
            .ciphertext_blob(Blob::new(ciphertext))
            .set_encryption_context(Some(context_map(context)))
            .send()
            .await
            .map_err(|e| BrokerError::aws("kms", "Decrypt", &e))?;
        let plaintext = zeroize::Zeroizing::new(
            output
                .plaintext
                .ok_or_else(|| BrokerError::Internal("KMS Decrypt returned no plaintext".into()))?
                .into_inner(),
        );
        let text = std::str::from_utf8(&plaintext)
            .map_err(|_| BrokerError::CorruptRecord("secret material is not UTF-8".into()))?;
        Ok(SecretString::new(text.to_string()))
    }
}

#[async_trait]
impl SecretEncryptor for KmsSecretCipher {
    async fn encrypt(&self, plaintext: &SecretString, context: &[(String, String)]) -> Result<Vec<u8>> {
        let output = self
            .client
            .encrypt()
            .key_id(&self.key_id)
            .plaintext(Blob::new(plaintext.expose().as_bytes()))
            .set_encryption_context(Some(context_map(context)))
            .send()
            .await
            .map_err(|e| BrokerError::aws("kms", "Encrypt", &e))?;
        Ok(output
            .ciphertext_blob
            .ok_or_else(|| BrokerError::Internal("KMS Encrypt returned no ciphertext".into()))?
            .into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kms::operation::sign::{SignError, SignOutput};
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    #[tokio::test]
    async fn sign_errors_keep_only_the_aws_code() {
        let rule = mock!(aws_sdk_kms::Client::sign).then_error(|| {
            SignError::KmsInvalidStateException(
                aws_sdk_kms::types::error::KmsInvalidStateException::builder()
                    .message("key arn:aws:kms:...:key/abc is pending deletion")
                    .meta(
                        aws_sdk_kms::error::ErrorMetadata::builder()
                            .code("KMSInvalidStateException")
                            .message("key arn:aws:kms:...:key/abc is pending deletion")
                            .build(),
                    )
                    .build(),
            )
        });
        let client = mock_client!(aws_sdk_kms, RuleMode::MatchAny, [&rule]);
        let signer = KmsSigner::new(client, "abc");
        let err = signer.sign_es256("abc", b"header.payload").await.unwrap_err();
        assert_eq!(err.aws_code(), Some("KMSInvalidStateException"));
        assert!(!err.to_string().contains("pending deletion"), "{err}");
    }

    #[test]
    fn a_warm_signature_allocates_no_sdk_sized_future() {
        // Every JWT allocates this future (the signer is a trait object); an SDK call held inline
        // in it, even one only a cold start makes, would make it several kB.
        let client = mock_client!(aws_sdk_kms, RuleMode::MatchAny, []);
        for signer in [
            KmsSigner::new(client.clone(), "abc"),
            KmsSigner::new(client.clone(), "abc")
                .with_envelope_keys(super::super::envelope::EnvelopeKeys::new(client.clone(), "wrapping")),
        ] {
            let future = signer.sign_es256("abc", b"x.y");
            let size = std::mem::size_of_val(&*future);
            assert!(size < 1024, "{size} bytes");
        }
    }

    #[tokio::test]
    async fn malformed_signature_is_an_internal_error_not_a_panic() {
        let rule = mock!(aws_sdk_kms::Client::sign)
            .then_output(|| SignOutput::builder().signature(Blob::new(vec![1, 2, 3])).build());
        let client = mock_client!(aws_sdk_kms, RuleMode::MatchAny, [&rule]);
        let err = KmsSigner::new(client, "abc")
            .sign_es256("abc", b"x.y")
            .await
            .unwrap_err();
        assert!(matches!(err, BrokerError::Internal(_)));
    }
}
