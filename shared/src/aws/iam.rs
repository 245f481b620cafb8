//! Denying revoked AWS role sessions. STS credentials cannot be recalled, so the role gets an
//! inline policy denying everything to sessions whose `aws:SourceIdentity` is a revoked lease id
//! (exchange sets SourceIdentity = lease id, and a session cannot change it). Entries are pruned
//! once their sessions have expired.
//!
//! IAM has no conditional writes, so the list is kept in the registry (`DENYPOLICY#<role>`), changed
//! by conditional writes on a version; whoever writes a version applies it to IAM and re-reads: if
//! a newer version appeared meanwhile it applies that one too, so the last policy applied is never
//! older than the last version written.

use super::dynamo::{Item, is_conditional_check_failed, n, s};
use crate::domain::UnixTime;
use crate::error::{BrokerError, Result};
use crate::ports::SessionDenier;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::BTreeMap;

/// Name of the inline policy on each role.
pub const REVOKED_SESSIONS_POLICY: &str = "nhi-broker-revoked-sessions";
/// A role's inline policies share 10,240 characters; past this the list collapses to a cut-off.
pub const MAX_POLICY_CHARS: usize = 8_000;

/// What a role's deny policy holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenyState {
    /// Revoked lease id -> when its session expires.
    pub sessions: BTreeMap<String, UnixTime>,
    /// Overflow: every session of the role issued before this time is denied, until `cutoff_until`.
    pub cutoff: Option<(UnixTime, UnixTime)>,
    pub version: i64,
}

impl DenyState {
    /// Add sessions, drop expired ones; collapse to a cut-off when the policy would be too large.
    pub fn merged(&self, add: &[(String, UnixTime)], now: UnixTime) -> Self {
        let mut sessions = self.sessions.clone();
        sessions.extend(add.iter().cloned());
        sessions.retain(|_, expires_at| *expires_at > now);
        let mut cutoff = self.cutoff.filter(|(_, until)| *until > now);
        let candidate = Self {
            sessions: sessions.clone(),
            cutoff,
            version: self.version,
        };
        if candidate.policy().is_some_and(|p| p.len() > MAX_POLICY_CHARS) {
            // Deny every session issued up to now: broader than needed, never narrower.
            let until = sessions.values().copied().max().unwrap_or(now);
            let until = cutoff.map_or(until, |(_, u)| u.max(until));
            cutoff = Some((now + 1, until));
            sessions.clear();
        }
        Self {
            sessions,
            cutoff,
            version: self.version,
        }
    }

    /// The inline policy document, or `None` when nothing is denied.
    pub fn policy(&self) -> Option<String> {
        let mut statements = Vec::new();
        if !self.sessions.is_empty() {
            statements.push(serde_json::json!({
                "Sid": "DenyRevokedBrokerSessions",
                "Effect": "Deny",
                "Action": "*",
                "Resource": "*",
                "Condition": { "StringEquals": { "aws:SourceIdentity": self.sessions.keys().collect::<Vec<_>>() } },
            }));
        }
        if let Some((cutoff, _)) = self.cutoff {
            let at = aws_smithy_types::DateTime::from_secs(cutoff)
                .fmt(aws_smithy_types::date_time::Format::DateTime)
                .unwrap_or_default();
            statements.push(serde_json::json!({
                "Sid": "DenySessionsIssuedBeforeRevocation",
                "Effect": "Deny",
                "Action": "*",
                "Resource": "*",
                "Condition": { "DateLessThan": { "aws:TokenIssueTime": at } },
            }));
        }
        (!statements.is_empty())
            .then(|| serde_json::json!({ "Version": "2012-10-17", "Statement": statements }).to_string())
    }
}

/// `my-role` from `arn:aws:iam::123456789012:role/path/my-role`.
pub fn role_name(role_arn: &str) -> Option<&str> {
    role_arn
        .split_once(":role/")
        .and_then(|(_, path)| path.rsplit('/').next())
        .filter(|name| !name.is_empty())
}

pub struct IamSessionDenier {
    iam: aws_sdk_iam::Client,
    dynamo: aws_sdk_dynamodb::Client,
    registry_table: String,
}

fn state_key(role_arn: &str) -> [(String, AttributeValue); 2] {
    [
        ("pk".to_string(), s(format!("DENYPOLICY#{role_arn}"))),
        ("sk".to_string(), s("#DENYPOLICY")),
    ]
}

impl IamSessionDenier {
    pub fn new(iam: aws_sdk_iam::Client, dynamo: aws_sdk_dynamodb::Client, registry_table: &str) -> Self {
        Self {
            iam,
            dynamo,
            registry_table: registry_table.into(),
        }
    }

    async fn load(&self, role_arn: &str) -> Result<Option<DenyState>> {
        let item = self
            .dynamo
            .get_item()
            .table_name(&self.registry_table)
            .set_key(Some(Item::from(state_key(role_arn))))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| BrokerError::aws("dynamodb", "GetItem", &e))?
            .item;
        let Some(item) = item else { return Ok(None) };
        let num = |v: &AttributeValue| v.as_n().ok().and_then(|x| x.parse::<i64>().ok());
        let sessions = item
            .get("sessions")
            .and_then(|v| v.as_m().ok())
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), num(v)?))).collect())
            .unwrap_or_default();
        let cutoff = match (item.get("cutoff").and_then(num), item.get("cutoff_until").and_then(num)) {
            (Some(c), Some(u)) => Some((c, u)),
            _ => None,
        };
        Ok(Some(DenyState {
            sessions,
            cutoff,
            version: item.get("version").and_then(num).unwrap_or(0),
        }))
    }

    /// Write `state` as the version after `expected` (`None`: no state yet). False on a race.
    async fn store(&self, state: &DenyState, expected: Option<i64>, role_arn: &str) -> Result<bool> {
        let mut item = Item::from(state_key(role_arn));
        item.insert(
            "sessions".into(),
            AttributeValue::M(state.sessions.iter().map(|(k, v)| (k.clone(), n(*v))).collect()),
        );
        if let Some((cutoff, until)) = state.cutoff {
            item.insert("cutoff".into(), n(cutoff));
            item.insert("cutoff_until".into(), n(until));
        }
        item.insert("version".into(), n(state.version));
        let mut request = self
            .dynamo
            .put_item()
            .table_name(&self.registry_table)
            .set_item(Some(item));
        request = match expected {
            Some(v) => request
                .condition_expression("version = :v")
                .expression_attribute_values(":v", n(v)),
            None => request.condition_expression("attribute_not_exists(pk)"),
        };
        match request.send().await {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_check_failed(&e) => Ok(false),
            Err(e) => Err(BrokerError::aws("dynamodb", "PutItem", &e)),
        }
    }

    async fn apply(&self, role: &str, state: &DenyState) -> Result<()> {
        match state.policy() {
            Some(document) => {
                self.iam
                    .put_role_policy()
                    .role_name(role)
                    .policy_name(REVOKED_SESSIONS_POLICY)
                    .policy_document(document)
                    .send()
                    .await
                    .map_err(|e| BrokerError::aws("iam", "PutRolePolicy", &e))?;
            }
            None => match self
                .iam
                .delete_role_policy()
                .role_name(role)
                .policy_name(REVOKED_SESSIONS_POLICY)
                .send()
                .await
            {
                Ok(_) => {}
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_entity_exception()) => {}
                Err(e) => return Err(BrokerError::aws("iam", "DeleteRolePolicy", &e)),
            },
        }
        Ok(())
    }
}

#[async_trait]
impl SessionDenier for IamSessionDenier {
    async fn deny_sessions(&self, role_arn: &str, sessions: &[(String, UnixTime)], now: UnixTime) -> Result<()> {
        let role =
            role_name(role_arn).ok_or_else(|| BrokerError::CorruptRecord("lease target is not a role ARN".into()))?;
        for _ in 0..10 {
            let current = self.load(role_arn).await?;
            let expected = current.as_ref().map(|s| s.version);
            let mut next = current.unwrap_or_default().merged(sessions, now);
            next.version = expected.unwrap_or(0) + 1;
            if !self.store(&next, expected, role_arn).await? {
                continue;
            }
            let mut applied = next;
            // Apply, then make sure no newer version was written meanwhile by someone whose policy
            // we may just have overwritten.
            for _ in 0..10 {
                self.apply(role, &applied).await?;
                match self.load(role_arn).await? {
                    Some(latest) if latest.version != applied.version => applied = latest,
                    _ => return Ok(()),
                }
            }
            return Err(BrokerError::Internal("revoked-session policy kept changing".into()));
        }
        Err(BrokerError::Internal("revoked-session list kept changing".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_role_from_its_arn() {
        assert_eq!(
            role_name("arn:aws:iam::123456789012:role/nhi-broker/deployer"),
            Some("deployer")
        );
        assert_eq!(role_name("arn:aws:iam::123456789012:role/deployer"), Some("deployer"));
        assert_eq!(role_name("arn:aws:iam::123456789012:user/x"), None);
    }

    #[test]
    fn denies_listed_sessions_prunes_expired_and_collapses_when_too_large() {
        let state = DenyState::default().merged(&[("lease-a".into(), 200), ("lease-b".into(), 100)], 150);
        assert_eq!(state.sessions.keys().collect::<Vec<_>>(), ["lease-a"]);
        let policy: serde_json::Value = serde_json::from_str(&state.policy().unwrap()).unwrap();
        assert_eq!(policy["Statement"][0]["Effect"], "Deny");
        assert_eq!(
            policy["Statement"][0]["Condition"]["StringEquals"]["aws:SourceIdentity"][0],
            "lease-a"
        );
        assert!(
            state.merged(&[], 300).policy().is_none(),
            "expired sessions leave nothing to deny"
        );

        let many: Vec<(String, UnixTime)> = (0..400).map(|i| (format!("{:036}", i), 1000 + i)).collect();
        let collapsed = DenyState::default().merged(&many, 150);
        assert!(collapsed.sessions.is_empty());
        assert_eq!(collapsed.cutoff, Some((151, 1399)));
        let policy = collapsed.policy().unwrap();
        assert!(
            policy.len() < MAX_POLICY_CHARS && policy.contains("aws:TokenIssueTime"),
            "{policy}"
        );
        assert!(collapsed.merged(&[], 1400).policy().is_none());
    }
}
