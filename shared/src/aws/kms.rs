//! ES256 signing with a KMS asymmetric key (ECC_NIST_P256, SIGN_VERIFY).
//!
//! KMS returns DER-encoded ECDSA signatures; JWS wants the fixed 64-byte `r || s`. The message is
//! sent with `MessageType=RAW` (KMS hashes it), which is also the mode moto signs correctly.

use crate::error::{BrokerError, Result};
use crate::ports::{SecretDecryptor, SecretEncryptor, TokenSigner};
use crate::redact::SecretString;
use async_trait::async_trait;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{MessageType, SigningAlgorithmSpec};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use p256::pkcs8::DecodePublicKey;
use tokio::sync::OnceCell;

pub struct KmsSigner {
    client: aws_sdk_kms::Client,
    key_id: String,
    /// Public keys never change for a key id: fetched once per execution environment.
    jwks: OnceCell<JwkSet>,
}

impl KmsSigner {
    pub fn new(client: aws_sdk_kms::Client, key_id: impl Into<String>) -> Self {
        Self {
            client,
            key_id: key_id.into(),
            jwks: OnceCell::new(),
        }
    }
}

/// DER ECDSA signature to JWS `r || s` (RFC 7518 3.4).
pub fn der_to_jws_signature(der: &[u8]) -> Result<[u8; 64]> {
    let sig = p256::ecdsa::Signature::from_der(der)
        .map_err(|_| BrokerError::Internal("KMS returned a malformed ECDSA signature".into()))?;
    let mut out = [0u8; 64];
    out.copy_from_slice(&sig.to_bytes());
    Ok(out)
}

/// SubjectPublicKeyInfo DER of a P-256 key to a JWK for `kid`.
pub fn spki_to_jwk(spki_der: &[u8], kid: &str) -> Result<serde_json::Value> {
    let key = p256::PublicKey::from_public_key_der(spki_der)
        .map_err(|_| BrokerError::Internal("signing key is not a P-256 public key".into()))?;
    let point = p256::EncodedPoint::from(key);
    let (Some(x), Some(y)) = (point.x(), point.y()) else {
        return Err(BrokerError::Internal("public key point is not uncompressed".into()));
    };
    Ok(serde_json::json!({
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
    }))
}

#[async_trait]
impl TokenSigner for KmsSigner {
    fn key_id(&self) -> &str {
        &self.key_id
    }

    async fn sign_es256(&self, signing_input: &[u8]) -> Result<[u8; 64]> {
        let output = self
            .client
            .sign()
            .key_id(&self.key_id)
            .message(Blob::new(signing_input))
            .message_type(MessageType::Raw)
            .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
            .send()
            .await
            .map_err(|e| BrokerError::aws("kms", "Sign", &e))?;
        let der = output
            .signature
            .ok_or_else(|| BrokerError::Internal("KMS Sign returned no signature".into()))?;
        der_to_jws_signature(der.as_ref())
    }

    async fn public_jwks(&self) -> Result<JwkSet> {
        self.jwks
            .get_or_try_init(|| async {
                let output = self
                    .client
                    .get_public_key()
                    .key_id(&self.key_id)
                    .send()
                    .await
                    .map_err(|e| BrokerError::aws("kms", "GetPublicKey", &e))?;
                let der = output
                    .public_key
                    .ok_or_else(|| BrokerError::Internal("KMS GetPublicKey returned no key".into()))?;
                let jwk = spki_to_jwk(der.as_ref(), &self.key_id)?;
                serde_json::from_value(serde_json::json!({ "keys": [jwk] }))
                    .map_err(|e| BrokerError::Internal(e.to_string()))
            })
            .await
            .cloned()
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

fn context_map(context: &[(String, String)]) -> std::collections::HashMap<String, String> {
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
        let err = signer.sign_es256(b"header.payload").await.unwrap_err();
        assert_eq!(err.aws_code(), Some("KMSInvalidStateException"));
        assert!(!err.to_string().contains("pending deletion"), "{err}");
    }

    #[tokio::test]
    async fn malformed_signature_is_an_internal_error_not_a_panic() {
        let rule = mock!(aws_sdk_kms::Client::sign)
            .then_output(|| SignOutput::builder().signature(Blob::new(vec![1, 2, 3])).build());
        let client = mock_client!(aws_sdk_kms, RuleMode::MatchAny, [&rule]);
        let err = KmsSigner::new(client, "abc").sign_es256(b"x.y").await.unwrap_err();
        assert!(matches!(err, BrokerError::Internal(_)));
    }
}
