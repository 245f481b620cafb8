//! The checks of a manifest's entries on their own: limits, charsets, URLs, ARNs, TTLs.

use super::*;

#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<Problem>);

impl Problems {
    pub(super) fn push(&mut self, path: String, message: impl Into<String>) {
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

pub(super) fn target_id_problem(value: &str) -> Option<String> {
    if value.is_empty() || value.len() > MAX_TARGET_ID_LEN {
        return Some(format!("a target id is 1 to {MAX_TARGET_ID_LEN} characters"));
    }
    if value.contains('#') || !value.chars().all(|c| c.is_ascii_graphic()) {
        return Some("a target id is printable ASCII without spaces or #".into());
    }
    None
}

pub(super) fn duplicates<'a>(p: &mut Problems, section: &str, field: &str, ids: impl Iterator<Item = &'a str>) {
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

pub(super) fn check_issuer(p: &mut Problems, at: &str, issuer: &IssuerSpec) {
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

pub(super) fn check_target(p: &mut Problems, at: &str, target: &TargetSpec) {
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

pub(super) fn is_role_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    matches!(parts.as_slice(), ["arn", partition, "iam", "", account, resource]
        if partition.starts_with("aws")
            && account.len() == 12
            && account.chars().all(|c| c.is_ascii_digit())
            && resource.strip_prefix("role/").is_some_and(|name| !name.is_empty()))
}

pub(super) fn check_grant(p: &mut Problems, at: &str, grant: &GrantSpec, now: i64) {
    p.id(format!("{at}.id"), &grant.id);
    check_grant_issuers(p, at, grant);
    match (&grant.subject, &grant.subject_pattern) {
        (Some(subject), None) => p.text(format!("{at}.subject"), subject, MAX_SUBJECT_LEN),
        (None, Some(pattern)) => {
            p.text(format!("{at}.subject_pattern"), pattern, MAX_SUBJECT_LEN);
            if let Some(problem) = pattern_shape_problem(pattern) {
                p.push(format!("{at}.subject_pattern"), problem);
            }
        }
        (Some(_), Some(_)) => p.push(format!("{at}.subject"), "give subject or subject_pattern, not both"),
        (None, None) => p.push(format!("{at}.subject"), "is required (or subject_pattern)"),
    }
    if grant.claims.len() > 32 {
        p.push(format!("{at}.claims"), "at most 32 claim conditions");
    }
    for (name, condition) in &grant.claims {
        check_claim_condition(p, &format!("{at}.claims.{name}"), name, condition);
    }
    if let Some(condition) = &grant.condition
        && let Err(problem) = nhi_broker::exchange::policy::expression::Condition::compile(condition)
    {
        p.push(format!("{at}.condition"), format!("the expression {problem}"));
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

pub(super) fn check_destination(p: &mut Problems, at: &str, destination: &DestinationSpec) {
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

/// Most issuers a grant may name.
const MAX_GRANT_ISSUERS: usize = 8;

fn check_grant_issuers(p: &mut Problems, at: &str, grant: &GrantSpec) {
    let field = match (&grant.issuer, grant.issuers.is_empty()) {
        (Some(_), false) => {
            p.push(format!("{at}.issuers"), "give issuer or issuers, not both");
            return;
        }
        (None, true) => {
            p.push(format!("{at}.issuer"), "is required (or issuers)");
            return;
        }
        (Some(_), true) => "issuer",
        (None, false) => "issuers",
    };
    let issuers = grant.issuer_list();
    if issuers.len() > MAX_GRANT_ISSUERS {
        p.push(format!("{at}.issuers"), format!("at most {MAX_GRANT_ISSUERS} issuers"));
    }
    let mut seen = BTreeSet::new();
    for (j, issuer) in issuers.iter().enumerate() {
        let path = if field == "issuer" {
            format!("{at}.issuer")
        } else {
            format!("{at}.issuers[{j}]")
        };
        if !nhi_broker::domain::is_allowed_url(issuer) {
            p.push(path, "an issuer is an https URL");
        } else if !seen.insert(issuer) {
            p.push(path, format!("{issuer} is listed twice"));
        }
    }
}

/// What a pattern can never be, whatever its issuer: without a wildcard (use `subject`), a bare
/// wildcard, or a wildcard first (no literal prefix).
pub(crate) fn pattern_shape_problem(pattern: &str) -> Option<String> {
    use nhi_broker::exchange::policy::glob::Glob;
    let glob = Glob::new(pattern);
    if !glob.has_wildcard() {
        return Some("has no wildcard: use subject for an exact match".into());
    }
    if glob.literal_prefix().is_empty() {
        return Some(format!(
            "{pattern:?} starts with a wildcard: it would match subjects of every tenant of the issuer"
        ));
    }
    None
}

/// Whether `pattern` fixes enough of the subject for `issuer` (its `pattern_prefix_segments`):
/// a pattern whose literal prefix ends inside a tenant's segment reaches other tenants
/// (`repo:example-org*` also matches `repo:example-org-evil/...`).
pub(crate) fn pattern_reach_problem(pattern: &str, issuer: &str, required: u32) -> Option<String> {
    use nhi_broker::exchange::policy::glob::Glob;
    let glob = Glob::new(pattern);
    let fixed = glob.literal_segments();
    let required = required.max(1) as usize;
    (glob.has_wildcard() && fixed < required).then(|| {
        format!(
            "{pattern:?} fixes {fixed} whole segment(s) before its first wildcard ({:?}); issuer {issuer} requires \
             {required}, so that no pattern reaches across its tenants",
            glob.literal_prefix()
        )
    })
}

fn check_claim_condition(p: &mut Problems, path: &str, name: &str, condition: &ClaimCondition) {
    p.text(path.to_string(), name, 256);
    let value_problem = |value: &str| {
        (value.is_empty() || value.len() > MAX_SUBJECT_LEN).then(|| format!("a value is 1 to {MAX_SUBJECT_LEN} bytes"))
    };
    match condition {
        ClaimCondition::OneOf(values) => {
            p.list(path.to_string(), values.len(), 1, MAX_LIST);
            for (j, value) in values.iter().enumerate() {
                if let Some(problem) = value_problem(value) {
                    p.push(format!("{path}[{j}]"), problem);
                }
            }
        }
        ClaimCondition::Glob(pattern) => {
            if let Some(problem) = value_problem(pattern) {
                p.push(format!("{path}.glob"), problem);
            } else if !nhi_broker::exchange::policy::glob::Glob::new(pattern).has_wildcard() {
                p.push(
                    format!("{path}.glob"),
                    "has no wildcard: use [value] for an exact match",
                );
            }
        }
        ClaimCondition::Contains(value) => {
            if let Some(problem) = value_problem(value) {
                p.push(format!("{path}.contains"), problem);
            }
        }
        ClaimCondition::Is(_) => {}
        ClaimCondition::Range { min, max } => match (min, max) {
            (None, None) => p.push(format!("{path}.range"), "give min, max or both"),
            (Some(lo), Some(hi)) if lo > hi => p.push(format!("{path}.range"), "min is above max"),
            _ => {}
        },
    }
}
