//! brokerctl: what operators do to the broker's state — register issuers, targets, secrets, grants
//! and destinations (one at a time or from a manifest in git), revoke anything, and ask where a
//! secret is active and what happened. Every write goes through the same adapters the functions
//! use; the CLI encrypts secret values under their context and never decrypts or prints them.

use aws_sdk_dynamodb::types::AttributeValue;
use nhi_broker::BrokerError;
use nhi_broker::audit::{GENESIS_HASH, link_hash};
use nhi_broker::aws::dynamo::{DynamoLedger, DynamoRegistry, Item, from_item, keys};
use nhi_broker::domain::{
    AuditAction, AuditEvent, AuditOutcome, ChangeEvent, Delivery, DeliveryStatus, Destination, Grant, GrantStatus,
    Issuer, Lease, Revocation, RevocationTarget, Secret, Target,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;

pub mod apply;
pub mod destinations;
pub mod manifest;
pub mod secrets;

pub use apply::ApplyOptions;
pub use manifest::Manifest;
pub use secrets::{RotationFlags, SecretPut, SecretValue};

/// A failure to report: a message for people and the process exit code.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub code: i32,
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 2,
        }
    }
}

impl From<BrokerError> for CliError {
    fn from(e: BrokerError) -> Self {
        let message = match &e {
            BrokerError::Aws {
                service,
                operation,
                code,
                ..
            } if code.contains("AccessDenied") || code.contains("UnauthorizedOperation") => {
                format!("missing permission: {service}:{operation} was denied ({code}); check the profile's IAM policy")
            }
            BrokerError::Aws { code, .. } if code.contains("ResourceNotFound") => {
                format!("{e}: check the table names (NHI_*_TABLE) and the region")
            }
            BrokerError::Aws { code, .. } if code == "DispatchFailure" => {
                format!("{e}: AWS endpoint unreachable (AWS_ENDPOINT_URL, region, network)")
            }
            _ => e.to_string(),
        };
        Self { message, code: 1 }
    }
}

pub type CliResult<T> = Result<T, CliError>;

/// What a command produced: lines for people, a JSON document for machines, an exit code.
#[derive(Debug, Default)]
pub struct Report {
    pub text: String,
    pub json: Value,
    pub exit: i32,
}

impl Report {
    pub(crate) fn new(text: String, json: Value) -> Self {
        Self { text, json, exit: 0 }
    }
}

/// Table names and keys, from the same variables the functions read (or flags).
#[derive(Debug, Clone)]
pub struct Tables {
    pub registry: String,
    pub leases: String,
    pub audit: String,
    pub revocations: String,
    pub secrets_key_id: Option<String>,
    /// Event bus the on-demand rotation event is put on.
    pub event_bus: String,
}

pub struct Ctl {
    pub tables: Tables,
    pub dynamo: aws_sdk_dynamodb::Client,
    pub kms: aws_sdk_kms::Client,
    pub eventbridge: aws_sdk_eventbridge::Client,
    pub registry: DynamoRegistry,
    pub ledger: DynamoLedger,
    /// Who is acting, recorded as `operator:<name>`.
    pub operator: String,
    pub now: i64,
    /// Progress lines for long listings (stderr in the binary).
    pub progress: Box<dyn Fn(&str) + Send + Sync>,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// RFC 3339 (UTC) for people.
pub fn time(at: i64) -> String {
    aws_smithy_types::DateTime::from_secs(at)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_else(|_| at.to_string())
}

/// `2027-01-31T00:00:00Z` or epoch seconds.
pub fn parse_time(value: &str) -> CliResult<i64> {
    if let Ok(secs) = value.parse::<i64>() {
        return Ok(secs);
    }
    aws_smithy_types::DateTime::from_str(value, aws_smithy_types::date_time::Format::DateTime)
        .map(|t| t.secs())
        .map_err(|_| {
            CliError::usage(format!(
                "{value:?} is not an RFC 3339 time (2027-01-31T00:00:00Z) or epoch seconds"
            ))
        })
}

/// Render rows as aligned columns.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(headers.to_vec())];
    for row in rows {
        out.push(line(row.iter().map(String::as_str).collect()));
    }
    out.join("\n")
}

pub(crate) fn attr<'a>(item: &'a Item, name: &str) -> &'a str {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
        .unwrap_or_default()
}

fn attr_num(item: &Item, name: &str) -> Option<i64> {
    item.get(name).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok())
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

impl Ctl {
    /// Clients with the deadlines `NHI_AWS_*` set (invalid values are a usage error, never ignored).
    pub async fn new(tables: Tables, operator: String) -> CliResult<Self> {
        let deadlines = nhi_broker::config::AwsCallSettings::from_env().map_err(|e| CliError::usage(e.to_string()))?;
        let sdk = nhi_broker::aws::sdk_config_with(&deadlines, None).await;
        let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
        Ok(Self {
            registry: DynamoRegistry::new(dynamo.clone(), &tables.registry),
            ledger: DynamoLedger::new(dynamo.clone(), &tables.leases, &tables.audit, &tables.revocations)
                .with_registry_guard(&tables.registry),
            kms: aws_sdk_kms::Client::new(&sdk),
            eventbridge: aws_sdk_eventbridge::Client::new(&sdk),
            dynamo,
            tables,
            operator,
            now: now(),
            progress: Box::new(|line| {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }),
        })
    }

    pub(crate) fn actor(&self) -> String {
        format!("operator:{}", self.operator)
    }

    // ------------------------------------------------------------ registry

    /// Register or update one issuer: a one-entry manifest, checked and written as `apply` does.
    pub async fn put_issuer(&self, issuer: &Issuer) -> CliResult<Report> {
        let manifest = Manifest {
            issuers: vec![manifest::IssuerSpec::from(issuer)],
            ..Default::default()
        };
        let options = apply::ApplyOptions {
            write: true,
            source: "issuer put".into(),
            ..Default::default()
        };
        let mut report = self.apply(&manifest, &options).await?;
        report.text = format!("issuer {} registered\n{}", issuer.issuer, report.text);
        Ok(report)
    }

    /// Register or update one target (JWT audience or AWS role), as `apply` does.
    pub async fn put_target(&self, target: &Target) -> CliResult<Report> {
        let manifest = Manifest {
            targets: vec![manifest::TargetSpec {
                id: target.id.clone(),
                kind: target.kind,
                environment: target.environment.clone(),
                owner: target.owner.clone(),
                enabled: target.enabled,
            }],
            ..Default::default()
        };
        let options = apply::ApplyOptions {
            write: true,
            source: "target put".into(),
            ..Default::default()
        };
        let mut report = self.apply(&manifest, &options).await?;
        report.text = format!("target {} registered\n{}", target.id, report.text);
        Ok(report)
    }

    pub async fn list(&self, item_type: &str) -> CliResult<Report> {
        let progress = &self.progress;
        let items = self
            .registry
            .list_type(item_type, |n| progress(&format!("... {n} {item_type}(s) read")))
            .await?;
        let mut rows = Vec::new();
        let mut json_items = Vec::new();
        for item in items {
            let (row, value) = match item_type {
                "issuer" => {
                    let i: Issuer = from_item(item, "issuer")?;
                    (
                        vec![
                            i.issuer.clone(),
                            i.name.clone(),
                            i.audiences.join(","),
                            i.enabled.to_string(),
                        ],
                        to_json(&i),
                    )
                }
                "target" => {
                    let t: Target = from_item(item, "target")?;
                    (
                        vec![
                            t.id.clone(),
                            t.kind.as_str().into(),
                            t.environment.clone(),
                            t.enabled.to_string(),
                        ],
                        to_json(&t),
                    )
                }
                "secret" => {
                    let current = attr(&item, "current_version").to_string();
                    let s: Secret = from_item(item, "secret")?;
                    let rotation = s
                        .rotation
                        .as_ref()
                        .map(|r| format!("every {} s", r.interval_seconds))
                        .unwrap_or_else(|| "-".into());
                    let mut value = to_json(&s);
                    value["current_version"] = current.clone().into();
                    (
                        vec![
                            s.id.clone(),
                            s.environment.clone(),
                            current,
                            rotation,
                            s.enabled.to_string(),
                        ],
                        value,
                    )
                }
                "grant" => {
                    let g: Grant = from_item(item, "grant")?;
                    (
                        vec![
                            g.id.clone(),
                            g.subject.clone(),
                            g.targets.join(","),
                            time(g.approval_expires_at),
                            format!("{:?}", g.status).to_lowercase(),
                        ],
                        to_json(&g),
                    )
                }
                "destination" => {
                    let exposed = item
                        .get("exposed")
                        .and_then(|v| v.as_bool().ok())
                        .copied()
                        .unwrap_or(false);
                    let d: Destination = from_item(item, "destination")?;
                    let mut value = to_json(&d);
                    value["exposed"] = exposed.into();
                    (
                        vec![
                            d.id.clone(),
                            destination_kind(&d),
                            d.secrets.join(","),
                            d.enabled.to_string(),
                            exposed.to_string(),
                        ],
                        value,
                    )
                }
                other => return Err(CliError::usage(format!("unknown type {other}"))),
            };
            rows.push(row);
            json_items.push(value);
        }
        rows.sort();
        let headers: &[&str] = match item_type {
            "issuer" => &["ISSUER", "NAME", "AUDIENCES", "ENABLED"],
            "target" => &["TARGET", "KIND", "ENVIRONMENT", "ENABLED"],
            "secret" => &["SECRET", "ENVIRONMENT", "CURRENT", "ROTATION", "ENABLED"],
            "grant" => &["GRANT", "SUBJECT", "TARGETS", "APPROVAL ENDS", "STATUS"],
            _ => &["DESTINATION", "KIND", "SECRETS", "ENABLED", "EXPOSED"],
        };
        Ok(Report::new(table(headers, &rows), Value::Array(json_items)))
    }

    // ------------------------------------------------------------ revoke, rotate

    /// Record a revocation (and its audit event) for revoke-fanout to sweep.
    pub async fn revoke(&self, kind: RevocationTarget, id: &str, reason: &str) -> CliResult<Report> {
        if reason.trim().is_empty() {
            return Err(CliError::usage("a reason is required"));
        }
        self.check_exists(kind, id).await?;
        let revocation = Revocation {
            revocation_id: uuid::Uuid::now_v7().to_string(),
            target_kind: kind,
            target_id: id.into(),
            actor: self.actor(),
            reason: reason.into(),
            at: self.now,
        };
        let event = AuditEvent {
            actor_subject: Some(self.actor()),
            target: Some(format!("{}:{id}", kind.as_str())),
            reason: Some(reason.into()),
            ..AuditEvent::new(AuditAction::Revoke, AuditOutcome::Revoked, self.now)
        };
        self.ledger.record_revocation(&revocation, &event).await?;
        Ok(Report::new(
            format!(
                "revocation {} of {} {id} recorded; revoke-fanout sweeps its leases and tells every destination",
                revocation.revocation_id,
                kind.as_str()
            ),
            to_json(&revocation),
        ))
    }

    /// Lift a subject revocation: the subject may exchange again (its revoked leases stay revoked).
    pub async fn unrevoke_subject(&self, id: &str, reason: &str) -> CliResult<Report> {
        if reason.trim().is_empty() {
            return Err(CliError::usage("a reason is required"));
        }
        let fence = nhi_broker::domain::Fence::subject_from_id(id)
            .ok_or_else(|| CliError::usage("a subject is named <issuer>#<sub>"))?;
        let event = AuditEvent {
            actor_subject: Some(self.actor()),
            target: Some(format!("subject:{id}")),
            reason: Some(reason.into()),
            ..AuditEvent::new(AuditAction::Unrevoke, AuditOutcome::Lifted, self.now)
        };
        if !self.ledger.lift_subject_fence(&fence, &event).await? {
            return Err(CliError {
                message: format!("subject {id:?} is not revoked"),
                code: 1,
            });
        }
        Ok(Report::new(
            format!("subject {id} may exchange again (its revoked leases stay revoked)"),
            json!({ "subject": id, "unrevoked": true, "reason": reason }),
        ))
    }

    async fn check_exists(&self, kind: RevocationTarget, id: &str) -> CliResult<()> {
        let unknown = |what: &str| CliError {
            message: format!("no {what} with id {id:?}"),
            code: 1,
        };
        match kind {
            RevocationTarget::Secret => {
                self.registry
                    .get(&keys::secret_pk(id), keys::SECRET_SK)
                    .await?
                    .ok_or_else(|| unknown("secret"))?;
            }
            RevocationTarget::SecretVersion => {
                let (secret, version) = id
                    .rsplit_once('#')
                    .ok_or_else(|| CliError::usage("a version is named <secret id>#<version>"))?;
                self.registry
                    .get(&keys::secret_pk(secret), &keys::version_sk(version))
                    .await?
                    .ok_or_else(|| unknown("secret version"))?;
            }
            RevocationTarget::Grant => {
                if self.registry.find("grant", id).await?.is_empty() {
                    return Err(unknown("grant"));
                }
            }
            RevocationTarget::Destination => {
                self.registry
                    .get(&keys::destination_pk(id), keys::DESTINATION_SK)
                    .await?
                    .ok_or_else(|| unknown("destination"))?;
            }
            RevocationTarget::Lease => {
                nhi_broker::ports::LeaseLedger::lease(&self.ledger, id)
                    .await?
                    .ok_or_else(|| unknown("lease"))?;
            }
            RevocationTarget::Subject => {
                if id.split_once('#').is_none_or(|(i, s)| i.is_empty() || s.is_empty()) {
                    return Err(CliError::usage("a subject is named <issuer>#<sub>"));
                }
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------ inventory

    async fn active_secret_leases(&self, secret_id: &str) -> CliResult<Vec<Lease>> {
        let mut pages = self
            .dynamo
            .query()
            .table_name(&self.tables.leases)
            .index_name("by-target")
            .key_condition_expression("target = :t AND expires_at > :now")
            .filter_expression("#status = :active AND kind = :kind")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":t", AttributeValue::S(secret_id.into()))
            .expression_attribute_values(":now", AttributeValue::N(self.now.to_string()))
            .expression_attribute_values(":active", AttributeValue::S("active".into()))
            .expression_attribute_values(":kind", AttributeValue::S("secret".into()))
            .into_paginator()
            .items()
            .send();
        let mut leases = Vec::new();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| BrokerError::aws("dynamodb", "Query", &e))?;
            leases.push(from_item::<Lease>(item, "lease")?);
        }
        leases.sort_by_key(|l| l.expires_at);
        Ok(leases)
    }

    /// Where a secret is active right now: leases, destinations and what they confirmed, grants.
    async fn secret_inventory(&self, secret_item: Item, grants: &[Grant]) -> CliResult<Value> {
        let current = attr(&secret_item, "current_version").to_string();
        let previous = attr(&secret_item, "previous_version").to_string();
        let secret: Secret = from_item(secret_item, "secret")?;
        let leases: Vec<Value> = self
            .active_secret_leases(&secret.id)
            .await?
            .into_iter()
            .map(|l| {
                json!({
                    "lease_id": l.lease_id, "issuer": l.issuer, "subject": l.subject, "grant_id": l.grant_id,
                    "version": l.secret_version, "expires_at": l.expires_at, "destination": l.destination,
                })
            })
            .collect();
        let mut destinations = Vec::new();
        let links = self.registry.collection(&keys::secret_pk(&secret.id)).await?;
        for link in links.iter().filter(|i| attr(i, "sk").starts_with("DEST#")) {
            let id = attr(link, "destination_id");
            let items = self.registry.collection(&keys::destination_pk(id)).await?;
            let exposed = items
                .iter()
                .find(|i| attr(i, "sk") == keys::DESTINATION_SK)
                .and_then(|i| i.get("exposed").and_then(|v| v.as_bool().ok()).copied())
                .unwrap_or(false);
            // Unconfirmed deliveries an operator resolved (`destination resolve`) no longer count.
            let mut deliveries: Vec<Delivery> = items
                .into_iter()
                .filter(|i| attr(i, "sk").starts_with("DELIVERY#"))
                .filter(|i| !(attr(i, "status") == "unconfirmed" && i.contains_key("resolved_at")))
                .filter_map(|i| from_item::<Delivery>(i, "delivery").ok())
                .filter(|d| about_secret(&d.event, &secret.id))
                .collect();
            deliveries.sort_by_key(|d| d.created_at);
            let confirmed_version = deliveries
                .iter()
                .rev()
                .filter(|d| d.status == DeliveryStatus::Confirmed)
                .find_map(|d| match &d.event {
                    ChangeEvent::Rotated { new_version, .. } => Some(new_version.clone()),
                    _ => None,
                });
            let count = |s: DeliveryStatus| deliveries.iter().filter(|d| d.status == s).count();
            let last = deliveries.last().map(|d| {
                json!({"event_id": d.event.event_id(), "status": d.status, "attempts": d.attempts, "at": d.last_attempt_at.unwrap_or(d.created_at), "last_error": d.last_error})
            });
            destinations.push(json!({
                "id": id,
                "confirmed_version": confirmed_version,
                "exposed": exposed,
                "pending": count(DeliveryStatus::Pending),
                "unconfirmed": count(DeliveryStatus::Unconfirmed),
                "last_delivery": last,
            }));
        }
        let allowing: Vec<Value> = grants
            .iter()
            .filter(|g| g.status == GrantStatus::Active && g.targets.contains(&secret.id))
            .map(|g| json!({"id": g.id, "issuer": g.issuer, "subject": g.subject, "approval_expires_at": g.approval_expires_at}))
            .collect();
        Ok(json!({
            "id": secret.id, "enabled": secret.enabled, "current_version": current,
            "previous_version": (!previous.is_empty()).then_some(previous),
            "active_leases": leases, "destinations": destinations, "grants": allowing,
        }))
    }

    /// One secret, or every secret. Exits 3 when a destination is unconfirmed (exposed).
    pub async fn inventory(&self, secret_id: Option<&str>) -> CliResult<Report> {
        let progress = &self.progress;
        let grants: Vec<Grant> = self
            .registry
            .list_type("grant", |_| {})
            .await?
            .into_iter()
            .map(|i| from_item(i, "grant"))
            .collect::<Result<_, _>>()?;
        let secrets = match secret_id {
            Some(id) => vec![
                self.registry
                    .get(&keys::secret_pk(id), keys::SECRET_SK)
                    .await?
                    .ok_or_else(|| CliError {
                        message: format!("no secret with id {id:?}"),
                        code: 1,
                    })?,
            ],
            None => {
                self.registry
                    .list_type("secret", |n| progress(&format!("... {n} secret(s) read")))
                    .await?
            }
        };
        let mut out = Vec::new();
        for (i, item) in secrets.into_iter().enumerate() {
            if secret_id.is_none() && i % 25 == 24 {
                progress(&format!("... {} secret(s) inventoried", i + 1));
            }
            out.push(self.secret_inventory(item, &grants).await?);
        }
        let unconfirmed: Vec<String> = out
            .iter()
            .flat_map(|s| {
                s["destinations"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(move |d| {
                        (d["exposed"] == true || d["unconfirmed"].as_u64().unwrap_or(0) > 0).then(|| {
                            format!(
                                "{} (secret {})",
                                d["id"].as_str().unwrap_or_default(),
                                s["id"].as_str().unwrap_or_default()
                            )
                        })
                    })
            })
            .collect();
        let mut text = Vec::new();
        for s in &out {
            text.push(format!(
                "secret {}  current {}  {}",
                s["id"].as_str().unwrap_or_default(),
                s["current_version"].as_str().unwrap_or("-"),
                if s["enabled"] == true { "enabled" } else { "DISABLED" }
            ));
            let leases: Vec<Vec<String>> = s["active_leases"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| {
                    vec![
                        l["lease_id"].as_str().unwrap_or_default().into(),
                        format!(
                            "{}#{}",
                            l["issuer"].as_str().unwrap_or_default(),
                            l["subject"].as_str().unwrap_or_default()
                        ),
                        l["version"].as_str().unwrap_or("-").into(),
                        time(l["expires_at"].as_i64().unwrap_or_default()),
                    ]
                })
                .collect();
            text.push(format!("  active leases: {}", leases.len()));
            if !leases.is_empty() {
                text.push(indent(&table(&["LEASE", "HOLDER", "VERSION", "UNTIL"], &leases)));
            }
            let destinations: Vec<Vec<String>> = s["destinations"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    vec![
                        d["id"].as_str().unwrap_or_default().into(),
                        d["confirmed_version"].as_str().unwrap_or("-").into(),
                        d["last_delivery"]["status"].as_str().unwrap_or("-").into(),
                        if d["exposed"] == true {
                            "EXPOSED".into()
                        } else {
                            "ok".into()
                        },
                    ]
                })
                .collect();
            text.push(format!("  destinations: {}", destinations.len()));
            if !destinations.is_empty() {
                text.push(indent(&table(
                    &["DESTINATION", "CONFIRMED VERSION", "LAST DELIVERY", "STATE"],
                    &destinations,
                )));
            }
            let grants: Vec<String> = s["grants"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|g| {
                    format!(
                        "{} ({})",
                        g["id"].as_str().unwrap_or_default(),
                        g["subject"].as_str().unwrap_or_default()
                    )
                })
                .collect();
            text.push(format!(
                "  allowed by grants: {}",
                if grants.is_empty() {
                    "-".into()
                } else {
                    grants.join(", ")
                }
            ));
        }
        if !unconfirmed.is_empty() {
            text.push(format!("UNCONFIRMED (treat as exposed): {}", unconfirmed.join(", ")));
        }
        let mut report = Report::new(text.join("\n"), json!({ "secrets": out, "unconfirmed": unconfirmed }));
        if !unconfirmed.is_empty() {
            report.exit = 3;
        }
        Ok(report)
    }

    // ------------------------------------------------------------ audit

    /// Every audit item matching `filter` (all of them without), page by page with progress.
    async fn scan_audit(
        &self,
        filter: Option<&str>,
        uses_at: bool,
        values: Vec<(String, AttributeValue)>,
    ) -> CliResult<Vec<Item>> {
        let mut request = self.dynamo.scan().table_name(&self.tables.audit);
        if let Some(expression) = filter {
            request = request.filter_expression(expression);
        }
        if uses_at {
            request = request.expression_attribute_names("#at", "at");
        }
        for (k, v) in values {
            request = request.expression_attribute_values(k, v);
        }
        let mut pages = request.into_paginator().send();
        let (mut items, mut scanned) = (Vec::new(), 0usize);
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| BrokerError::aws("dynamodb", "Scan", &e))?;
            scanned += page.scanned_count() as usize;
            items.extend(page.items.unwrap_or_default());
            (self.progress)(&format!(
                "... {scanned} audit item(s) scanned, {} matching",
                items.len()
            ));
        }
        Ok(items)
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
        let mut clauses: Vec<String> = Vec::new();
        let mut values: Vec<(String, AttributeValue)> = Vec::new();
        if let Some(secret) = secret {
            clauses.push("(target = :secret OR target = :secret_ref)".to_string());
            values.push((":secret".into(), AttributeValue::S(secret.into())));
            values.push((":secret_ref".into(), AttributeValue::S(format!("secret:{secret}"))));
        }
        if let Some(subject) = subject {
            clauses.push("actor_subject = :subject".into());
            values.push((":subject".into(), AttributeValue::S(subject.into())));
        }
        if let Some(grant) = grant {
            clauses.push("grant_id = :grant".into());
            values.push((":grant".into(), AttributeValue::S(grant.into())));
        }
        if let Some(since) = since {
            clauses.push("#at >= :since".into());
            values.push((":since".into(), AttributeValue::N(since.to_string())));
        }
        if let Some(until) = until {
            clauses.push("#at <= :until".into());
            values.push((":until".into(), AttributeValue::N(until.to_string())));
        }
        let uses_at = since.is_some() || until.is_some();
        let expression = clauses.join(" AND ");
        let items = self
            .scan_audit((!clauses.is_empty()).then_some(expression.as_str()), uses_at, values)
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
        let items = self.scan_audit(None, false, Vec::new()).await?;
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

fn about_secret(event: &ChangeEvent, secret_id: &str) -> bool {
    match event {
        ChangeEvent::Rotated { secret_id: s, .. } => s == secret_id,
        ChangeEvent::Revoked {
            target_kind, target_id, ..
        } => match target_kind {
            RevocationTarget::Secret => target_id == secret_id,
            RevocationTarget::SecretVersion => target_id.rsplit_once('#').is_some_and(|(s, _)| s == secret_id),
            _ => false,
        },
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

fn destination_kind(d: &Destination) -> String {
    match &d.kind {
        nhi_broker::domain::DestinationKind::Webhook { url } => format!("webhook {url}"),
        nhi_broker::domain::DestinationKind::EventBridge { event_bus_arn } => format!("eventbridge {event_bus_arn}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_refuse_unknown_fields_and_parse_times() {
        let bad = Manifest::parse("grants:\n  - id: g\n    subjekt: x\n", "m.yaml").unwrap_err();
        assert!(bad[0].message.contains("unknown field"), "{:?}", bad);
        assert_eq!(parse_time("2027-01-31T00:00:00Z").unwrap(), 1_801_353_600);
        assert_eq!(parse_time("1801353600").unwrap(), 1_801_353_600);
        assert!(parse_time("next tuesday").is_err());
    }

    #[test]
    fn denied_calls_name_the_missing_permission() {
        let denied = CliError::from(BrokerError::Aws {
            service: "dynamodb",
            operation: "Query",
            code: "AccessDeniedException".into(),
            retryable: false,
        });
        assert_eq!(denied.code, 1);
        assert!(
            denied.message.contains("missing permission: dynamodb:Query"),
            "{}",
            denied.message
        );
        let missing = CliError::from(BrokerError::Aws {
            service: "dynamodb",
            operation: "GetItem",
            code: "ResourceNotFoundException".into(),
            retryable: false,
        });
        assert!(missing.message.contains("table names"), "{}", missing.message);
    }

    #[test]
    fn tables_align_columns() {
        let t = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1");
    }
}
