//! An issuer's JWK Set as the verifier uses it: a key is found by `kid`, must fit the token's
//! algorithm, and is turned into an aws-lc verification key once per (key, algorithm) for as long
//! as this copy of the set is served. Building an RSA key from its JWK (base64 of the modulus,
//! the key's Montgomery setup) is a seventh of an RS256 verify; a refetched set starts empty.

use crate::error::{BrokerError, Result, TokenRejection};
use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents, VerificationAlgorithm};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct IssuerKeySet {
    set: JwkSet,
    /// Keys built so far: (`kid`, algorithm, key). Bounded by the set's keys times the allowed
    /// algorithms.
    built: Mutex<Vec<(String, Algorithm, Arc<ParsedPublicKey>)>>,
}

impl From<JwkSet> for IssuerKeySet {
    fn from(set: JwkSet) -> Self {
        Self {
            set,
            built: Mutex::new(Vec::new()),
        }
    }
}

impl IssuerKeySet {
    pub fn jwk_set(&self) -> &JwkSet {
        &self.set
    }

    /// The key named `kid`, ready to verify `alg` signatures. `None`: the set has no such `kid`
    /// (the caller may refresh the set). A key of another family or curve than `alg`, or whose
    /// own `alg` differs, is `KeyAlgorithmMismatch`; one whose components do not decode, too.
    /// A key aws-lc refuses (a point off the curve) verifies nothing: `BadSignature`, as a
    /// signature check with it would end. (An RSA modulus under 2048 bits is refused by aws-lc
    /// when it verifies.)
    pub fn verification_key(&self, kid: &str, alg: Algorithm) -> Option<Result<Arc<ParsedPublicKey>>> {
        let jwk = self.set.find(kid)?;
        if let Err(e) = check_key_fits_algorithm(jwk, alg) {
            return Some(Err(e));
        }
        let mut built = self.built.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, _, key)) = built.iter().find(|(k, a, _)| k == kid && *a == alg) {
            return Some(Ok(key.clone()));
        }
        let key = match build(jwk, alg) {
            Ok(key) => Arc::new(key),
            Err(e) => return Some(Err(e)),
        };
        built.push((kid.to_string(), alg, key.clone()));
        Some(Ok(key))
    }
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

/// JWS's RSA algorithms as aws-lc verifies them: moduli of 2048 to 8192 bits.
fn rsa_parameters(alg: Algorithm) -> Option<&'static signature::RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

/// The aws-lc key of a JWK that fits `alg` (checked before).
fn build(jwk: &Jwk, alg: Algorithm) -> Result<ParsedPublicKey> {
    let mismatch = || BrokerError::TokenRejected(TokenRejection::KeyAlgorithmMismatch);
    let refused = |_| BrokerError::TokenRejected(TokenRejection::BadSignature);
    let decode = |b64: &str| URL_SAFE_NO_PAD.decode(b64).map_err(|_| mismatch());
    match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let params = rsa_parameters(alg).ok_or_else(mismatch)?;
            let (n, e) = (decode(&rsa.n)?, decode(&rsa.e)?);
            RsaPublicKeyComponents { n: &n[..], e: &e[..] }
                .to_parsed_public_key(params)
                .map_err(refused)
        }
        // ECDSA signatures as JWS writes them: r || s (RFC 7518 3.4).
        AlgorithmParameters::EllipticCurve(ec) => {
            let algorithm: &'static dyn VerificationAlgorithm = match alg {
                Algorithm::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
                Algorithm::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
                _ => return Err(mismatch()),
            };
            let (x, y) = (decode(&ec.x)?, decode(&ec.y)?);
            let point = [&[0x04][..], &x, &y].concat();
            ParsedPublicKey::new(algorithm, point).map_err(refused)
        }
        AlgorithmParameters::OctetKeyPair(okp) => {
            ParsedPublicKey::new(&signature::ED25519, decode(&okp.x)?).map_err(refused)
        }
        _ => Err(mismatch()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::demo_issuer::DemoIssuer;

    fn rejection(result: Option<Result<Arc<ParsedPublicKey>>>) -> TokenRejection {
        match result {
            Some(Err(BrokerError::TokenRejected(r))) => r,
            other => panic!("expected a rejection, got {:?}", other.map(|r| r.is_ok())),
        }
    }

    fn set(json: serde_json::Value) -> IssuerKeySet {
        IssuerKeySet::from(serde_json::from_value::<JwkSet>(json).unwrap())
    }

    #[test]
    fn a_key_is_built_once_per_algorithm_and_verifies() {
        let demo = DemoIssuer::generate("https://idp.test").unwrap();
        let keys = IssuerKeySet::from(serde_json::from_value::<JwkSet>(demo.jwks_json()).unwrap());
        assert!(keys.verification_key("no-such-kid", Algorithm::ES256).is_none());
        let first = keys.verification_key(&demo.kid, Algorithm::ES256).unwrap().unwrap();
        let again = keys.verification_key(&demo.kid, Algorithm::ES256).unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the second lookup reuses the built key");
        let token = demo
            .mint(&demo.workload_claims("sub-1", "nhi-broker", 1_800_000_000, 300))
            .unwrap();
        let token = token.expose();
        let (input, signature) = token.rsplit_once('.').unwrap();
        let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
        assert!(first.verify_sig(input.as_bytes(), &signature).is_ok());
        assert!(first.verify_sig(b"another message", &signature).is_err());
    }

    #[test]
    fn keys_that_do_not_fit_the_algorithm_are_refused() {
        let demo = DemoIssuer::generate("https://idp.test").unwrap();
        let keys = IssuerKeySet::from(serde_json::from_value::<JwkSet>(demo.jwks_json()).unwrap());
        for alg in [
            Algorithm::ES384,
            Algorithm::RS256,
            Algorithm::PS256,
            Algorithm::EdDSA,
            Algorithm::HS256,
        ] {
            assert_eq!(
                rejection(keys.verification_key(&demo.kid, alg)),
                TokenRejection::KeyAlgorithmMismatch,
                "{alg:?}"
            );
        }
        let stated = set(serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "k", "alg": "ES384",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
        }]}));
        assert_eq!(
            rejection(stated.verification_key("k", Algorithm::ES256)),
            TokenRejection::KeyAlgorithmMismatch
        );
        let symmetric = set(serde_json::json!({"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]}));
        assert_eq!(
            rejection(symmetric.verification_key("k", Algorithm::HS256)),
            TokenRejection::KeyAlgorithmMismatch
        );
    }

    #[test]
    fn keys_that_do_not_decode_or_that_aws_lc_refuses_build_nothing() {
        let undecodable = set(serde_json::json!({"keys": [{"kty": "RSA", "kid": "k", "n": "!!", "e": "AQAB"}]}));
        assert_eq!(
            rejection(undecodable.verification_key("k", Algorithm::RS256)),
            TokenRejection::KeyAlgorithmMismatch
        );
        // A 1024-bit key, under aws-lc's 2048-bit minimum, with a valid RS256 signature of
        // `header.payload` (made with Python's cryptography). aws-lc checks the size when it
        // verifies: the key is built, and verifies nothing.
        let small = set(serde_json::json!({"keys": [{"kty": "RSA", "kid": "k", "e": "AQAB", "n":
            "xQ-BgMugMetGiSjFKMUOFnsGuPwOkLquI-Uc_JPKXxAfaavA37GXWSxORmlEfDKVOSMXDgB4dhw2F2Xgzj3BOV1ikqvya61y\
             iK3WfJzJf2FxysLCTUIyXQH2OFSpXojeXp4-fdPu-lo4Wjs1Zyh4986SgpNGSozT0uXR2ZvoUiM"}]}));
        let signature = URL_SAFE_NO_PAD
            .decode(
                "EW_ZsQoa8AbOE3-8s7oYAj4eajpPY4xjKkZL4u-KKx9f0RcmCM2JOxTgGVV57ureWuzvyIHf5WdNyESol7BJX4RDUcVkA58R\
                 LlUPwdbVQWA2r6O0ACGZxy23QsTlH4mw99VA4jVd9ev2brHBpTyykKNTDYLrF21ynNVb9o4sqi8",
            )
            .unwrap();
        let key = small.verification_key("k", Algorithm::RS256).unwrap().unwrap();
        assert!(key.verify_sig(b"header.payload", &signature).is_err());
        let off_curve = set(serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "k",
            "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])
        }]}));
        assert_eq!(
            rejection(off_curve.verification_key("k", Algorithm::ES256)),
            TokenRejection::BadSignature
        );
        assert!(off_curve.built.lock().unwrap().is_empty());
    }
}
