//! AWS credentials through STS AssumeRole: the grant's session policy (narrowing only), session tags
//! naming grant, subject and lease, and `SourceIdentity` = lease id, which the caller cannot change
//! for the life of the session and which a revocation can deny by.

use crate::error::{BrokerError, Result};
use crate::ports::{AssumeRoleRequest, AwsSessionCredentials, RoleAssumer};
use crate::redact::SecretString;
use async_trait::async_trait;
use aws_sdk_sts::types::Tag;

pub struct StsRoleAssumer {
    client: aws_sdk_sts::Client,
}

impl StsRoleAssumer {
    pub fn new(client: aws_sdk_sts::Client) -> Self {
        Self { client }
    }
}

/// STS tag values allow letters, digits, spaces and `_.:/=+-@`, up to 256 characters.
pub fn sts_tag_value(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || " _.:/=+-@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(256)
        .collect()
}

#[async_trait]
impl RoleAssumer for StsRoleAssumer {
    async fn assume_role(&self, request: &AssumeRoleRequest) -> Result<AwsSessionCredentials> {
        let tags = request
            .tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(sts_tag_value(v)).build())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| BrokerError::Internal(e.to_string()))?;
        let output = self
            .client
            .assume_role()
            .role_arn(&request.role_arn)
            .role_session_name(&request.session_name)
            .source_identity(&request.source_identity)
            .set_tags(Some(tags))
            .set_policy(request.session_policy.clone())
            .duration_seconds(request.duration_seconds)
            .send()
            .await
            .map_err(|e| BrokerError::aws("sts", "AssumeRole", &e))?;
        let credentials = output
            .credentials
            .ok_or_else(|| BrokerError::Internal("STS AssumeRole returned no credentials".into()))?;
        Ok(AwsSessionCredentials {
            access_key_id: credentials.access_key_id,
            secret_access_key: SecretString::new(credentials.secret_access_key),
            session_token: SecretString::new(credentials.session_token),
            expiration: credentials.expiration.secs(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sts::operation::assume_role::AssumeRoleOutput;
    use aws_sdk_sts::types::Credentials;
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    #[tokio::test]
    async fn sends_policy_tags_source_identity_and_duration() {
        let rule = mock!(aws_sdk_sts::Client::assume_role)
            .match_requests(|input| {
                input.role_arn() == Some("arn:aws:iam::123456789012:role/nhi-broker/deployer")
                    && input.source_identity() == Some("lease-1")
                    && input.duration_seconds() == Some(900)
                    && input.policy() == Some("{\"Version\":\"2012-10-17\"}")
                    && input
                        .tags()
                        .iter()
                        .any(|t| t.key() == "nhi:subject" && t.value() == "repo:org/app_x")
            })
            .then_output(|| {
                AssumeRoleOutput::builder()
                    .credentials(
                        Credentials::builder()
                            .access_key_id("ASIAEXAMPLE")
                            .secret_access_key("secret-key")
                            .session_token("session-token")
                            .expiration(aws_sdk_sts::primitives::DateTime::from_secs(1_800_000_900))
                            .build()
                            .unwrap(),
                    )
                    .build()
            });
        let client = mock_client!(aws_sdk_sts, RuleMode::MatchAny, [&rule]);
        let creds = StsRoleAssumer::new(client)
            .assume_role(&AssumeRoleRequest {
                role_arn: "arn:aws:iam::123456789012:role/nhi-broker/deployer".into(),
                session_name: "nhi-lease-1".into(),
                source_identity: "lease-1".into(),
                tags: vec![("nhi:subject".into(), "repo:org/app#x".into())],
                session_policy: Some("{\"Version\":\"2012-10-17\"}".into()),
                duration_seconds: 900,
            })
            .await
            .expect("the request carried every field");
        assert_eq!(creds.access_key_id, "ASIAEXAMPLE");
        assert_eq!(creds.expiration, 1_800_000_900);
        assert!(!format!("{creds:?}").contains("secret-key"));
    }

    #[test]
    fn tag_values_are_sanitized_and_bounded() {
        assert_eq!(
            sts_tag_value("repo:org/app:ref:refs/heads/main"),
            "repo:org/app:ref:refs/heads/main"
        );
        assert_eq!(sts_tag_value("a#b$c"), "a_b_c");
        assert_eq!(sts_tag_value(&"x".repeat(300)).len(), 256);
    }
}
