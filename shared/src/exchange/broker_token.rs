//! Broker-issued JWTs: ES256, signed through the `TokenSigner` port (KMS in production).
//! Follows the JWT access token profile (RFC 9068): `typ: at+jwt`, `client_id` = grant id.

use crate::domain::UnixTime;
use crate::error::{BrokerError, Result};
use crate::json_text::push_str;
use crate::ports::TokenSigner;
use crate::redact::SecretString;
use serde::Serialize;

/// KMS signs at most 4096 bytes with `MessageType=RAW`; larger inputs are refused up front.
pub const MAX_SIGNING_INPUT_BYTES: usize = 4096;

/// Who the token was issued for, by which identity provider (RFC 8693 section 4.1 `act`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActorClaim<'a> {
    pub iss: &'a str,
    pub sub: &'a str,
}

/// The claims of a broker access token, borrowed from the lease they are written for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokerClaims<'a> {
    pub iss: &'a str,
    pub sub: &'a str,
    pub aud: &'a str,
    pub exp: UnixTime,
    pub iat: UnixTime,
    pub nbf: UnixTime,
    /// Equals the lease id.
    pub jti: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub scope: &'a str,
    /// The grant the token was issued under.
    pub client_id: &'a str,
    pub act: ActorClaim<'a>,
    /// Environment of the target, so relying parties can refuse cross-environment use.
    pub env: &'a str,
}

/// A signed token and the key (`kid`) that signed it.
#[derive(Debug)]
pub struct Signed {
    pub token: SecretString,
    pub key_id: String,
}

/// The JWS `typ` of broker access tokens (RFC 9068).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// Sign any claims as a compact JWS with the active key; `typ` tells token kinds apart, so a
/// relying party can never mistake one for another.
pub async fn sign_jwt<T: Serialize>(signer: &dyn TokenSigner, typ: &'static str, claims: &T) -> Result<Signed> {
    prepare(signer, typ, claims).await?.sign(signer).await
}

/// A token ready to be signed: its key is chosen and its signing input built, so the caller can
/// record which key signs it while the signature is being made.
pub struct Unsigned {
    pub key_id: String,
    signing_input: String,
}

/// The header and claims of a JWS for the active key, not yet signed.
pub async fn prepare<T: Serialize>(signer: &dyn TokenSigner, typ: &'static str, claims: &T) -> Result<Unsigned> {
    let claims = serde_json::to_string(claims).map_err(|e| BrokerError::Internal(e.to_string()))?;
    prepare_with(signer, typ, |json| json.push_str(&claims)).await
}

/// [`prepare`] for a broker access token, its claims written by [`BrokerClaims::write_json`]
/// (every JWT exchange makes one).
pub async fn prepare_access(signer: &dyn TokenSigner, claims: &BrokerClaims<'_>) -> Result<Unsigned> {
    prepare_with(signer, ACCESS_TOKEN_TYP, |json| claims.write_json(json)).await
}

/// A JWS of the claims `write_claims` writes as JSON, for the active key.
async fn prepare_with(
    signer: &dyn TokenSigner,
    typ: &'static str,
    write_claims: impl FnOnce(&mut String),
) -> Result<Unsigned> {
    let key_id = signer.active_key_id().await?;
    // One buffer for the whole token: header, claims, and room for the signature `sign` adds;
    // another for the JSON of each part in turn.
    let mut signing_input = String::with_capacity(MAX_SIGNING_INPUT_BYTES / 4);
    let mut json = String::with_capacity(512);
    // The header as serde_json writes `{alg, typ, kid}`.
    json.push_str(r#"{"alg":"ES256","typ":"#);
    push_str(&mut json, typ);
    json.push_str(r#","kid":"#);
    push_str(&mut json, &key_id);
    json.push('}');
    crate::b64::url_encode_into(json.as_bytes(), &mut signing_input);
    signing_input.push('.');
    json.clear();
    write_claims(&mut json);
    crate::b64::url_encode_into(json.as_bytes(), &mut signing_input);
    if signing_input.len() > MAX_SIGNING_INPUT_BYTES {
        return Err(BrokerError::Internal(
            "token claims exceed the KMS RAW signing limit".into(),
        ));
    }
    Ok(Unsigned { key_id, signing_input })
}

impl BrokerClaims<'_> {
    /// The claims as serde_json writes them (members in declaration order, `scope` left out when
    /// empty), written directly: serde_json escapes strings a byte at a time.
    pub fn write_json(&self, out: &mut String) {
        // Every member by name: a claim added to `BrokerClaims` fails to compile here until it
        // is written.
        let BrokerClaims {
            iss,
            sub,
            aud,
            exp,
            iat,
            nbf,
            jti,
            scope,
            client_id,
            act: ActorClaim {
                iss: actor_issuer,
                sub: actor_subject,
            },
            env,
        } = self;
        let mut digits = itoa::Buffer::new();
        out.push_str(r#"{"iss":"#);
        push_str(out, iss);
        out.push_str(r#","sub":"#);
        push_str(out, sub);
        out.push_str(r#","aud":"#);
        push_str(out, aud);
        out.push_str(r#","exp":"#);
        out.push_str(digits.format(*exp));
        out.push_str(r#","iat":"#);
        out.push_str(digits.format(*iat));
        out.push_str(r#","nbf":"#);
        out.push_str(digits.format(*nbf));
        out.push_str(r#","jti":"#);
        push_str(out, jti);
        if !scope.is_empty() {
            out.push_str(r#","scope":"#);
            push_str(out, scope);
        }
        out.push_str(r#","client_id":"#);
        push_str(out, client_id);
        out.push_str(r#","act":{"iss":"#);
        push_str(out, actor_issuer);
        out.push_str(r#","sub":"#);
        push_str(out, actor_subject);
        out.push_str(r#"},"env":"#);
        push_str(out, env);
        out.push('}');
    }
}

impl Unsigned {
    pub async fn sign(self, signer: &dyn TokenSigner) -> Result<Signed> {
        let signature = signer.sign_es256(&self.key_id, self.signing_input.as_bytes()).await?;
        let mut token = self.signing_input;
        token.push('.');
        crate::b64::url_encode_into(&signature, &mut token);
        Ok(Signed {
            token: SecretString::new(token),
            key_id: self.key_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::strategies::text;
    use crate::testing::LocalSigner;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use proptest::prelude::*;

    /// What serde_json writes of a token's header.
    #[derive(Serialize)]
    struct Header<'a> {
        alg: &'static str,
        typ: &'a str,
        kid: &'a str,
    }

    fn decoded(segment: &str) -> String {
        String::from_utf8(URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
    }

    proptest! {
        #[test]
        fn access_token_claims_are_what_serde_json_writes(
            strings in proptest::collection::vec(text(), 9),
            times in proptest::array::uniform3(any::<i64>()),
        ) {
            let claims = BrokerClaims {
                iss: &strings[0],
                sub: &strings[1],
                aud: &strings[2],
                exp: times[0],
                iat: times[1],
                nbf: times[2],
                jti: &strings[3],
                scope: &strings[4],
                client_id: &strings[5],
                act: ActorClaim { iss: &strings[6], sub: &strings[7] },
                env: &strings[8],
            };
            let mut json = String::new();
            claims.write_json(&mut json);
            prop_assert_eq!(json, serde_json::to_string(&claims).unwrap());
        }
    }

    #[tokio::test]
    async fn both_preparations_write_the_header_and_claims_serde_json_writes() {
        let signer = LocalSigner::generate("key-\"1\"\\");
        let claims = BrokerClaims {
            iss: "https://broker",
            sub: "repo:o/r",
            aud: "t",
            exp: 2,
            iat: 1,
            nbf: 1,
            jti: "j",
            scope: "",
            client_id: "g",
            act: ActorClaim {
                iss: "https://idp",
                sub: "repo:o/r",
            },
            env: "prod",
        };
        for (unsigned, typ) in [
            (prepare_access(&signer, &claims).await.unwrap(), ACCESS_TOKEN_TYP),
            (prepare(&signer, "x+jwt", &claims).await.unwrap(), "x+jwt"),
        ] {
            let (header, payload) = unsigned.signing_input.split_once('.').unwrap();
            let expected = Header {
                alg: "ES256",
                typ,
                kid: "key-\"1\"\\",
            };
            assert_eq!(decoded(header), serde_json::to_string(&expected).unwrap());
            assert_eq!(decoded(payload), serde_json::to_string(&claims).unwrap());
            assert_eq!(unsigned.key_id, "key-\"1\"\\");
        }
    }
}
