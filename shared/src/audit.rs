//! Tamper-evident audit chains.
//!
//! Each writer (one Lambda execution environment) appends to its own chain, so appends never
//! contend and need no read: the writer remembers the last hash. Every event stores its position
//! (`chain`, `seq`), the previous event's hash and its own hash over both plus the event, so an
//! edited, deleted or reordered event breaks verification. After any failed write the writer starts
//! a fresh chain rather than guess whether the write landed.

use crate::domain::AuditEvent;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, MutexGuard};

pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Where an event sits in its chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainLink {
    pub chain: String,
    pub seq: i64,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Serialize)]
struct Hashed<'a> {
    chain: &'a str,
    seq: i64,
    prev_hash: &'a str,
    event: &'a AuditEvent,
}

/// SHA-256 over a canonical JSON of position, previous hash and event (field order is fixed by
/// the struct definitions).
pub fn link_hash(chain: &str, seq: i64, prev_hash: &str, event: &AuditEvent) -> String {
    let canonical = serde_json::to_vec(&Hashed {
        chain,
        seq,
        prev_hash,
        event,
    })
    .expect("audit events serialize: plain strings and integers");
    hex::encode(Sha256::digest(canonical))
}

#[derive(Debug)]
pub struct ChainState {
    chain: String,
    next_seq: i64,
    prev_hash: String,
}

impl ChainState {
    fn fresh() -> Self {
        Self {
            chain: uuid::Uuid::now_v7().to_string(),
            next_seq: 0,
            prev_hash: GENESIS_HASH.to_string(),
        }
    }

    /// The link the next event would get.
    pub fn next_link(&self, event: &AuditEvent) -> ChainLink {
        ChainLink {
            chain: self.chain.clone(),
            seq: self.next_seq,
            prev_hash: self.prev_hash.clone(),
            hash: link_hash(&self.chain, self.next_seq, &self.prev_hash, event),
        }
    }

    /// Call after the event carrying `link` was durably written.
    pub fn advance(&mut self, link: ChainLink) {
        self.next_seq = link.seq + 1;
        self.prev_hash = link.hash;
    }

    /// Call after a failed or ambiguous write.
    pub fn restart(&mut self) {
        *self = Self::fresh();
    }
}

/// One writer's chain. The lock is held across the write so appends stay ordered.
#[derive(Debug)]
pub struct AuditChain(Mutex<ChainState>);

impl Default for AuditChain {
    fn default() -> Self {
        Self(Mutex::new(ChainState::fresh()))
    }
}

impl AuditChain {
    pub async fn lock(&self) -> MutexGuard<'_, ChainState> {
        self.0.lock().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AuditAction, AuditOutcome};

    fn event(id: &str) -> AuditEvent {
        AuditEvent {
            event_id: id.into(),
            at: 1,
            action: AuditAction::TokenExchange,
            outcome: AuditOutcome::Denied,
            actor_issuer: None,
            actor_subject: None,
            target: None,
            grant_id: None,
            lease_id: None,
            reason: Some("token_expired".into()),
            token_fingerprint: None,
            old_version: None,
            new_version: None,
            request_id: None,
        }
    }

    #[tokio::test]
    async fn links_chain_and_detect_edits() {
        let chain = AuditChain::default();
        let mut state = chain.lock().await;
        let first = state.next_link(&event("a"));
        assert_eq!(first.seq, 0);
        assert_eq!(first.prev_hash, GENESIS_HASH);
        state.advance(first.clone());
        let second = state.next_link(&event("b"));
        assert_eq!(second.seq, 1);
        assert_eq!(second.prev_hash, first.hash);
        // Any change to the event changes its hash.
        let mut edited = event("a");
        edited.reason = Some("policy_no_grant".into());
        assert_ne!(link_hash(&first.chain, 0, GENESIS_HASH, &edited), first.hash);
        state.restart();
        assert_eq!(state.next_link(&event("c")).seq, 0);
    }
}
