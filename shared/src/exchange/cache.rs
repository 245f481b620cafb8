//! A short, bounded in-memory cache in front of the policy store, kept across invocations of one
//! execution environment. A grant change or revocation takes effect within the TTL (default 5 s,
//! at most 60 s); zero disables caching. Lookups are keyed by caller-supplied strings (`iss`,
//! target), so the cache is capped and cleared when full rather than allowed to grow.

use crate::domain::{Grant, Issuer, Target};
use crate::error::Result;
use crate::ports::PolicyStore;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MAX_ENTRIES: usize = 1024;

struct TtlMap<V> {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, V)>>,
}

impl<V: Clone> TtlMap<V> {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &str) -> Option<V> {
        let entries = self.entries.lock().ok()?;
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    fn put(&self, key: &str, value: V) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
            entries.insert(key.to_string(), (Instant::now(), value));
        }
    }
}

pub struct CachedPolicyStore {
    inner: Arc<dyn PolicyStore>,
    issuers: TtlMap<Option<(Issuer, Vec<Grant>)>>,
    targets: TtlMap<Option<Target>>,
}

impl CachedPolicyStore {
    pub fn new(inner: Arc<dyn PolicyStore>, ttl: Duration) -> Self {
        Self {
            inner,
            issuers: TtlMap::new(ttl),
            targets: TtlMap::new(ttl),
        }
    }
}

async fn cached<V, F>(map: &TtlMap<V>, key: &str, load: F) -> Result<V>
where
    V: Clone,
    F: Future<Output = Result<V>>,
{
    if let Some(hit) = map.get(key) {
        return Ok(hit);
    }
    let value = load.await?;
    map.put(key, value.clone());
    Ok(value)
}

#[async_trait]
impl PolicyStore for CachedPolicyStore {
    async fn issuer_with_grants(&self, issuer: &str) -> Result<Option<(Issuer, Vec<Grant>)>> {
        cached(&self.issuers, issuer, self.inner.issuer_with_grants(issuer)).await
    }

    async fn target(&self, id: &str) -> Result<Option<Target>> {
        cached(&self.targets, id, self.inner.target(id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::InMemoryPolicy;

    #[tokio::test]
    async fn serves_from_cache_within_ttl_and_not_when_disabled() {
        let inner = Arc::new(InMemoryPolicy::default());
        let cache = CachedPolicyStore::new(inner.clone(), Duration::from_secs(60));
        assert!(cache.target("t").await.unwrap().is_none());
        inner.targets.lock().unwrap().insert(
            "t".into(),
            Target {
                id: "t".into(),
                kind: crate::domain::TargetKind::Jwt,
                environment: "e".into(),
                owner: "o".into(),
                enabled: true,
            },
        );
        assert!(cache.target("t").await.unwrap().is_none(), "cached negative within TTL");
        let uncached = CachedPolicyStore::new(inner, Duration::ZERO);
        assert!(uncached.target("t").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn stays_bounded_under_many_distinct_keys() {
        let cache = CachedPolicyStore::new(Arc::new(InMemoryPolicy::default()), Duration::from_secs(60));
        for i in 0..(MAX_ENTRIES * 3) {
            cache
                .issuer_with_grants(&format!("https://attacker-{i}"))
                .await
                .unwrap();
        }
        assert!(cache.issuers.entries.lock().unwrap().len() <= MAX_ENTRIES);
    }
}
