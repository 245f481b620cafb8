//! Talking to the broker: RFC 8693 exchange and RFC 7009 revocation, with retries.
//!
//! Retry policy: 503 (`temporarily_unavailable`: the broker released nothing), 502, 504 and 429
//! (API Gateway) and connection failures are retried with capped exponential backoff and full
//! jitter, waiting at least what `Retry-After` asks (capped); no other status is ever retried: a
//! 4xx will not change, and a 500 is left to the operator. Every attempt reads a fresh subject
//! token, since an issuer with one-time `jti` refuses a token the broker has already seen.

use crate::error::{Error, Result, transport};
use crate::identity::IdentitySource;
use crate::{Secret, is_allowed_url};
use base64::Engine;
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const SUBJECT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Jwt,
    Secret,
    AwsCredentials,
}

impl TokenType {
    pub fn uri(self) -> &'static str {
        match self {
            TokenType::Jwt => "urn:ietf:params:oauth:token-type:jwt",
            TokenType::Secret => "urn:nhi-broker:token-type:secret",
            TokenType::AwsCredentials => "urn:nhi-broker:token-type:aws-credentials",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExchangeRequest {
    /// The registered target: a JWT audience, a secret id or a role ARN.
    pub target: String,
    pub token_type: TokenType,
    pub scope: Option<String>,
    pub expires_in: Option<u64>,
}

/// What the broker released.
#[derive(Clone)]
pub struct Issued {
    pub token_type: TokenType,
    /// The JWT, the secret value, or the AWS session token.
    pub access_token: Secret,
    pub expires_in: i64,
    /// When it was received (seconds since the epoch): `expires_at = issued_at + expires_in`.
    pub issued_at: i64,
    /// The lease (a JWT's `jti`): what revocation names.
    pub lease_id: String,
    pub scope: Option<String>,
    pub secret_version: Option<String>,
    pub aws_access_key_id: Option<String>,
    pub aws_secret_access_key: Option<Secret>,
}

impl Issued {
    pub fn expires_at(&self) -> i64 {
        self.issued_at + self.expires_in
    }
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("lease_id", &self.lease_id)
            .field("scope", &self.scope)
            .field("secret_version", &self.secret_version)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// Wait before attempt `attempt` (1-based retries): full jitter over a capped exponential,
    /// never less than the server's `Retry-After` (itself capped).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exponential = self.base.saturating_mul(1u32 << attempt.min(16)).min(self.cap);
        let jittered = exponential.mul_f64(0.5 + crate::jitter_fraction() / 2.0);
        jittered.max(retry_after.map(|r| r.min(MAX_RETRY_AFTER)).unwrap_or_default())
    }
}

/// The broker's base URL and an HTTP client that never follows redirects.
#[derive(Clone)]
pub struct Broker {
    base: String,
    http: reqwest::Client,
    pub retry: RetryPolicy,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: i64,
    issued_token_type: String,
    #[serde(default)]
    lease_id: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    secret_version: Option<String>,
    #[serde(default)]
    aws_access_key_id: Option<String>,
    #[serde(default)]
    aws_secret_access_key: Option<String>,
}

#[derive(Deserialize, Default)]
struct ErrorResponse {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: Option<String>,
    #[serde(default)]
    request_id: Option<String>,
}

/// One attempt's result, before the retry decision.
enum Attempt {
    Done(reqwest::StatusCode, Vec<u8>),
    Retry(String, Option<Duration>, Option<String>),
}

/// The HTTP client every part of `nhi` uses: no redirects, bounded time, rustls.
pub fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("nhi/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|_| Error::Failed("cannot initialise TLS".into()))
}

impl Broker {
    pub fn new(base_url: &str) -> Result<Self> {
        let base = base_url.trim_end_matches('/').to_string();
        if !is_allowed_url(&base) {
            return Err(Error::Usage(
                "the broker URL (--url or NHI_URL) must be https:// (or http:// to 127.0.0.1 / localhost)".into(),
            ));
        }
        Ok(Self {
            base,
            http: http_client()?,
            retry: RetryPolicy::default(),
        })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// RFC 8693 exchange of a fresh subject token from `identity`.
    pub async fn exchange(&self, identity: &IdentitySource, request: &ExchangeRequest) -> Result<Issued> {
        let (status, body) = self
            .post_with_retries("/token", Some(identity), false, |subject| {
                let mut form = vec![
                    ("grant_type", GRANT_TYPE.to_string()),
                    ("subject_token_type", SUBJECT_TOKEN_TYPE.to_string()),
                    (
                        "subject_token",
                        subject.map(Secret::expose).unwrap_or_default().to_string(),
                    ),
                    ("audience", request.target.clone()),
                    ("requested_token_type", request.token_type.uri().to_string()),
                ];
                if let Some(scope) = &request.scope {
                    form.push(("scope", scope.clone()));
                }
                if let Some(seconds) = request.expires_in {
                    form.push(("requested_expires_in", seconds.to_string()));
                }
                zeroize::Zeroizing::new(serde_urlencoded::to_string(&form).unwrap_or_default())
            })
            .await?;
        let body = zeroize::Zeroizing::new(body);
        if !status.is_success() {
            return Err(refused(status.as_u16(), &body, None));
        }
        let answer: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| Error::Failed("the broker's answer is not a token response".into()))?;
        if answer.issued_token_type != request.token_type.uri() {
            return Err(Error::Failed(format!(
                "the broker issued {} instead of {}",
                answer.issued_token_type,
                request.token_type.uri()
            )));
        }
        let lease_id = match answer.lease_id.clone() {
            Some(id) => id,
            None => jwt_claim(&answer.access_token, "jti")
                .ok_or_else(|| Error::Failed("the broker's answer names no lease".into()))?,
        };
        let aws = request.token_type == TokenType::AwsCredentials;
        if aws && (answer.aws_access_key_id.is_none() || answer.aws_secret_access_key.is_none()) {
            return Err(Error::Failed("the broker's answer lacks the AWS key pair".into()));
        }
        Ok(Issued {
            token_type: request.token_type,
            access_token: Secret::new(answer.access_token),
            expires_in: answer.expires_in,
            issued_at: crate::now(),
            lease_id,
            scope: answer.scope,
            secret_version: answer.secret_version,
            aws_access_key_id: answer.aws_access_key_id,
            aws_secret_access_key: answer.aws_secret_access_key.map(Secret::new),
        })
    }

    /// RFC 7009 revocation of a broker JWT (possession is the proof) or of a lease id (with the
    /// holder's own workload token as Bearer). The broker answers 200 whether or not it knew it.
    pub async fn revoke(&self, token_or_lease: &Secret, holder: Option<&IdentitySource>) -> Result<()> {
        let is_jwt = token_or_lease.expose().split('.').count() == 3;
        let identity = match (is_jwt, holder) {
            (true, _) => None,
            (false, Some(identity)) => Some(identity),
            (false, None) => {
                return Err(Error::Usage(
                    "revoking a lease id needs the holder's workload identity (--github-actions, --k8s-token-file, ...)"
                        .into(),
                ));
            }
        };
        let body = zeroize::Zeroizing::new(
            serde_urlencoded::to_string([("token", token_or_lease.expose())]).unwrap_or_default(),
        );
        let (status, answer) = self
            .post_with_retries("/revoke", identity, true, |_| body.clone())
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(refused(status.as_u16(), &answer, None))
        }
    }

    /// POST a form built from a fresh subject token of `identity` (if any), retrying as the module
    /// doc says. With `bearer`, the subject token is sent as `Authorization: Bearer` instead.
    async fn post_with_retries(
        &self,
        path: &str,
        identity: Option<&IdentitySource>,
        bearer: bool,
        form: impl Fn(Option<&Secret>) -> zeroize::Zeroizing<String>,
    ) -> Result<(reqwest::StatusCode, Vec<u8>)> {
        let mut last: Option<(String, Option<Duration>, Option<String>)> = None;
        for attempt in 0..self.retry.max_attempts.max(1) {
            if let Some((_, retry_after, _)) = &last {
                tokio::time::sleep(self.retry.delay(attempt, *retry_after)).await;
            }
            let subject = match identity {
                Some(identity) => Some(identity.subject_token(&self.http).await?),
                None => None,
            };
            let body = form(subject.as_ref());
            match self
                .attempt(path, body.to_string(), subject.as_ref().filter(|_| bearer))
                .await
            {
                Attempt::Done(status, body) => return Ok((status, body)),
                Attempt::Retry(detail, retry_after, request_id) => last = Some((detail, retry_after, request_id)),
            }
        }
        let (detail, _, request_id) = last.unwrap_or_default();
        Err(Error::Unavailable { detail, request_id })
    }

    async fn attempt(&self, path: &str, body: String, bearer: Option<&Secret>) -> Attempt {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(body);
        if let Some(token) = bearer {
            request = request.header("authorization", format!("Bearer {}", token.expose()));
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return Attempt::Retry(transport(&e), None, None),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let header_request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = match response.bytes().await {
            Ok(bytes) => bytes.to_vec(),
            Err(e) => return Attempt::Retry(transport(&e), None, header_request_id),
        };
        if matches!(status.as_u16(), 429 | 502 | 503 | 504) {
            let parsed: ErrorResponse = serde_json::from_slice(&body).unwrap_or_default();
            let detail = match parsed.error.as_str() {
                "" => format!("HTTP {}", status.as_u16()),
                error => format!("{error} (HTTP {})", status.as_u16()),
            };
            return Attempt::Retry(detail, retry_after, parsed.request_id.or(header_request_id));
        }
        Attempt::Done(status, body)
    }
}

/// The broker's error answer as an [`Error`] (4xx: refused; anything else: unavailable).
fn refused(status: u16, body: &[u8], request_id: Option<String>) -> Error {
    let parsed: ErrorResponse = serde_json::from_slice(body).unwrap_or_default();
    let request_id = parsed.request_id.or(request_id);
    let error = if parsed.error.is_empty() {
        format!("HTTP {status}")
    } else {
        parsed.error
    };
    if (400..500).contains(&status) {
        Error::Refused {
            status,
            error,
            description: parsed.error_description,
            request_id,
        }
    } else {
        Error::Unavailable {
            detail: format!("{error} (HTTP {status})"),
            request_id,
        }
    }
}

/// A string claim of a JWT's payload, unverified (for the holder's own bookkeeping only).
pub fn jwt_claim(token: &str, claim: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get(claim)?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_jittered_and_honours_retry_after() {
        let policy = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        for attempt in 1..20 {
            let d = policy.delay(attempt, None);
            assert!(d <= Duration::from_secs(1), "{d:?}");
        }
        let first = policy.delay(1, None);
        assert!(
            first >= Duration::from_millis(100) && first <= Duration::from_millis(200),
            "{first:?}"
        );
        assert!(policy.delay(1, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        assert_eq!(policy.delay(1, Some(Duration::from_secs(3600))), MAX_RETRY_AFTER);
    }

    #[test]
    fn an_error_answer_keeps_the_brokers_words_and_request_id() {
        let body =
            br#"{"error":"invalid_target","error_description":"the target is not registered","request_id":"r-1"}"#;
        let err = refused(400, body, None);
        assert_eq!(err.exit_code(), crate::error::exit::REFUSED);
        assert_eq!(
            err.to_string(),
            "the broker refused the request (400): invalid_target: the target is not registered [request id r-1]"
        );
        assert_eq!(
            refused(500, b"{}", Some("r-2".into())).exit_code(),
            crate::error::exit::UNAVAILABLE
        );
    }

    #[test]
    fn a_cleartext_broker_url_is_refused() {
        assert!(matches!(Broker::new("http://broker.example.com"), Err(Error::Usage(_))));
        assert!(Broker::new("https://broker.example.com/").is_ok());
    }

    #[test]
    fn issued_debug_hides_every_credential() {
        let issued = Issued {
            token_type: TokenType::AwsCredentials,
            access_token: Secret::new("session-token-value".into()),
            expires_in: 900,
            issued_at: 0,
            lease_id: "l-1".into(),
            scope: None,
            secret_version: None,
            aws_access_key_id: Some("ASIAEXAMPLE".into()),
            aws_secret_access_key: Some(Secret::new("secret-key-value".into())),
        };
        let debug = format!("{issued:?}");
        assert!(
            !debug.contains("session-token-value") && !debug.contains("secret-key-value"),
            "{debug}"
        );
    }
}
