//! Issuer public keys: fetched over HTTPS with a timeout and a size cap, cached in memory across
//! invocations, refreshed on an unknown `kid` at most once per interval per issuer.

use crate::domain::{Issuer, JwksSource};
use crate::error::{BrokerError, Result};
use crate::exchange::key_set::IssuerKeySet;
use crate::ports::IssuerKeys;
use async_trait::async_trait;
use jsonwebtoken::jwk::JwkSet;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

#[derive(Debug, Clone)]
pub struct JwksSettings {
    /// How long a fetched JWKS is used without refetching.
    pub cache_ttl: Duration,
    /// Minimum time between two fetches for the same issuer (unknown-`kid` refreshes included).
    pub min_refresh_interval: Duration,
    /// A stale copy may serve while the issuer is unreachable, up to this age.
    pub max_stale: Duration,
    pub timeout: Duration,
    pub max_bytes: usize,
}

impl Default for JwksSettings {
    fn default() -> Self {
        Self {
            cache_ttl: Duration::from_secs(600),
            min_refresh_interval: Duration::from_secs(30),
            max_stale: Duration::from_secs(3600),
            timeout: Duration::from_secs(3),
            max_bytes: 64 * 1024,
        }
    }
}

/// What is known about one issuer's JWKS URL.
#[derive(Default)]
struct Entry {
    /// The last successfully fetched set, and when.
    keys: Option<(Arc<IssuerKeySet>, Instant)>,
    last_attempt: Option<Instant>,
    last_attempt_failed: bool,
}

pub struct HttpIssuerKeys {
    client: crate::https::HttpsClient,
    settings: JwksSettings,
    /// One lock per URL, held across that URL's fetch: concurrent misses for one issuer cause one
    /// request, and a slow issuer never delays another's.
    entries: std::sync::Mutex<HashMap<String, Arc<Mutex<Entry>>>>,
    static_sets: std::sync::Mutex<HashMap<String, Arc<IssuerKeySet>>>,
}

const MAX_STATIC_SETS: usize = 1024;

impl HttpIssuerKeys {
    pub fn new(settings: JwksSettings) -> Result<Self> {
        // No redirects: a JWKS URL is operator-configured; never follow it elsewhere.
        Ok(Self {
            client: crate::https::HttpsClient::new(settings.timeout),
            settings,
            entries: std::sync::Mutex::new(HashMap::new()),
            static_sets: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// A static JWKS, parsed once per distinct document (registrations are bounded; the map is
    /// emptied if it ever holds more than `MAX_STATIC_SETS`).
    fn static_set(&self, jwks: &str) -> Result<Arc<IssuerKeySet>> {
        if let Some(set) = self.static_sets.lock().ok().and_then(|sets| sets.get(jwks).cloned()) {
            return Ok(set);
        }
        let set: JwkSet =
            serde_json::from_str(jwks).map_err(|_| BrokerError::CorruptRecord("issuer static jwks".into()))?;
        let set = Arc::new(IssuerKeySet::from(set));
        if let Ok(mut sets) = self.static_sets.lock() {
            if sets.len() >= MAX_STATIC_SETS {
                sets.clear();
            }
            sets.insert(jwks.to_string(), set.clone());
        }
        Ok(set)
    }

    fn entry(&self, url: &str) -> Arc<Mutex<Entry>> {
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Looked up by `&str` first: `entry` would copy the URL on every request.
        if let Some(entry) = entries.get(url) {
            return entry.clone();
        }
        entries.entry(url.to_string()).or_default().clone()
    }

    async fn fetch(&self, url: &str) -> Result<JwkSet> {
        check_jwks_url(url)?;
        let response = self
            .client
            .get(url, &[("accept", "application/json")], self.settings.max_bytes)
            .await
            .map_err(|e| match e {
                crate::https::HttpsError::TooLarge => BrokerError::JwksUnavailable("response too large"),
                _ => BrokerError::JwksUnavailable("request failed"),
            })?;
        if !response.is_success() {
            return Err(BrokerError::JwksUnavailable("non-success status"));
        }
        serde_json::from_slice(&response.body).map_err(|_| BrokerError::JwksUnavailable("not a JWK Set"))
    }
}

/// HTTPS only, except plain HTTP to loopback for local runs and tests.
pub fn check_jwks_url(url: &str) -> Result<()> {
    if crate::domain::is_allowed_url(url) {
        Ok(())
    } else {
        Err(BrokerError::JwksUnavailable("jwks url must be https"))
    }
}

/// The cache's answers:
/// - a fresh copy serves every lookup of a known `kid`;
/// - `refresh` (the token names a `kid` the copy lacks) fetches, at most once per
///   `min_refresh_interval`. If the last fetch succeeded, its copy is the answer (a `kid` still
///   missing is the token's problem: 400). If it failed, or fails now, the `kid` may well exist at
///   an issuer we cannot reach: `JwksUnavailable` (503, retryable), never a 400;
/// - past `cache_ttl` a lookup refetches; if that fails, a copy younger than `max_stale` still
///   serves known `kid`s.
#[async_trait]
impl IssuerKeys for HttpIssuerKeys {
    async fn jwks(&self, issuer: &Issuer, refresh: bool) -> Result<Arc<IssuerKeySet>> {
        let url = match &issuer.jwks {
            JwksSource::Static { jwks } => return self.static_set(jwks),
            JwksSource::Url { url } => url,
        };
        let slot = self.entry(url);
        let mut entry = slot.lock().await;
        let now = Instant::now();
        let age = |at: Instant| now.duration_since(at);
        if let Some((keys, fetched_at)) = &entry.keys
            && !refresh
            && age(*fetched_at) < self.settings.cache_ttl
        {
            return Ok(keys.clone());
        }
        let recently_tried = entry
            .last_attempt
            .is_some_and(|at| age(at) < self.settings.min_refresh_interval);
        if recently_tried {
            return match (&entry.keys, entry.last_attempt_failed) {
                (Some((keys, _)), false) => Ok(keys.clone()),
                (Some((keys, fetched_at)), true) if !refresh && age(*fetched_at) < self.settings.max_stale => {
                    Ok(keys.clone())
                }
                _ => Err(BrokerError::JwksUnavailable(
                    "issuer keys could not be fetched recently",
                )),
            };
        }
        entry.last_attempt = Some(now);
        match self.fetch(url).await {
            Ok(keys) => {
                let keys = Arc::new(IssuerKeySet::from(keys));
                entry.keys = Some((keys.clone(), now));
                entry.last_attempt_failed = false;
                Ok(keys)
            }
            Err(e) => {
                entry.last_attempt_failed = true;
                match &entry.keys {
                    Some((keys, fetched_at)) if !refresh && age(*fetched_at) < self.settings.max_stale => {
                        tracing::warn!(issuer = %issuer.issuer, error = %e, "jwks refresh failed; serving cached keys");
                        Ok(keys.clone())
                    }
                    _ => Err(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    /// A loopback JWKS endpoint: serves `body` (or 503 while `down`), or never answers (`hang`).
    struct Idp {
        url: String,
        down: Arc<AtomicBool>,
        body: Arc<std::sync::Mutex<String>>,
        hits: Arc<AtomicU32>,
    }

    async fn idp(hang: bool) -> Idp {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://127.0.0.1:{}/jwks.json", listener.local_addr().unwrap().port());
        let down = Arc::new(AtomicBool::new(false));
        let body = Arc::new(std::sync::Mutex::new(String::new()));
        let hits = Arc::new(AtomicU32::new(0));
        let (d, b, h) = (down.clone(), body.clone(), hits.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                h.fetch_add(1, Ordering::SeqCst);
                let (d, b) = (d.clone(), b.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    if hang {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        return;
                    }
                    let (status, text) = if d.load(Ordering::SeqCst) {
                        ("503 Service Unavailable", String::new())
                    } else {
                        ("200 OK", b.lock().unwrap().clone())
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                        text.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        Idp { url, down, body, hits }
    }

    fn jwk_set(kids: &[&str]) -> String {
        let keys: Vec<serde_json::Value> = kids
            .iter()
            .map(|kid| {
                serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
                    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"})
            })
            .collect();
        serde_json::json!({ "keys": keys }).to_string()
    }

    fn issuer(url: &str) -> Issuer {
        Issuer {
            issuer: url.into(),
            name: "idp".into(),
            audiences: vec!["nhi-broker".into()],
            jwks: JwksSource::Url { url: url.into() },
            algorithms: vec!["ES256".into()],
            enabled: true,
            one_time_jti: false,
            pattern_prefix_segments: 1,
        }
    }

    fn kids(set: &IssuerKeySet) -> Vec<String> {
        set.jwk_set()
            .keys
            .iter()
            .filter_map(|k| k.common.key_id.clone())
            .collect()
    }

    #[tokio::test]
    async fn an_unknown_kid_during_an_idp_outage_is_retryable_and_after_a_good_refresh_is_not() {
        let idp = idp(false).await;
        *idp.body.lock().unwrap() = jwk_set(&["k1"]);
        let keys = HttpIssuerKeys::new(JwksSettings {
            min_refresh_interval: Duration::from_millis(300),
            ..JwksSettings::default()
        })
        .unwrap();
        let iss = issuer(&idp.url);
        assert_eq!(kids(&keys.jwks(&iss, false).await.unwrap()), ["k1"]);

        // The IdP rotates to k2 while it is down: a token signed with k2 must be told to retry.
        idp.down.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(350)).await;
        let err = keys.jwks(&iss, true).await.unwrap_err();
        assert!(err.is_retryable() && err.client_error().status == 503, "{err}");
        // Within the refresh rate limit, still retryable (the last attempt failed), and no fetch.
        let hits = idp.hits.load(Ordering::SeqCst);
        assert!(keys.jwks(&iss, true).await.unwrap_err().is_retryable());
        assert_eq!(idp.hits.load(Ordering::SeqCst), hits, "rate-limited");
        // Known kids keep working from the copy meanwhile.
        assert_eq!(kids(&keys.jwks(&iss, false).await.unwrap()), ["k1"]);

        // Back up: the next refresh finds k2.
        idp.down.store(false, Ordering::SeqCst);
        *idp.body.lock().unwrap() = jwk_set(&["k1", "k2"]);
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(kids(&keys.jwks(&iss, true).await.unwrap()), ["k1", "k2"]);
        // Right after a good refresh, an unknown kid is answered from it (the caller says 400).
        assert_eq!(kids(&keys.jwks(&iss, true).await.unwrap()), ["k1", "k2"]);
    }

    #[tokio::test]
    async fn a_slow_issuer_does_not_delay_another_issuers_keys() {
        let slow = idp(true).await;
        let fast = idp(false).await;
        *fast.body.lock().unwrap() = jwk_set(&["fast"]);
        let keys = Arc::new(
            HttpIssuerKeys::new(JwksSettings {
                timeout: Duration::from_secs(3),
                ..JwksSettings::default()
            })
            .unwrap(),
        );
        let pending = {
            let keys = keys.clone();
            let iss = issuer(&slow.url);
            tokio::spawn(async move { keys.jwks(&iss, false).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        assert_eq!(kids(&keys.jwks(&issuer(&fast.url), false).await.unwrap()), ["fast"]);
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        assert!(!pending.is_finished(), "the slow fetch is still in flight");
        pending.abort();
    }

    #[test]
    fn jwks_urls_must_be_https_except_loopback() {
        assert!(check_jwks_url("https://token.actions.githubusercontent.com/.well-known/jwks").is_ok());
        assert!(check_jwks_url("http://127.0.0.1:9000/jwks.json").is_ok());
        assert!(check_jwks_url("http://localhost:9000/jwks.json").is_ok());
        assert!(check_jwks_url("http://idp.example/jwks.json").is_err());
        assert!(check_jwks_url("file:///etc/passwd").is_err());
        assert!(check_jwks_url("not a url").is_err());
    }
}
