//! Querying the audit trail and verifying its hash chains.

use crate::{CliError, CliResult, Ctl, Report, attr, attr_num, table, time, to_json};
use nhi_broker::audit::{self, GENESIS_HASH, link_hash};
use nhi_broker::aws::dynamo::audit_query::AuditQuery;
use nhi_broker::aws::dynamo::digest::{DIGEST_CHAIN, digest_from_item, digest_hash, digest_statement};
use nhi_broker::aws::dynamo::index_attributes;
use nhi_broker::aws::dynamo::{Item, from_item};
use nhi_broker::domain::AuditEvent;
use serde_json::json;
use std::collections::BTreeMap;

/// What `brokerctl audit` looks for (see [`AuditQuery`]), and which page.
pub struct AuditSearch {
    pub query: AuditQuery,
    pub limit: usize,
    pub next_token: Option<String>,
}

impl AuditSearch {
    /// `--secret ID` matches both ways a secret is recorded (`ID`, `secret:ID`); `--target` is exact.
    pub fn new(
        subject: Option<String>,
        secret: Option<String>,
        target: Option<String>,
        grant: Option<String>,
        (since, until): (Option<i64>, Option<i64>),
    ) -> Self {
        let mut targets: Vec<String> = target.into_iter().collect();
        if let Some(secret) = secret {
            targets.push(format!("secret:{secret}"));
            targets.push(secret);
        }
        Self {
            query: AuditQuery {
                subject,
                targets,
                grant,
                since,
                until,
            },
            limit: 100,
            next_token: None,
        }
    }
}

impl Ctl {
    /// Every audit item (for verify), with progress.
    async fn scan_audit(&self) -> CliResult<Vec<Item>> {
        let progress = &self.progress;
        Ok(self
            .reads
            .audit_all(|scanned| progress(&format!("... {scanned} audit item(s) read")))
            .await?)
    }

    /// One page of audit events, oldest first, from the audit indexes (never a Scan). What the read
    /// cost goes to stderr; a full page names the token for the next one.
    pub async fn audit(&self, search: &AuditSearch) -> CliResult<Report> {
        let started = std::time::Instant::now();
        let page = self
            .reads
            .audit_page(&search.query, search.limit, search.next_token.as_deref(), self.now)
            .await?;
        (self.progress)(&format!(
            "{} event(s); {} item(s) read by {} queries in {} ms{}",
            page.items.len(),
            page.items_read,
            page.queries,
            started.elapsed().as_millis(),
            page.next_token
                .as_deref()
                .map(|t| format!("; next page: --next-token {t}"))
                .unwrap_or_default()
        ));
        let events: Vec<AuditEvent> = page
            .items
            .into_iter()
            .map(|i| from_item(i, "audit event"))
            .collect::<Result<_, _>>()?;
        let rows: Vec<Vec<String>> = events
            .iter()
            .map(|e| {
                vec![
                    time(e.at),
                    to_json(&e.action).as_str().unwrap_or_default().into(),
                    to_json(&e.outcome).as_str().unwrap_or_default().into(),
                    e.actor_subject.clone().unwrap_or_else(|| "-".into()),
                    e.target.clone().unwrap_or_else(|| "-".into()),
                    e.lease_id.clone().unwrap_or_else(|| "-".into()),
                    e.reason.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        let mut report = Report::new(
            format!(
                "{}\n{} event(s){}",
                table(
                    &["AT", "ACTION", "OUTCOME", "ACTOR", "TARGET", "LEASE", "REASON"],
                    &rows
                ),
                rows.len(),
                page.next_token
                    .as_deref()
                    .map(|t| format!("; more: --next-token {t}"))
                    .unwrap_or_default()
            ),
            json!({ "events": to_json(&events), "next_token": page.next_token }),
        );
        report.lines = Some(events.iter().map(to_json).collect());
        Ok(report)
    }

    /// The audit key's public point (KMS GetPublicKey), to check chain certificates.
    async fn audit_key(&self) -> CliResult<(String, Vec<u8>)> {
        let Some(key_id) = self.tables.audit_key_id.clone() else {
            return Err(CliError::usage(
                "audit verify needs the audit key: --audit-key-id or NHI_AUDIT_KEY_ID (template output AuditKeyId)",
            ));
        };
        let output = self
            .kms
            .get_public_key()
            .key_id(&key_id)
            .send()
            .await
            .map_err(|e| nhi_broker::BrokerError::aws("kms", "GetPublicKey", &e))?;
        let spki = output.public_key.ok_or_else(|| CliError {
            message: "KMS returned no public key for the audit key".into(),
            code: 1,
        })?;
        let bare = |id: &str| id.rsplit('/').next().unwrap_or_default().to_string();
        Ok((
            bare(output.key_id.as_deref().unwrap_or(&key_id)),
            audit::spki_to_point(spki.as_ref())?,
        ))
    }

    /// Verify every chain: certified by the audit key (its first event carries the KMS signature
    /// over the chain id and chain key), every event signed by its chain's key over its hash, each
    /// hash over (chain, seq, previous hash, event), each link to the one before, sequence numbers
    /// from 0 without gaps, and no attribute that is not part of an audit event. Exits 5 on any
    /// break, naming it. With `export_grace`, the table is also compared with the export bucket
    /// (items younger than the grace seconds may be missing from it).
    pub async fn audit_verify(&self, export_grace: Option<i64>) -> CliResult<Report> {
        let (audit_key_id, audit_key) = self.audit_key().await?;
        let exported = match export_grace {
            Some(_) => Some(self.read_export().await?),
            None => None,
        };
        let items = self.scan_audit().await?;
        let export_check = exported
            .as_ref()
            .zip(export_grace)
            .map(|(lines, grace)| crate::audit_export::check_export(&items, lines, self.now, grace));
        let mut chains: BTreeMap<String, Vec<(i64, Item)>> = BTreeMap::new();
        for item in items {
            let chain = attr(&item, "chain").to_string();
            let seq = attr_num(&item, "seq").unwrap_or(-1);
            chains.entry(chain).or_default().push((seq, item));
        }
        let digests = chains.remove(DIGEST_CHAIN).unwrap_or_default();
        let allowed = allowed_attributes();
        let mut problems = Vec::new();
        let mut events = 0;
        for (chain, mut links) in chains.clone() {
            links.sort_by_key(|(seq, _)| *seq);
            let chain_key = check_opening(
                &chain,
                links.first().map(|(_, i)| i),
                &audit_key_id,
                &audit_key,
                &mut problems,
            );
            let mut expected_prev = GENESIS_HASH.to_string();
            for (position, (seq, item)) in links.iter().enumerate() {
                events += 1;
                if *seq != position as i64 {
                    problems.push(format!(
                        "chain {chain}: seq {seq} where {position} was expected (an event is missing)"
                    ));
                }
                let prev = attr(item, "prev_hash");
                let stored = attr(item, "hash");
                let event_id = attr(item, "event_id");
                let mut added: Vec<&str> = item
                    .keys()
                    .map(String::as_str)
                    .filter(|name| !allowed.contains(*name) || (*seq != 0 && name.starts_with("chain_")))
                    .collect();
                added.sort();
                if !added.is_empty() {
                    problems.push(format!(
                        "chain {chain}: event {event_id} (seq {seq}) carries {} that no audit event has (added)",
                        added.join(", ")
                    ));
                }
                match from_item::<AuditEvent>(item.clone(), "audit event") {
                    Ok(event) => {
                        let misindexed = misindexed(item, &event, &chain);
                        if !misindexed.is_empty() {
                            problems.push(format!(
                                "chain {chain}: event {} (seq {seq}) has index attributes that do not match it: {} (hidden from or misplaced in queries)",
                                event.event_id,
                                misindexed.join(", ")
                            ));
                        }
                        if link_hash(&chain, *seq, prev, &event) != stored {
                            problems.push(format!(
                                "chain {chain}: event {} (seq {seq}) was edited",
                                event.event_id
                            ));
                        }
                    }
                    Err(_) => problems.push(format!("chain {chain}: seq {seq} is not an audit event")),
                }
                if let Some(key) = &chain_key
                    && !audit::verify_p256(key, stored.as_bytes(), attr(item, "sig"))
                {
                    problems.push(format!(
                        "chain {chain}: event {event_id} (seq {seq}) is not signed by its chain's key (forged or added)"
                    ));
                }
                if prev != expected_prev {
                    problems.push(format!(
                        "chain {chain}: seq {seq} does not follow the event before it (deleted, reordered or replaced)"
                    ));
                }
                expected_prev = stored.to_string();
            }
        }
        let digest_count = digests.len();
        check_digests(digests, &chains, &audit_key_id, &audit_key, &mut problems);
        if let Some(check) = &export_check {
            problems.extend(check.problems.iter().cloned());
        }
        let ok = problems.is_empty();
        let mut text = vec![format!(
            "{} chain(s), {events} event(s), {digest_count} digest(s): {}",
            chains.len(),
            if ok {
                "every chain verifies"
            } else {
                "TAMPERING DETECTED"
            }
        )];
        if let Some(check) = &export_check {
            text.push(format!(
                "export: {} item(s) exported, {} newer than the grace period not exported yet",
                check.exported, check.pending
            ));
        }
        text.extend(problems.iter().cloned());
        if export_check.is_none() {
            text.push(
                "(events newer than the last digest, and the newest digests themselves, could be removed without a trace: add --export to compare with the append-only copy)"
                    .into(),
            );
        }
        let mut report = Report::new(
            text.join("\n"),
            json!({
                "chains": chains.len(), "events": events, "digests": digest_count, "ok": ok, "problems": problems,
                "export": export_check.as_ref().map(|c| json!({ "exported": c.exported, "pending": c.pending })),
            }),
        );
        if !ok {
            report.exit = 5;
        }
        Ok(report)
    }
}

/// Every attribute an audit item may have: the event's fields and the link's.
fn allowed_attributes() -> std::collections::BTreeSet<String> {
    let every_field = AuditEvent {
        actor_issuer: Some(String::new()),
        actor_subject: Some(String::new()),
        target: Some(String::new()),
        grant_id: Some(String::new()),
        lease_id: Some(String::new()),
        reason: Some(String::new()),
        token_fingerprint: Some(String::new()),
        old_version: Some(String::new()),
        new_version: Some(String::new()),
        request_id: Some(String::new()),
        ..AuditEvent::new(
            nhi_broker::domain::AuditAction::Register,
            nhi_broker::domain::AuditOutcome::Applied,
            0,
        )
    };
    let fields = serde_json::to_value(&every_field).unwrap_or_default();
    let mut allowed: std::collections::BTreeSet<String> = fields
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    allowed.extend(
        nhi_broker::aws::dynamo::LINK_ATTRIBUTES
            .iter()
            .chain(nhi_broker::aws::dynamo::INDEX_ATTRIBUTES)
            .map(|a| a.to_string()),
    );
    allowed
}

/// The chain's key, if its first event proves the audit key certified it; a problem otherwise.
fn check_opening(
    chain: &str,
    first: Option<&Item>,
    audit_key_id: &str,
    audit_key: &[u8],
    problems: &mut Vec<String>,
) -> Option<Vec<u8>> {
    let Some(first) = first.filter(|item| attr_num(item, "seq") == Some(0)) else {
        problems.push(format!(
            "chain {chain}: its first event (seq 0) is missing, so its events cannot be authenticated"
        ));
        return None;
    };
    let public_key = attr(first, "chain_key");
    let certificate = attr(first, "chain_cert");
    if certificate.is_empty() {
        problems.push(format!(
            "chain {chain}: not certified by the audit key (forged, or written without NHI_AUDIT_KEY_ID)"
        ));
        return None;
    }
    let certified_by = attr(first, "chain_cert_key").rsplit('/').next().unwrap_or_default();
    if certified_by != audit_key_id
        || !audit::verify_p256(audit_key, &audit::chain_statement(chain, public_key), certificate)
    {
        problems.push(format!(
            "chain {chain}: its certificate does not verify with audit key {audit_key_id} (forged chain)"
        ));
        return None;
    }
    audit::decode_chain_key(public_key)
}

/// The digest chain: consecutive, each following the one before, unedited, signed by the audit
/// key; and every chain head a digest recorded still there, with the hash it had.
fn check_digests(
    mut items: Vec<(i64, Item)>,
    chains: &BTreeMap<String, Vec<(i64, Item)>>,
    audit_key_id: &str,
    audit_key: &[u8],
    problems: &mut Vec<String>,
) {
    items.sort_by_key(|(seq, _)| *seq);
    let hashes: std::collections::HashMap<(&str, i64), &str> = chains
        .iter()
        .flat_map(|(chain, links)| {
            links
                .iter()
                .map(move |(seq, item)| ((chain.as_str(), *seq), attr(item, "hash")))
        })
        .collect();
    let mut previous = GENESIS_HASH.to_string();
    for (position, (seq, item)) in items.iter().enumerate() {
        let Some(digest) = digest_from_item(item) else {
            problems.push(format!("digest {seq} is malformed"));
            continue;
        };
        if *seq != position as i64 {
            problems.push(format!(
                "digest {seq} where {position} was expected (a digest is missing)"
            ));
        }
        if digest.prev_hash != previous {
            problems.push(format!(
                "digest {seq} does not follow the digest before it (deleted or replaced)"
            ));
        }
        if digest_hash(digest.seq, digest.from, digest.until, &digest.prev_hash, &digest.heads) != digest.hash {
            problems.push(format!("digest {seq} was edited"));
        }
        let signed_by = digest.key_id.rsplit('/').next().unwrap_or_default();
        if signed_by != audit_key_id
            || !audit::verify_p256(audit_key, &digest_statement(&digest.hash), &digest.signature)
        {
            problems.push(format!(
                "digest {seq} is not signed by audit key {audit_key_id} (forged)"
            ));
        }
        for head in &digest.heads {
            match hashes.get(&(head.chain.as_str(), head.seq)) {
                None if !chains.contains_key(&head.chain) => problems.push(format!(
                    "chain {}: digest {seq} recorded it up to seq {}, but the whole chain is gone (deleted)",
                    head.chain, head.seq
                )),
                None => problems.push(format!(
                    "chain {}: digest {seq} recorded seq {}, which is missing (events deleted after the digest)",
                    head.chain, head.seq
                )),
                Some(hash) if *hash != head.hash => problems.push(format!(
                    "chain {}: seq {} is not the event digest {seq} recorded (replaced)",
                    head.chain, head.seq
                )),
                Some(_) => {}
            }
        }
        previous = digest.hash.clone();
    }
}

/// Index attributes of an audit item that differ from what its event and chain give (an edited
/// index key hides an event from queries without touching its hash).
fn misindexed(item: &Item, event: &AuditEvent, chain: &str) -> Vec<&'static str> {
    let expected = index_attributes(event, chain);
    let mut wrong: Vec<&'static str> = nhi_broker::aws::dynamo::INDEX_ATTRIBUTES
        .iter()
        .copied()
        .filter(|name| item.get(*name) != expected.iter().find(|(k, _)| k == name).map(|(_, v)| v))
        .collect();
    wrong.sort();
    wrong
}
