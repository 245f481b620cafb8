//! Grants: who may obtain what. A grant names its issuers, a subject (exact or a pattern), typed
//! claim conditions and an optional CEL condition; what they mean at evaluation time is
//! `exchange::policy`.

use super::UnixTime;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantStatus {
    Active,
    Revoked,
}

/// Which `sub` values a grant is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectMatch {
    /// Exactly this `sub`.
    Exact(String),
    /// An anchored glob (see `exchange::policy::glob`): `*` within one segment, `**` across.
    Pattern(String),
}

impl SubjectMatch {
    /// The text as written (exact subject or pattern).
    pub fn text(&self) -> &str {
        match self {
            Self::Exact(s) | Self::Pattern(s) => s,
        }
    }
}

/// A condition on one claim of the subject token. A claim of any other shape than the condition
/// expects (missing, a number where a string is expected, ...) never satisfies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ClaimConditionForm", into = "ClaimConditionForm")]
pub enum ClaimCondition {
    /// A string claim equal to one of these.
    OneOf(Vec<String>),
    /// A string claim matching this glob (same syntax as subject patterns).
    Glob(String),
    /// An array claim with this string among its elements.
    Contains(String),
    /// A boolean claim with this value.
    Is(bool),
    /// An integer claim (a JSON integer, or a string of decimal digits as GitHub sends them)
    /// within these inclusive bounds.
    Range { min: Option<i64>, max: Option<i64> },
}

/// How conditions are written: `[a, b]` and `true` are short for `{one_of: [a, b]}` and
/// `{is: true}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum ClaimConditionForm {
    List(Vec<String>),
    Bool(bool),
    Tagged(TaggedCondition),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum TaggedCondition {
    OneOf(Vec<String>),
    Glob(String),
    Contains(String),
    Is(bool),
    Range {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<i64>,
    },
}

impl From<ClaimConditionForm> for ClaimCondition {
    fn from(form: ClaimConditionForm) -> Self {
        match form {
            ClaimConditionForm::List(values) | ClaimConditionForm::Tagged(TaggedCondition::OneOf(values)) => {
                Self::OneOf(values)
            }
            ClaimConditionForm::Bool(b) | ClaimConditionForm::Tagged(TaggedCondition::Is(b)) => Self::Is(b),
            ClaimConditionForm::Tagged(TaggedCondition::Glob(g)) => Self::Glob(g),
            ClaimConditionForm::Tagged(TaggedCondition::Contains(c)) => Self::Contains(c),
            ClaimConditionForm::Tagged(TaggedCondition::Range { min, max }) => Self::Range { min, max },
        }
    }
}

impl From<ClaimCondition> for ClaimConditionForm {
    fn from(condition: ClaimCondition) -> Self {
        match condition {
            ClaimCondition::OneOf(values) => Self::List(values),
            ClaimCondition::Is(b) => Self::Bool(b),
            ClaimCondition::Glob(g) => Self::Tagged(TaggedCondition::Glob(g)),
            ClaimCondition::Contains(c) => Self::Tagged(TaggedCondition::Contains(c)),
            ClaimCondition::Range { min, max } => Self::Tagged(TaggedCondition::Range { min, max }),
        }
    }
}

/// Who may obtain what. A grant matches a subject token when its issuer is one of the grant's,
/// its `sub` matches, every claim condition holds and the CEL `condition` (if any) is true.
/// Nothing matches by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "GrantRecord", into = "GrantRecord")]
pub struct Grant {
    pub id: String,
    /// The issuers (`iss`) whose subjects this grant is for; never empty, the first is primary.
    pub issuers: Vec<String>,
    pub subject: SubjectMatch,
    /// Claim conditions, all of which must hold.
    pub claims: BTreeMap<String, ClaimCondition>,
    /// A CEL expression over `claims`, `target` and `request` that must be true.
    pub condition: Option<String>,
    pub environment: String,
    /// Target ids this grant allows.
    pub targets: Vec<String>,
    /// Scopes this grant allows; requested scopes must be a subset. Empty: no scope may be requested.
    pub scopes: Vec<String>,
    pub max_ttl_seconds: i64,
    /// For AWS role targets: an IAM policy (JSON) attached to every session, which can only narrow
    /// what the role allows.
    pub session_policy: Option<String>,
    /// The approval for this access ends here; nothing is issued past it, and TTLs are cut to it.
    pub approval_expires_at: UnixTime,
    pub owner: String,
    pub justification: String,
    pub status: GrantStatus,
    pub created_at: UnixTime,
    /// The subject copies what it obtains into this destination (a sync job): its leases' copies
    /// live there, so the destination is told when they are revoked or expire.
    pub delivers_to: Option<String>,
}

impl Grant {
    /// The first issuer: where the grant's own record lives.
    pub fn primary_issuer(&self) -> &str {
        self.issuers.first().map(String::as_str).unwrap_or_default()
    }
}

/// A grant as stored: `issuer` (the primary) always, `issuers` when there are several, and
/// `subject` or `subject_pattern`. Records written before several issuers and patterns existed
/// (`issuer` + `subject`, string-list claims) read unchanged.
#[derive(Serialize, Deserialize)]
struct GrantRecord {
    id: String,
    issuer: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    issuers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject_pattern: Option<String>,
    #[serde(default)]
    claims: BTreeMap<String, ClaimCondition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    condition: Option<String>,
    environment: String,
    targets: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    max_ttl_seconds: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session_policy: Option<String>,
    approval_expires_at: UnixTime,
    owner: String,
    justification: String,
    status: GrantStatus,
    created_at: UnixTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delivers_to: Option<String>,
}

impl TryFrom<GrantRecord> for Grant {
    type Error = &'static str;

    fn try_from(r: GrantRecord) -> Result<Self, Self::Error> {
        let subject = match (r.subject, r.subject_pattern) {
            (Some(exact), None) => SubjectMatch::Exact(exact),
            (None, Some(pattern)) => SubjectMatch::Pattern(pattern),
            (Some(_), Some(_)) => return Err("a grant has either subject or subject_pattern, not both"),
            (None, None) => return Err("a grant needs subject or subject_pattern"),
        };
        let issuers = if r.issuers.is_empty() {
            vec![r.issuer]
        } else {
            r.issuers
        };
        Ok(Self {
            id: r.id,
            issuers,
            subject,
            claims: r.claims,
            condition: r.condition,
            environment: r.environment,
            targets: r.targets,
            scopes: r.scopes,
            max_ttl_seconds: r.max_ttl_seconds,
            session_policy: r.session_policy,
            approval_expires_at: r.approval_expires_at,
            owner: r.owner,
            justification: r.justification,
            status: r.status,
            created_at: r.created_at,
            delivers_to: r.delivers_to,
        })
    }
}

impl From<Grant> for GrantRecord {
    fn from(g: Grant) -> Self {
        let (subject, subject_pattern) = match g.subject {
            SubjectMatch::Exact(s) => (Some(s), None),
            SubjectMatch::Pattern(p) => (None, Some(p)),
        };
        Self {
            id: g.id,
            issuer: g.issuers.first().cloned().unwrap_or_default(),
            issuers: if g.issuers.len() > 1 { g.issuers } else { Vec::new() },
            subject,
            subject_pattern,
            claims: g.claims,
            condition: g.condition,
            environment: g.environment,
            targets: g.targets,
            scopes: g.scopes,
            max_ttl_seconds: g.max_ttl_seconds,
            session_policy: g.session_policy,
            approval_expires_at: g.approval_expires_at,
            owner: g.owner,
            justification: g.justification,
            status: g.status,
            created_at: g.created_at,
            delivers_to: g.delivers_to,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_of_one_issuer_and_exact_subjects_read_as_before() {
        let old = json!({
            "id": "g", "issuer": "https://idp", "subject": "repo:o/a", "claims": {"ref": ["refs/heads/main"]},
            "environment": "prod", "targets": ["t"], "max_ttl_seconds": 60, "approval_expires_at": 9,
            "owner": "o", "justification": "j", "status": "active", "created_at": 1
        });
        let g: Grant = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(g.issuers, vec!["https://idp".to_string()]);
        assert_eq!(g.subject, SubjectMatch::Exact("repo:o/a".into()));
        assert_eq!(g.claims["ref"], ClaimCondition::OneOf(vec!["refs/heads/main".into()]));
        let back = serde_json::to_value(&g).unwrap();
        assert_eq!(back["issuer"], "https://idp");
        assert!(back.get("issuers").is_none());
        assert_eq!(back["claims"]["ref"], json!(["refs/heads/main"]));
    }

    #[test]
    fn patterns_several_issuers_and_typed_conditions_round_trip() {
        let g: Grant = serde_json::from_value(json!({
            "id": "g", "issuer": "a", "issuers": ["a", "b"], "subject_pattern": "repo:o/*:ref:**",
            "claims": {"ref": {"glob": "refs/tags/v*"}, "groups": {"contains": "ops"}, "fork": false,
                       "run_attempt": {"range": {"max": 3}}},
            "condition": "claims.x == 'y'",
            "environment": "prod", "targets": ["t"], "max_ttl_seconds": 60, "approval_expires_at": 9,
            "owner": "o", "justification": "j", "status": "active", "created_at": 1
        }))
        .unwrap();
        assert_eq!(g.issuers.len(), 2);
        assert_eq!(g.claims["fork"], ClaimCondition::Is(false));
        assert_eq!(
            g.claims["run_attempt"],
            ClaimCondition::Range {
                min: None,
                max: Some(3)
            }
        );
        let again: Grant = serde_json::from_value(serde_json::to_value(&g).unwrap()).unwrap();
        assert_eq!(again, g);
    }

    #[test]
    fn a_record_with_both_or_neither_subject_form_is_refused() {
        let base = json!({"id": "g", "issuer": "a", "environment": "p", "targets": [], "max_ttl_seconds": 1,
            "approval_expires_at": 1, "owner": "o", "justification": "j", "status": "active", "created_at": 1});
        assert!(serde_json::from_value::<Grant>(base.clone()).is_err());
        let mut both = base;
        both["subject"] = json!("s");
        both["subject_pattern"] = json!("s*");
        assert!(serde_json::from_value::<Grant>(both).is_err());
        assert!(serde_json::from_value::<ClaimCondition>(json!({"glob": "x", "extra": 1})).is_err());
    }
}
