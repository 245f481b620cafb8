//! Manifests: what `apply` makes the registry match. Checked in two phases, each reporting every
//! problem it finds with its manifest path (`grants[3].targets[1]: ...`):
//! 1. `Manifest::parse` + `Manifest::problems`: the document alone (shape, unknown fields,
//!    duplicates, id charset and lengths, field sizes, TTL bounds as the exchange enforces them,
//!    URLs, approvals in the past). No AWS call is made before this phase passes.
//! 2. `Manifest::reference_problems`: what the document names in the registry (issuers, targets,
//!    secrets, destinations that must exist; environments that must agree; revoked grants).

mod checks;
#[cfg(test)]
mod tests;

use crate::CliError;
pub use checks::id_problem;
use checks::{Problems, check_destination, check_grant, check_issuer, check_target, duplicates};
use nhi_broker::domain::{
    ClaimCondition, Destination, DestinationKind, Grant, GrantStatus, INTROSPECTION_TARGET, Issuer, JwksSource,
    STS_MAX_SESSION_SECONDS, STS_MIN_SESSION_SECONDS, SubjectMatch, Target, TargetKind,
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
    /// Whole segments a grant's `subject_pattern` must fix before its first wildcard.
    #[serde(default = "default_pattern_prefix_segments")]
    pub pattern_prefix_segments: u32,
}

fn default_pattern_prefix_segments() -> u32 {
    nhi_broker::domain::DEFAULT_PATTERN_PREFIX_SEGMENTS
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
    /// One issuer (`issuer`) or several (`issuers`), not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<String>,
    /// An exact `sub` (`subject`) or an anchored glob (`subject_pattern`), not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_pattern: Option<String>,
    #[serde(default)]
    pub claims: BTreeMap<String, ClaimCondition>,
    /// A CEL expression over `claims`, `target` and `request`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
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
            pattern_prefix_segments: spec.pattern_prefix_segments,
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
            pattern_prefix_segments: 1,
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
    /// Its issuers, the first (primary) first.
    pub fn issuer_list(&self) -> Vec<String> {
        self.issuer.iter().chain(&self.issuers).cloned().collect()
    }

    /// The issuer its record lives under (the first).
    pub fn primary_issuer(&self) -> String {
        self.issuer_list().into_iter().next().unwrap_or_default()
    }

    pub fn subject_match(&self) -> Option<SubjectMatch> {
        match (&self.subject, &self.subject_pattern) {
            (Some(exact), None) => Some(SubjectMatch::Exact(exact.clone())),
            (None, Some(pattern)) => Some(SubjectMatch::Pattern(pattern.clone())),
            _ => None,
        }
    }

    /// The grant this spec describes (active; `created_at` kept from the stored one).
    pub fn to_grant(&self, created_at: i64) -> Result<Grant, String> {
        Ok(Grant {
            id: self.id.clone(),
            issuers: self.issuer_list(),
            subject: self
                .subject_match()
                .ok_or_else(|| format!("grant {}: give subject or subject_pattern", self.id))?,
            claims: self.claims.clone(),
            condition: self.condition.clone(),
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
        let issuers: BTreeMap<&str, u32> = self
            .issuers
            .iter()
            .map(|i| (i.issuer.as_str(), i.pattern_prefix_segments))
            .collect();
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
            let field = if grant.issuer.is_some() { "issuer" } else { "issuers" };
            for issuer in grant.issuer_list() {
                let prefix_segments = issuers
                    .get(issuer.as_str())
                    .copied()
                    .or_else(|| registry.issuers.get(&issuer).copied());
                match (prefix_segments, &grant.subject_pattern) {
                    (None, _) => p.push(
                        format!("{at}.{field}"),
                        format!("no issuer {issuer:?} (register it first)"),
                    ),
                    (Some(required), Some(pattern)) => {
                        if let Some(problem) = checks::pattern_reach_problem(pattern, &issuer, required) {
                            p.push(format!("{at}.subject_pattern"), problem);
                        }
                    }
                    (Some(_), None) => {}
                }
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
    /// Registered issuers with their `pattern_prefix_segments`.
    pub issuers: BTreeMap<String, u32>,
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
