//! The broker's data model. Plain data: storage layout lives in the adapters, rules in `policy`.

mod audit;
mod events;
mod grant;
mod keys;
mod lease;
mod registry;
mod urls;

pub use audit::*;
pub use events::*;
pub use grant::*;
pub use keys::*;
pub use lease::*;
pub use registry::*;
pub use urls::is_allowed_url;

/// Unix time in seconds.
pub type UnixTime = i64;

/// `id` as `to_string` writes it (hyphenated, lowercase), without the formatting machinery: a
/// request makes two (its lease's and its audit event's).
pub fn id_text(id: uuid::Uuid) -> String {
    id.hyphenated()
        .encode_lower(&mut uuid::Uuid::encode_buffer())
        .to_owned()
}

/// Token type URIs (RFC 8693 section 3).
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const GRANT_TYPE_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// A lease on a stored secret's CURRENT value (broker-defined token type).
pub const TOKEN_TYPE_SECRET: &str = "urn:nhi-broker:token-type:secret";
/// AWS STS session credentials for a role the grant allows (broker-defined token type).
pub const TOKEN_TYPE_AWS_CREDENTIALS: &str = "urn:nhi-broker:token-type:aws-credentials";
/// STS session bounds: shorter sessions cannot be issued, so grants below the minimum are refused.
pub const STS_MIN_SESSION_SECONDS: i64 = 900;
pub const STS_MAX_SESSION_SECONDS: i64 = 43_200;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn an_id_text_is_what_to_string_writes(bits in any::<u128>()) {
            let id = uuid::Uuid::from_u128(bits);
            prop_assert_eq!(super::id_text(id), id.to_string());
        }
    }
}
