//! Verifying a Security Event Token (RFC 8417) the broker pushed to a destination (RFC 8935).
//!
//! Checks, in order (the first failure decides the RFC 8935 error code):
//! 1. size (at most 16 KiB) and JOSE header: `typ` exactly `secevent+jwt` (an access token the
//!    broker signed must never pass as an event), `alg` ES256, a `kid`;
//! 2. the key: the broker's JWKS, fetched over HTTPS (or loopback http) and cached for
//!    [`JWKS_CACHE`]; an unknown `kid` refetches, at most once per [`JWKS_REFETCH_GAP`];
//! 3. the signature, then `iss` = the broker, `aud` = this receiver's URL;
//! 4. freshness: `iat` within `max_age` in the past and [`CLOCK_SKEW`] in the future (the broker
//!    signs every delivery attempt afresh, so a retried event is fresh too);
//! 5. the event: exactly one, of a type this client knows.
//!
//! Deduplication is the caller's second step: [`SetVerifier::seen`] tells whether a `jti` was
//! already handled, and [`SetVerifier::handled`] records it once handling succeeded, so a delivery
//! whose acknowledgement was lost is acknowledged again without acting twice, and one whose
//! handling failed is acted on when it comes back.

use crate::is_allowed_url;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const SET_TYP: &str = "secevent+jwt";
pub const EVENT_CREDENTIAL_REVOKED: &str = "urn:nhi-broker:secevent:credential-revoked";
pub const EVENT_CREDENTIAL_ROTATED: &str = "urn:nhi-broker:secevent:credential-rotated";
pub const JWKS_CACHE: Duration = Duration::from_secs(300);
pub const JWKS_REFETCH_GAP: Duration = Duration::from_secs(30);
pub const CLOCK_SKEW: i64 = 60;
const MAX_SET_BYTES: usize = 16 * 1024;

/// Why a SET was refused, with its RFC 8935 section 2.4 error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    #[error("invalid_request: {0}")]
    InvalidRequest(&'static str),
    #[error("invalid_key: {0}")]
    InvalidKey(&'static str),
    #[error("authentication_failed: {0}")]
    AuthenticationFailed(&'static str),
    #[error("invalid_issuer: the SET is not from the configured broker")]
    InvalidIssuer,
    #[error("invalid_audience: the SET is not addressed to this receiver")]
    InvalidAudience,
    /// The broker's keys could not be fetched: answer 503 so the broker retries.
    #[error("the broker's JWKS is unavailable")]
    KeysUnavailable,
}

impl SetError {
    /// The RFC 8935 `err` code (None: not the SET's fault, answer 503).
    pub fn code(&self) -> Option<&'static str> {
        Some(match self {
            SetError::InvalidRequest(_) => "invalid_request",
            SetError::InvalidKey(_) => "invalid_key",
            SetError::AuthenticationFailed(_) => "authentication_failed",
            SetError::InvalidIssuer => "invalid_issuer",
            SetError::InvalidAudience => "invalid_audience",
            SetError::KeysUnavailable => return None,
        })
    }
}

/// The change a verified SET reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityEvent {
    /// A credential (secret, version, grant, subject, lease, destination) was revoked.
    CredentialRevoked {
        target_kind: String,
        target_id: String,
        reason: String,
        at: i64,
    },
    /// A secret was rotated: re-fetch it.
    CredentialRotated {
        secret_id: String,
        old_version: Option<String>,
        new_version: String,
        at: i64,
    },
}

impl SecurityEvent {
    pub fn type_uri(&self) -> &'static str {
        match self {
            SecurityEvent::CredentialRevoked { .. } => EVENT_CREDENTIAL_REVOKED,
            SecurityEvent::CredentialRotated { .. } => EVENT_CREDENTIAL_ROTATED,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSet {
    pub jti: String,
    /// Ties together every SET about the same change.
    pub txn: String,
    pub iat: i64,
    /// `sub_id.id`: what changed (`secret:<id>`, `lease:<id>`, ...).
    pub subject: String,
    pub event: SecurityEvent,
}

#[derive(Deserialize)]
struct Claims {
    jti: String,
    iat: i64,
    #[serde(default)]
    txn: String,
    #[serde(default)]
    sub_id: Option<SubjectId>,
    events: serde_json::Map<String, Value>,
}

#[derive(Deserialize)]
struct SubjectId {
    id: String,
}

struct Keys {
    set: JwkSet,
    fetched: Instant,
}

pub struct SetVerifier {
    issuer: String,
    audience: String,
    jwks_url: String,
    max_age: i64,
    http: reqwest::Client,
    keys: tokio::sync::Mutex<Option<Keys>>,
    handled: Mutex<HashMap<String, i64>>,
}

impl SetVerifier {
    /// `issuer`: the broker's `iss`; `audience`: this receiver's URL as registered at the broker;
    /// `max_age`: how old an `iat` may be (seconds; also how long a `jti` is remembered).
    pub fn new(issuer: &str, audience: &str, jwks_url: &str, max_age: i64) -> crate::Result<Self> {
        if !is_allowed_url(jwks_url) {
            return Err(crate::Error::Usage(
                "the JWKS URL must be https:// (or http:// to loopback)".into(),
            ));
        }
        Ok(Self {
            issuer: issuer.into(),
            audience: audience.into(),
            jwks_url: jwks_url.into(),
            max_age: max_age.max(1),
            http: crate::broker::http_client()?,
            keys: tokio::sync::Mutex::new(None),
            handled: Mutex::new(HashMap::new()),
        })
    }

    /// A verifier with pinned keys (no fetching): for receivers that ship the broker's JWKS.
    pub fn with_jwks(issuer: &str, audience: &str, jwks: JwkSet, max_age: i64) -> crate::Result<Self> {
        Ok(Self {
            issuer: issuer.into(),
            audience: audience.into(),
            jwks_url: String::new(),
            max_age: max_age.max(1),
            http: crate::broker::http_client()?,
            keys: tokio::sync::Mutex::new(Some(Keys {
                set: jwks,
                fetched: Instant::now(),
            })),
            handled: Mutex::new(HashMap::new()),
        })
    }

    pub async fn verify(&self, token: &str, now: i64) -> Result<VerifiedSet, SetError> {
        if token.len() > MAX_SET_BYTES {
            return Err(SetError::InvalidRequest("the SET is larger than 16 KiB"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| SetError::InvalidRequest("not a JWT"))?;
        if header.typ.as_deref() != Some(SET_TYP) {
            return Err(SetError::InvalidRequest("typ is not secevent+jwt"));
        }
        if header.alg != Algorithm::ES256 {
            return Err(SetError::InvalidKey("alg is not ES256"));
        }
        let kid = header.kid.ok_or(SetError::InvalidKey("no kid"))?;
        let key = self.key(&kid).await?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.validate_exp = false;
        validation.required_spec_claims = ["iss", "aud", "iat", "jti"].iter().map(|c| c.to_string()).collect();
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidIssuer => SetError::InvalidIssuer,
                jsonwebtoken::errors::ErrorKind::InvalidAudience => SetError::InvalidAudience,
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    SetError::AuthenticationFailed("the signature does not verify")
                }
                _ => SetError::InvalidRequest("malformed claims"),
            })?
            .claims;
        if claims.iat > now + CLOCK_SKEW {
            return Err(SetError::InvalidRequest("iat is in the future"));
        }
        if now - claims.iat > self.max_age {
            return Err(SetError::InvalidRequest("the SET is too old"));
        }
        if claims.jti.is_empty() {
            return Err(SetError::InvalidRequest("empty jti"));
        }
        let mut events = claims.events.into_iter();
        let (Some((uri, payload)), None) = (events.next(), events.next()) else {
            return Err(SetError::InvalidRequest(
                "a SET from the broker carries exactly one event",
            ));
        };
        let text = |name: &str| payload.get(name).and_then(Value::as_str).map(str::to_string);
        let at = payload
            .get("event_timestamp")
            .and_then(Value::as_i64)
            .unwrap_or(claims.iat);
        let event = match uri.as_str() {
            EVENT_CREDENTIAL_REVOKED => SecurityEvent::CredentialRevoked {
                target_kind: text("target_kind").ok_or(SetError::InvalidRequest("no target_kind"))?,
                target_id: text("target_id").ok_or(SetError::InvalidRequest("no target_id"))?,
                reason: text("reason").unwrap_or_default(),
                at,
            },
            EVENT_CREDENTIAL_ROTATED => SecurityEvent::CredentialRotated {
                secret_id: text("secret_id").ok_or(SetError::InvalidRequest("no secret_id"))?,
                old_version: text("old_version"),
                new_version: text("new_version").ok_or(SetError::InvalidRequest("no new_version"))?,
                at,
            },
            _ => return Err(SetError::InvalidRequest("unknown event type")),
        };
        Ok(VerifiedSet {
            jti: claims.jti,
            txn: claims.txn,
            iat: claims.iat,
            subject: claims.sub_id.map(|s| s.id).unwrap_or_default(),
            event,
        })
    }

    /// Whether this `jti` was already handled within the window.
    pub fn seen(&self, jti: &str, now: i64) -> bool {
        let mut handled = self.handled.lock().unwrap_or_else(|e| e.into_inner());
        handled.retain(|_, at| now - *at <= 2 * self.max_age + CLOCK_SKEW);
        handled.contains_key(jti)
    }

    /// Record that this `jti` was handled (after the action succeeded).
    pub fn handled(&self, jti: &str, now: i64) {
        self.handled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(jti.to_string(), now);
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, SetError> {
        let mut keys = self.keys.lock().await;
        if self.jwks_url.is_empty() {
            let jwk = keys
                .as_ref()
                .and_then(|k| k.set.find(kid))
                .ok_or(SetError::InvalidKey("kid is not in the broker's JWKS"))?;
            return DecodingKey::from_jwk(jwk).map_err(|_| SetError::InvalidKey("unusable key"));
        }
        let fresh = keys.as_ref().is_some_and(|k| k.fetched.elapsed() < JWKS_CACHE);
        if fresh && let Some(jwk) = keys.as_ref().and_then(|k| k.set.find(kid)) {
            return DecodingKey::from_jwk(jwk).map_err(|_| SetError::InvalidKey("unusable key"));
        }
        let may_refetch = keys
            .as_ref()
            .is_none_or(|k| !fresh || k.fetched.elapsed() >= JWKS_REFETCH_GAP);
        if may_refetch {
            match self.fetch().await {
                Ok(set) => {
                    *keys = Some(Keys {
                        set,
                        fetched: Instant::now(),
                    })
                }
                // Keep a stale set over none; without any, the broker must retry later.
                Err(e) if keys.is_none() => return Err(e),
                Err(_) => {}
            }
        }
        let jwk = keys
            .as_ref()
            .and_then(|k| k.set.find(kid))
            .ok_or(SetError::InvalidKey("kid is not in the broker's JWKS"))?;
        DecodingKey::from_jwk(jwk).map_err(|_| SetError::InvalidKey("unusable key"))
    }

    async fn fetch(&self) -> Result<JwkSet, SetError> {
        let response = self
            .http
            .get(&self.jwks_url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|_| SetError::KeysUnavailable)?;
        if !response.status().is_success() {
            return Err(SetError::KeysUnavailable);
        }
        let body = response.bytes().await.map_err(|_| SetError::KeysUnavailable)?;
        serde_json::from_slice(&body).map_err(|_| SetError::KeysUnavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, jwk::Jwk};
    use serde_json::json;

    const ISS: &str = "https://broker.example.com";
    const AUD: &str = "https://receiver.example.com/events";
    const NOW: i64 = 1_795_780_800;

    fn new_key() -> (EncodingKey, Jwk) {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let encoding = EncodingKey::from_ec_der(pkcs8.as_ref());
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some("k1".into());
        (encoding, jwk)
    }

    fn set_claims() -> Value {
        json!({
            "iss": ISS, "aud": AUD, "iat": NOW - 5, "jti": "j-1", "txn": "t-1",
            "sub_id": {"format": "opaque", "id": "secret:db"},
            "events": {EVENT_CREDENTIAL_ROTATED: {"secret_id": "db", "old_version": "v1", "new_version": "v2", "event_timestamp": NOW - 6}}
        })
    }

    fn sign(key: &EncodingKey, typ: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some(typ.into());
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn verifier(jwk: &Jwk) -> SetVerifier {
        SetVerifier::with_jwks(
            ISS,
            AUD,
            JwkSet {
                keys: vec![jwk.clone()],
            },
            300,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_valid_set_yields_its_typed_event() {
        let (key, jwk) = new_key();
        let set = verifier(&jwk)
            .verify(&sign(&key, SET_TYP, &set_claims()), NOW)
            .await
            .unwrap();
        assert_eq!(set.jti, "j-1");
        assert_eq!(set.subject, "secret:db");
        assert_eq!(
            set.event,
            SecurityEvent::CredentialRotated {
                secret_id: "db".into(),
                old_version: Some("v1".into()),
                new_version: "v2".into(),
                at: NOW - 6
            }
        );
    }

    #[tokio::test]
    async fn each_check_refuses_with_its_rfc_8935_code() {
        let (key, jwk) = new_key();
        let v = verifier(&jwk);
        let with = |f: &dyn Fn(&mut Value)| {
            let mut claims = set_claims();
            f(&mut claims);
            sign(&key, SET_TYP, &claims)
        };
        let cases: Vec<(String, &str)> = vec![
            (sign(&key, "at+jwt", &set_claims()), "invalid_request"),
            (
                with(&|c| c["aud"] = json!("https://other.example.com")),
                "invalid_audience",
            ),
            (
                with(&|c| c["iss"] = json!("https://evil.example.com")),
                "invalid_issuer",
            ),
            (with(&|c| c["iat"] = json!(NOW - 301)), "invalid_request"),
            (with(&|c| c["iat"] = json!(NOW + 61)), "invalid_request"),
            (with(&|c| c["events"] = json!({"urn:other": {}})), "invalid_request"),
            (
                with(&|c| {
                    c.as_object_mut().unwrap().remove("jti");
                }),
                "invalid_request",
            ),
            (sign(&new_key().0, SET_TYP, &set_claims()), "authentication_failed"),
        ];
        for (token, code) in cases {
            let err = v.verify(&token, NOW).await.unwrap_err();
            assert_eq!(err.code(), Some(code), "{err}");
        }
        let mut tampered = sign(&key, SET_TYP, &set_claims());
        tampered.push('A');
        assert!(v.verify(&tampered, NOW).await.is_err());
    }

    #[tokio::test]
    async fn an_unknown_kid_is_an_invalid_key() {
        let (key, mut jwk) = new_key();
        jwk.common.key_id = Some("other".into());
        let err = verifier(&jwk)
            .verify(&sign(&key, SET_TYP, &set_claims()), NOW)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("invalid_key"));
    }

    #[test]
    fn a_handled_jti_is_remembered_for_the_window_only() {
        let (_, jwk) = new_key();
        let v = verifier(&jwk);
        assert!(!v.seen("j-1", NOW));
        v.handled("j-1", NOW);
        assert!(v.seen("j-1", NOW + 10));
        assert!(!v.seen("j-1", NOW + 2 * 300 + CLOCK_SKEW + 1));
    }
}
