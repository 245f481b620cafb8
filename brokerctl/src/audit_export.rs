//! `audit verify --export`: the audit table against its append-only copy in the export bucket.

use crate::{CliError, CliResult, Ctl, attr, attr_num};
use nhi_broker::aws::dynamo::Item;
use nhi_broker::aws::s3::ExportedLine;
use std::collections::BTreeMap;

/// What the comparison found.
#[derive(Debug, Default)]
pub struct ExportCheck {
    pub exported: usize,
    /// Table items younger than the grace period and not exported yet (not a failure).
    pub pending: usize,
    pub problems: Vec<String>,
}

impl Ctl {
    /// Every line of the export bucket (`--export-bucket` / `NHI_EXPORT_BUCKET`).
    pub(crate) async fn read_export(&self) -> CliResult<Vec<ExportedLine>> {
        let Some(bucket) = self.tables.export_bucket.as_deref() else {
            return Err(CliError::usage(
                "audit verify --export needs the export bucket: --export-bucket or NHI_EXPORT_BUCKET (template output AuditExportBucketName)",
            ));
        };
        let client = nhi_broker::aws::s3::client(&self.sdk);
        (self.progress)("... reading the audit export");
        Ok(nhi_broker::aws::s3::read_export(&client, bucket).await?)
    }
}

/// Compare every audit item (events and digests) with the export: each item exported with the
/// same hash, each exported item still in the table, and no change after the fact recorded by the
/// stream. Items younger than `grace_seconds` may not be exported yet.
pub fn check_export(items: &[Item], lines: &[ExportedLine], now: i64, grace_seconds: i64) -> ExportCheck {
    let mut check = ExportCheck::default();
    let mut exported: BTreeMap<(String, i64), (String, &str)> = BTreeMap::new();
    for ExportedLine { key, line } in lines {
        let item = &line["item"];
        let (Some(chain), Some(seq)) = (item["chain"].as_str(), item["seq"].as_i64()) else {
            check.problems.push(format!(
                "export object {key}: a line that is not an exported audit item"
            ));
            continue;
        };
        let hash = item["hash"].as_str().unwrap_or_default().to_string();
        match line["change"].as_str() {
            Some("INSERT") => {
                if let Some((earlier, _)) = exported.get(&(chain.to_string(), seq))
                    && *earlier != hash
                {
                    check.problems.push(format!(
                        "chain {chain}: seq {seq} was exported twice with different content ({key})"
                    ));
                }
                exported.insert((chain.to_string(), seq), (hash, key.as_str()));
            }
            Some("MODIFY") => check.problems.push(format!(
                "chain {chain}: seq {seq} was modified in the table after it was written (recorded in {key})"
            )),
            Some("REMOVE") => check.problems.push(format!(
                "chain {chain}: seq {seq} was removed from the table (recorded in {key})"
            )),
            _ => check
                .problems
                .push(format!("export object {key}: a line with an unknown change")),
        }
    }
    check.exported = exported.len();
    let mut in_table = std::collections::BTreeSet::new();
    for item in items {
        let (chain, seq) = (attr(item, "chain").to_string(), attr_num(item, "seq").unwrap_or(-1));
        match exported.get(&(chain.clone(), seq)) {
            Some((hash, key)) if hash != attr(item, "hash") => check.problems.push(format!(
                "chain {chain}: seq {seq} differs from its export in {key} (edited)"
            )),
            Some(_) => {}
            None if attr_num(item, "at").unwrap_or(0) > now - grace_seconds => check.pending += 1,
            None => check.problems.push(format!(
                "chain {chain}: seq {seq} is not in the export (an export object was deleted, or the export is stalled)"
            )),
        }
        in_table.insert((chain, seq));
    }
    for ((chain, seq), (_, key)) in &exported {
        if !in_table.contains(&(chain.clone(), *seq)) {
            check.problems.push(format!(
                "chain {chain}: seq {seq} is in the export ({key}) but not in the table (deleted)"
            ));
        }
    }
    check
}
