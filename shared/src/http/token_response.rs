//! The token endpoint's success body (RFC 8693 2.2.1), written straight from the issued
//! credential: no JSON value tree in between, so the credential is copied once, into the body.

use crate::exchange::IssuedToken;
use crate::json_text::push_str;
use std::fmt::Write;

/// The body: members in this order, absent ones left out. A secret's or AWS session's lease id
/// is returned (the caller revokes or renews by it); a JWT's is its `jti`.
pub(super) fn body(issued: &IssuedToken) -> String {
    let mut body = String::with_capacity(issued.access_token.len() + 256);
    push_member(&mut body, "access_token", issued.access_token.expose());
    push_member(&mut body, "issued_token_type", issued.issued_token_type);
    push_member(&mut body, "token_type", issued.token_type);
    let _ = write!(body, r#","expires_in":{}"#, issued.expires_in);
    if let Some(version) = &issued.secret_version {
        push_member(&mut body, "secret_version", version);
    }
    if let Some((id, secret)) = &issued.aws_credentials {
        push_member(&mut body, "aws_access_key_id", id);
        push_member(&mut body, "aws_secret_access_key", secret.expose());
    }
    if issued.secret_version.is_some() || issued.aws_credentials.is_some() {
        push_member(&mut body, "lease_id", &issued.lease_id);
    }
    if !issued.scope.is_empty() {
        push_member(&mut body, "scope", &issued.scope.join(" "));
    }
    body.push('}');
    body
}

/// `"name":"value"`, after `{` for the first member and `,` for the others.
fn push_member(body: &mut String, name: &str, value: &str) {
    body.push(if body.is_empty() { '{' } else { ',' });
    push_str(body, name);
    body.push(':');
    push_str(body, value);
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

    #[test]
    fn any_secret_value_comes_back_as_it_was() {
        let value = "line one\n\"quoted\" \\ tab\t \u{1} é \u{1F511}";
        let secret = IssuedToken {
            access_token: value.to_string().into(),
            secret_version: Some("v\"2".into()),
            ..issued(TOKEN_TYPE_SECRET, "N_A", &["a\\b"])
        };
        let parsed: serde_json::Value = serde_json::from_str(&body(&secret)).unwrap();
        assert_eq!(parsed["access_token"], value);
        assert_eq!(parsed["secret_version"], "v\"2");
        assert_eq!(parsed["scope"], "a\\b");
        assert_eq!(parsed["expires_in"], 900);
    }
}
