//! What `nhi` prints: the credential alone (text), a JSON document (`--output json`), or exactly
//! the JSON the AWS SDKs expect from a `credential_process`.

use crate::broker::{Issued, TokenType};
use crate::error::{Error, Result};
use serde_json::{Value, json};
use zeroize::Zeroizing;

/// RFC 3339 UTC timestamp (`2026-11-27T13:00:00Z`) of a Unix time.
pub fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let seconds = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        seconds / 3600,
        seconds % 3600 / 60,
        seconds % 60
    )
}

/// The AWS `credential_process` document (Version 1).
pub fn credential_process(issued: &Issued) -> Result<Zeroizing<String>> {
    let (Some(key_id), Some(secret_key)) = (&issued.aws_access_key_id, &issued.aws_secret_access_key) else {
        return Err(Error::Failed("the broker's answer lacks AWS credentials".into()));
    };
    let document = json!({
        "Version": 1,
        "AccessKeyId": key_id,
        "SecretAccessKey": secret_key.expose(),
        "SessionToken": issued.access_token.expose(),
        "Expiration": rfc3339(issued.expires_at()),
    });
    Ok(Zeroizing::new(document.to_string()))
}

/// `--output json`: everything the broker released, plus `expires_at`.
pub fn issued_json(issued: &Issued) -> Zeroizing<String> {
    let mut document = json!({
        "access_token": issued.access_token.expose(),
        "issued_token_type": issued.token_type.uri(),
        "expires_in": issued.expires_in,
        "expires_at": rfc3339(issued.expires_at()),
        "lease_id": issued.lease_id,
    });
    let object = document.as_object_mut().expect("an object");
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            object.insert(key.into(), value);
        }
    };
    put("scope", issued.scope.clone().map(Value::String));
    put("secret_version", issued.secret_version.clone().map(Value::String));
    if issued.token_type == TokenType::AwsCredentials {
        put("aws_access_key_id", issued.aws_access_key_id.clone().map(Value::String));
        put(
            "aws_secret_access_key",
            issued
                .aws_secret_access_key
                .as_ref()
                .map(|s| Value::String(s.expose().into())),
        );
    }
    let text = Zeroizing::new(document.to_string());
    // The Value held copies of the credentials; zero them as well.
    zeroize_json(document);
    text
}

fn zeroize_json(value: Value) {
    match value {
        Value::String(s) => drop(Zeroizing::new(s)),
        Value::Object(map) => map.into_iter().for_each(|(_, v)| zeroize_json(v)),
        Value::Array(items) => items.into_iter().for_each(zeroize_json),
        _ => {}
    }
}

/// An AWS shared-credentials file (`[profile]` section) for `nhi agent --aws-role R=FILE`.
pub fn aws_credentials_file(issued: &Issued, profile: &str) -> Result<Zeroizing<String>> {
    let (Some(key_id), Some(secret_key)) = (&issued.aws_access_key_id, &issued.aws_secret_access_key) else {
        return Err(Error::Failed("the broker's answer lacks AWS credentials".into()));
    };
    Ok(Zeroizing::new(format!(
        "[{profile}]\naws_access_key_id = {key_id}\naws_secret_access_key = {}\naws_session_token = {}\n# expires {}\n",
        secret_key.expose(),
        issued.access_token.expose(),
        rfc3339(issued.expires_at())
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Secret;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_780_800), "2026-11-27T12:00:00Z");
        assert_eq!(rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn credential_process_is_exactly_the_aws_document() {
        let issued = Issued {
            token_type: TokenType::AwsCredentials,
            access_token: Secret::new("session".into()),
            expires_in: 900,
            issued_at: 1_795_780_800,
            lease_id: "l".into(),
            scope: None,
            secret_version: None,
            aws_access_key_id: Some("ASIAX".into()),
            aws_secret_access_key: Some(Secret::new("key".into())),
        };
        let document: Value = serde_json::from_str(&credential_process(&issued).unwrap()).unwrap();
        assert_eq!(
            document,
            json!({"Version": 1, "AccessKeyId": "ASIAX", "SecretAccessKey": "key", "SessionToken": "session",
                   "Expiration": "2026-11-27T12:15:00Z"})
        );
    }
}
