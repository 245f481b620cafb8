//! `grant explain`: which grant a subject token would obtain a target through, and, for every
//! other grant of its issuer, the stage (and claim) that rules it out. The registry is read live;
//! the token is verified against the issuer's registered keys exactly as the exchange verifies
//! it, or, with `--claims-file --unverified`, its claims are taken as given.
//!
//! Exit codes: 0 a grant applies, 3 none does (the report says what the exchange would answer),
//! 2 bad input (unreadable file, a token that does not verify, an unknown issuer or target).

use crate::{CliError, CliResult, Ctl, Report, table};
use nhi_broker::aws::dynamo::from_item;
use nhi_broker::domain::{
    Grant, Secret, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_AWS_CREDENTIALS, TOKEN_TYPE_JWT, TOKEN_TYPE_SECRET, Target,
    TargetKind,
};
use nhi_broker::exchange::claim_set::ClaimSet;
use nhi_broker::exchange::jwks::{HttpIssuerKeys, JwksSettings};
use nhi_broker::exchange::policy::catalog::PolicyCatalog;
use nhi_broker::exchange::policy::compiled::CompiledGrant;
use nhi_broker::exchange::policy::{self, PolicyRequest};
use nhi_broker::exchange::subject_token::{SubjectTokenVerifier, UnverifiedContext, VerifiedSubject};
use nhi_broker::ports::PolicyStore;
use nhi_broker::redact::SecretString;
use serde_json::json;
use std::borrow::Cow;
use std::sync::Arc;

/// Where the subject comes from.
pub enum SubjectSource {
    /// A subject token, verified.
    TokenFile(String),
    /// Claims taken as given (the operator said `--unverified`).
    UnverifiedClaimsFile(String),
}

pub struct ExplainRequest {
    pub subject: SubjectSource,
    pub target: String,
    pub scope: Vec<String>,
    pub requested_token_type: String,
}

/// Exit code when no grant applies.
pub const EXIT_DENIED: i32 = 3;

impl Ctl {
    pub async fn explain(&self, request: &ExplainRequest) -> CliResult<Report> {
        let (subject, verified) = self.explain_subject(&request.subject).await?;
        let target = self
            .explain_target(&request.target, &request.requested_token_type)
            .await?;
        let grants = self.grants_of_issuer(&subject.issuer.issuer).await?;
        let policy_request = PolicyRequest {
            scope: &request.scope,
            requested_ttl_seconds: None,
            requested_token_type: &request.requested_token_type,
        };
        let (verdicts, winner) = policy::explain(&grants, &subject, &target, &policy_request, self.now);
        // What the token endpoint would say (its fixed description: stage and claim name only).
        let answer = policy::evaluate(&grants, &subject, &target, &policy_request, self.now, i64::MAX)
            .err()
            .map(|e| json!({"reason": e.reason_code(), "error_description": e.client_error().description}));

        let mut rows = Vec::new();
        for v in &verdicts {
            let verdict = match (&v.ruled_out, winner.as_deref() == Some(v.grant_id.as_str())) {
                (None, true) => "applies (wins: lowest id)".to_string(),
                (None, false) => "applies".to_string(),
                (Some(out), _) => match &out.claim {
                    Some(claim) => format!("ruled out at {}: {claim}", out.stage.as_str()),
                    None => format!("ruled out at {}", out.stage.as_str()),
                },
            };
            rows.push(vec![v.grant_id.clone(), verdict]);
        }
        let mut text = format!(
            "subject  {} (issuer {}, {})\ntarget   {} ({}, {})\n",
            subject.subject,
            subject.issuer.issuer,
            if verified {
                "signature verified"
            } else {
                "UNVERIFIED claims"
            },
            target.id,
            target.kind.as_str(),
            target.environment,
        );
        if rows.is_empty() {
            text.push_str("no grant names this issuer\n");
        } else {
            text.push_str(&table(&["GRANT", "VERDICT"], &rows));
        }
        match (&winner, &answer) {
            (Some(id), _) => text.push_str(&format!("=> grant {id} would be used")),
            (None, Some(a)) => text.push_str(&format!(
                "=> denied: the exchange answers {} ({})",
                a["reason"].as_str().unwrap_or_default(),
                a["error_description"].as_str().unwrap_or_default()
            )),
            (None, None) => {}
        }
        let json = json!({
            "issuer": subject.issuer.issuer,
            "subject": subject.subject,
            "verified": verified,
            "target": target.id,
            "requested_token_type": request.requested_token_type,
            "grants": verdicts,
            "winner": winner,
            "denied": answer,
        });
        let mut report = Report::new(text, json);
        if winner.is_none() {
            report.exit = EXIT_DENIED;
        }
        Ok(report)
    }

    async fn explain_subject(&self, source: &SubjectSource) -> CliResult<(VerifiedSubject, bool)> {
        let read = |path: &str| {
            std::fs::read_to_string(path).map_err(|e| CliError::usage(format!("cannot read {path}: {}", e.kind())))
        };
        match source {
            SubjectSource::TokenFile(path) => {
                let token = SecretString::new(read(path)?.trim().to_string());
                let catalog = PolicyCatalog::new(Arc::new(self.registry.clone()), std::time::Duration::ZERO);
                let keys = HttpIssuerKeys::new(JwksSettings::default())?;
                let verifier = SubjectTokenVerifier {
                    policy: &catalog,
                    keys: &keys,
                    leeway_seconds: 30,
                };
                let (subject, _) = verifier
                    .verify(&token, self.now, &mut UnverifiedContext::default())
                    .await
                    .map_err(|e| {
                        CliError::usage(format!(
                            "the subject token does not verify against its issuer's registered keys ({}): {}",
                            e.reason_code(),
                            e.client_error().description
                        ))
                    })?;
                Ok((subject, true))
            }
            SubjectSource::UnverifiedClaimsFile(path) => {
                let claims = ClaimSet::parse(read(path)?)
                    .ok_or_else(|| CliError::usage(format!("{path} is not a JSON object of claims")))?;
                let field = |name: &str| {
                    claims
                        .get_str(name)
                        .map(Cow::into_owned)
                        .ok_or_else(|| CliError::usage(format!("{path}: the claims need a string {name}")))
                };
                let (iss, sub) = (field("iss")?, field("sub")?);
                let Some((issuer, _)) = PolicyStore::issuer_head(&self.registry, &iss).await? else {
                    return Err(CliError::usage(format!("no issuer {iss:?} is registered")));
                };
                let subject = VerifiedSubject {
                    issuer: Arc::new(issuer),
                    subject: sub,
                    expires_at: claims.get("exp").and_then(|exp| exp.as_i64()).unwrap_or(self.now + 300),
                    claims,
                    fingerprint: "unverified".into(),
                };
                Ok((subject, false))
            }
        }
    }

    async fn explain_target(&self, id: &str, requested_token_type: &str) -> CliResult<Target> {
        let unknown = |what: &str| {
            CliError::usage(format!(
                "no {what} {id:?} is registered (the exchange answers invalid_target)"
            ))
        };
        match requested_token_type {
            TOKEN_TYPE_JWT | TOKEN_TYPE_ACCESS_TOKEN | TOKEN_TYPE_AWS_CREDENTIALS => {
                let kind = if requested_token_type == TOKEN_TYPE_AWS_CREDENTIALS {
                    TargetKind::AwsRole
                } else {
                    TargetKind::Jwt
                };
                match PolicyStore::target(&self.registry, id).await? {
                    Some(t) if t.kind == kind => Ok(t),
                    _ => Err(unknown(if kind == TargetKind::AwsRole {
                        "AWS role target"
                    } else {
                        "JWT target"
                    })),
                }
            }
            TOKEN_TYPE_SECRET => match self.reads.secret(id).await? {
                Some(item) => Ok(from_item::<Secret>(item, "secret")?.as_target()),
                None => Err(unknown("secret")),
            },
            other => Err(CliError::usage(format!("unsupported --requested-token-type {other:?}"))),
        }
    }

    /// Every grant naming `issuer`, whatever its subject: the candidates explain judges.
    async fn grants_of_issuer(&self, issuer: &str) -> CliResult<Vec<Arc<CompiledGrant>>> {
        let progress = &self.progress;
        let items = self
            .registry
            .list_type("grant", |n| progress(&format!("... {n} grant(s) read")))
            .await?;
        let mut grants = Vec::new();
        for item in items {
            let grant: Grant = from_item(item, "grant")?;
            if grant.issuers.iter().any(|i| i == issuer) {
                grants.push(Arc::new(CompiledGrant::new(grant)));
            }
        }
        Ok(grants)
    }
}
