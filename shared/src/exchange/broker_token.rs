//! Broker-issued JWTs: ES256, signed through the `TokenSigner` port (KMS in production).
//! Follows the JWT access token profile (RFC 9068): `typ: at+jwt`, `client_id` = grant id.

use crate::domain::UnixTime;
use crate::error::{BrokerError, Result};
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

#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    typ: &'static str,
    kid: &'a str,
}

/// A signed token and the key (`kid`) that signed it.
#[derive(Debug)]
pub struct Signed {
    pub token: SecretString,
    pub key_id: String,
}

/// The JWS `typ` of broker access tokens (RFC 9068).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// Sign a broker access token (`typ: at+jwt`) with the active key.
pub async fn mint(signer: &dyn TokenSigner, claims: &BrokerClaims<'_>) -> Result<Signed> {
    sign_jwt(signer, ACCESS_TOKEN_TYP, claims).await
}

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
    let key_id = signer.active_key_id().await?;
    let header = Header {
        alg: "ES256",
        typ,
        kid: &key_id,
    };
    // One buffer for the whole token: header, claims, and room for the signature `sign` adds.
    let mut signing_input = String::with_capacity(MAX_SIGNING_INPUT_BYTES / 4);
    let mut json = Vec::with_capacity(512);
    push_b64_json(&mut signing_input, &mut json, &header)?;
    signing_input.push('.');
    push_b64_json(&mut signing_input, &mut json, claims)?;
    if signing_input.len() > MAX_SIGNING_INPUT_BYTES {
        return Err(BrokerError::Internal(
            "token claims exceed the KMS RAW signing limit".into(),
        ));
    }
    Ok(Unsigned { key_id, signing_input })
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

/// Appends `value` as base64url JSON to `out` (`json` is scratch space).
fn push_b64_json<T: Serialize>(out: &mut String, json: &mut Vec<u8>, value: &T) -> Result<()> {
    json.clear();
    serde_json::to_writer(&mut *json, value).map_err(|e| BrokerError::Internal(e.to_string()))?;
    crate::b64::url_encode_into(json, out);
    Ok(())
}
