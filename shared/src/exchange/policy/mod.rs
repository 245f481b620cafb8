//! Grant evaluation: default deny, and the TTL a release may have.
//!
//! A grant is checked in a fixed order of stages, and the first that fails rules it out:
//! 1. **subject**: the `sub` equals the grant's subject or matches its pattern (`glob`);
//! 2. **target**: the grant names the target;
//! 3. **claim**: every claim condition holds (`claims`), in claim-name order;
//! 4. **condition**: the CEL condition is true (`expression`);
//! 5. **status**: the grant is active;
//! 6. **environment**: the grant's environment is the target's;
//! 7. **approval**: its approval has not expired;
//! 8. **scope**: the requested scopes are among the grant's.
//!
//! (The issuer stage is the lookup itself: only grants of the token's issuer are candidates.)
//! When no grant passes, the refusal names the furthest stage any candidate reached, and for the
//! claim stage the claim's name, never its expected values or another grant's id. When several
//! pass, the lowest id wins: deterministic, and operators should not rely on overlaps.

pub mod catalog;
pub mod claims;
pub mod compiled;
pub mod expression;
pub mod glob;

use crate::domain::{Grant, GrantStatus, Target, UnixTime};
use crate::error::{BrokerError, PolicyDenial};
use crate::exchange::subject_token::VerifiedSubject;
use compiled::CompiledGrant;
use expression::ConditionInput;
use std::sync::Arc;

/// What policy allows for one request: the winning grant is borrowed from the candidates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'a> {
    pub grant: &'a Grant,
    pub ttl_seconds: i64,
    pub scope: Vec<String>,
}

/// What the caller asked for, already syntactically valid.
#[derive(Debug, Clone, Default)]
pub struct PolicyRequest<'a> {
    pub scope: &'a [String],
    pub requested_ttl_seconds: Option<i64>,
    /// The `requested_token_type` URI (seen by CEL conditions as `request.requested_token_type`).
    pub requested_token_type: &'a str,
}

/// Where a grant stopped matching, in evaluation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Subject,
    Target,
    Claim,
    Condition,
    Status,
    Environment,
    Approval,
    Scope,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Subject => "subject",
            Self::Target => "target",
            Self::Claim => "claim",
            Self::Condition => "condition",
            Self::Status => "status",
            Self::Environment => "environment",
            Self::Approval => "approval",
            Self::Scope => "scope",
        }
    }
}

/// Why one grant does not apply.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuledOut {
    pub stage: Stage,
    /// For the claim stage: the claim whose condition failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
}

impl RuledOut {
    fn at(stage: Stage) -> Self {
        Self { stage, claim: None }
    }

    /// The refusal a caller gets when this is the furthest any grant reached.
    pub fn to_error(&self) -> BrokerError {
        match self.stage {
            Stage::Subject | Stage::Target => BrokerError::PolicyDenied(PolicyDenial::NoGrant),
            Stage::Claim => BrokerError::ClaimNotSatisfied(self.claim.clone().unwrap_or_default()),
            Stage::Condition => BrokerError::PolicyDenied(PolicyDenial::ConditionNotSatisfied),
            Stage::Status => BrokerError::PolicyDenied(PolicyDenial::GrantRevoked),
            Stage::Environment => BrokerError::PolicyDenied(PolicyDenial::EnvironmentMismatch),
            Stage::Approval => BrokerError::PolicyDenied(PolicyDenial::ApprovalExpired),
            Stage::Scope => BrokerError::PolicyDenied(PolicyDenial::ScopeNotGranted),
        }
    }
}

/// Run one grant through the stages for this subject, target and request.
pub fn check(
    grant: &CompiledGrant,
    subject: &VerifiedSubject,
    target: &Target,
    request: &PolicyRequest<'_>,
    now: UnixTime,
) -> Result<(), RuledOut> {
    let g = &grant.grant;
    if !grant.subject_matches(&subject.subject) || !g.issuers.contains(&subject.issuer.issuer) {
        return Err(RuledOut::at(Stage::Subject));
    }
    if !g.targets.iter().any(|t| t == &target.id) {
        return Err(RuledOut::at(Stage::Target));
    }
    if let Some((name, _)) = grant
        .claims
        .iter()
        .find(|(name, condition)| !condition.holds_in(&subject.claims, name))
    {
        return Err(RuledOut {
            stage: Stage::Claim,
            claim: Some(name.clone()),
        });
    }
    if let Some(condition) = &grant.condition {
        // A condition sees every claim; one it cannot read (see `claim_set`) fails it.
        let Some(claims) = subject.claims.to_map() else {
            return Err(RuledOut::at(Stage::Condition));
        };
        let input = ConditionInput {
            claims: &claims,
            target_id: &target.id,
            target_kind: target.kind.as_str(),
            target_environment: &target.environment,
            scope: request.scope,
            requested_token_type: request.requested_token_type,
        };
        if !condition.as_ref().is_ok_and(|c| c.holds(&input)) {
            return Err(RuledOut::at(Stage::Condition));
        }
    }
    if g.status != GrantStatus::Active {
        return Err(RuledOut::at(Stage::Status));
    }
    if g.environment != target.environment {
        return Err(RuledOut::at(Stage::Environment));
    }
    // At least one whole second of validity must remain for anything to be issued.
    if g.approval_expires_at <= now {
        return Err(RuledOut::at(Stage::Approval));
    }
    if !request.scope.iter().all(|s| g.scopes.contains(s)) {
        return Err(RuledOut::at(Stage::Scope));
    }
    Ok(())
}

/// Find the grant among `candidates` that lets `subject` obtain `target`, or say why none does.
pub fn evaluate<'a>(
    candidates: &'a [Arc<CompiledGrant>],
    subject: &VerifiedSubject,
    target: &Target,
    request: &PolicyRequest<'_>,
    now: UnixTime,
    ttl_cap_seconds: i64,
) -> Result<Decision<'a>, BrokerError> {
    let mut winner: Option<&Grant> = None;
    let mut furthest: Option<(RuledOut, &str)> = None;
    for candidate in candidates {
        let g = &candidate.grant;
        match check(candidate, subject, target, request, now) {
            Ok(()) => {
                if winner.is_none_or(|w| g.id < w.id) {
                    winner = Some(g);
                }
            }
            Err(out) => {
                let further = furthest
                    .as_ref()
                    .is_none_or(|(f, id)| out.stage > f.stage || (out.stage == f.stage && g.id.as_str() < *id));
                if further {
                    furthest = Some((out, &g.id));
                }
            }
        }
    }
    let Some(grant) = winner else {
        return Err(
            furthest.map_or(BrokerError::PolicyDenied(PolicyDenial::NoGrant), |(out, _)| {
                out.to_error()
            }),
        );
    };
    let mut ttl = grant
        .max_ttl_seconds
        .min(grant.approval_expires_at - now)
        .min(ttl_cap_seconds);
    if let Some(requested) = request.requested_ttl_seconds {
        ttl = ttl.min(requested);
    }
    if ttl < 1 {
        return Err(BrokerError::PolicyDenied(PolicyDenial::ApprovalExpired));
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

/// One grant's verdict, for `brokerctl grant explain`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    pub grant_id: String,
    /// `None`: the grant applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ruled_out: Option<RuledOut>,
}

/// Every grant's verdict (sorted by id) and the grant that would win, if any.
pub fn explain(
    grants: &[Arc<CompiledGrant>],
    subject: &VerifiedSubject,
    target: &Target,
    request: &PolicyRequest<'_>,
    now: UnixTime,
) -> (Vec<Verdict>, Option<String>) {
    let mut verdicts: Vec<Verdict> = grants
        .iter()
        .map(|g| Verdict {
            grant_id: g.grant.id.clone(),
            ruled_out: check(g, subject, target, request, now).err(),
        })
        .collect();
    verdicts.sort_by(|a, b| a.grant_id.cmp(&b.grant_id));
    let winner = verdicts
        .iter()
        .find(|v| v.ruled_out.is_none())
        .map(|v| v.grant_id.clone());
    (verdicts, winner)
}

/// Whether an active, approved grant lets `subject` use a reserved, environment-less target such
/// as the introspection endpoint.
pub fn allows_target(
    candidates: &[Arc<CompiledGrant>],
    subject: &VerifiedSubject,
    target_id: &str,
    now: UnixTime,
) -> bool {
    candidates.iter().any(|g| {
        let reserved = Target {
            id: target_id.to_string(),
            kind: crate::domain::TargetKind::Jwt,
            environment: g.grant.environment.clone(),
            owner: String::new(),
            enabled: true,
        };
        check(g, subject, &reserved, &PolicyRequest::default(), now).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ClaimCondition, Issuer, JwksSource, SubjectMatch, TargetKind};
    use std::collections::BTreeMap;

    const NOW: i64 = 1_800_000_000;

    fn subject(claims: serde_json::Value) -> VerifiedSubject {
        VerifiedSubject {
            issuer: Arc::new(Issuer {
                issuer: "https://idp.example".into(),
                name: "idp".into(),
                audiences: vec!["nhi-broker".into()],
                jwks: JwksSource::Static {
                    jwks: "{\"keys\":[]}".into(),
                },
                algorithms: vec!["ES256".into()],
                enabled: true,
                one_time_jti: false,
                pattern_prefix_segments: 1,
            }),
            subject: "repo:org/app:ref:refs/heads/main".into(),
            expires_at: NOW + 300,
            claims: crate::exchange::claim_set::ClaimSet::from_json(&claims).unwrap_or_default(),
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
            issuers: vec!["https://idp.example".into()],
            subject: SubjectMatch::Exact("repo:org/app:ref:refs/heads/main".into()),
            claims: BTreeMap::new(),
            condition: None,
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

    fn compiled(grants: &[Grant]) -> Vec<Arc<CompiledGrant>> {
        grants.iter().map(|g| Arc::new(CompiledGrant::new(g.clone()))).collect()
    }

    /// A decision, owned (the tests' candidates do not outlive the call).
    #[derive(Debug)]
    struct Decided {
        grant: Grant,
        ttl_seconds: i64,
        scope: Vec<String>,
    }

    fn eval_with(
        grants: &[Grant],
        claims: serde_json::Value,
        scope: &[String],
        ttl: Option<i64>,
    ) -> Result<Decided, BrokerError> {
        let req = PolicyRequest {
            scope,
            requested_ttl_seconds: ttl,
            requested_token_type: crate::domain::TOKEN_TYPE_JWT,
        };
        let candidates = compiled(grants);
        evaluate(&candidates, &subject(claims), &target(), &req, NOW, 3600).map(|d| Decided {
            grant: d.grant.clone(),
            ttl_seconds: d.ttl_seconds,
            scope: d.scope,
        })
    }

    fn eval_for(grants: &[Grant], claims: serde_json::Value, scope: &[String]) -> Result<Decided, BrokerError> {
        eval_with(grants, claims, scope, None)
    }

    fn eval(grants: &[Grant], scope: &[String], ttl: Option<i64>) -> Result<Decided, BrokerError> {
        eval_with(grants, serde_json::json!({}), scope, ttl)
    }

    fn denial(result: Result<Decided, BrokerError>) -> String {
        result.unwrap_err().reason_code().to_string()
    }

    #[test]
    fn default_deny_without_grants() {
        assert_eq!(denial(eval(&[], &[], None)), "policy_no_grant");
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
    fn each_stage_denies_with_its_reason() {
        let mut g = grant("g");
        g.subject = SubjectMatch::Exact("someone-else".into());
        assert_eq!(denial(eval(&[g], &[], None)), "policy_no_grant");
        let mut g = grant("g");
        g.issuers = vec!["https://other-idp.example".into()];
        assert_eq!(denial(eval(&[g], &[], None)), "policy_no_grant");
        let mut g = grant("g");
        g.targets = vec!["https://other".into()];
        assert_eq!(denial(eval(&[g], &[], None)), "policy_no_grant");
        let mut g = grant("g");
        g.status = GrantStatus::Revoked;
        assert_eq!(denial(eval(&[g], &[], None)), "policy_grant_revoked");
        let mut g = grant("g");
        g.environment = "staging".into();
        assert_eq!(denial(eval(&[g], &[], None)), "policy_environment_mismatch");
        let mut g = grant("g");
        g.approval_expires_at = NOW;
        assert_eq!(denial(eval(&[g], &[], None)), "policy_approval_expired");
        assert_eq!(
            denial(eval(&[grant("g")], &["admin".into()], None)),
            "policy_scope_not_granted"
        );
        let mut g = grant("g");
        g.condition = Some("claims.x == 'y'".into());
        assert_eq!(denial(eval(&[g], &[], None)), "policy_condition_not_satisfied");
    }

    #[test]
    fn the_refusal_names_the_furthest_stage_any_grant_reached() {
        let mut claim = grant("a");
        claim
            .claims
            .insert("repository".into(), ClaimCondition::OneOf(vec!["org/app".into()]));
        let mut revoked = grant("b");
        revoked.status = GrantStatus::Revoked;
        assert_eq!(
            denial(eval(&[claim.clone(), revoked], &[], None)),
            "policy_grant_revoked"
        );
        let err = eval(&[claim], &[], None).unwrap_err();
        assert!(
            matches!(err, BrokerError::ClaimNotSatisfied(ref c) if c == "repository"),
            "{err:?}"
        );
    }

    #[test]
    fn claim_conditions_must_all_hold() {
        let mut g = grant("g");
        g.claims
            .insert("repository".into(), ClaimCondition::OneOf(vec!["org/app".into()]));
        g.claims
            .insert("groups".into(), ClaimCondition::Contains("deploy".into()));
        g.claims.insert("fork".into(), ClaimCondition::Is(false));
        let ok = serde_json::json!({"repository": "org/app", "groups": ["deploy"], "fork": false});
        assert!(eval_for(&[g.clone()], ok, &[]).is_ok());
        let bad = serde_json::json!({"repository": "org/evil", "groups": ["deploy"], "fork": false});
        assert!(eval_for(&[g.clone()], bad, &[]).is_err());
        let wrong_type = serde_json::json!({"repository": "org/app", "groups": "deploy", "fork": false});
        assert!(
            matches!(eval_for(&[g.clone()], wrong_type, &[]), Err(BrokerError::ClaimNotSatisfied(c)) if c == "groups")
        );
        assert!(eval_for(&[g], serde_json::json!({}), &[]).is_err());
    }

    #[test]
    fn patterns_and_several_issuers_match_like_exact_grants() {
        let mut g = grant("g");
        g.subject = SubjectMatch::Pattern("repo:org/*:ref:refs/heads/main".into());
        g.issuers = vec!["https://ghe.example".into(), "https://idp.example".into()];
        assert!(eval(&[g.clone()], &[], None).is_ok());
        g.subject = SubjectMatch::Pattern("repo:org/*:ref:refs/heads/release-*".into());
        assert_eq!(denial(eval(&[g], &[], None)), "policy_no_grant");
    }

    #[test]
    fn conditions_see_the_request() {
        let mut g = grant("g");
        g.condition = Some("request.scope.all(s, s == 'read') && target.environment == 'prod'".into());
        assert!(eval(&[g.clone()], &["read".into()], None).is_ok());
        assert_eq!(
            denial(eval(&[g], &["write".into()], None)),
            "policy_condition_not_satisfied"
        );
    }

    #[test]
    fn scope_defaults_to_grant_scopes_and_lowest_id_wins() {
        let d = eval(&[grant("b"), grant("a")], &[], None).unwrap();
        assert_eq!(d.grant.id, "a");
        assert_eq!(d.scope, vec!["read".to_string(), "write".to_string()]);
        let d = eval(&[grant("a")], &["read".into()], None).unwrap();
        assert_eq!(d.scope, vec!["read".to_string()]);
    }

    #[test]
    fn explain_gives_every_grant_its_stage_and_the_winner() {
        let mut env = grant("b-env");
        env.environment = "staging".into();
        let mut claim = grant("c-claim");
        claim
            .claims
            .insert("ref".into(), ClaimCondition::Glob("refs/tags/*".into()));
        let req = PolicyRequest::default();
        let (verdicts, winner) = explain(
            &compiled(&[claim, env, grant("a-ok")]),
            &subject(serde_json::json!({"ref": "refs/heads/main"})),
            &target(),
            &req,
            NOW,
        );
        assert_eq!(winner.as_deref(), Some("a-ok"));
        assert_eq!(verdicts[1].ruled_out.as_ref().unwrap().stage, Stage::Environment);
        assert_eq!(verdicts[2].ruled_out.as_ref().unwrap().claim.as_deref(), Some("ref"));
    }
}
