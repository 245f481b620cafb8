//! brokerctl: what operators do to the broker's state — register issuers, targets, secrets, grants
//! and destinations (one at a time or from a manifest in git), revoke anything, and ask where a
//! secret is active and what happened. Every write goes through the same adapters the functions
//! use; the CLI encrypts secret values under their context and never decrypts or prints them.

use nhi_broker::BrokerError;
use nhi_broker::aws::dynamo::operator::OperatorReads;
use nhi_broker::aws::dynamo::{DynamoLedger, DynamoRegistry, Item};
use nhi_broker::domain::{ChangeEvent, Destination, RevocationTarget};
use serde_json::Value;
use std::io::Write;

pub mod apply;
mod audit;
mod audit_export;
pub mod destinations;
pub mod explain;
mod inventory;
pub mod manifest;
mod register;
mod revoke;
pub mod secrets;

pub use apply::ApplyOptions;
pub use audit::AuditSearch;
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
            // Input the command was given: a usage error.
            BrokerError::InvalidRequest(m) => return Self::usage(*m),
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
    /// `--output jsonl`: one JSON document per line (records of a listing); `None`: `json` on one line.
    pub lines: Option<Vec<Value>>,
    pub exit: i32,
}

impl Report {
    pub(crate) fn new(text: String, json: Value) -> Self {
        Self {
            text,
            json,
            lines: None,
            exit: 0,
        }
    }

    /// The output in JSON Lines.
    pub fn json_lines(&self) -> String {
        match &self.lines {
            Some(lines) => lines.iter().map(Value::to_string).collect::<Vec<_>>().join("\n"),
            None => self.json.to_string(),
        }
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
    /// KMS key that certifies audit chains: operator commands certify theirs with it, and
    /// `audit verify` checks every chain against it.
    pub audit_key_id: Option<String>,
    /// Event bus the on-demand rotation event is put on.
    pub event_bus: String,
    /// The audit export bucket (`audit verify --export`).
    pub export_bucket: Option<String>,
}

pub struct Ctl {
    pub tables: Tables,
    /// The SDK configuration every client here is built from (the export bucket's client is made on use).
    pub sdk: aws_config::SdkConfig,
    pub dynamo: aws_sdk_dynamodb::Client,
    pub kms: aws_sdk_kms::Client,
    pub eventbridge: aws_sdk_eventbridge::Client,
    pub registry: DynamoRegistry,
    /// Every read of operator commands (typed; no keys or queries here).
    pub reads: OperatorReads,
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

pub(crate) fn attr_num(item: &Item, name: &str) -> Option<i64> {
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
        let kms = aws_sdk_kms::Client::new(&sdk);
        if let Some(key_id) = &tables.audit_key_id {
            nhi_broker::audit::install_certifier(std::sync::Arc::new(nhi_broker::aws::kms::KmsChainCertifier::new(
                kms.clone(),
                key_id,
            )));
        }
        Ok(Self {
            registry: DynamoRegistry::new(dynamo.clone(), &tables.registry),
            reads: OperatorReads::new(dynamo.clone(), &tables.registry, &tables.leases, &tables.audit),
            ledger: DynamoLedger::new(dynamo.clone(), &tables.leases, &tables.audit, &tables.revocations)
                .with_registry_guard(&tables.registry),
            kms,
            eventbridge: aws_sdk_eventbridge::Client::new(&sdk),
            sdk,
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
}

pub(crate) fn about_secret(event: &ChangeEvent, secret_id: &str) -> bool {
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

pub(crate) fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

pub(crate) fn destination_kind(d: &Destination) -> String {
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
