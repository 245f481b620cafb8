//! Verification of subject tokens (OIDC JWTs from workload identity providers).
//!
//! Order matters: size, then header (explicit algorithm allow-list, never `none` or HMAC), then
//! the issuer's registration, then its key by `kid`, then the signature, and only then the claims.
//! Time checks use the injected clock with a small leeway.

use crate::domain::{Grant, Issuer, UnixTime};
use crate::error::{BrokerError, Result, TokenRejection};
use crate::ports::{IssuerKeys, PolicyStore};
use crate::redact::SecretString;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::str::FromStr;

/// Subject tokens above this size are refused before any decoding work.
pub const MAX_SUBJECT_TOKEN_BYTES: usize = 8 * 1024;

/// Asymmetric algorithms only. HMAC is excluded so a public key can never be used as a MAC secret.
pub const ALLOWED_ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// A subject token that passed every check, with the issuer's grants loaded in the same read.
#[derive(Debug, Clone)]
pub struct VerifiedSubject {
    pub issuer: Issuer,
    pub subject: String,
    pub claims: Map<String, Value>,
    pub fingerprint: String,
}

/// Partial result kept for audit when verification fails part-way.
#[derive(Debug, Clone, Default)]
pub struct UnverifiedContext {
    pub issuer: Option<String>,
    pub subject: Option<String>,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
}

pub struct SubjectTokenVerifier<'a> {
    pub policy: &'a dyn PolicyStore,
    pub keys: &'a dyn IssuerKeys,
    pub leeway_seconds: i64,
}

impl SubjectTokenVerifier<'_> {
    /// Verify the token and return the subject with its issuer's grants.
    ///
    /// `context` is filled with whatever could be read before a failure (for the denial audit).
    pub async fn verify(
        &self,
        token: &SecretString,
        now: UnixTime,
        context: &mut UnverifiedContext,
    ) -> Result<(VerifiedSubject, Vec<Grant>)> {
        let reject = |r: TokenRejection| BrokerError::TokenRejected(r);
        if token.len() > MAX_SUBJECT_TOKEN_BYTES {
            return Err(reject(TokenRejection::TooLarge));
        }
        let raw = token.expose();
        let mut parts = raw.split('.');
        let (Some(header_b64), Some(payload_b64), Some(_sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(reject(TokenRejection::Malformed));
        };
        let header: RawHeader = decode_json_segment(header_b64).ok_or(reject(TokenRejection::Malformed))?;
        let alg_name = header.alg.ok_or(reject(TokenRejection::Malformed))?;
        if !ALLOWED_ALGS.contains(&alg_name.as_str()) {
            return Err(reject(TokenRejection::UnsupportedAlgorithm));
        }
        let alg = Algorithm::from_str(&alg_name).map_err(|_| reject(TokenRejection::UnsupportedAlgorithm))?;

        // The unverified `iss` only selects which registration (and keys) to verify against.
        let unverified: Map<String, Value> =
            decode_json_segment(payload_b64).ok_or(reject(TokenRejection::Malformed))?;
        let iss = unverified
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(reject(TokenRejection::MissingClaim))?;
        context.issuer = Some(iss.to_string());

        let (issuer, grants) = match self.policy.issuer_with_grants(iss).await? {
            Some((issuer, grants)) if issuer.enabled => (issuer, grants),
            _ => return Err(reject(TokenRejection::UntrustedIssuer)),
        };
        if !issuer.algorithms.iter().any(|a| a == &alg_name) {
            return Err(reject(TokenRejection::UnsupportedAlgorithm));
        }

        let kid = header.kid.ok_or(reject(TokenRejection::UnknownKey))?;
        let jwk = match self.keys.jwks(&issuer, false).await?.find(&kid) {
            Some(jwk) => jwk.clone(),
            None => self
                .keys
                .jwks(&issuer, true)
                .await?
                .find(&kid)
                .cloned()
                .ok_or(reject(TokenRejection::UnknownKey))?,
        };
        check_key_fits_algorithm(&jwk, alg)?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| reject(TokenRejection::KeyAlgorithmMismatch))?;

        // Signature only: claim checks below use our clock and give precise reasons.
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(raw, &key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::InvalidSignature => reject(TokenRejection::BadSignature),
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => {
                        reject(TokenRejection::KeyAlgorithmMismatch)
                    }
                    _ => reject(TokenRejection::Malformed),
                }
            })?
            .claims;

        let subject = check_claims(&claims, &issuer, now, self.leeway_seconds)?;
        context.subject = Some(subject.clone());
        Ok((
            VerifiedSubject {
                issuer,
                subject,
                claims,
                fingerprint: token.fingerprint(),
            },
            grants,
        ))
    }
}

fn decode_json_segment<T: serde::de::DeserializeOwned>(segment: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(segment.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The JWK must be of the family and curve the header algorithm implies, and agree with its own
/// `alg` if it states one. Symmetric (`oct`) keys are never acceptable.
fn check_key_fits_algorithm(jwk: &Jwk, alg: Algorithm) -> Result<()> {
    let fits = match (&jwk.algorithm, alg) {
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) => ec.curve == EllipticCurve::P256,
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES384) => ec.curve == EllipticCurve::P384,
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => true,
        (AlgorithmParameters::OctetKeyPair(okp), Algorithm::EdDSA) => okp.curve == EllipticCurve::Ed25519,
        _ => false,
    };
    let alg_agrees = match jwk.common.key_algorithm {
        None => true,
        Some(key_alg) => key_alg.to_string() == format!("{alg:?}"),
    };
    if fits && alg_agrees {
        Ok(())
    } else {
        Err(BrokerError::TokenRejected(TokenRejection::KeyAlgorithmMismatch))
    }
}

fn number(claims: &Map<String, Value>, name: &str) -> Option<i64> {
    claims.get(name).and_then(Value::as_f64).map(|f| f as i64)
}

/// Registered claims: exact `iss`, an accepted `aud`, a `sub`, and `exp`/`nbf`/`iat` with leeway.
fn check_claims(claims: &Map<String, Value>, issuer: &Issuer, now: UnixTime, leeway: i64) -> Result<String> {
    let reject = |r: TokenRejection| BrokerError::TokenRejected(r);
    if claims.get("iss").and_then(Value::as_str) != Some(issuer.issuer.as_str()) {
        return Err(reject(TokenRejection::WrongIssuer));
    }
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(reject(TokenRejection::MissingClaim))?;
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        _ => return Err(reject(TokenRejection::MissingClaim)),
    };
    if !audiences
        .iter()
        .any(|a| issuer.audiences.iter().any(|accepted| accepted == a))
    {
        return Err(reject(TokenRejection::WrongAudience));
    }
    let exp = number(claims, "exp").ok_or(reject(TokenRejection::MissingClaim))?;
    if exp + leeway <= now {
        return Err(reject(TokenRejection::Expired));
    }
    if number(claims, "nbf").is_some_and(|nbf| nbf > now + leeway) {
        return Err(reject(TokenRejection::NotYetValid));
    }
    if number(claims, "iat").is_some_and(|iat| iat > now + leeway) {
        return Err(reject(TokenRejection::IssuedInFuture));
    }
    Ok(sub.to_string())
}
