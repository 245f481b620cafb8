//! A self-contained OIDC-style issuer (ES256 key pair, JWKS, token minting) for local runs and
//! tests. Not used by the deployed functions.

use crate::error::{BrokerError, Result};
use crate::redact::SecretString;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::fmt;
use zeroize::Zeroizing;

pub struct DemoIssuer {
    pub issuer: String,
    pub kid: String,
    /// How many times the JWKS was served (lets tests see the broker's fetches and refreshes).
    pub jwks_served: std::sync::atomic::AtomicU64,
    pkcs8: Zeroizing<Vec<u8>>,
    x: String,
    y: String,
}

impl fmt::Debug for DemoIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemoIssuer")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl DemoIssuer {
    pub fn generate(issuer: &str) -> Result<Self> {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| BrokerError::Internal("key generation failed".into()))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .map_err(|_| BrokerError::Internal("key parse failed".into()))?;
        // Uncompressed SEC1 point: 0x04 || x (32) || y (32).
        let point = pair.public_key().as_ref();
        if point.len() != 65 {
            return Err(BrokerError::Internal("unexpected public key encoding".into()));
        }
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
        let kid = crate::redact::fingerprint(point)
            .trim_start_matches("sha256:")
            .to_string();
        Ok(Self {
            issuer: issuer.to_string(),
            kid,
            jwks_served: Default::default(),
            pkcs8: Zeroizing::new(pkcs8.as_ref().to_vec()),
            x,
            y,
        })
    }

    /// The public JWK Set, as served at the issuer's JWKS URL.
    pub fn jwks_json(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [{
            "kty": "EC", "crv": "P-256", "x": self.x, "y": self.y,
            "kid": self.kid, "alg": "ES256", "use": "sig",
        }]})
    }

    /// The raw public point, e.g. to forge an HS256 token "signed with the public key" in tests.
    pub fn public_key_bytes(&self) -> Vec<u8> {
        let mut point = vec![4u8];
        point.extend(URL_SAFE_NO_PAD.decode(&self.x).unwrap_or_default());
        point.extend(URL_SAFE_NO_PAD.decode(&self.y).unwrap_or_default());
        point
    }

    /// Encodings of the private key (PKCS#8 DER as base64, base64url and hex), so leak tests can
    /// prove none of them reaches a log line.
    pub fn private_key_encodings(&self) -> Vec<String> {
        use base64::engine::general_purpose::STANDARD;
        vec![
            STANDARD.encode(&*self.pkcs8),
            URL_SAFE_NO_PAD.encode(&*self.pkcs8),
            hex::encode(&*self.pkcs8),
        ]
    }

    pub fn encoding_key(&self) -> EncodingKey {
        EncodingKey::from_ec_der(&self.pkcs8)
    }

    /// An ES256 token with this issuer's `kid` over the given claims.
    pub fn mint(&self, claims: &serde_json::Value) -> Result<SecretString> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        self.mint_with_header(&header, claims)
    }

    pub fn mint_with_header(&self, header: &Header, claims: &serde_json::Value) -> Result<SecretString> {
        jsonwebtoken::encode(header, claims, &self.encoding_key())
            .map(SecretString::new)
            .map_err(|_| BrokerError::Internal("token signing failed".into()))
    }

    /// An ES256 token over any header JSON (e.g. with `crit`, which `Header` cannot express), signed
    /// with this issuer's key: tests of header checks that must run on a validly signed token.
    pub fn mint_with_raw_header(&self, header: &serde_json::Value, claims: &serde_json::Value) -> Result<SecretString> {
        self.mint_raw(header, &claims.to_string())
    }

    /// An ES256 token with this issuer's `kid` over any payload text (e.g. a number no JSON value
    /// holds, or a claim given twice).
    pub fn mint_with_raw_payload(&self, payload: &str) -> Result<SecretString> {
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        self.mint_raw(&header, payload)
    }

    fn mint_raw(&self, header: &serde_json::Value, payload: &str) -> Result<SecretString> {
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &self.encoding_key(), Algorithm::ES256)
            .map_err(|_| BrokerError::Internal("token signing failed".into()))?;
        Ok(SecretString::new(format!("{signing_input}.{signature}")))
    }

    /// Typical workload claims (GitHub Actions-like) for `sub`, valid for `ttl` seconds from `now`.
    pub fn workload_claims(&self, sub: &str, audience: &str, now: i64, ttl: i64) -> serde_json::Value {
        serde_json::json!({
            "iss": self.issuer, "sub": sub, "aud": audience,
            "iat": now, "nbf": now, "exp": now + ttl,
            "jti": uuid::Uuid::new_v4().to_string(),
        })
    }
}
