//! The HTTPS client for secrets whose owning system makes their values (rotation hooks).

use crate::domain::UnixTime;
use crate::error::{BrokerError, Result};
use crate::exchange::broker_token;
use crate::ports::{Clock, HookAction, RotationHook, TokenSigner};
use crate::redact::SecretString;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// Calls a secret's rotation hook over HTTPS (plain HTTP only to loopback), authenticated by a
/// short-lived broker-signed JWT (`typ: nhi-rotation+jwt`, `aud` = the hook URL) the owning system
/// verifies against the broker's JWKS. Responses are capped and never logged.
pub struct HttpRotationHook {
    client: crate::https::HttpsClient,
    signer: Arc<dyn TokenSigner>,
    clock: Arc<dyn Clock>,
    broker_issuer: String,
}

/// Rotation hook responses above this are refused.
const MAX_HOOK_RESPONSE_BYTES: usize = 64 * 1024;

#[derive(Serialize)]
struct HookClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    iat: UnixTime,
    exp: UnixTime,
    jti: String,
    nhi_action: &'static str,
    nhi_version: &'a str,
}

#[derive(serde::Deserialize)]
struct HookCreated {
    value: String,
}

impl HttpRotationHook {
    pub fn new(signer: Arc<dyn TokenSigner>, clock: Arc<dyn Clock>, broker_issuer: &str) -> Result<Self> {
        Ok(Self {
            // No redirects (crate::https), 10 s for the whole call.
            client: crate::https::HttpsClient::new(Duration::from_secs(10)),
            signer,
            clock,
            broker_issuer: broker_issuer.to_string(),
        })
    }
}

#[async_trait::async_trait]
impl RotationHook for HttpRotationHook {
    async fn call(
        &self,
        url: &str,
        action: HookAction,
        secret_id: &str,
        version: &str,
    ) -> Result<Option<SecretString>> {
        if !crate::domain::is_allowed_url(url) {
            return Err(BrokerError::Config("rotation hook url must be https".into()));
        }
        let now = self.clock.now();
        let claims = HookClaims {
            iss: &self.broker_issuer,
            aud: url,
            sub: secret_id,
            iat: now,
            exp: now + 60,
            jti: uuid::Uuid::new_v4().to_string(),
            nhi_action: action.as_str(),
            nhi_version: version,
        };
        let auth = broker_token::sign_jwt(self.signer.as_ref(), "nhi-rotation+jwt", &claims).await?;
        let authorization = Zeroizing::new(format!("Bearer {}", auth.token.expose()));
        let request = serde_json::json!({ "action": action.as_str(), "secret_id": secret_id, "version": version });
        let max_body = if action == HookAction::Create {
            MAX_HOOK_RESPONSE_BYTES
        } else {
            0
        };
        let response = self
            .client
            .post(
                url,
                &[
                    ("authorization", authorization.as_str()),
                    ("content-type", "application/json"),
                ],
                request.to_string().into_bytes(),
                max_body,
            )
            .await
            .map_err(|e| match e {
                crate::https::HttpsError::TooLarge => BrokerError::Internal("rotation hook response too large".into()),
                _ => BrokerError::RotationHookFailed("Unreachable".into()),
            })?;
        if !response.is_success() {
            return Err(BrokerError::RotationHookFailed(format!("HTTP{}", response.status)));
        }
        if action != HookAction::Create {
            return Ok(None);
        }
        let created: HookCreated = serde_json::from_slice(&response.body)
            .map_err(|_| BrokerError::Internal("rotation hook response is not {\"value\": ...}".into()))?;
        let value = SecretString::new(created.value);
        if value.is_empty() {
            return Err(BrokerError::Internal("rotation hook returned an empty value".into()));
        }
        Ok(Some(value))
    }
}
