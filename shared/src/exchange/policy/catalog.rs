//! The exchange's view of the registry's policy, compiled and kept across invocations of one
//! execution environment.
//!
//! Per issuer it holds the issuer record, its policy generation, its pattern grants compiled into
//! a `PatternIndex`, and the exact-subject grants of the subjects seen so far. Every `ttl`
//! (default 5 s, at most 60 s; zero disables the catalog) the issuer and its generation are read
//! again (one read). While the generation is unchanged, patterns and exact grants are reused:
//! a cache miss never reads all of an issuer's grants, and what a request costs does not grow
//! with their number. When the generation changes, the patterns are loaded again and the exact
//! grants forgotten (read again by subject, on demand).
//!
//! Pattern and exact grants are read through a global secondary index, which may lag a write by
//! a moment: a generation younger than `INDEX_SETTLE` (its value is a UUIDv7, which carries the
//! time it was written) is loaded once more on the next refresh ("settling"), so a lagging index
//! read is replaced within one `ttl`. Revocation never depends on this cache: the release
//! re-checks the grant in its own transaction.
//!
//! Lookups are keyed by caller-supplied strings (`iss`, `sub`, target), so every map is capped
//! and cleared when full rather than allowed to grow.

use super::compiled::{CompiledGrant, PatternIndex};
use crate::domain::{Issuer, Target};
use crate::error::Result;
use crate::ports::PolicyStore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MAX_ISSUERS: usize = 1024;
const MAX_TARGETS: usize = 1024;
const MAX_SUBJECTS_PER_ISSUER: usize = 4096;
/// Longer than a global secondary index lags its table in practice (typically well under 1 s).
const INDEX_SETTLE: Duration = Duration::from_secs(10);

/// Compiled exact-subject grants by `sub`, shared by the refreshes of one generation.
type ExactGrants = Arc<Mutex<HashMap<String, Arc<[Arc<CompiledGrant>]>>>>;

/// One issuer's compiled policy at one generation.
pub struct IssuerPolicy {
    /// Shared with every subject verified against it (no copy per request).
    pub issuer: Arc<Issuer>,
    generation: String,
    patterns: Arc<PatternIndex>,
    exact: ExactGrants,
}

impl IssuerPolicy {
    pub fn generation(&self) -> &str {
        &self.generation
    }

    pub fn pattern_count(&self) -> usize {
        self.patterns.len()
    }
}

struct IssuerEntry {
    read_at: Instant,
    /// Loaded in the refresh that saw this generation first; loaded once more before trusted.
    settled: bool,
    policy: Option<Arc<IssuerPolicy>>,
}

pub struct PolicyCatalog {
    store: Arc<dyn PolicyStore>,
    ttl: Duration,
    issuers: Mutex<HashMap<String, IssuerEntry>>,
    targets: Mutex<HashMap<String, CachedTarget>>,
}

/// A target (or its absence) and when it was read.
type CachedTarget = (Instant, Option<Arc<Target>>);

impl PolicyCatalog {
    pub fn new(store: Arc<dyn PolicyStore>, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            issuers: Mutex::new(HashMap::new()),
            targets: Mutex::new(HashMap::new()),
        }
    }

    /// The issuer's compiled policy (`None`: not registered).
    pub async fn issuer(&self, iss: &str) -> Result<Option<Arc<IssuerPolicy>>> {
        let previous = {
            let issuers = self.issuers.lock().unwrap_or_else(|e| e.into_inner());
            match issuers.get(iss) {
                Some(e) if e.read_at.elapsed() < self.ttl => return Ok(e.policy.clone()),
                Some(e) => e.policy.clone().map(|p| (p, e.settled)),
                None => None,
            }
        };
        let Some((issuer, generation)) = self.store.issuer_head(iss).await? else {
            self.remember(iss, None, true);
            return Ok(None);
        };
        // Settled once this generation has been loaded on two refreshes, or loaded when old enough
        // that the index had caught up with it.
        let settled =
            previous.as_ref().is_some_and(|(p, _)| p.generation == generation) || settled_at_load(&generation);
        let policy = match previous {
            // Same generation, already settled: keep what was compiled, with the fresh issuer record.
            Some((p, true)) if p.generation == generation => Arc::new(IssuerPolicy {
                issuer: Arc::new(issuer),
                generation,
                patterns: p.patterns.clone(),
                exact: p.exact.clone(),
            }),
            _ => {
                let patterns = PatternIndex::new(self.store.pattern_grants(iss).await?);
                Arc::new(IssuerPolicy {
                    issuer: Arc::new(issuer),
                    generation,
                    patterns: Arc::new(patterns),
                    exact: Arc::new(Mutex::new(HashMap::new())),
                })
            }
        };
        self.remember(iss, Some(policy.clone()), settled);
        Ok(Some(policy))
    }

    /// The grants of `policy`'s issuer that can apply to `sub`: its exact grants for `sub` (read
    /// by key once per generation) and the pattern grants whose pattern matches it.
    pub async fn candidates(&self, policy: &IssuerPolicy, sub: &str) -> Result<Vec<Arc<CompiledGrant>>> {
        let cached = policy.exact.lock().unwrap_or_else(|e| e.into_inner()).get(sub).cloned();
        let exact = match cached {
            Some(exact) => exact,
            None => {
                let grants = self.store.exact_grants(&policy.issuer.issuer, sub).await?;
                let compiled: Arc<[Arc<CompiledGrant>]> =
                    grants.into_iter().map(|g| Arc::new(CompiledGrant::new(g))).collect();
                if !self.ttl.is_zero() {
                    let mut map = policy.exact.lock().unwrap_or_else(|e| e.into_inner());
                    if map.len() >= MAX_SUBJECTS_PER_ISSUER {
                        map.clear();
                    }
                    map.insert(sub.to_string(), compiled.clone());
                }
                compiled
            }
        };
        let mut candidates: Vec<Arc<CompiledGrant>> =
            exact.iter().filter(|g| g.subject_matches(sub)).cloned().collect();
        candidates.extend(policy.patterns.matching(sub).cloned());
        Ok(candidates)
    }

    /// A target by id, shared with the cache (read on every request: not copied).
    pub async fn target(&self, id: &str) -> Result<Option<Arc<Target>>> {
        if let Some((at, target)) = self.targets.lock().unwrap_or_else(|e| e.into_inner()).get(id)
            && at.elapsed() < self.ttl
        {
            return Ok(target.clone());
        }
        let target = self.store.target(id).await?.map(Arc::new);
        if !self.ttl.is_zero() {
            let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
            if targets.len() >= MAX_TARGETS {
                targets.clear();
            }
            targets.insert(id.to_string(), (Instant::now(), target.clone()));
        }
        Ok(target)
    }

    fn remember(&self, iss: &str, policy: Option<Arc<IssuerPolicy>>, settled: bool) {
        if self.ttl.is_zero() {
            return;
        }
        let mut issuers = self.issuers.lock().unwrap_or_else(|e| e.into_inner());
        if issuers.len() >= MAX_ISSUERS && !issuers.contains_key(iss) {
            issuers.clear();
        }
        issuers.insert(
            iss.to_string(),
            IssuerEntry {
                read_at: Instant::now(),
                settled,
                policy,
            },
        );
    }
}

/// Whether a generation was written longer than `INDEX_SETTLE` ago (by the UUIDv7 time it
/// carries; anything else is not known to be settled).
fn settled_at_load(generation: &str) -> bool {
    let Some((secs, _)) = uuid::Uuid::parse_str(generation)
        .ok()
        .and_then(|u| u.get_timestamp())
        .map(|t| t.to_unix())
    else {
        return false;
    };
    let written = std::time::UNIX_EPOCH + Duration::from_secs(secs);
    std::time::SystemTime::now()
        .duration_since(written)
        .is_ok_and(|age| age > INDEX_SETTLE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::InMemoryPolicy;

    #[tokio::test]
    async fn serves_targets_from_cache_within_ttl_and_not_when_disabled() {
        let inner = Arc::new(InMemoryPolicy::default());
        let cache = PolicyCatalog::new(inner.clone(), Duration::from_secs(60));
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
        let uncached = PolicyCatalog::new(inner, Duration::ZERO);
        assert!(uncached.target("t").await.unwrap().is_some());
    }

    /// Counts the pattern loads of the store behind it.
    struct Counting(Arc<InMemoryPolicy>, std::sync::atomic::AtomicUsize);

    #[async_trait::async_trait]
    impl PolicyStore for Counting {
        async fn issuer_head(&self, issuer: &str) -> Result<Option<(Issuer, String)>> {
            self.0.issuer_head(issuer).await
        }
        async fn exact_grants(&self, issuer: &str, subject: &str) -> Result<Vec<crate::domain::Grant>> {
            self.0.exact_grants(issuer, subject).await
        }
        async fn pattern_grants(&self, issuer: &str) -> Result<Vec<crate::domain::Grant>> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.0.pattern_grants(issuer).await
        }
        async fn target(&self, id: &str) -> Result<Option<Target>> {
            self.0.target(id).await
        }
    }

    #[tokio::test]
    async fn patterns_are_loaded_again_only_when_the_generation_changes_and_once_to_settle() {
        let issuer: Issuer = serde_json::from_value(serde_json::json!({
            "issuer": "https://idp", "name": "idp", "audiences": ["a"], "jwks": {"type": "static", "jwks": "{}"},
            "algorithms": ["ES256"], "enabled": true
        }))
        .unwrap();
        let inner = Arc::new(InMemoryPolicy::with(vec![issuer], vec![], vec![]));
        let store = Arc::new(Counting(inner.clone(), Default::default()));
        let catalog = PolicyCatalog::new(store.clone(), Duration::from_millis(1));
        let loads = || store.1.load(std::sync::atomic::Ordering::SeqCst);
        let refresh = || async {
            tokio::time::sleep(Duration::from_millis(3)).await;
            catalog.issuer("https://idp").await.unwrap().unwrap()
        };
        refresh().await;
        assert_eq!(loads(), 1, "cold load");
        refresh().await;
        assert_eq!(loads(), 2, "a young generation is loaded once more, to settle");
        for _ in 0..3 {
            refresh().await;
        }
        assert_eq!(loads(), 2, "a settled, unchanged generation is never loaded again");
        let grant: crate::domain::Grant = serde_json::from_value(serde_json::json!({
            "id": "g", "issuer": "https://idp", "subject_pattern": "repo:o/*", "environment": "p", "targets": [],
            "max_ttl_seconds": 1, "approval_expires_at": 1, "owner": "o", "justification": "j",
            "status": "active", "created_at": 1
        }))
        .unwrap();
        inner.grants.lock().unwrap().push(grant.clone());
        let policy = refresh().await;
        assert_eq!((loads(), policy.pattern_count()), (3, 1), "a new generation is loaded");
    }

    #[test]
    fn only_generations_older_than_the_index_lag_are_settled_at_load() {
        assert!(!settled_at_load(&uuid::Uuid::now_v7().to_string()));
        let old = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, 1_700_000_000, 0));
        assert!(settled_at_load(&old.to_string()));
        assert!(
            !settled_at_load(&uuid::Uuid::new_v4().to_string()),
            "no time, not known settled"
        );
        assert!(!settled_at_load(""));
    }

    #[tokio::test]
    async fn stays_bounded_under_many_distinct_keys() {
        let cache = PolicyCatalog::new(Arc::new(InMemoryPolicy::default()), Duration::from_secs(60));
        for i in 0..(MAX_ISSUERS * 3) {
            cache.issuer(&format!("https://attacker-{i}")).await.unwrap();
        }
        assert!(cache.issuers.lock().unwrap().len() <= MAX_ISSUERS);
    }
}
