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
//! a moment: the first refresh after a generation change loads them once more ("settling"), so a
//! lagging index read is replaced within one `ttl`. Revocation never depends on this cache: the
//! release re-checks the grant in its own transaction.
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

/// Compiled exact-subject grants by `sub`, shared by the refreshes of one generation.
type ExactGrants = Arc<Mutex<HashMap<String, Arc<[Arc<CompiledGrant>]>>>>;

/// One issuer's compiled policy at one generation.
pub struct IssuerPolicy {
    pub issuer: Issuer,
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
    targets: Mutex<HashMap<String, (Instant, Option<Target>)>>,
}

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
        // Settled once this generation has been loaded on two refreshes.
        let settled = previous.as_ref().is_some_and(|(p, _)| p.generation == generation);
        let policy = match previous {
            // Same generation, already settled: keep what was compiled, with the fresh issuer record.
            Some((p, true)) if p.generation == generation => Arc::new(IssuerPolicy {
                issuer,
                generation,
                patterns: p.patterns.clone(),
                exact: p.exact.clone(),
            }),
            _ => {
                let patterns = PatternIndex::new(self.store.pattern_grants(iss).await?);
                Arc::new(IssuerPolicy {
                    issuer,
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

    pub async fn target(&self, id: &str) -> Result<Option<Target>> {
        if let Some((at, target)) = self.targets.lock().unwrap_or_else(|e| e.into_inner()).get(id)
            && at.elapsed() < self.ttl
        {
            return Ok(target.clone());
        }
        let target = self.store.target(id).await?;
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

    #[tokio::test]
    async fn stays_bounded_under_many_distinct_keys() {
        let cache = PolicyCatalog::new(Arc::new(InMemoryPolicy::default()), Duration::from_secs(60));
        for i in 0..(MAX_ISSUERS * 3) {
            cache.issuer(&format!("https://attacker-{i}")).await.unwrap();
        }
        assert!(cache.issuers.lock().unwrap().len() <= MAX_ISSUERS);
    }
}
