//! Verification of subject tokens (OIDC JWTs from workload identity providers).
//!
//! Order matters: size, then header (explicit algorithm allow-list, never `none` or HMAC; no `crit`
//! extension, since the broker understands none: RFC 7515 4.1.11), then the issuer's registration,
//! then its key by `kid`, then the signature, and only then the claims. Time claims must be integers
//! within year 0..=9999 (anything else is refused, never wrapped or saturated), and time checks use
//! the injected clock with a small leeway in checked arithmetic.

use crate::domain::{Issuer, UnixTime};
use crate::error::{BrokerError, Result, TokenRejection};
use crate::exchange::claim_set::ClaimSet;
use crate::exchange::policy::catalog::{IssuerPolicy, PolicyCatalog};
use crate::ports::IssuerKeys;
use crate::redact::SecretString;
use aws_lc_rs::digest;
use aws_lc_rs::signature::ParsedPublicKey;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::Value;
use std::str::FromStr;
use std::sync::Arc;

/// Subject tokens above this size are refused before any decoding work.
pub const MAX_SUBJECT_TOKEN_BYTES: usize = 8 * 1024;

/// Asymmetric algorithms only. HMAC is excluded so a public key can never be used as a MAC secret.
pub const ALLOWED_ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// A subject token that passed every check.
#[derive(Debug, Clone)]
pub struct VerifiedSubject {
    pub issuer: Arc<Issuer>,
    pub subject: String,
    /// The token's `exp`, validated (range-checked integer).
    pub expires_at: UnixTime,
    pub claims: ClaimSet,
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
    /// Present at all (even empty) means the token demands extensions the broker does not know.
    crit: Option<Value>,
}

/// Latest accepted time claim: 9999-12-31T23:59:59Z. Larger values are refused, not clamped.
pub const MAX_TIME_CLAIM: i64 = 253_402_300_799;

pub struct SubjectTokenVerifier<'a> {
    pub policy: &'a PolicyCatalog,
    pub keys: &'a dyn IssuerKeys,
    pub leeway_seconds: i64,
}

impl SubjectTokenVerifier<'_> {
    /// Verify the token and return the subject with its issuer's compiled policy.
    ///
    /// `context` is filled with whatever could be read before a failure (for the denial audit).
    pub async fn verify(
        &self,
        token: &SecretString,
        now: UnixTime,
        context: &mut UnverifiedContext,
    ) -> Result<(VerifiedSubject, Arc<IssuerPolicy>)> {
        let reject = |r: TokenRejection| BrokerError::TokenRejected(r);
        if token.len() > MAX_SUBJECT_TOKEN_BYTES {
            return Err(reject(TokenRejection::TooLarge));
        }
        let raw = token.expose();
        let mut parts = raw.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(reject(TokenRejection::Malformed));
        };
        let header: RawHeader = decode_json_segment(header_b64).ok_or(reject(TokenRejection::Malformed))?;
        if header.crit.is_some() {
            return Err(reject(TokenRejection::CriticalExtension));
        }
        let alg_name = header.alg.ok_or(reject(TokenRejection::Malformed))?;
        if !ALLOWED_ALGS.contains(&alg_name.as_str()) {
            return Err(reject(TokenRejection::UnsupportedAlgorithm));
        }
        let alg = Algorithm::from_str(&alg_name).map_err(|_| reject(TokenRejection::UnsupportedAlgorithm))?;

        // The unverified `iss` only selects which registration (and keys) to verify against.
        let unverified = decode_claims(payload_b64).ok_or(reject(TokenRejection::Malformed))?;
        let iss = unverified.get_str("iss").ok_or(reject(TokenRejection::MissingClaim))?;
        context.issuer = Some(iss.to_string());

        let policy = match self.policy.issuer(&iss).await? {
            Some(policy) if policy.issuer.enabled => policy,
            _ => return Err(reject(TokenRejection::UntrustedIssuer)),
        };
        let issuer = policy.issuer.clone();
        if !issuer.algorithms.iter().any(|a| a == &alg_name) {
            return Err(reject(TokenRejection::UnsupportedAlgorithm));
        }

        let kid = header.kid.ok_or(reject(TokenRejection::UnknownKey))?;
        let cached = self.keys.jwks(&issuer, false).await?;
        let key = match cached.verification_key(&kid, alg) {
            Some(key) => key?,
            None => {
                let refreshed = self.keys.jwks(&issuer, true).await?;
                refreshed
                    .verification_key(&kid, alg)
                    .ok_or(reject(TokenRejection::UnknownKey))??
            }
        };

        // Signature only, over the very bytes parsed above (`unverified` becomes the verified
        // claims: no second parse); claim checks below use our clock and give precise reasons.
        let signing_input = &raw[..header_b64.len() + 1 + payload_b64.len()];
        let signature = crate::b64::url_decode(signature_b64).ok_or_else(|| reject(TokenRejection::Malformed))?;
        let fingerprint = verify_signature(&key, alg, raw, signing_input, &signature)?;
        let claims = unverified;

        let (subject, expires_at) = check_claims(&claims, &issuer, now, self.leeway_seconds)?;
        context.subject = Some(subject.clone());
        Ok((
            VerifiedSubject {
                issuer,
                subject,
                expires_at,
                claims,
                fingerprint,
            },
            policy,
        ))
    }
}

/// Verify the signature over `signing_input` (the start of `token`) and return the token's
/// fingerprint, SHA-256 over all of it. For the SHA-256 algorithms the two share one pass: the
/// signed part is hashed once, its digest verified, and the hash carried on over the rest (a
/// second pass over a GitHub token's kilobyte and a half was the largest hash of a request).
fn verify_signature(
    key: &ParsedPublicKey,
    alg: Algorithm,
    token: &str,
    signing_input: &str,
    signature: &[u8],
) -> Result<String> {
    let bad_signature = || BrokerError::TokenRejected(TokenRejection::BadSignature);
    if !matches!(alg, Algorithm::RS256 | Algorithm::PS256 | Algorithm::ES256) {
        key.verify_sig(signing_input.as_bytes(), signature)
            .map_err(|_| bad_signature())?;
        return Ok(crate::redact::fingerprint(token.as_bytes()));
    }
    let mut hash = digest::Context::new(&digest::SHA256);
    hash.update(signing_input.as_bytes());
    key.verify_digest_sig(&hash.clone().finish(), signature)
        .map_err(|_| bad_signature())?;
    hash.update(&token.as_bytes()[signing_input.len()..]);
    Ok(crate::redact::fingerprint_of_sha256(hash.finish().as_ref()))
}

/// The payload's claims: base64url, UTF-8, a JSON object (read in place, `claim_set`).
fn decode_claims(segment: &str) -> Option<ClaimSet> {
    let bytes = crate::b64::url_decode(segment.trim_end_matches('='))?;
    ClaimSet::parse(String::from_utf8(bytes).ok()?)
}

fn decode_json_segment<T: serde::de::DeserializeOwned>(segment: &str) -> Option<T> {
    let bytes = crate::b64::url_decode(segment.trim_end_matches('='))?;
    // UTF-8 checked once for the whole segment, then parsed as a str: from bytes, serde_json
    // checks every string it reads on its own (a sixth of the claims' parse).
    serde_json::from_str(std::str::from_utf8(&bytes).ok()?).ok()
}

/// A NumericDate claim (RFC 7519 2) as whole seconds: absent is `None`; present but not a number,
/// fractional beyond representation, negative or past year 9999 is refused (so is a value no
/// JSON number holds).
fn time_claim(claims: &ClaimSet, name: &str) -> Result<Option<i64>> {
    // One lookup: `contains` and then `get` would search the claims twice.
    let Some(raw) = claims.raw(name) else {
        return Ok(None);
    };
    let value = serde_json::from_str(raw).unwrap_or(Value::Null);
    let seconds = match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            // Fractional seconds are allowed by RFC 7519; only finite, in-range values are kept.
            n.as_f64()
                .filter(|f| f.is_finite() && (0.0..=MAX_TIME_CLAIM as f64).contains(f))
                .map(|f| f.trunc() as i64)
        }),
        _ => None,
    };
    match seconds {
        Some(s) if (0..=MAX_TIME_CLAIM).contains(&s) => Ok(Some(s)),
        _ => Err(BrokerError::TokenRejected(TokenRejection::InvalidTimeClaim)),
    }
}

/// Registered claims: exact `iss`, an accepted `aud`, a `sub`, and `exp`/`nbf`/`iat` with leeway.
/// Returns the subject and the token's expiry.
fn check_claims(claims: &ClaimSet, issuer: &Issuer, now: UnixTime, leeway: i64) -> Result<(String, UnixTime)> {
    let reject = |r: TokenRejection| BrokerError::TokenRejected(r);
    if claims.get_str("iss").as_deref() != Some(issuer.issuer.as_str()) {
        return Err(reject(TokenRejection::WrongIssuer));
    }
    let sub = claims
        .get_str("sub")
        .filter(|s| !s.is_empty())
        .ok_or(reject(TokenRejection::MissingClaim))?;
    let accepted = |a: &str| issuer.audiences.iter().any(|accepted| accepted == a);
    let audience_accepted = match claims.get_str("aud") {
        Some(a) => accepted(&a),
        None => match claims.get("aud") {
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(accepted),
            _ => return Err(reject(TokenRejection::MissingClaim)),
        },
    };
    if !audience_accepted {
        return Err(reject(TokenRejection::WrongAudience));
    }
    let exp = time_claim(claims, "exp")?.ok_or(reject(TokenRejection::MissingClaim))?;
    let nbf = time_claim(claims, "nbf")?;
    let iat = time_claim(claims, "iat")?;
    // Both sides are bounded (claims by MAX_TIME_CLAIM, the clock and leeway by the platform), and
    // saturating arithmetic keeps that true even for a wild clock.
    if exp.saturating_add(leeway) <= now {
        return Err(reject(TokenRejection::Expired));
    }
    let horizon = now.saturating_add(leeway);
    if nbf.is_some_and(|nbf| nbf > horizon) {
        return Err(reject(TokenRejection::NotYetValid));
    }
    if iat.is_some_and(|iat| iat > horizon) {
        return Err(reject(TokenRejection::IssuedInFuture));
    }
    Ok((sub.into_owned(), exp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::jwks::{HttpIssuerKeys, JwksSettings};
    use crate::testing::InMemoryPolicy;
    use crate::testing::demo_issuer::DemoIssuer;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    /// The demo issuer registered (static JWKS), and the production key cache in front of it.
    fn world() -> (DemoIssuer, PolicyCatalog, HttpIssuerKeys) {
        let demo = DemoIssuer::generate("https://idp.test").unwrap();
        let policy = registered(&demo);
        (demo, policy, HttpIssuerKeys::new(JwksSettings::default()).unwrap())
    }

    fn registered_issuer(demo: &DemoIssuer) -> Issuer {
        Issuer {
            issuer: demo.issuer.clone(),
            name: "idp".into(),
            audiences: vec!["nhi-broker".into()],
            jwks: crate::domain::JwksSource::Static {
                jwks: demo.jwks_json().to_string(),
            },
            algorithms: vec!["ES256".into()],
            enabled: true,
            one_time_jti: false,
            pattern_prefix_segments: 1,
        }
    }

    fn registered(demo: &DemoIssuer) -> PolicyCatalog {
        let store = InMemoryPolicy::with(vec![registered_issuer(demo)], vec![], vec![]);
        PolicyCatalog::new(Arc::new(store), std::time::Duration::ZERO)
    }

    fn rejection(result: Result<(VerifiedSubject, Arc<IssuerPolicy>)>) -> TokenRejection {
        match result {
            Err(BrokerError::TokenRejected(r)) => r,
            other => panic!("expected a token rejection, got {:?}", other.map(|(s, _)| s.subject)),
        }
    }

    #[tokio::test]
    async fn a_crit_header_is_refused_even_when_validly_signed() {
        let (demo, policy, keys) = world();
        let claims = demo.workload_claims("sub-1", "nhi-broker", NOW, 300);
        let verifier = SubjectTokenVerifier {
            policy: &policy,
            keys: &keys,
            leeway_seconds: 30,
        };
        let plain = demo
            .mint_with_raw_header(&json!({"alg": "ES256", "kid": demo.kid, "typ": "JWT"}), &claims)
            .unwrap();
        let ok = verifier.verify(&plain, NOW, &mut UnverifiedContext::default()).await;
        assert_eq!(
            ok.unwrap().0.subject,
            "sub-1",
            "the raw-header helper makes valid tokens"
        );
        for crit in [json!(["exp"]), json!([]), json!("b64"), json!(null)] {
            let token = demo
                .mint_with_raw_header(&json!({"alg": "ES256", "kid": demo.kid, "crit": crit}), &claims)
                .unwrap();
            let result = verifier.verify(&token, NOW, &mut UnverifiedContext::default()).await;
            // `"crit": null` deserializes as absent: JSON null is no extension list.
            if crit.is_null() {
                assert!(result.is_ok());
            } else {
                assert_eq!(rejection(result), TokenRejection::CriticalExtension, "crit = {crit}");
            }
        }
    }

    /// Segments are parsed as UTF-8 text: bytes that are not UTF-8, inside a string or out of
    /// one, make the token malformed, and an escaped key reads as its text.
    #[tokio::test]
    async fn segments_that_are_not_utf8_are_malformed() {
        let (demo, policy, keys) = world();
        let verifier = SubjectTokenVerifier {
            policy: &policy,
            keys: &keys,
            leeway_seconds: 30,
        };
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"ES256","kid":"{}"}}"#, demo.kid));
        for payload in [
            &b"{\"iss\":\"https://idp.test\xff\"}"[..],
            b"{\"iss\":\"x\"}\xff",
            b"\xff",
        ] {
            let token = SecretString::new(format!("{header}.{}.c2ln", URL_SAFE_NO_PAD.encode(payload)));
            let mut context = UnverifiedContext::default();
            let result = verifier.verify(&token, NOW, &mut context).await;
            assert_eq!(rejection(result), TokenRejection::Malformed, "{payload:?}");
            assert_eq!(context.issuer, None);
        }
        let escaped_key = URL_SAFE_NO_PAD.encode(r#"{"\u0069ss":"https://idp.test"}"#);
        let token = SecretString::new(format!("{header}.{escaped_key}.c2ln"));
        let mut context = UnverifiedContext::default();
        let result = verifier.verify(&token, NOW, &mut context).await;
        assert_eq!(rejection(result), TokenRejection::BadSignature);
        assert_eq!(context.issuer.as_deref(), Some("https://idp.test"));
    }

    /// RS256, PS256 and ES256 verify a digest shared with the fingerprint: a verified token's
    /// fingerprint is that of its whole text, and another signature or payload is refused.
    #[tokio::test]
    async fn the_shared_hash_verifies_and_fingerprints_as_two_passes_would() {
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaKeyPair};
        let demo = DemoIssuer::generate("https://idp.test").unwrap();
        let rsa = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let component = |c: &[u8]| URL_SAFE_NO_PAD.encode(c);
        let mut jwks = demo.jwks_json();
        jwks["keys"]
            .as_array_mut()
            .unwrap()
            .push(json!({"kty": "RSA", "kid": "rsa-1",
            "n": component(rsa.public_key().modulus().big_endian_without_leading_zero()),
            "e": component(rsa.public_key().exponent().big_endian_without_leading_zero())}));
        let policy = PolicyCatalog::new(
            Arc::new(InMemoryPolicy::with(
                vec![Issuer {
                    jwks: crate::domain::JwksSource::Static { jwks: jwks.to_string() },
                    algorithms: vec!["ES256".into(), "RS256".into(), "PS256".into()],
                    ..registered_issuer(&demo)
                }],
                vec![],
                vec![],
            )),
            std::time::Duration::ZERO,
        );
        let keys = HttpIssuerKeys::new(JwksSettings::default()).unwrap();
        let verifier = SubjectTokenVerifier {
            policy: &policy,
            keys: &keys,
            leeway_seconds: 30,
        };
        let rsa_token = |alg: &str, claims: &Value| {
            let input = format!(
                "{}.{}",
                component(json!({"alg": alg, "kid": "rsa-1"}).to_string().as_bytes()),
                component(claims.to_string().as_bytes())
            );
            let padding = if alg == "PS256" {
                &RSA_PSS_SHA256
            } else {
                &RSA_PKCS1_SHA256
            };
            let mut signature = vec![0; rsa.public_modulus_len()];
            rsa.sign(padding, &SystemRandom::new(), input.as_bytes(), &mut signature)
                .unwrap();
            format!("{input}.{}", component(&signature))
        };
        let claims = demo.workload_claims("sub-1", "nhi-broker", NOW, 300);
        let other = demo.workload_claims("sub-2", "nhi-broker", NOW, 300);
        let tokens = [
            (rsa_token("RS256", &claims), rsa_token("RS256", &other)),
            (rsa_token("PS256", &claims), rsa_token("PS256", &other)),
            (
                demo.mint(&claims).unwrap().expose().to_string(),
                demo.mint(&other).unwrap().expose().to_string(),
            ),
        ];
        for (token, other) in tokens {
            let verify = |text: String| async {
                verifier
                    .verify(&SecretString::new(text), NOW, &mut UnverifiedContext::default())
                    .await
            };
            let (subject, _) = verify(token.clone()).await.unwrap();
            assert_eq!(subject.fingerprint, crate::redact::fingerprint(token.as_bytes()));
            let (input, signature) = token.rsplit_once('.').unwrap();
            let (other_input, other_signature) = other.rsplit_once('.').unwrap();
            for forged in [
                format!("{input}.{other_signature}"),
                format!("{other_input}.{signature}"),
            ] {
                assert_eq!(rejection(verify(forged).await), TokenRejection::BadSignature, "{token}");
            }
        }
    }

    #[tokio::test]
    async fn overflowing_or_non_numeric_time_claims_are_refused_without_panicking() {
        let (demo, _, _) = world();
        let base = demo.workload_claims("sub-1", "nhi-broker", NOW, 300);
        let cases = [
            ("exp", json!(1e19)),
            ("exp", json!(i64::MAX)),
            ("exp", json!(u64::MAX)),
            ("exp", json!(1e308)),
            ("exp", json!(-1)),
            ("exp", json!(i64::MIN)),
            ("exp", json!("1800000300")),
            ("exp", json!(MAX_TIME_CLAIM + 1)),
            ("nbf", json!(1e19)),
            ("nbf", json!(i64::MAX)),
            ("iat", json!(-1e308)),
            ("iat", json!(true)),
        ];
        for (claim, value) in cases {
            let mut claims = base.clone();
            claims[claim] = value.clone();
            let token = demo.mint(&claims).unwrap();
            assert_eq!(
                rejection(verify_with(&demo, &token).await),
                TokenRejection::InvalidTimeClaim,
                "{claim} = {value}"
            );
        }
        // A number no JSON value holds: the time claim is refused; elsewhere, unread, it is not
        // the token's business (`claim_set`).
        let iss = demo.issuer.as_str();
        let payload =
            |exp: &str, extra: &str| format!(r#"{{"iss":"{iss}","sub":"s","aud":"nhi-broker","exp":{exp}{extra}}}"#);
        let beyond = demo.mint_with_raw_payload(&payload("1e400", "")).unwrap();
        assert_eq!(
            rejection(verify_with(&demo, &beyond).await),
            TokenRejection::InvalidTimeClaim
        );
        let unread = demo
            .mint_with_raw_payload(&payload(&(NOW + 60).to_string(), r#","x":1e400"#))
            .unwrap();
        let (subject, _) = verify_with(&demo, &unread).await.unwrap();
        assert!(subject.claims.contains("x") && subject.claims.get("x").is_none());
        // A claim given twice means its last value (RFC 7519 4), as before.
        let twice = demo
            .mint_with_raw_payload(&payload(&(NOW + 60).to_string(), r#","sub":"second""#))
            .unwrap();
        assert_eq!(verify_with(&demo, &twice).await.unwrap().0.subject, "second");

        // Far but representable values are judged, not refused as malformed.
        let mut claims = base.clone();
        claims["exp"] = json!(MAX_TIME_CLAIM);
        claims["iat"] = json!(NOW as f64 + 0.5);
        let (subject, _) = verify_with(&demo, &demo.mint(&claims).unwrap()).await.unwrap();
        assert_eq!(subject.expires_at, MAX_TIME_CLAIM);
    }

    async fn verify_with(demo: &DemoIssuer, token: &SecretString) -> Result<(VerifiedSubject, Arc<IssuerPolicy>)> {
        let policy = registered(demo);
        let keys = HttpIssuerKeys::new(JwksSettings::default()).unwrap();
        let verifier = SubjectTokenVerifier {
            policy: &policy,
            keys: &keys,
            leeway_seconds: 30,
        };
        verifier.verify(token, NOW, &mut UnverifiedContext::default()).await
    }
}
