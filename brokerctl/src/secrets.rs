//! Secrets: `secret put` and `rotate`.
//!
//! `secret put` reads and checks every input (the value too) before its first AWS call, then
//! writes metadata and value in one conditional transaction with its audit event:
//! - a new secret needs its owner, environment and first value; it never exists without a
//!   decryptable CURRENT version;
//! - on an existing secret, omitted flags keep their values (`--no-rotation` removes the policy);
//!   its environment never changes: it is part of every version's encryption context, so a
//!   changed one would leave every stored version undecryptable. Register a new secret instead.
//! - later values come from rotation (`brokerctl rotate`), never from `secret put`.

use crate::manifest::{Problem, id_problem, refuse};
use crate::{CliError, CliResult, Ctl, Report, attr, to_json};
use nhi_broker::BrokerError;
use nhi_broker::aws::dynamo::registry_writes::{Expect, RegistryWrite, RotationChange, WriteRefused};
use nhi_broker::aws::dynamo::{Item, from_item};
use nhi_broker::domain::{
    Alphabet, AuditAction, AuditEvent, AuditOutcome, RotationPolicy, Secret, SecretGenerator, secret_encryption_context,
};
use nhi_broker::ports::SecretEncryptor;
use nhi_broker::redact::SecretString;
use serde_json::json;
use std::time::{Duration, Instant};

/// KMS `Encrypt` takes at most this much plaintext.
pub const MAX_VALUE_BYTES: usize = 4096;

/// How the value of a new secret is given. Never an argument: it would land in shell history.
pub enum SecretValue {
    File(String),
    Stdin,
    Generate(usize),
}

/// Rotation flags of `secret put`.
#[derive(Debug, Clone, Default)]
pub struct RotationFlags {
    pub every: Option<i64>,
    pub grace: Option<i64>,
    pub length: Option<usize>,
    /// `--no-rotation`: remove the policy.
    pub none: bool,
}

impl RotationFlags {
    /// The change these flags ask for. `--grace` and `--rotate-length` alone adjust the current
    /// policy (`current`), which must exist.
    pub fn change(&self, current: Option<&RotationPolicy>) -> Result<RotationChange, String> {
        if self.none {
            if self.every.is_some() || self.grace.is_some() || self.length.is_some() {
                return Err("--no-rotation cannot be combined with --rotate-every, --grace or --rotate-length".into());
            }
            return Ok(RotationChange::Remove);
        }
        if self.every.is_none() && self.grace.is_none() && self.length.is_none() {
            return Ok(RotationChange::Keep);
        }
        let interval_seconds = self
            .every
            .or(current.map(|p| p.interval_seconds))
            .ok_or("--grace and --rotate-length need --rotate-every (the secret has no policy)")?;
        let generator = match (self.length, current.map(|p| &p.generator)) {
            (Some(length), Some(SecretGenerator::Random { alphabet, .. })) => SecretGenerator::Random {
                length,
                alphabet: *alphabet,
            },
            (Some(length), _) => SecretGenerator::Random {
                length,
                alphabet: Alphabet::Alphanumeric,
            },
            (None, Some(generator)) => generator.clone(),
            (None, None) => SecretGenerator::Random {
                length: 40,
                alphabet: Alphabet::Alphanumeric,
            },
        };
        let policy = RotationPolicy {
            interval_seconds,
            grace_seconds: self.grace.or(current.map(|p| p.grace_seconds)).unwrap_or(3600),
            generator,
        };
        if let Some(problem) = policy.problem() {
            return Err(problem.into());
        }
        Ok(RotationChange::Set(policy))
    }
}

/// `secret put` as the operator typed it: `None` means "keep" (or "required" for a new secret).
pub struct SecretPut {
    pub id: String,
    pub owner: Option<String>,
    pub environment: Option<String>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
    pub rotation: RotationFlags,
    pub value: Option<SecretValue>,
}

fn problem(path: &str, message: impl Into<String>) -> Problem {
    Problem {
        path: path.into(),
        message: message.into(),
    }
}

impl SecretPut {
    /// Everything checkable without AWS, and the value itself (read here, before any write).
    fn check(&self) -> Result<Option<SecretString>, Vec<Problem>> {
        let mut problems = Vec::new();
        if self.id.is_empty()
            || self.id.len() > 512
            || self.id.contains('#')
            || self.id.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            problems.push(problem(
                "id",
                "a secret id is 1 to 512 characters without #, spaces or control characters",
            ));
        }
        for (flag, value, max) in [
            ("--owner", &self.owner, 256),
            ("--description", &self.description, 2048),
        ] {
            if let Some(value) = value
                && (value.len() > max
                    || value.chars().any(char::is_control)
                    || (flag == "--owner" && value.trim().is_empty()))
            {
                problems.push(problem(
                    flag,
                    format!("1 to {max} characters without control characters"),
                ));
            }
        }
        if let Some(environment) = &self.environment
            && (environment.is_empty()
                || environment.len() > 64
                || !environment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
        {
            problems.push(problem(
                "--environment",
                "an environment is 1 to 64 of A-Z a-z 0-9 - _ .",
            ));
        }
        // A new interval is checked with the other flags (defaults for those omitted) up front;
        // adjustments of an existing policy are checked once it is read.
        if (self.rotation.none || self.rotation.every.is_some())
            && let Err(e) = self.rotation.change(None)
        {
            problems.push(problem("--rotate-every", e));
        }
        let value = match &self.value {
            None => None,
            Some(source) => match read_value(source) {
                Ok(value) => Some(value),
                Err(message) => {
                    problems.push(problem(
                        match source {
                            SecretValue::File(_) => "--value-file",
                            SecretValue::Stdin => "--value-stdin",
                            SecretValue::Generate(_) => "--generate",
                        },
                        message,
                    ));
                    None
                }
            },
        };
        if problems.is_empty() { Ok(value) } else { Err(problems) }
    }
}

fn read_value(source: &SecretValue) -> Result<SecretString, String> {
    let raw = match source {
        SecretValue::File(path) => {
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {}", e.kind()))?
        }
        SecretValue::Stdin => {
            let mut raw = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut raw)
                .map_err(|e| format!("cannot read stdin: {}", e.kind()))?;
            raw
        }
        SecretValue::Generate(length) => {
            if !(16..=MAX_VALUE_BYTES).contains(length) {
                return Err(format!("a generated value is 16 to {MAX_VALUE_BYTES} characters long"));
            }
            return nhi_broker::rotation::random_secret(*length, Alphabet::Alphanumeric)
                .map_err(|_| "the random source failed".to_string());
        }
    };
    let value = SecretString::new(raw.trim_end_matches(['\r', '\n']).to_string());
    if value.is_empty() {
        return Err("the secret value is empty".into());
    }
    if value.expose().len() > MAX_VALUE_BYTES {
        return Err(format!(
            "the secret value is longer than {MAX_VALUE_BYTES} bytes (the KMS limit)"
        ));
    }
    Ok(value)
}

impl Ctl {
    /// Create a secret with its first value, or update an existing one's metadata. See the module doc.
    pub async fn put_secret(&self, put: SecretPut) -> CliResult<Report> {
        let value = put.check().map_err(|p| refuse("secret put", &p))?;
        let item = self.reads.secret(&put.id).await?;
        match item {
            None => self.create_secret(put, value).await,
            Some(item) => self.update_secret(put, value, item).await,
        }
    }

    async fn create_secret(&self, put: SecretPut, value: Option<SecretString>) -> CliResult<Report> {
        let mut problems = Vec::new();
        if let Some(p) = id_problem(&put.id) {
            problems.push(problem("id", p));
        }
        if put.owner.is_none() {
            problems.push(problem("--owner", "a new secret needs an owner"));
        }
        if put.environment.is_none() {
            problems.push(problem("--environment", "a new secret needs an environment"));
        }
        if value.is_none() {
            problems.push(problem(
                "value",
                "a new secret needs its first value: --value-stdin, --value-file PATH or --generate LENGTH",
            ));
        }
        if put.rotation.none {
            problems.push(problem("--no-rotation", "a new secret has no policy to remove"));
        }
        let rotation = match put.rotation.change(None) {
            Ok(RotationChange::Set(policy)) => Some(policy),
            Ok(_) => None,
            Err(e) => {
                problems.push(problem("--rotate-every", e));
                None
            }
        };
        let (Some(owner), Some(environment), Some(value), true) =
            (put.owner, put.environment, value, problems.is_empty())
        else {
            return Err(refuse("secret put", &problems));
        };
        let secret = Secret {
            id: put.id,
            owner,
            environment,
            enabled: put.enabled.unwrap_or(true),
            description: put.description.unwrap_or_default(),
            rotation,
        };
        let (version, ciphertext) = self.encrypt(&secret, &value).await?;
        let mut write = RegistryWrite::new(&self.tables.registry);
        write.create_secret(&secret, &version, ciphertext, self.now)?;
        self.commit_secret(
            write,
            &secret.id,
            format!("secret put: created with first version {version}"),
        )
        .await?;
        Ok(Report::new(
            format!(
                "secret {} stored with first version {version} (value not shown)",
                secret.id
            ),
            json!({ "secret": secret, "version": version, "created": true }),
        ))
    }

    async fn update_secret(&self, put: SecretPut, value: Option<SecretString>, item: Item) -> CliResult<Report> {
        let has_value = !attr(&item, "current_version").is_empty();
        let rotating = !attr(&item, "pending_version").is_empty();
        let expect = Expect::from_read(Some(&item));
        let revoked = item.get("revoked").and_then(|v| v.as_bool().ok()) == Some(&true);
        let old: Secret = from_item(item, "secret")?;
        let mut problems = Vec::new();
        if revoked && put.enabled == Some(true) {
            problems.push(problem(
                "--enabled",
                format!(
                    "secret {} was revoked: a revoked secret is never re-enabled (register a new one)",
                    old.id
                ),
            ));
        }
        if let Some(environment) = &put.environment
            && environment != &old.environment
        {
            problems.push(problem(
                "--environment",
                format!(
                    "secret {} is in environment {:?}, part of every version's encryption context: it never \
                     changes (register a new secret for {environment:?})",
                    old.id, old.environment
                ),
            ));
        }
        let rotation = match put.rotation.change(old.rotation.as_ref()) {
            Ok(change) => change,
            Err(e) => {
                problems.push(problem("--rotate-every", e));
                RotationChange::Keep
            }
        };
        if rotation == RotationChange::Remove && rotating {
            problems.push(problem(
                "--no-rotation",
                "a rotation is in progress; remove the policy once it has finished",
            ));
        }
        if !problems.is_empty() {
            return Err(refuse("secret put", &problems));
        }
        if value.is_some() && (has_value || rotating) {
            return Err(CliError {
                message: format!(
                    "secret {} already has a value (or a rotation in progress); new values come from `brokerctl rotate {}`; nothing was written",
                    old.id, old.id
                ),
                code: 1,
            });
        }
        let secret = Secret {
            id: old.id.clone(),
            owner: put.owner.unwrap_or_else(|| old.owner.clone()),
            environment: old.environment.clone(),
            enabled: put.enabled.unwrap_or(old.enabled),
            description: put.description.unwrap_or_else(|| old.description.clone()),
            rotation: match &rotation {
                RotationChange::Keep => old.rotation.clone(),
                RotationChange::Set(policy) => Some(policy.clone()),
                RotationChange::Remove => None,
            },
        };
        let changed = crate::apply::diff("secret", &secret.id, Some(to_json(&old)), &to_json(&secret));
        if changed.action == "unchanged" && value.is_none() {
            return Ok(Report::new(
                format!("secret {} unchanged", secret.id),
                json!({ "secret": secret, "changed": false }),
            ));
        }
        let first = match &value {
            Some(value) => Some(self.encrypt(&secret, value).await?),
            None => None,
        };
        let mut write = RegistryWrite::new(&self.tables.registry);
        write.update_secret(
            &secret,
            &rotation,
            first.as_ref().map(|(v, c)| (v.as_str(), c.clone())),
            expect,
            self.now,
        )?;
        let mut summary = changed.fields.clone();
        if let Some((version, _)) = &first {
            summary.push(format!("first version {version}"));
        }
        self.commit_secret(write, &secret.id, format!("secret put: {}", summary.join("; ")))
            .await?;
        let version = first.map(|(v, _)| v);
        let mut text = format!("secret {} updated", secret.id);
        for field in &changed.fields {
            text.push_str(&format!("\n    {field}"));
        }
        if let Some(version) = &version {
            text.push_str(&format!("\nfirst version {version} stored (value not shown)"));
        }
        Ok(Report::new(
            text,
            json!({ "secret": secret, "version": version, "changed": changed.fields }),
        ))
    }

    async fn encrypt(&self, secret: &Secret, value: &SecretString) -> CliResult<(String, Vec<u8>)> {
        let key =
            self.tables.secrets_key_id.as_deref().ok_or_else(|| {
                CliError::usage("NHI_SECRETS_KEY_ID (or --secrets-key-id) is needed to store a value")
            })?;
        let version = format!("v-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        let cipher = nhi_broker::aws::kms::KmsSecretCipher::new(self.kms.clone(), key);
        let ciphertext = cipher
            .encrypt(
                value,
                &secret_encryption_context(&secret.id, &version, &secret.environment),
            )
            .await?;
        Ok((version, ciphertext))
    }

    async fn commit_secret(&self, write: RegistryWrite, id: &str, reason: String) -> CliResult<()> {
        let event = AuditEvent {
            actor_subject: Some(self.actor()),
            target: Some(format!("secret:{id}")),
            reason: Some(reason),
            ..AuditEvent::new(AuditAction::Register, AuditOutcome::Applied, self.now)
        };
        write.commit(&self.ledger, &event).await.map_err(|refused| match refused {
            WriteRefused::Changed(_) => CliError {
                message: format!(
                    "secret {id} changed while this command ran (another operator, or a rotation started): nothing was written; run it again"
                ),
                code: 1,
            },
            WriteRefused::Failed(e) => CliError::from(e),
        })
    }

    /// Ask rotate to rotate one secret now. Refused up front when rotate would skip it; with
    /// `wait`, report the outcome: the new version (exit 0), the failure rotate noted (exit 1),
    /// or nothing within `timeout` (exit 6).
    pub async fn rotate(&self, secret_id: &str, wait: Option<Duration>) -> CliResult<Report> {
        let item = self.reads.secret(secret_id).await?.ok_or_else(|| CliError {
            message: format!("no secret with id {secret_id:?}"),
            code: 1,
        })?;
        let before = attr(&item, "current_version").to_string();
        let secret: Secret = from_item(item, "secret")?;
        let cannot = |why: String| CliError {
            message: format!("secret {secret_id} cannot rotate: {why}; nothing was requested"),
            code: 1,
        };
        match &secret.rotation {
            None => {
                return Err(cannot(format!(
                    "it has no rotation policy (give it one: brokerctl secret put {secret_id} --rotate-every SECONDS)"
                )));
            }
            Some(policy) => {
                if let Some(problem) = policy.problem() {
                    return Err(cannot(problem.into()));
                }
            }
        }
        if !secret.enabled {
            return Err(cannot("it is disabled".into()));
        }
        let requested_at = nhi_broker::ports::Clock::now(&nhi_broker::ports::SystemClock);
        let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
            .event_bus_name(&self.tables.event_bus)
            .source("nhi-broker.operator")
            .detail_type(nhi_broker::jobs::ROTATE_SECRET_DETAIL_TYPE)
            .detail(json!({ "secret_id": secret_id, "requested_by": self.actor() }).to_string())
            .build();
        let output = self
            .eventbridge
            .put_events()
            .entries(entry)
            .send()
            .await
            .map_err(|e| BrokerError::aws("events", "PutEvents", &e))?;
        if output.failed_entry_count() > 0 {
            return Err(CliError {
                message: "EventBridge refused the rotation event".into(),
                code: 1,
            });
        }
        let Some(timeout) = wait else {
            return Ok(Report::new(
                format!(
                    "rotation of {secret_id} requested (rotate runs it now; `brokerctl rotate {secret_id} --wait` waits for the outcome)"
                ),
                json!({ "secret_id": secret_id, "requested": true, "previous_version": before }),
            ));
        };
        let started = Instant::now();
        loop {
            let item = self.reads.secret(secret_id).await?.ok_or_else(|| CliError {
                message: format!("secret {secret_id} disappeared while rotating"),
                code: 1,
            })?;
            let current = attr(&item, "current_version");
            if current != before && attr(&item, "pending_version").is_empty() {
                return Ok(Report::new(
                    format!("secret {secret_id} rotated: {before} -> {current}"),
                    json!({ "secret_id": secret_id, "rotated": true, "previous_version": before, "current_version": current }),
                ));
            }
            let failed_at = item
                .get("rotation_failed_at")
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse::<i64>().ok());
            if failed_at.is_some_and(|at| at >= requested_at) {
                let failure = attr(&item, "rotation_failure");
                return Err(CliError {
                    message: format!("rotation of {secret_id} failed: {failure} (still {before})"),
                    code: 1,
                });
            }
            if started.elapsed() >= timeout {
                return Err(CliError {
                    message: format!(
                        "rotation of {secret_id} did not finish within {} s (still {before}); rotate may still \
                         finish it: check `brokerctl inventory {secret_id}` and rotate's logs",
                        timeout.as_secs()
                    ),
                    code: 6,
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(every: i64, grace: i64, length: usize) -> RotationPolicy {
        RotationPolicy {
            interval_seconds: every,
            grace_seconds: grace,
            generator: SecretGenerator::Random {
                length,
                alphabet: Alphabet::Alphanumeric,
            },
        }
    }

    #[test]
    fn omitted_rotation_flags_keep_the_policy_and_removal_is_explicit() {
        let current = policy(86_400, 600, 32);
        assert_eq!(
            RotationFlags::default().change(Some(&current)),
            Ok(RotationChange::Keep)
        );
        let none = RotationFlags {
            none: true,
            ..Default::default()
        };
        assert_eq!(none.change(Some(&current)), Ok(RotationChange::Remove));
        let grace_only = RotationFlags {
            grace: Some(60),
            ..Default::default()
        };
        assert_eq!(
            grace_only.change(Some(&current)),
            Ok(RotationChange::Set(policy(86_400, 60, 32)))
        );
        assert!(grace_only.change(None).is_err());
        let fresh = RotationFlags {
            every: Some(3600),
            ..Default::default()
        };
        assert_eq!(fresh.change(None), Ok(RotationChange::Set(policy(3600, 3600, 40))));
        let too_fast = RotationFlags {
            every: Some(5),
            ..Default::default()
        };
        assert!(too_fast.change(None).is_err());
    }

    #[test]
    fn values_are_read_and_checked_before_anything_is_written() {
        assert_eq!(
            read_value(&SecretValue::Generate(0)).unwrap_err(),
            "a generated value is 16 to 4096 characters long"
        );
        assert!(
            read_value(&SecretValue::File("/nonexistent/value".into()))
                .unwrap_err()
                .starts_with("cannot read")
        );
        let empty = std::env::temp_dir().join(format!("empty-{}", uuid::Uuid::new_v4()));
        std::fs::write(&empty, "\n").unwrap();
        assert_eq!(
            read_value(&SecretValue::File(empty.to_string_lossy().into())).unwrap_err(),
            "the secret value is empty"
        );
        assert_eq!(read_value(&SecretValue::Generate(32)).unwrap().expose().len(), 32);
    }
}
