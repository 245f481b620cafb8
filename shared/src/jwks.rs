//! Issuer public keys: fetched over HTTPS with a timeout and a size cap, cached in memory across
//! invocations, refreshed on an unknown `kid` at most once per interval per issuer.

use crate::domain::{Issuer, JwksSource};
use crate::error::{BrokerError, Result};
use crate::ports::IssuerKeys;
use async_trait::async_trait;
use jsonwebtoken::jwk::JwkSet;
use std::collections::HashMap;
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

struct Cached {
    jwks: JwkSet,
    fetched_at: Instant,
    last_attempt: Instant,
}

pub struct HttpIssuerKeys {
    client: reqwest::Client,
    settings: JwksSettings,
    cache: Mutex<HashMap<String, Cached>>,
}

impl HttpIssuerKeys {
    pub fn new(settings: JwksSettings) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            // A JWKS URL is operator-configured; never follow it elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| BrokerError::Config(format!("http client: {e}")))?;
        Ok(Self {
            client,
            settings,
            cache: Mutex::new(HashMap::new()),
        })
    }

    async fn fetch(&self, url: &str) -> Result<JwkSet> {
        check_jwks_url(url)?;
        let mut response = self
            .client
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|_| BrokerError::JwksUnavailable("request failed"))?;
        if !response.status().is_success() {
            return Err(BrokerError::JwksUnavailable("non-success status"));
        }
        if response
            .content_length()
            .is_some_and(|n| n as usize > self.settings.max_bytes)
        {
            return Err(BrokerError::JwksUnavailable("response too large"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|_| BrokerError::JwksUnavailable("read failed"))?
        {
            if body.len() + chunk.len() > self.settings.max_bytes {
                return Err(BrokerError::JwksUnavailable("response too large"));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|_| BrokerError::JwksUnavailable("not a JWK Set"))
    }
}

/// HTTPS only, except plain HTTP to loopback for local runs and tests.
pub fn check_jwks_url(url: &str) -> Result<()> {
    if is_allowed_url(url) {
        Ok(())
    } else {
        Err(BrokerError::JwksUnavailable("jwks url must be https"))
    }
}

/// Whether the broker may call `url` (JWKS, rotation hooks, webhooks): HTTPS, or plain HTTP to
/// loopback for local runs and tests.
pub fn is_allowed_url(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    let loopback = matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    match parsed.scheme() {
        "https" => parsed.host_str().is_some(),
        "http" => loopback,
        _ => false,
    }
}

#[async_trait]
impl IssuerKeys for HttpIssuerKeys {
    async fn jwks(&self, issuer: &Issuer, refresh: bool) -> Result<JwkSet> {
        let url = match &issuer.jwks {
            JwksSource::Static { jwks } => {
                return serde_json::from_str(jwks).map_err(|_| BrokerError::CorruptRecord("issuer static jwks".into()));
            }
            JwksSource::Url { url } => url,
        };
        // Held across the fetch so concurrent misses for an issuer cause one request, not many.
        let mut cache = self.cache.lock().await;
        let now = Instant::now();
        if let Some(c) = cache.get(url) {
            let fresh = now.duration_since(c.fetched_at) < self.settings.cache_ttl;
            let recently_tried = now.duration_since(c.last_attempt) < self.settings.min_refresh_interval;
            if (fresh && !refresh) || recently_tried {
                return Ok(c.jwks.clone());
            }
        }
        match self.fetch(url).await {
            Ok(jwks) => {
                cache.insert(
                    url.clone(),
                    Cached {
                        jwks: jwks.clone(),
                        fetched_at: now,
                        last_attempt: now,
                    },
                );
                Ok(jwks)
            }
            Err(e) => match cache.get_mut(url) {
                Some(c) if now.duration_since(c.fetched_at) < self.settings.max_stale => {
                    tracing::warn!(issuer = %issuer.issuer, error = %e, "jwks refresh failed; serving cached keys");
                    c.last_attempt = now;
                    Ok(c.jwks.clone())
                }
                _ => Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
