//! Grant evaluation: default deny, and the TTL a release may have.

use crate::domain::{Grant, GrantStatus, Target, UnixTime};
use crate::error::PolicyDenial;
use crate::exchange::subject_token::VerifiedSubject;

/// What policy allows for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub grant: Grant,
    pub ttl_seconds: i64,
    pub scope: Vec<String>,
}

/// What the caller asked for, already syntactically valid.
#[derive(Debug, Clone, Default)]
pub struct PolicyRequest<'a> {
    pub scope: &'a [String],
    pub requested_ttl_seconds: Option<i64>,
}

/// Find the grant that lets `subject` obtain `target`, or say why none does.
///
/// Grants are narrowed in a fixed order (identity, status, environment, approval, scope) and the
/// reason reported is the last stage any grant reached, so the caller learns which check failed.
/// When several grants remain, the one with the lowest id wins: deterministic, and operators
/// should not rely on overlaps.
pub fn evaluate(
    grants: &[Grant],
    subject: &VerifiedSubject,
    target: &Target,
    request: &PolicyRequest<'_>,
    now: UnixTime,
    ttl_cap_seconds: i64,
) -> Result<Decision, PolicyDenial> {
    let mut candidates: Vec<&Grant> = grants
        .iter()
        .filter(|g| {
            g.issuer == subject.issuer.issuer
                && g.subject == subject.subject
                && g.targets.iter().any(|t| t == &target.id)
                && claims_match(g, subject)
        })
        .collect();
    narrow(&mut candidates, PolicyDenial::NoGrant, |_| true)?;
    narrow(&mut candidates, PolicyDenial::GrantRevoked, |g| {
        g.status == GrantStatus::Active
    })?;
    narrow(&mut candidates, PolicyDenial::EnvironmentMismatch, |g| {
        g.environment == target.environment
    })?;
    // At least one whole second of validity must remain for anything to be issued.
    narrow(&mut candidates, PolicyDenial::ApprovalExpired, |g| {
        g.approval_expires_at > now
    })?;
    narrow(&mut candidates, PolicyDenial::ScopeNotGranted, |g| {
        request.scope.iter().all(|s| g.scopes.contains(s))
    })?;
    candidates.sort_by(|a, b| a.id.cmp(&b.id));
    let grant = candidates[0].clone();

    let mut ttl = grant
        .max_ttl_seconds
        .min(grant.approval_expires_at - now)
        .min(ttl_cap_seconds);
    if let Some(requested) = request.requested_ttl_seconds {
        ttl = ttl.min(requested);
    }
    if ttl < 1 {
        return Err(PolicyDenial::ApprovalExpired);
    }
    let scope = if request.scope.is_empty() {
        grant.scopes.clone()
    } else {
        request.scope.to_vec()
    };
    Ok(Decision {
        grant,
        ttl_seconds: ttl,
        scope,
    })
}

/// Whether an active, approved grant lets `subject` use a reserved, environment-less target such
/// as the introspection endpoint.
pub fn allows_target(grants: &[Grant], subject: &VerifiedSubject, target_id: &str, now: UnixTime) -> bool {
    grants.iter().any(|g| {
        g.issuer == subject.issuer.issuer
            && g.subject == subject.subject
            && g.targets.iter().any(|t| t == target_id)
            && claims_match(g, subject)
            && g.status == GrantStatus::Active
            && g.approval_expires_at > now
    })
}

/// When no grant matched: the first claim condition that kept the lowest-id grant naming this
/// subject and target from matching, if a claim condition is what failed (its name only).
pub fn unmet_claim(grants: &[Grant], subject: &VerifiedSubject, target_id: &str) -> Option<String> {
    let mut near: Vec<&Grant> = grants
        .iter()
        .filter(|g| {
            g.issuer == subject.issuer.issuer
                && g.subject == subject.subject
                && g.targets.iter().any(|t| t == target_id)
        })
        .collect();
    near.sort_by(|a, b| a.id.cmp(&b.id));
    near.iter().find_map(|g| {
        g.claims
            .iter()
            .find(|(name, allowed)| !claim_allows(subject, name, allowed))
            .map(|(name, _)| name.clone())
    })
}

fn narrow(
    candidates: &mut Vec<&Grant>,
    denial: PolicyDenial,
    keep: impl Fn(&Grant) -> bool,
) -> Result<(), PolicyDenial> {
    candidates.retain(|g| keep(g));
    if candidates.is_empty() { Err(denial) } else { Ok(()) }
}

fn claims_match(grant: &Grant, subject: &VerifiedSubject) -> bool {
    grant
        .claims
        .iter()
        .all(|(name, allowed)| claim_allows(subject, name, allowed))
}

fn claim_allows(subject: &VerifiedSubject, name: &str, allowed: &[String]) -> bool {
    subject
        .claims
        .get(name)
        .and_then(|v| v.as_str())
        .is_some_and(|v| allowed.iter().any(|a| a == v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Issuer, JwksSource, TargetKind};
    use std::collections::BTreeMap;

    const NOW: i64 = 1_800_000_000;

    fn subject(claims: serde_json::Value) -> VerifiedSubject {
        VerifiedSubject {
            issuer: Issuer {
                issuer: "https://idp.example".into(),
                name: "idp".into(),
                audiences: vec!["nhi-broker".into()],
                jwks: JwksSource::Static {
                    jwks: "{\"keys\":[]}".into(),
                },
                algorithms: vec!["ES256".into()],
                enabled: true,
                one_time_jti: false,
            },
            subject: "repo:org/app:ref:refs/heads/main".into(),
            expires_at: NOW + 300,
            claims: claims.as_object().cloned().unwrap_or_default(),
            fingerprint: "sha256:00".into(),
        }
    }

    fn target() -> Target {
        Target {
            id: "https://api.example".into(),
            kind: TargetKind::Jwt,
            environment: "prod".into(),
            owner: "team-a".into(),
            enabled: true,
        }
    }

    fn grant(id: &str) -> Grant {
        Grant {
            id: id.into(),
            issuer: "https://idp.example".into(),
            subject: "repo:org/app:ref:refs/heads/main".into(),
            claims: BTreeMap::new(),
            environment: "prod".into(),
            targets: vec!["https://api.example".into()],
            scopes: vec!["read".into(), "write".into()],
            max_ttl_seconds: 900,
            session_policy: None,
            approval_expires_at: NOW + 86_400,
            owner: "team-a".into(),
            justification: "deploys".into(),
            status: GrantStatus::Active,
            created_at: NOW - 10,
            delivers_to: None,
        }
    }

    fn eval(grants: &[Grant], scope: &[String], ttl: Option<i64>) -> Result<Decision, PolicyDenial> {
        let req = PolicyRequest {
            scope,
            requested_ttl_seconds: ttl,
        };
        evaluate(grants, &subject(serde_json::json!({})), &target(), &req, NOW, 3600)
    }

    #[test]
    fn default_deny_without_grants() {
        assert_eq!(eval(&[], &[], None), Err(PolicyDenial::NoGrant));
    }

    #[test]
    fn ttl_is_min_of_request_grant_approval_and_cap() {
        assert_eq!(eval(&[grant("g")], &[], None).unwrap().ttl_seconds, 900);
        assert_eq!(eval(&[grant("g")], &[], Some(60)).unwrap().ttl_seconds, 60);
        let mut g = grant("g");
        g.approval_expires_at = NOW + 30;
        assert_eq!(eval(&[g], &[], Some(600)).unwrap().ttl_seconds, 30);
        let mut g = grant("g");
        g.max_ttl_seconds = 100_000;
        assert_eq!(eval(&[g], &[], None).unwrap().ttl_seconds, 3600);
    }

    #[test]
    fn each_condition_denies_with_its_reason() {
        let mut g = grant("g");
        g.subject = "someone-else".into();
        assert_eq!(eval(&[g], &[], None), Err(PolicyDenial::NoGrant));
        let mut g = grant("g");
        g.targets = vec!["https://other".into()];
        assert_eq!(eval(&[g], &[], None), Err(PolicyDenial::NoGrant));
        let mut g = grant("g");
        g.status = GrantStatus::Revoked;
        assert_eq!(eval(&[g], &[], None), Err(PolicyDenial::GrantRevoked));
        let mut g = grant("g");
        g.environment = "staging".into();
        assert_eq!(eval(&[g], &[], None), Err(PolicyDenial::EnvironmentMismatch));
        let mut g = grant("g");
        g.approval_expires_at = NOW;
        assert_eq!(eval(&[g], &[], None), Err(PolicyDenial::ApprovalExpired));
        assert_eq!(
            eval(&[grant("g")], &["admin".into()], None),
            Err(PolicyDenial::ScopeNotGranted)
        );
    }

    #[test]
    fn claim_conditions_must_all_hold() {
        let mut g = grant("g");
        g.claims.insert("repository".into(), vec!["org/app".into()]);
        let req = PolicyRequest::default();
        let ok = subject(serde_json::json!({"repository": "org/app"}));
        let bad = subject(serde_json::json!({"repository": "org/evil"}));
        let missing = subject(serde_json::json!({}));
        assert!(evaluate(&[g.clone()], &ok, &target(), &req, NOW, 3600).is_ok());
        assert!(evaluate(&[g.clone()], &bad, &target(), &req, NOW, 3600).is_err());
        assert!(evaluate(&[g], &missing, &target(), &req, NOW, 3600).is_err());
    }

    #[test]
    fn scope_defaults_to_grant_scopes_and_lowest_id_wins() {
        let d = eval(&[grant("b"), grant("a")], &[], None).unwrap();
        assert_eq!(d.grant.id, "a");
        assert_eq!(d.scope, vec!["read".to_string(), "write".to_string()]);
        let d = eval(&[grant("a")], &["read".into()], None).unwrap();
        assert_eq!(d.scope, vec!["read".to_string()]);
    }
}
