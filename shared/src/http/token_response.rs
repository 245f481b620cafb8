//! The token endpoint's success body (RFC 8693 2.2.1), serialized straight from the issued
//! credential: no JSON value tree in between, so the credential is copied once, into the body.

use crate::exchange::IssuedToken;
use serde::Serialize;

/// Members in this order; absent ones are left out. A secret's or AWS session's lease id is
/// returned (the caller revokes or renews by it); a JWT's is its `jti`.
#[derive(Serialize)]
pub(super) struct TokenResponse<'a> {
    access_token: &'a str,
    issued_token_type: &'a str,
    token_type: &'a str,
    expires_in: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aws_access_key_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aws_secret_access_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

impl<'a> TokenResponse<'a> {
    pub(super) fn of(issued: &'a IssuedToken) -> Self {
        let (aws_access_key_id, aws_secret_access_key) = match &issued.aws_credentials {
            Some((id, secret)) => (Some(id.as_str()), Some(secret.expose())),
            None => (None, None),
        };
        let names_lease = issued.secret_version.is_some() || issued.aws_credentials.is_some();
        Self {
            access_token: issued.access_token.expose(),
            issued_token_type: issued.issued_token_type,
            token_type: issued.token_type,
            expires_in: issued.expires_in,
            secret_version: issued.secret_version.as_deref(),
            aws_access_key_id,
            aws_secret_access_key,
            lease_id: names_lease.then_some(issued.lease_id.as_str()),
            scope: (!issued.scope.is_empty()).then(|| issued.scope.join(" ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{TOKEN_TYPE_AWS_CREDENTIALS, TOKEN_TYPE_JWT, TOKEN_TYPE_SECRET};

    fn issued(issued_token_type: &'static str, token_type: &'static str, scope: &[&str]) -> IssuedToken {
        IssuedToken {
            access_token: "credential".to_string().into(),
            issued_token_type,
            token_type,
            expires_in: 900,
            scope: scope.iter().map(|s| s.to_string()).collect(),
            lease_id: "lease-1".into(),
            secret_version: None,
            aws_credentials: None,
        }
    }

    fn body(issued: &IssuedToken) -> String {
        serde_json::to_string(&TokenResponse::of(issued)).unwrap()
    }

    #[test]
    fn each_kind_of_credential_has_its_members() {
        let jwt = issued(TOKEN_TYPE_JWT, "Bearer", &["deploy", "read"]);
        assert_eq!(
            body(&jwt),
            r#"{"access_token":"credential","issued_token_type":"urn:ietf:params:oauth:token-type:jwt","token_type":"Bearer","expires_in":900,"scope":"deploy read"}"#
        );
        let secret = IssuedToken {
            secret_version: Some("v2".into()),
            ..issued(TOKEN_TYPE_SECRET, "N_A", &[])
        };
        assert_eq!(
            body(&secret),
            format!(
                r#"{{"access_token":"credential","issued_token_type":"{TOKEN_TYPE_SECRET}","token_type":"N_A","expires_in":900,"secret_version":"v2","lease_id":"lease-1"}}"#
            )
        );
        let aws = IssuedToken {
            aws_credentials: Some(("AKIA1".into(), "s3cret".to_string().into())),
            ..issued(TOKEN_TYPE_AWS_CREDENTIALS, "N_A", &["x"])
        };
        assert_eq!(
            body(&aws),
            format!(
                r#"{{"access_token":"credential","issued_token_type":"{TOKEN_TYPE_AWS_CREDENTIALS}","token_type":"N_A","expires_in":900,"aws_access_key_id":"AKIA1","aws_secret_access_key":"s3cret","lease_id":"lease-1","scope":"x"}}"#
            )
        );
    }
}
