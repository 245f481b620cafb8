//! Signed digests of audit chain heads (CloudTrail-style), so that deleting a chain's newest
//! events, or a whole chain, is detected once a digest covers them.
//!
//! Every audit event carries `time_shard` = `<day>#<shard>` (days since the epoch; the shard from
//! the chain id, 16 of them, so no index partition takes a whole day's writes) and is indexed by
//! it and `at_id` (`by-time`; see [`super::audit_query`]). Each digest run reads the events of its window
//! from that index, keeps the newest (seq, hash) per chain, and writes digest `n` into the audit
//! table under `chain = #DIGEST`, `seq = n`: its window, the heads, the previous digest's hash,
//! its own hash over all of these, and the audit key's KMS signature over that hash. The put is
//! conditional: of two overlapping runs one writes digest `n`, the other skips.
//!
//! Windows: from the previous digest's `until` minus [`OVERLAP`] (the index is eventually
//! consistent and `at` is the writer's clock) to now minus [`SETTLE`], at most [`MAX_WINDOW`]
//! long; the first digest looks back [`FIRST_LOOKBACK`]. Events older than that when the first
//! digest is written are not covered by any digest.

use super::audit_query::{at_id_from, at_id_until};
use super::{Item, is_conditional_check_failed, n, s};
use crate::audit::{ChainCertifier, certifier};
use crate::error::{BrokerError, Result};
use crate::ports::AuditDigestWriter;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const DIGEST_CHAIN: &str = "#DIGEST";
pub use super::audit_query::{BY_TIME_INDEX, TIME_SHARDS, time_shard};
/// How far a window reaches back into the previous one.
pub const OVERLAP: i64 = 300;
/// Events younger than this are left to the next digest (index lag, writer clocks).
pub const SETTLE: i64 = 60;
pub const FIRST_LOOKBACK: i64 = 86_400;
/// The longest window one digest covers (bounded reads per run: 16 queries per day it spans); a
/// backlog is covered by the following runs.
pub const MAX_WINDOW: i64 = 86_400;
/// Heads one digest lists at most (about 150 bytes each; an item holds 400 KB). More is reported.
pub const MAX_HEADS: usize = 2_000;

/// The newest event of a chain a digest saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub chain: String,
    pub seq: i64,
    pub hash: String,
}

/// A digest as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditDigest {
    pub seq: i64,
    pub from: i64,
    pub until: i64,
    pub prev_hash: String,
    pub heads: Vec<Head>,
    pub hash: String,
    /// The audit key's DER ECDSA signature over [`digest_statement`], base64.
    pub signature: String,
    pub key_id: String,
}

#[derive(Serialize)]
struct Canonical<'a> {
    seq: i64,
    from: i64,
    until: i64,
    prev_hash: &'a str,
    heads: &'a [Head],
}

/// SHA-256 (hex) over the canonical JSON of a digest's content.
pub fn digest_hash(seq: i64, from: i64, until: i64, prev_hash: &str, heads: &[Head]) -> String {
    let canonical = serde_json::to_vec(&Canonical {
        seq,
        from,
        until,
        prev_hash,
        heads,
    })
    .expect("digests serialize: strings and integers");
    crate::crypto::sha256_hex(&canonical)
}

/// The bytes the audit key signs for a digest.
pub fn digest_statement(hash: &str) -> Vec<u8> {
    format!("nhi-broker audit digest v1\n{hash}\n").into_bytes()
}

/// A stored digest item read back (`None` if it is not one).
pub fn digest_from_item(item: &Item) -> Option<AuditDigest> {
    let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    let num = |k: &str| item.get(k).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok());
    Some(AuditDigest {
        seq: num("seq")?,
        from: num("digest_from")?,
        until: num("digest_until")?,
        prev_hash: text("prev_hash")?,
        heads: serde_json::from_str(&text("digest_heads")?).ok()?,
        hash: text("hash")?,
        signature: text("digest_sig").unwrap_or_default(),
        key_id: text("digest_key").unwrap_or_default(),
    })
}

pub use crate::ports::DigestOutcome;

pub struct DynamoAuditDigests {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoAuditDigests {
    pub fn new(client: aws_sdk_dynamodb::Client, audit_table: &str) -> Self {
        Self {
            client,
            table: audit_table.to_string(),
        }
    }

    /// The newest digest (consistent read).
    pub async fn latest(&self) -> Result<Option<AuditDigest>> {
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("chain = :c")
            .expression_attribute_values(":c", s(DIGEST_CHAIN))
            .scan_index_forward(false)
            .limit(1)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| BrokerError::aws("dynamodb", "Query", &e))?;
        match output.items().first() {
            None => Ok(None),
            Some(item) => digest_from_item(item)
                .map(Some)
                .ok_or_else(|| BrokerError::CorruptRecord("the newest audit digest is malformed".into())),
        }
    }

    /// The newest (seq, hash) per chain among events with `at` in [from, until].
    pub async fn heads(&self, from: i64, until: i64) -> Result<Vec<Head>> {
        let mut newest: BTreeMap<String, (i64, String)> = BTreeMap::new();
        for day in from.div_euclid(86_400)..=until.div_euclid(86_400) {
            for shard in 0..TIME_SHARDS {
                let mut pages = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .index_name(BY_TIME_INDEX)
                    .key_condition_expression("time_shard = :p AND at_id BETWEEN :from AND :until")
                    .expression_attribute_values(":p", s(format!("{day}#{shard:02}")))
                    .expression_attribute_values(":from", s(at_id_from(from)))
                    .expression_attribute_values(":until", s(at_id_until(until)))
                    .into_paginator()
                    .items()
                    .send();
                while let Some(item) = pages.next().await {
                    let item = item.map_err(|e| BrokerError::aws("dynamodb", "Query", &e))?;
                    let chain = item.get("chain").and_then(|v| v.as_s().ok());
                    let seq = item
                        .get("seq")
                        .and_then(|v| v.as_n().ok())
                        .and_then(|v| v.parse::<i64>().ok());
                    let hash = item.get("hash").and_then(|v| v.as_s().ok());
                    let (Some(chain), Some(seq), Some(hash)) = (chain, seq, hash) else {
                        continue;
                    };
                    let entry = newest.entry(chain.clone()).or_insert((seq, hash.clone()));
                    if seq > entry.0 {
                        *entry = (seq, hash.clone());
                    }
                }
            }
        }
        Ok(newest
            .into_iter()
            .map(|(chain, (seq, hash))| Head { chain, seq, hash })
            .collect())
    }

    /// Write the next digest, signed by the audit key.
    pub async fn write_next(&self, now: i64) -> Result<DigestOutcome> {
        self.write_digest(now).await
    }
}

#[async_trait::async_trait]
impl crate::ports::AuditDigestWriter for DynamoAuditDigests {
    async fn write_digest(&self, now: i64) -> Result<DigestOutcome> {
        let certifier: &dyn ChainCertifier = certifier()
            .map(|c| c.as_ref())
            .ok_or_else(|| BrokerError::Config("audit digests need the audit key (NHI_AUDIT_KEY_ID)".into()))?;
        let previous = self.latest().await?;
        let (seq, from, prev_hash) = match &previous {
            Some(p) => (p.seq + 1, p.until - OVERLAP, p.hash.clone()),
            None => (0, now - FIRST_LOOKBACK, crate::audit::GENESIS_HASH.to_string()),
        };
        let until = (now - SETTLE).min(from + MAX_WINDOW).max(from);
        let mut heads = self.heads(from, until).await?;
        let heads_left = heads.len().saturating_sub(MAX_HEADS) as u64;
        heads.truncate(MAX_HEADS);
        let hash = digest_hash(seq, from, until, &prev_hash, &heads);
        let certificate = certifier.certify(&digest_statement(&hash)).await?;
        use base64::Engine;
        let item: Item = [
            ("chain", s(DIGEST_CHAIN)),
            ("seq", n(seq)),
            ("digest_from", n(from)),
            ("digest_until", n(until)),
            ("prev_hash", s(&prev_hash)),
            (
                "digest_heads",
                s(serde_json::to_string(&heads).map_err(|e| BrokerError::Internal(e.to_string()))?),
            ),
            ("hash", s(&hash)),
            (
                "digest_sig",
                s(base64::engine::general_purpose::STANDARD.encode(&certificate.signature)),
            ),
            ("digest_key", s(&certificate.key_id)),
            ("at", n(now)),
        ]
        .into_iter()
        .map(|(k, v): (&str, AttributeValue)| (k.to_string(), v))
        .collect();
        let written = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(chain)")
            .send()
            .await;
        match written {
            Ok(_) => Ok(DigestOutcome {
                seq: Some(seq),
                heads: heads.len() as u64,
                heads_left,
            }),
            Err(e) if is_conditional_check_failed(&e) => Ok(DigestOutcome::default()),
            Err(e) => Err(BrokerError::aws("dynamodb", "PutItem", &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_keeps_its_shard_and_days_split_partitions() {
        let a = time_shard(86_400 * 20_000 + 5, "chain-a");
        assert!(a.starts_with("20000#"), "{a}");
        assert_eq!(a[6..], time_shard(86_400 * 20_000 + 80_000, "chain-a")[6..]);
        assert!(time_shard(86_400 * 20_001, "chain-a").starts_with("20001#"));
        let shards: std::collections::BTreeSet<String> = (0..200)
            .map(|i| time_shard(0, &format!("chain-{i}"))[2..].to_string())
            .collect();
        assert_eq!(shards.len(), TIME_SHARDS as usize, "chains spread over every shard");
    }

    #[test]
    fn the_digest_hash_covers_every_field() {
        let heads = vec![Head {
            chain: "c".into(),
            seq: 3,
            hash: "h".into(),
        }];
        let base = digest_hash(1, 10, 20, "p", &heads);
        assert_ne!(base, digest_hash(2, 10, 20, "p", &heads));
        assert_ne!(base, digest_hash(1, 11, 20, "p", &heads));
        assert_ne!(base, digest_hash(1, 10, 21, "p", &heads));
        assert_ne!(base, digest_hash(1, 10, 20, "q", &heads));
        let mut fewer = heads.clone();
        fewer[0].seq = 2;
        assert_ne!(base, digest_hash(1, 10, 20, "p", &fewer));
    }
}
