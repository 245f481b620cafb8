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
    client: reqwest::Client,
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
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| BrokerError::Config(format!("http client: {e}")))?;
        Ok(Self {
            client,
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
        let unavailable = |_| BrokerError::RotationHookFailed("Unreachable".into());
        let mut response = self
            .client
            .post(url)
            .bearer_auth(auth.token.expose())
            .json(&serde_json::json!({ "action": action.as_str(), "secret_id": secret_id, "version": version }))
            .send()
            .await
            .map_err(unavailable)?;
        if !response.status().is_success() {
            return Err(BrokerError::RotationHookFailed(format!(
                "HTTP{}",
                response.status().as_u16()
            )));
        }
        if action != HookAction::Create {
            return Ok(None);
        }
        let mut body = Zeroizing::new(Vec::new());
        while let Some(chunk) = response.chunk().await.map_err(unavailable)? {
            if body.len() + chunk.len() > MAX_HOOK_RESPONSE_BYTES {
                return Err(BrokerError::Internal("rotation hook response too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        let created: HookCreated = serde_json::from_slice(&body)
            .map_err(|_| BrokerError::Internal("rotation hook response is not {\"value\": ...}".into()))?;
        let value = SecretString::new(created.value);
        if value.is_empty() {
            return Err(BrokerError::Internal("rotation hook returned an empty value".into()));
        }
        Ok(Some(value))
    }
}
