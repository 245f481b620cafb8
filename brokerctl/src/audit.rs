//! Querying the audit trail and verifying its hash chains.

use crate::{CliResult, Ctl, Report, attr, attr_num, table, time, to_json};
use nhi_broker::audit::{GENESIS_HASH, link_hash};
use nhi_broker::aws::dynamo::operator::AuditFilter;
use nhi_broker::aws::dynamo::{Item, from_item};
use nhi_broker::domain::AuditEvent;
use serde_json::json;
use std::collections::BTreeMap;

impl Ctl {
    /// Every audit item matching `filter`, page by page with progress.
    async fn scan_audit(&self, filter: &AuditFilter<'_>) -> CliResult<Vec<Item>> {
        let progress = &self.progress;
        Ok(self
            .reads
            .audit(filter, |scanned, matching| {
                progress(&format!("... {scanned} audit item(s) scanned, {matching} matching"))
            })
            .await?)
    }

    /// Audit events by secret (target), subject, grant and time window, oldest first.
    pub async fn audit(
        &self,
        secret: Option<&str>,
        subject: Option<&str>,
        grant: Option<&str>,
        since: Option<i64>,
        until: Option<i64>,
    ) -> CliResult<Report> {
        let items = self
            .scan_audit(&AuditFilter {
                secret,
                subject,
                grant,
                since,
                until,
            })
            .await?;
        let mut events: Vec<AuditEvent> = items
            .into_iter()
            .map(|i| from_item(i, "audit event"))
            .collect::<Result<_, _>>()?;
        events.sort_by(|a, b| (a.at, &a.event_id).cmp(&(b.at, &b.event_id)));
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
        Ok(Report::new(
            format!(
                "{}\n{} event(s)",
                table(
                    &["AT", "ACTION", "OUTCOME", "ACTOR", "TARGET", "LEASE", "REASON"],
                    &rows
                ),
                rows.len()
            ),
            to_json(&events),
        ))
    }

    /// Recompute every chain: each event's hash over (chain, seq, previous hash, event), each
    /// link to the one before, sequence numbers from 0 without gaps. Exits 5 on any break.
    pub async fn audit_verify(&self) -> CliResult<Report> {
        let items = self.scan_audit(&AuditFilter::default()).await?;
        let mut chains: BTreeMap<String, Vec<(i64, Item)>> = BTreeMap::new();
        for item in items {
            let chain = attr(&item, "chain").to_string();
            let seq = attr_num(&item, "seq").unwrap_or(-1);
            chains.entry(chain).or_default().push((seq, item));
        }
        let mut problems = Vec::new();
        let mut events = 0;
        for (chain, mut links) in chains.clone() {
            links.sort_by_key(|(seq, _)| *seq);
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
                match from_item::<AuditEvent>(item.clone(), "audit event") {
                    Ok(event) => {
                        if link_hash(&chain, *seq, prev, &event) != stored {
                            problems.push(format!(
                                "chain {chain}: event {} (seq {seq}) was edited",
                                event.event_id
                            ));
                        }
                    }
                    Err(_) => problems.push(format!("chain {chain}: seq {seq} is not an audit event")),
                }
                if prev != expected_prev {
                    problems.push(format!(
                        "chain {chain}: seq {seq} does not follow the event before it (deleted, reordered or replaced)"
                    ));
                }
                expected_prev = stored.to_string();
            }
        }
        let ok = problems.is_empty();
        let mut text = vec![format!(
            "{} chain(s), {events} event(s): {}",
            chains.len(),
            if ok {
                "every chain verifies"
            } else {
                "TAMPERING DETECTED"
            }
        )];
        text.extend(problems.iter().cloned());
        text.push(
            "(a chain's newest events could be removed without a trace: compare counts with an earlier verification)"
                .into(),
        );
        let mut report = Report::new(
            text.join("\n"),
            json!({ "chains": chains.len(), "events": events, "ok": ok, "problems": problems }),
        );
        if !ok {
            report.exit = 5;
        }
        Ok(report)
    }
}
