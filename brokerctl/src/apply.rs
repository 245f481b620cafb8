//! `apply`: make the registry match a manifest, all or nothing.
//!
//! 1. The manifest is checked on its own (every problem, no AWS call), then against the registry
//!    (every dangling or disagreeing reference). Any problem: exit 2, nothing written.
//! 2. The plan reads each named item consistently and diffs it; with `--prune`, active grants the
//!    manifest no longer names are revoked and enabled destinations it no longer names disabled
//!    (otherwise they are listed as warnings). A dry run shows the plan and exits 4 if it would
//!    change anything.
//! 3. The write is one DynamoDB transaction (changes + one audit event, at most 100 items), each
//!    change conditional on the item being as the plan read it. If anything changed meanwhile,
//!    nothing is written and the change is named. Pruned grants then get a revocation record each,
//!    so revoke-fanout sweeps their leases.
//!
//! Larger changes need `--staged`: dependency-ordered transactions (issuers, targets and
//! destinations; then grants; then prunes), each all or nothing, so exchange never sees a grant
//! naming something not yet written; if one fails, re-running apply finishes the rest.

use crate::manifest::{GrantSpec, Known, Manifest, Problem, refuse};
use crate::{CliError, CliResult, Ctl, Report, to_json};
use nhi_broker::aws::dynamo::registry_writes::{Expect, MAX_CHANGE_ITEMS, RegistryWrite, WriteRefused};
use nhi_broker::aws::dynamo::{Item, from_item};
use nhi_broker::domain::{
    AuditAction, AuditEvent, AuditOutcome, Destination, Grant, GrantStatus, Issuer, Revocation, RevocationTarget,
    Secret, Target, TargetKind,
};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// How `apply` runs.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// Write (`--yes`); otherwise a dry run.
    pub write: bool,
    /// Revoke grants and disable destinations the manifest no longer names.
    pub prune: bool,
    /// Allow a change larger than one transaction, in dependency-ordered stages.
    pub staged: bool,
    /// Where the manifest came from (file path, or the command), for the audit trail.
    pub source: String,
}

/// One change `apply` would make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub kind: &'static str,
    pub id: String,
    /// create, update, unchanged, revoke or disable
    pub action: &'static str,
    /// `field: old -> new` for updates.
    pub fields: Vec<String>,
}

enum Op {
    Issuer(Issuer, Expect),
    Target(Target, Expect),
    Destination(Destination, Vec<String>, Expect),
    /// The grant, as it was read (if it exists), and what the write expects.
    Grant(Grant, Option<Box<Grant>>, Expect),
    RevokeGrant(Grant, Expect),
    DisableDestination(Destination, Vec<String>, Expect),
}

impl Op {
    /// Dependency order of staged writes: what grants name first, grants next, prunes last.
    fn stage(&self) -> usize {
        match self {
            Op::Issuer(..) | Op::Target(..) | Op::Destination(..) => 0,
            Op::Grant(..) => 1,
            Op::RevokeGrant(..) | Op::DisableDestination(..) => 2,
        }
    }

    fn add_to(&self, write: &mut RegistryWrite) -> nhi_broker::Result<()> {
        match self {
            Op::Issuer(issuer, expect) => write.issuer(issuer, expect.clone()),
            Op::Target(target, expect) => write.target(target, expect.clone()),
            Op::Destination(d, old, expect) | Op::DisableDestination(d, old, expect) => {
                write.destination(d, old, expect.clone())
            }
            Op::Grant(grant, previous, expect) => write.grant(grant, previous.as_deref(), expect.clone()),
            Op::RevokeGrant(grant, expect) => write.revoke_grant(grant, expect.clone()),
        }
    }
}

struct Plan {
    changes: Vec<Change>,
    ops: Vec<Op>,
    /// What the manifest no longer names and `--prune` would remove (listed as warnings without).
    orphans: Vec<Change>,
}

fn field_diff(old: &Value, new: &Value) -> Vec<String> {
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return vec![];
    };
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .map(|k| {
            format!(
                "{k}: {} -> {}",
                old.get(k).unwrap_or(&Value::Null),
                new.get(k).unwrap_or(&Value::Null)
            )
        })
        .collect()
}

pub(crate) fn diff(kind: &'static str, id: &str, old: Option<Value>, new: &Value) -> Change {
    match old {
        None => Change {
            kind,
            id: id.into(),
            action: "create",
            fields: vec![],
        },
        Some(old) => {
            let fields = field_diff(&old, new);
            Change {
                kind,
                id: id.into(),
                action: if fields.is_empty() { "unchanged" } else { "update" },
                fields,
            }
        }
    }
}

/// A grant without its bookkeeping, for diffs.
fn comparable(grant: &Grant) -> Value {
    let mut v = to_json(grant);
    if let Some(o) = v.as_object_mut() {
        o.remove("created_at");
        o.remove("status");
    }
    v
}

/// The registry, by type and id, as the `by-type` index lists it (for references and orphans).
#[derive(Default)]
struct Listing {
    issuers: Vec<Issuer>,
    targets: Vec<Target>,
    secrets: Vec<Secret>,
    grants: Vec<Grant>,
    destinations: Vec<Destination>,
}

impl Ctl {
    async fn listing(&self) -> CliResult<Listing> {
        let list = |t: &'static str| self.registry.list_type(t, |_| {});
        let (issuers, targets, secrets, grants, destinations) = futures::try_join!(
            list("issuer"),
            list("target"),
            list("secret"),
            list("grant"),
            list("destination")
        )?;
        fn parse<T: serde::de::DeserializeOwned>(items: Vec<Item>, what: &str) -> nhi_broker::Result<Vec<T>> {
            items.into_iter().map(|i| from_item(i, what)).collect()
        }
        Ok(Listing {
            issuers: parse(issuers, "issuer")?,
            targets: parse(targets, "target")?,
            secrets: parse(secrets, "secret")?,
            grants: parse(grants, "grant")?,
            destinations: parse(destinations, "destination")?,
        })
    }

    /// Check, plan and (with `options.write`) write a manifest. See the module doc.
    pub async fn apply(&self, manifest: &Manifest, options: &ApplyOptions) -> CliResult<Report> {
        let problems = manifest.problems(self.now);
        if !problems.is_empty() {
            return Err(refuse(&options.source, &problems));
        }
        let listing = self.listing().await?;
        let problems = self.reference_problems(manifest, &listing);
        if !problems.is_empty() {
            return Err(refuse(&options.source, &problems));
        }
        let plan = self.plan(manifest, &listing, options.prune).await?;
        let mut lines: Vec<String> = plan.changes.iter().map(render).collect();
        let pending: Vec<&Change> = plan.changes.iter().filter(|c| c.action != "unchanged").collect();
        if !options.prune {
            for orphan in &plan.orphans {
                lines.push(format!(
                    "! {} {} is not in the manifest (apply --prune would {} it)",
                    orphan.kind, orphan.id, orphan.action
                ));
            }
        }
        let mut transactions = 0;
        if options.write && !pending.is_empty() {
            transactions = self.write_plan(&plan, options).await?;
            lines.push(format!(
                "applied {} change(s){}",
                pending.len(),
                if transactions > 1 {
                    format!(" in {transactions} staged transactions")
                } else {
                    String::new()
                }
            ));
        } else if options.write || pending.is_empty() {
            lines.push("nothing to change".into());
        } else {
            lines.push(format!(
                "{} change(s) planned; run again with --yes to apply them",
                pending.len()
            ));
        }
        let mut report = Report::new(
            lines.join("\n"),
            json!({
                "changes": plan.changes,
                "not_in_manifest": if options.prune { Vec::new() } else { plan.orphans.clone() },
                "applied": options.write && !pending.is_empty(),
                "transactions": transactions,
            }),
        );
        // A dry run with pending changes exits 4, so a pipeline can tell "drift" from "in sync".
        if !options.write && !pending.is_empty() {
            report.exit = 4;
        }
        Ok(report)
    }

    fn reference_problems(&self, manifest: &Manifest, listing: &Listing) -> Vec<Problem> {
        let mut known = Known {
            issuers: listing
                .issuers
                .iter()
                .map(|i| (i.issuer.clone(), i.pattern_prefix_segments))
                .collect(),
            secrets: listing.secrets.iter().map(|s| s.id.clone()).collect(),
            destinations: listing.destinations.iter().map(|d| d.id.clone()).collect(),
            revoked_grants: listing
                .grants
                .iter()
                .filter(|g| g.status == GrantStatus::Revoked)
                .map(|g| g.id.clone())
                .collect(),
            ..Default::default()
        };
        for target in &listing.targets {
            known
                .targets
                .insert(target.id.clone(), (target.environment.clone(), target.kind));
        }
        for secret in &listing.secrets {
            known
                .targets
                .insert(secret.id.clone(), (secret.environment.clone(), TargetKind::Secret));
        }
        let mut problems = manifest.reference_problems(&known);
        // A grant's key includes its issuer: the same id under another issuer would be a second grant.
        for (i, spec) in manifest.grants.iter().enumerate() {
            if let Some(other) = listing
                .grants
                .iter()
                .find(|g| g.id == spec.id && g.primary_issuer() != spec.primary_issuer())
            {
                problems.push(Problem {
                    path: format!("grants[{i}].issuer"),
                    message: format!(
                        "grant {} exists for issuer {}: a grant's (first) issuer never changes (revoke it, use a new id)",
                        spec.id,
                        other.primary_issuer()
                    ),
                });
            }
        }
        problems
    }

    /// One consistent read per named item: the diff, and the state each write requires.
    async fn plan(&self, manifest: &Manifest, listing: &Listing, prune: bool) -> CliResult<Plan> {
        let mut changes = Vec::new();
        let mut ops = Vec::new();
        for spec in &manifest.issuers {
            let issuer = Issuer::from(spec);
            let item = self.reads.issuer(&issuer.issuer).await?;
            let old = item.clone().map(|i| from_item::<Issuer>(i, "issuer")).transpose()?;
            let change = diff("issuer", &issuer.issuer, old.as_ref().map(to_json), &to_json(&issuer));
            if change.action != "unchanged" {
                ops.push(Op::Issuer(issuer, Expect::from_read(item.as_ref())));
            }
            changes.push(change);
        }
        for spec in &manifest.targets {
            let target = Target::from(spec);
            let item = self.reads.target(&target.id).await?;
            let old = item.clone().map(|i| from_item::<Target>(i, "target")).transpose()?;
            let change = diff("target", &target.id, old.as_ref().map(to_json), &to_json(&target));
            if change.action != "unchanged" {
                ops.push(Op::Target(target, Expect::from_read(item.as_ref())));
            }
            changes.push(change);
        }
        for spec in &manifest.destinations {
            let destination = Destination::from(spec);
            let item = self.reads.destination(&destination.id).await?;
            let old = item
                .clone()
                .map(|i| from_item::<Destination>(i, "destination"))
                .transpose()?;
            let change = diff(
                "destination",
                &destination.id,
                old.as_ref().map(to_json),
                &to_json(&destination),
            );
            let revoked = item
                .as_ref()
                .and_then(|i| i.get("revoked"))
                .and_then(|v| v.as_bool().ok())
                == Some(&true);
            if revoked && destination.enabled {
                return Err(CliError::usage(format!(
                    "destination {} was revoked; a revoked destination is never re-enabled: give it a new id (or enabled: false)",
                    destination.id
                )));
            }
            if change.action != "unchanged" {
                let old_secrets = old.map(|d| d.secrets).unwrap_or_default();
                ops.push(Op::Destination(
                    destination,
                    old_secrets,
                    Expect::from_read(item.as_ref()),
                ));
            }
            changes.push(change);
        }
        for spec in &manifest.grants {
            let (change, op) = self.plan_grant(spec).await?;
            ops.extend(op);
            changes.push(change);
        }
        let orphans = self.orphans(manifest, listing, prune, &mut ops).await?;
        if prune {
            changes.extend(orphans.iter().cloned());
        }
        Ok(Plan { changes, ops, orphans })
    }

    async fn plan_grant(&self, spec: &GrantSpec) -> CliResult<(Change, Option<Op>)> {
        let item = self.reads.grant(&spec.primary_issuer(), &spec.id).await?;
        let old = item.clone().map(|i| from_item::<Grant>(i, "grant")).transpose()?;
        if old.as_ref().is_some_and(|g| g.status == GrantStatus::Revoked) {
            return Err(CliError::usage(format!(
                "grant {} is revoked; a revoked grant is never revived: give the new grant a new id",
                spec.id
            )));
        }
        let grant = spec
            .to_grant(old.as_ref().map_or(self.now, |g| g.created_at))
            .map_err(CliError::usage)?;
        let mut change = diff("grant", &spec.id, old.as_ref().map(comparable), &comparable(&grant));
        // Recorded before the exchange found grants by subject: rewriting it adds its policy key
        // (until then the exchange does not find it: default deny).
        if change.action == "unchanged" && item.as_ref().is_some_and(|i| !i.contains_key("policy_key")) {
            change.action = "update";
            change
                .fields
                .push("policy_key: (none) -> indexed for the exchange's lookup by subject".into());
        }
        let op = (change.action != "unchanged")
            .then(|| Op::Grant(grant, old.map(Box::new), Expect::from_read(item.as_ref())));
        Ok((change, op))
    }

    /// Active grants and enabled destinations the manifest does not name. With `prune`, their
    /// revocation or disabling is planned (read consistently, conditional like every change).
    async fn orphans(
        &self,
        manifest: &Manifest,
        listing: &Listing,
        prune: bool,
        ops: &mut Vec<Op>,
    ) -> CliResult<Vec<Change>> {
        let named_grants: BTreeSet<&str> = manifest.grants.iter().map(|g| g.id.as_str()).collect();
        let named_destinations: BTreeSet<&str> = manifest.destinations.iter().map(|d| d.id.as_str()).collect();
        let mut orphans = Vec::new();
        let mut grants: Vec<&Grant> = listing
            .grants
            .iter()
            .filter(|g| g.status == GrantStatus::Active && !named_grants.contains(g.id.as_str()))
            .collect();
        grants.sort_by(|a, b| a.id.cmp(&b.id));
        for grant in grants {
            if prune {
                let item = self.reads.grant(grant.primary_issuer(), &grant.id).await?;
                let Some(item) = item else { continue };
                let current: Grant = from_item(item.clone(), "grant")?;
                if current.status != GrantStatus::Active {
                    continue;
                }
                ops.push(Op::RevokeGrant(current, Expect::from_read(Some(&item))));
            }
            orphans.push(Change {
                kind: "grant",
                id: grant.id.clone(),
                action: "revoke",
                fields: vec![],
            });
        }
        let mut destinations: Vec<&Destination> = listing
            .destinations
            .iter()
            .filter(|d| d.enabled && !named_destinations.contains(d.id.as_str()))
            .collect();
        destinations.sort_by(|a, b| a.id.cmp(&b.id));
        for destination in destinations {
            if prune {
                let item = self.reads.destination(&destination.id).await?;
                let Some(item) = item else { continue };
                let mut current: Destination = from_item(item.clone(), "destination")?;
                if !current.enabled {
                    continue;
                }
                current.enabled = false;
                let secrets = current.secrets.clone();
                ops.push(Op::DisableDestination(current, secrets, Expect::from_read(Some(&item))));
            }
            orphans.push(Change {
                kind: "destination",
                id: destination.id.clone(),
                action: "disable",
                fields: vec![],
            });
        }
        Ok(orphans)
    }

    /// Write the plan: one transaction, or (`--staged`) dependency-ordered ones. Returns how many.
    async fn write_plan(&self, plan: &Plan, options: &ApplyOptions) -> CliResult<usize> {
        let mut batches: Vec<RegistryWrite> = Vec::new();
        let mut ops: Vec<&Op> = plan.ops.iter().collect();
        ops.sort_by_key(|op| op.stage());
        let mut stage = None;
        for op in ops {
            let mut alone = RegistryWrite::new(&self.tables.registry);
            op.add_to(&mut alone)?;
            let fits = batches
                .last()
                .is_some_and(|b| b.item_count() + alone.item_count() <= MAX_CHANGE_ITEMS);
            if !fits || stage != Some(op.stage()) && options.staged {
                batches.push(RegistryWrite::new(&self.tables.registry));
            }
            stage = Some(op.stage());
            op.add_to(batches.last_mut().expect("a batch was pushed"))?;
        }
        let items: usize = batches.iter().map(|b| b.item_count()).sum();
        if batches.len() > 1 && !options.staged {
            return Err(CliError::usage(format!(
                "this change writes {items} items; one DynamoDB transaction holds {MAX_CHANGE_ITEMS} (plus its audit \
                 event). Split the manifest, or apply it with --staged: dependency-ordered transactions, each all or \
                 nothing (issuers, targets and destinations, then grants, then prunes)"
            )));
        }
        let total = batches.len();
        for (i, batch) in batches.into_iter().enumerate() {
            let labels = batch.labels().join(", ");
            let event = AuditEvent {
                actor_subject: Some(self.actor()),
                target: Some(format!("manifest:{}", options.source)),
                reason: Some(format!("apply {}/{total}: {labels}", i + 1)),
                ..AuditEvent::new(AuditAction::Register, AuditOutcome::Applied, self.now)
            };
            batch.commit(&self.ledger, &event).await.map_err(|refused| {
                let done = if i == 0 {
                    "nothing was written".to_string()
                } else {
                    format!("transactions 1 to {i} of {total} were written; run apply again to finish")
                };
                match refused {
                    WriteRefused::Changed(what) => CliError {
                        message: format!(
                            "{what} changed since this plan was read (someone else wrote it): {done}; \
                             run apply again to see the new plan"
                        ),
                        code: 1,
                    },
                    WriteRefused::Failed(e) => {
                        let mut error = CliError::from(e);
                        error.message = format!("{}: {done}", error.message);
                        error
                    }
                }
            })?;
        }
        for op in &plan.ops {
            if let Op::RevokeGrant(grant, _) = op {
                self.record_prune(grant, &options.source).await?;
            }
        }
        Ok(total)
    }

    /// A pruned grant's revocation record, so revoke-fanout sweeps its leases and tells its
    /// `delivers_to` destination (the grant itself is already marked revoked).
    async fn record_prune(&self, grant: &Grant, source: &str) -> CliResult<()> {
        let reason = format!("pruned by apply: not in {source}");
        let revocation = Revocation {
            revocation_id: uuid::Uuid::now_v7().to_string(),
            target_kind: RevocationTarget::Grant,
            target_id: grant.id.clone(),
            actor: self.actor(),
            reason: reason.clone(),
            at: self.now,
        };
        let event = AuditEvent {
            actor_subject: Some(self.actor()),
            target: Some(format!("grant:{}", grant.id)),
            grant_id: Some(grant.id.clone()),
            reason: Some(reason),
            ..AuditEvent::new(AuditAction::Revoke, AuditOutcome::Revoked, self.now)
        };
        self.ledger.record_revocation(&revocation, &event).await?;
        Ok(())
    }
}

fn render(change: &Change) -> String {
    let sign = match change.action {
        "create" => "+",
        "update" => "~",
        "revoke" | "disable" => "-",
        _ => "=",
    };
    let mut line = format!("{sign} {} {}", change.kind, change.id);
    if matches!(change.action, "revoke" | "disable") {
        line.push_str(&format!(" ({}: not in the manifest)", change.action));
    }
    for field in &change.fields {
        line.push_str(&format!("\n    {field}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_name_changed_fields_only() {
        let change = diff(
            "grant",
            "g",
            Some(json!({"a": 1, "b": 2})),
            &json!({"a": 1, "b": 3, "c": 4}),
        );
        assert_eq!(change.action, "update");
        assert_eq!(change.fields, ["b: 2 -> 3", "c: null -> 4"]);
        assert_eq!(
            diff("grant", "g", Some(json!({"a": 1})), &json!({"a": 1})).action,
            "unchanged"
        );
        assert_eq!(diff("grant", "g", None, &json!({"a": 1})).action, "create");
    }
}
