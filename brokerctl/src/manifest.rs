//! Manifests: what `apply` makes the registry match. Checked in two phases, each reporting every
//! problem it finds with its manifest path (`grants[3].targets[1]: ...`):
//! 1. `Manifest::parse` + `Manifest::problems`: the document alone (shape, unknown fields,
//!    duplicates, id charset and lengths, field sizes, TTL bounds as the exchange enforces them,
//!    URLs, approvals in the past). No AWS call is made before this phase passes.
//! 2. `Manifest::reference_problems`: what the document names in the registry (issuers, targets,
//!    secrets, destinations that must exist; environments that must agree; revoked grants).

use crate::CliError;
use nhi_broker::domain::{
    Destination, DestinationKind, Grant, GrantStatus, INTROSPECTION_TARGET, Issuer, JwksSource,
    STS_MAX_SESSION_SECONDS, STS_MIN_SESSION_SECONDS, Target, TargetKind,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Largest grant TTL the exchange can honour (its `NHI_MAX_TOKEN_TTL_SECONDS` ceiling).
pub const MAX_GRANT_TTL_SECONDS: i64 = 43_200;
/// Ids of grants, destinations and secrets.
pub const MAX_ID_LEN: usize = 256;
/// Target ids (audiences, role ARNs), as the exchange accepts them in a request.
pub const MAX_TARGET_ID_LEN: usize = 2048;
pub const MAX_SUBJECT_LEN: usize = 1024;
pub const MAX_TEXT_LEN: usize = 2048;
pub const MAX_SESSION_POLICY_LEN: usize = 2048;
pub const MAX_STATIC_JWKS_LEN: usize = 64 * 1024;
pub const MAX_DESTINATION_SECRETS: usize = 90;
const MAX_LIST: usize = 64;

/// One thing wrong with a manifest (or a command's input), where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Problems as one usage error (exit 2), listed in order.
pub fn refuse(what: &str, problems: &[Problem]) -> CliError {
    let mut message = format!("{what}: {} problem(s), nothing was written", problems.len());
    for problem in problems {
        message.push_str(&format!("\n  {problem}"));
    }
    CliError::usage(message)
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IssuerSpec {
    pub issuer: String,
    pub name: String,
    pub audiences: Vec<String>,
    pub jwks: JwksSpec,
    pub algorithms: Vec<String>,
    pub enabled: bool,
    #[serde(default)]
    pub one_time_jti: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum JwksSpec {
    Url { url: String },
    Static { jwks: String },
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    pub id: String,
    pub kind: TargetKind,
    pub environment: String,
    pub owner: String,
    pub enabled: bool,
}

/// A grant as written in a manifest: no status or creation time (the broker keeps those).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GrantSpec {
    pub id: String,
    pub issuer: String,
    pub subject: String,
    #[serde(default)]
    pub claims: BTreeMap<String, Vec<String>>,
    pub environment: String,
    pub targets: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub max_ttl_seconds: i64,
    #[serde(default)]
    pub session_policy: Option<String>,
    /// RFC 3339 or epoch seconds.
    pub approval_expires_at: Value,
    pub owner: String,
    pub justification: String,
    #[serde(default)]
    pub delivers_to: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DestinationSpec {
    pub id: String,
    pub kind: DestinationKindSpec,
    pub secrets: Vec<String>,
    pub owner: String,
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum DestinationKindSpec {
    Webhook { url: String },
    EventBridge { event_bus_arn: String },
}

impl From<&IssuerSpec> for Issuer {
    fn from(spec: &IssuerSpec) -> Self {
        Issuer {
            issuer: spec.issuer.clone(),
            name: spec.name.clone(),
            audiences: spec.audiences.clone(),
            jwks: match &spec.jwks {
                JwksSpec::Url { url } => JwksSource::Url { url: url.clone() },
                JwksSpec::Static { jwks } => JwksSource::Static { jwks: jwks.clone() },
            },
            algorithms: spec.algorithms.clone(),
            enabled: spec.enabled,
            one_time_jti: spec.one_time_jti,
        }
    }
}

impl From<&Issuer> for IssuerSpec {
    fn from(issuer: &Issuer) -> Self {
        IssuerSpec {
            issuer: issuer.issuer.clone(),
            name: issuer.name.clone(),
            audiences: issuer.audiences.clone(),
            jwks: match &issuer.jwks {
                JwksSource::Url { url } => JwksSpec::Url { url: url.clone() },
                JwksSource::Static { jwks } => JwksSpec::Static { jwks: jwks.clone() },
            },
            algorithms: issuer.algorithms.clone(),
            enabled: issuer.enabled,
            one_time_jti: issuer.one_time_jti,
        }
    }
}

impl From<&TargetSpec> for Target {
    fn from(spec: &TargetSpec) -> Self {
        Target {
            id: spec.id.clone(),
            kind: spec.kind,
            environment: spec.environment.clone(),
            owner: spec.owner.clone(),
            enabled: spec.enabled,
        }
    }
}

impl From<&DestinationSpec> for Destination {
    fn from(spec: &DestinationSpec) -> Self {
        Destination {
            id: spec.id.clone(),
            kind: match &spec.kind {
                DestinationKindSpec::Webhook { url } => DestinationKind::Webhook { url: url.clone() },
                DestinationKindSpec::EventBridge { event_bus_arn } => DestinationKind::EventBridge {
                    event_bus_arn: event_bus_arn.clone(),
                },
            },
            secrets: spec.secrets.clone(),
            owner: spec.owner.clone(),
            enabled: spec.enabled,
        }
    }
}

impl GrantSpec {
    /// The grant this spec describes (active; `created_at` kept from the stored one).
    pub fn to_grant(&self, created_at: i64) -> Result<Grant, String> {
        Ok(Grant {
            id: self.id.clone(),
            issuer: self.issuer.clone(),
            subject: self.subject.clone(),
            claims: self.claims.clone(),
            environment: self.environment.clone(),
            targets: self.targets.clone(),
            scopes: self.scopes.clone(),
            max_ttl_seconds: self.max_ttl_seconds,
            session_policy: self.session_policy.clone(),
            approval_expires_at: approval_time(&self.approval_expires_at)?,
            owner: self.owner.clone(),
            justification: self.justification.clone(),
            status: GrantStatus::Active,
            created_at,
            delivers_to: self.delivers_to.clone(),
        })
    }
}

fn approval_time(value: &Value) -> Result<i64, String> {
    match value {
        Value::Number(n) => n.as_i64().ok_or_else(|| "must be whole epoch seconds".to_string()),
        Value::String(s) => crate::parse_time(s).map_err(|e| e.message),
        _ => Err("must be RFC 3339 or epoch seconds".into()),
    }
}

/// A manifest that can live in git: `brokerctl apply -f FILE` makes the registry match it.
#[derive(Debug, Default, Clone)]
pub struct Manifest {
    pub issuers: Vec<IssuerSpec>,
    pub targets: Vec<TargetSpec>,
    pub grants: Vec<GrantSpec>,
    pub destinations: Vec<DestinationSpec>,
}

const SECTIONS: [&str; 4] = ["issuers", "targets", "grants", "destinations"];

impl Manifest {
    /// Parse YAML (or JSON for `.json`), entry by entry, so every malformed entry is reported.
    pub fn parse(text: &str, path: &str) -> Result<Self, Vec<Problem>> {
        let document: Result<Value, String> = if path.ends_with(".json") {
            serde_json::from_str(text).map_err(|e| e.to_string())
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
        };
        let document = document.map_err(|e| {
            vec![Problem {
                path: path.into(),
                message: e,
            }]
        })?;
        let mut problems = Vec::new();
        let mut manifest = Manifest::default();
        let sections = match document {
            Value::Object(map) => map,
            Value::Null => Default::default(),
            _ => {
                return Err(vec![Problem {
                    path: path.into(),
                    message: format!("a manifest is a mapping of {}", SECTIONS.join(", ")),
                }]);
            }
        };
        for (key, value) in sections {
            match key.as_str() {
                "issuers" => manifest.issuers = entries(&key, value, &mut problems),
                "targets" => manifest.targets = entries(&key, value, &mut problems),
                "grants" => manifest.grants = entries(&key, value, &mut problems),
                "destinations" => manifest.destinations = entries(&key, value, &mut problems),
                other => problems.push(Problem {
                    path: other.into(),
                    message: format!("unknown section (expected one of {})", SECTIONS.join(", ")),
                }),
            }
        }
        if problems.is_empty() {
            Ok(manifest)
        } else {
            Err(problems)
        }
    }

    pub fn len(&self) -> usize {
        self.issuers.len() + self.targets.len() + self.grants.len() + self.destinations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Everything wrong with the document on its own (phase 1: no AWS call).
    pub fn problems(&self, now: i64) -> Vec<Problem> {
        let mut p = Problems::default();
        duplicates(
            &mut p,
            "issuers",
            "issuer",
            self.issuers.iter().map(|i| i.issuer.as_str()),
        );
        duplicates(&mut p, "targets", "id", self.targets.iter().map(|t| t.id.as_str()));
        duplicates(&mut p, "grants", "id", self.grants.iter().map(|g| g.id.as_str()));
        duplicates(
            &mut p,
            "destinations",
            "id",
            self.destinations.iter().map(|d| d.id.as_str()),
        );
        for (i, issuer) in self.issuers.iter().enumerate() {
            check_issuer(&mut p, &format!("issuers[{i}]"), issuer);
        }
        for (i, target) in self.targets.iter().enumerate() {
            check_target(&mut p, &format!("targets[{i}]"), target);
        }
        for (i, grant) in self.grants.iter().enumerate() {
            check_grant(&mut p, &format!("grants[{i}]"), grant, now);
        }
        for (i, destination) in self.destinations.iter().enumerate() {
            check_destination(&mut p, &format!("destinations[{i}]"), destination);
        }
        p.0
    }

    /// Phase 2: what the manifest names must exist (in the manifest or the registry) and agree.
    pub fn reference_problems(&self, registry: &Known) -> Vec<Problem> {
        let mut p = Problems::default();
        let issuers: BTreeSet<&str> = self.issuers.iter().map(|i| i.issuer.as_str()).collect();
        let targets: BTreeMap<&str, (&str, TargetKind)> = self
            .targets
            .iter()
            .map(|t| (t.id.as_str(), (t.environment.as_str(), t.kind)))
            .collect();
        let destinations: BTreeSet<&str> = self.destinations.iter().map(|d| d.id.as_str()).collect();
        for (i, grant) in self.grants.iter().enumerate() {
            let at = format!("grants[{i}]");
            if registry.revoked_grants.contains(&grant.id) {
                p.push(
                    format!("{at}.id"),
                    format!(
                        "grant {} is revoked; a revoked grant is never revived: give the new grant a new id",
                        grant.id
                    ),
                );
            }
            if !issuers.contains(grant.issuer.as_str()) && !registry.issuers.contains(&grant.issuer) {
                p.push(
                    format!("{at}.issuer"),
                    format!("no issuer {:?} (register it first)", grant.issuer),
                );
            }
            for (j, target) in grant.targets.iter().enumerate() {
                if target == INTROSPECTION_TARGET {
                    continue;
                }
                let found = targets
                    .get(target.as_str())
                    .map(|(env, kind)| (env.to_string(), *kind))
                    .or_else(|| registry.targets.get(target).cloned());
                match found {
                    None => p.push(format!("{at}.targets[{j}]"), format!("no target or secret {target:?}")),
                    Some((environment, kind)) => {
                        if environment != grant.environment {
                            p.push(
                                format!("{at}.targets[{j}]"),
                                format!(
                                    "{target} is in environment {environment:?}, the grant is for {:?}: it would never match",
                                    grant.environment
                                ),
                            );
                        }
                        if kind == TargetKind::AwsRole
                            && !(STS_MIN_SESSION_SECONDS..=STS_MAX_SESSION_SECONDS).contains(&grant.max_ttl_seconds)
                        {
                            p.push(
                                format!("{at}.max_ttl_seconds"),
                                format!(
                                    "{target} is an AWS role: STS sessions last {STS_MIN_SESSION_SECONDS} to {STS_MAX_SESSION_SECONDS} seconds"
                                ),
                            );
                        }
                    }
                }
            }
            if let Some(destination) = &grant.delivers_to
                && !destinations.contains(destination.as_str())
                && !registry.destinations.contains(destination)
            {
                p.push(format!("{at}.delivers_to"), format!("no destination {destination:?}"));
            }
        }
        for (i, destination) in self.destinations.iter().enumerate() {
            for (j, secret) in destination.secrets.iter().enumerate() {
                if !registry.secrets.contains(secret) {
                    p.push(
                        format!("destinations[{i}].secrets[{j}]"),
                        format!("no secret {secret:?} (register it with `brokerctl secret put`)"),
                    );
                }
            }
        }
        p.0
    }
}

/// What the registry holds, as far as references need to know.
#[derive(Debug, Default)]
pub struct Known {
    pub issuers: BTreeSet<String>,
    /// Target and secret ids with their environment and kind.
    pub targets: BTreeMap<String, (String, TargetKind)>,
    pub secrets: BTreeSet<String>,
    pub destinations: BTreeSet<String>,
    pub revoked_grants: BTreeSet<String>,
}

fn entries<T: DeserializeOwned>(section: &str, value: Value, problems: &mut Vec<Problem>) -> Vec<T> {
    let Value::Array(items) = value else {
        if !value.is_null() {
            problems.push(Problem {
                path: section.into(),
                message: "must be a list".into(),
            });
        }
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        match serde_json::from_value::<T>(item) {
            Ok(entry) => out.push(entry),
            Err(e) => problems.push(Problem {
                path: format!("{section}[{i}]"),
                message: e.to_string(),
            }),
        }
    }
    out
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, path: String, message: impl Into<String>) {
        self.0.push(Problem {
            path,
            message: message.into(),
        });
    }

    /// A required text field of 1..=max characters without control characters.
    fn text(&mut self, path: String, value: &str, max: usize) {
        if value.trim().is_empty() {
            self.push(path, "is required");
        } else if value.len() > max {
            self.push(path, format!("is {} bytes long; at most {max}", value.len()));
        } else if value.chars().any(char::is_control) {
            self.push(path, "contains control characters");
        }
    }

    /// A grant, destination or secret id.
    fn id(&mut self, path: String, value: &str) {
        if let Some(problem) = id_problem(value) {
            self.push(path, problem);
        }
    }

    fn environment(&mut self, path: String, value: &str) {
        if value.is_empty()
            || value.len() > 64
            || !value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            self.push(path, "an environment is 1 to 64 of A-Z a-z 0-9 - _ .");
        }
    }

    fn list(&mut self, path: String, len: usize, min: usize, max: usize) {
        if len < min || len > max {
            self.push(path, format!("needs {min} to {max} entries, has {len}"));
        }
    }
}

/// Why `value` cannot be a grant, destination or secret id (keys and `<secret>#<version>` names
/// are built from them, so `#`, spaces and control characters are out).
pub fn id_problem(value: &str) -> Option<String> {
    if value.is_empty() || value.len() > MAX_ID_LEN {
        return Some(format!("an id is 1 to {MAX_ID_LEN} characters"));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:/@+=,".contains(c))
    {
        return Some("an id uses only A-Z a-z 0-9 and - _ . : / @ + = ,".into());
    }
    None
}

fn target_id_problem(value: &str) -> Option<String> {
    if value.is_empty() || value.len() > MAX_TARGET_ID_LEN {
        return Some(format!("a target id is 1 to {MAX_TARGET_ID_LEN} characters"));
    }
    if value.contains('#') || !value.chars().all(|c| c.is_ascii_graphic()) {
        return Some("a target id is printable ASCII without spaces or #".into());
    }
    None
}

fn duplicates<'a>(p: &mut Problems, section: &str, field: &str, ids: impl Iterator<Item = &'a str>) {
    let mut first: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, id) in ids.enumerate() {
        match first.get(id) {
            Some(j) => p.push(
                format!("{section}[{i}].{field}"),
                format!("{id:?} is also {section}[{j}]: each id once"),
            ),
            None => {
                first.insert(id, i);
            }
        }
    }
}

pub fn check_issuer_spec(issuer: &IssuerSpec) -> Vec<Problem> {
    let mut p = Problems::default();
    check_issuer(&mut p, "issuer", issuer);
    p.0
}

fn check_issuer(p: &mut Problems, at: &str, issuer: &IssuerSpec) {
    if issuer.issuer.len() > MAX_TARGET_ID_LEN
        || issuer.issuer.contains('#')
        || !nhi_broker::domain::is_allowed_url(&issuer.issuer)
    {
        p.push(
            format!("{at}.issuer"),
            "an issuer is an https URL without # (http only for loopback)",
        );
    }
    p.text(format!("{at}.name"), &issuer.name, 128);
    p.list(format!("{at}.audiences"), issuer.audiences.len(), 1, 16);
    for (j, audience) in issuer.audiences.iter().enumerate() {
        p.text(format!("{at}.audiences[{j}]"), audience, 512);
    }
    match &issuer.jwks {
        JwksSpec::Url { url } => {
            if !nhi_broker::domain::is_allowed_url(url) {
                p.push(
                    format!("{at}.jwks.url"),
                    "the JWKS URL must be https (http only for loopback)",
                );
            }
        }
        JwksSpec::Static { jwks } => {
            let keys = serde_json::from_str::<Value>(jwks)
                .ok()
                .and_then(|v| v.get("keys").and_then(|k| k.as_array()).map(|k| k.len()));
            if jwks.len() > MAX_STATIC_JWKS_LEN {
                p.push(
                    format!("{at}.jwks.jwks"),
                    format!("at most {MAX_STATIC_JWKS_LEN} bytes"),
                );
            } else if keys.is_none_or(|n| n == 0) {
                p.push(format!("{at}.jwks.jwks"), "must be a JWK Set with at least one key");
            }
        }
    }
    p.list(format!("{at}.algorithms"), issuer.algorithms.len(), 1, 8);
    for (j, alg) in issuer.algorithms.iter().enumerate() {
        if !nhi_broker::exchange::subject_token::ALLOWED_ALGS.contains(&alg.as_str()) {
            p.push(
                format!("{at}.algorithms[{j}]"),
                format!(
                    "{alg} is not allowed (asymmetric only: {})",
                    nhi_broker::exchange::subject_token::ALLOWED_ALGS.join(", ")
                ),
            );
        }
    }
}

pub fn check_target_spec(target: &TargetSpec) -> Vec<Problem> {
    let mut p = Problems::default();
    check_target(&mut p, "target", target);
    p.0
}

fn check_target(p: &mut Problems, at: &str, target: &TargetSpec) {
    if let Some(problem) = target_id_problem(&target.id) {
        p.push(format!("{at}.id"), problem);
    }
    if target.id == INTROSPECTION_TARGET {
        p.push(
            format!("{at}.id"),
            "is reserved (grants name it without registering it)",
        );
    }
    match target.kind {
        TargetKind::Secret => p.push(
            format!("{at}.kind"),
            "secrets are registered with `brokerctl secret put`",
        ),
        TargetKind::AwsRole if !is_role_arn(&target.id) => p.push(
            format!("{at}.id"),
            "an aws_role target is an IAM role ARN (arn:aws:iam::123456789012:role/NAME)",
        ),
        _ => {}
    }
    p.environment(format!("{at}.environment"), &target.environment);
    p.text(format!("{at}.owner"), &target.owner, 256);
}

fn is_role_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    matches!(parts.as_slice(), ["arn", partition, "iam", "", account, resource]
        if partition.starts_with("aws")
            && account.len() == 12
            && account.chars().all(|c| c.is_ascii_digit())
            && resource.strip_prefix("role/").is_some_and(|name| !name.is_empty()))
}

fn check_grant(p: &mut Problems, at: &str, grant: &GrantSpec, now: i64) {
    p.id(format!("{at}.id"), &grant.id);
    if !nhi_broker::domain::is_allowed_url(&grant.issuer) {
        p.push(format!("{at}.issuer"), "an issuer is an https URL");
    }
    p.text(format!("{at}.subject"), &grant.subject, MAX_SUBJECT_LEN);
    if grant.claims.len() > 32 {
        p.push(format!("{at}.claims"), "at most 32 claim conditions");
    }
    for (name, values) in &grant.claims {
        p.text(format!("{at}.claims.{name}"), name, 256);
        p.list(format!("{at}.claims.{name}"), values.len(), 1, MAX_LIST);
        for (j, value) in values.iter().enumerate() {
            if value.len() > MAX_SUBJECT_LEN {
                p.push(
                    format!("{at}.claims.{name}[{j}]"),
                    format!("at most {MAX_SUBJECT_LEN} bytes"),
                );
            }
        }
    }
    p.environment(format!("{at}.environment"), &grant.environment);
    p.list(format!("{at}.targets"), grant.targets.len(), 1, 32);
    let mut seen = BTreeSet::new();
    for (j, target) in grant.targets.iter().enumerate() {
        if let Some(problem) = target_id_problem(target) {
            p.push(format!("{at}.targets[{j}]"), problem);
        } else if !seen.insert(target) {
            p.push(format!("{at}.targets[{j}]"), format!("{target} is listed twice"));
        }
    }
    if grant.scopes.len() > MAX_LIST {
        p.push(format!("{at}.scopes"), format!("at most {MAX_LIST} scopes"));
    }
    for (j, scope) in grant.scopes.iter().enumerate() {
        // RFC 6749 section 3.3 scope-token.
        let valid = !scope.is_empty()
            && scope.len() <= 256
            && scope
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if !valid {
            p.push(
                format!("{at}.scopes[{j}]"),
                "a scope is 1 to 256 printable characters without spaces, quotes or backslashes",
            );
        }
    }
    if !(1..=MAX_GRANT_TTL_SECONDS).contains(&grant.max_ttl_seconds) {
        p.push(
            format!("{at}.max_ttl_seconds"),
            format!("must be 1 to {MAX_GRANT_TTL_SECONDS} seconds (the exchange never issues longer)"),
        );
    }
    if let Some(policy) = &grant.session_policy {
        if policy.len() > MAX_SESSION_POLICY_LEN {
            p.push(
                format!("{at}.session_policy"),
                format!("at most {MAX_SESSION_POLICY_LEN} characters (the STS limit)"),
            );
        } else if !serde_json::from_str::<Value>(policy).is_ok_and(|v| v.is_object()) {
            p.push(
                format!("{at}.session_policy"),
                "must be an IAM policy document (a JSON object)",
            );
        }
    }
    match approval_time(&grant.approval_expires_at) {
        Err(e) => p.push(format!("{at}.approval_expires_at"), e),
        Ok(at_time) if at_time <= now => p.push(
            format!("{at}.approval_expires_at"),
            format!("{} is in the past: nothing would be issued", crate::time(at_time)),
        ),
        Ok(_) => {}
    }
    p.text(format!("{at}.owner"), &grant.owner, 256);
    p.text(format!("{at}.justification"), &grant.justification, MAX_TEXT_LEN);
    if let Some(destination) = &grant.delivers_to {
        p.id(format!("{at}.delivers_to"), destination);
    }
}

fn check_destination(p: &mut Problems, at: &str, destination: &DestinationSpec) {
    p.id(format!("{at}.id"), &destination.id);
    match &destination.kind {
        DestinationKindSpec::Webhook { url } => {
            if url.len() > MAX_TARGET_ID_LEN || !nhi_broker::domain::is_allowed_url(url) {
                p.push(
                    format!("{at}.kind.url"),
                    "a webhook is an https URL (http only for loopback)",
                );
            }
        }
        DestinationKindSpec::EventBridge { event_bus_arn } => {
            let parts: Vec<&str> = event_bus_arn.splitn(6, ':').collect();
            let valid = matches!(parts.as_slice(), ["arn", partition, "events", region, account, resource]
                if partition.starts_with("aws") && !region.is_empty() && account.len() == 12
                    && resource.strip_prefix("event-bus/").is_some_and(|n| !n.is_empty()));
            if !valid {
                p.push(
                    format!("{at}.kind.event_bus_arn"),
                    "an event bus ARN (arn:aws:events:REGION:ACCOUNT:event-bus/NAME)",
                );
            }
        }
    }
    p.list(
        format!("{at}.secrets"),
        destination.secrets.len(),
        1,
        MAX_DESTINATION_SECRETS,
    );
    let mut seen = BTreeSet::new();
    for (j, secret) in destination.secrets.iter().enumerate() {
        p.id(format!("{at}.secrets[{j}]"), secret);
        if !seen.insert(secret) {
            p.push(format!("{at}.secrets[{j}]"), format!("{secret} is listed twice"));
        }
    }
    p.text(format!("{at}.owner"), &destination.owner, 256);
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn paths(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.path.as_str()).collect()
    }

    #[test]
    fn every_malformed_entry_is_reported_with_its_path() {
        let text = r#"
issuers:
  - {issuer: "https://a", name: a, audiences: [x], jwks: {type: url, url: "https://a/j", extra: 1}, algorithms: [ES256], enabled: true}
targets:
  - {id: t, kind: jwt, environment: prod, owner: o, enabled: true, colour: red}
destinations:
  - {id: d, kind: {type: webhook, url: "https://d"}, secrets: [s], owner: o, enabled: true, retries: 3}
grants:
  - {id: g, subjekt: x}
extra: []
"#;
        let problems = Manifest::parse(text, "m.yaml").unwrap_err();
        // Document order or key order, depending on serde_json's features in the build.
        let mut sorted = paths(&problems);
        sorted.sort();
        assert_eq!(
            sorted,
            ["destinations[0]", "extra", "grants[0]", "issuers[0]", "targets[0]"],
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .all(|p| p.message.contains("unknown field") || p.path == "extra")
        );
    }

    #[test]
    fn limits_duplicates_and_past_approvals_are_all_reported() {
        let grant = |id: &str| GrantSpec {
            id: id.into(),
            issuer: "https://issuer".into(),
            subject: "s".into(),
            claims: Default::default(),
            environment: "prod".into(),
            targets: vec!["t".into()],
            scopes: vec![],
            max_ttl_seconds: 600,
            session_policy: None,
            approval_expires_at: Value::from(NOW + 10),
            owner: "o".into(),
            justification: "j".into(),
            delivers_to: None,
        };
        let mut manifest = Manifest {
            grants: vec![grant("g"), grant("g"), grant(""), grant("h")],
            ..Default::default()
        };
        manifest.grants[3].subject = "x".repeat(10 * 1024 * 1024);
        manifest.grants[3].max_ttl_seconds = 1_000_000_000_000;
        manifest.grants[3].approval_expires_at = Value::from(NOW - 1);
        manifest.grants[3].targets = vec!["t".into(), "t".into()];
        let problems = manifest.problems(NOW);
        assert_eq!(
            paths(&problems),
            [
                "grants[1].id",
                "grants[2].id",
                "grants[3].subject",
                "grants[3].targets[1]",
                "grants[3].max_ttl_seconds",
                "grants[3].approval_expires_at",
            ],
            "{problems:?}"
        );
        assert!(
            Manifest {
                grants: vec![grant("g")],
                ..Default::default()
            }
            .problems(NOW)
            .is_empty()
        );
    }

    #[test]
    fn references_must_exist_and_agree() {
        let manifest = Manifest::parse(
            r#"
grants:
  - id: g
    issuer: "https://missing"
    subject: s
    environment: prod
    targets: [dev-api, nowhere, "arn:aws:iam::123456789012:role/r", "urn:nhi-broker:introspection"]
    max_ttl_seconds: 60
    approval_expires_at: 2099-01-01T00:00:00Z
    owner: o
    justification: j
    delivers_to: no-such-destination
destinations:
  - {id: d, kind: {type: webhook, url: "https://d"}, secrets: [missing-secret], owner: o, enabled: true}
"#,
            "m.yaml",
        )
        .unwrap();
        assert!(manifest.problems(NOW).is_empty(), "{:?}", manifest.problems(NOW));
        let known = Known {
            targets: BTreeMap::from([
                ("dev-api".to_string(), ("dev".to_string(), TargetKind::Jwt)),
                (
                    "arn:aws:iam::123456789012:role/r".to_string(),
                    ("prod".to_string(), TargetKind::AwsRole),
                ),
            ]),
            ..Default::default()
        };
        let problems = manifest.reference_problems(&known);
        assert_eq!(
            paths(&problems),
            [
                "grants[0].issuer",
                "grants[0].targets[0]",
                "grants[0].targets[1]",
                "grants[0].max_ttl_seconds",
                "grants[0].delivers_to",
                "destinations[0].secrets[0]",
            ],
            "{problems:?}"
        );
    }

    #[test]
    fn ids_and_role_arns() {
        assert!(id_problem("payments-db.prod:v1").is_none());
        assert!(id_problem("a#b").is_some() && id_problem("").is_some() && id_problem("a b").is_some());
        assert!(is_role_arn("arn:aws:iam::123456789012:role/deploy"));
        assert!(!is_role_arn("arn:aws:iam::12345:role/deploy") && !is_role_arn("deploy"));
    }
}
