//! Registering issuers and targets one at a time, and listing what is registered.

use crate::{
    CliError, CliResult, Ctl, Manifest, Report, apply, attr, destination_kind, manifest, table, time, to_json,
};
use nhi_broker::aws::dynamo::from_item;
use nhi_broker::domain::{Destination, Grant, Issuer, Secret, Target};
use serde_json::Value;

impl Ctl {
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
                            match &g.subject {
                                nhi_broker::domain::SubjectMatch::Exact(s) => s.clone(),
                                nhi_broker::domain::SubjectMatch::Pattern(p) => format!("{p} (pattern)"),
                            },
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
}
