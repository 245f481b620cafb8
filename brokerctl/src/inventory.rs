//! Where secrets are active: leases, destinations and what they confirmed, grants.

use crate::{CliError, CliResult, Ctl, Report, about_secret, attr, indent, table, time};
use nhi_broker::aws::dynamo::{Item, from_item};
use nhi_broker::domain::{ChangeEvent, Delivery, DeliveryStatus, Grant, GrantStatus, Secret, SubjectMatch};
use serde_json::{Value, json};

impl Ctl {
    /// Where a secret is active right now: leases, destinations and what they confirmed, grants.
    async fn secret_inventory(&self, secret_item: Item, grants: &[Grant]) -> CliResult<Value> {
        let current = attr(&secret_item, "current_version").to_string();
        let previous = attr(&secret_item, "previous_version").to_string();
        let secret: Secret = from_item(secret_item, "secret")?;
        let leases: Vec<Value> = self
            .reads
            .active_secret_leases(&secret.id, self.now)
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
        for id in self.reads.destinations_of_secret(&secret.id).await? {
            let found = self.reads.destination_records(&id).await?;
            let exposed = found
                .destination
                .as_ref()
                .and_then(|i| i.get("exposed").and_then(|v| v.as_bool().ok()).copied())
                .unwrap_or(false);
            let items = found.deliveries;
            // Unconfirmed deliveries an operator resolved (`destination resolve`) no longer count.
            let mut deliveries: Vec<Delivery> = items
                .into_iter()
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
            .map(|g| {
                let (form, subject) = match &g.subject {
                    SubjectMatch::Exact(s) => ("subject", s),
                    SubjectMatch::Pattern(p) => ("subject_pattern", p),
                };
                json!({
                    "id": g.id, "issuers": g.issuers, form: subject,
                    "claim_conditions": g.claims.keys().collect::<Vec<_>>(),
                    "condition": g.condition,
                    "approval_expires_at": g.approval_expires_at,
                })
            })
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
            Some(id) => vec![self.reads.secret(id).await?.ok_or_else(|| CliError {
                message: format!("no secret with id {id:?}"),
                code: 1,
            })?],
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
}
