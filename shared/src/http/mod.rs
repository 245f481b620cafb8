//! HTTP surface of the exchange function, shared by the Lambda binary and the local server.
//!
//! `handle` never fails and never panics on input: every outcome is a response in the standard
//! shape (RFC 6749 5.2 / RFC 8693 2.2.2 for the token endpoint), and no response or log line
//! carries a token.

mod form;
pub mod gateway;
pub mod gateway_event;
mod token_response;

use crate::aws::call_counter::CallCounter;
use crate::domain::{
    GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_AWS_CREDENTIALS, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT, TOKEN_TYPE_SECRET,
};
use crate::error::{BrokerError, RequestRejection, Result};
use crate::exchange::{ExchangeRequest, ExchangeService, RequestedCredential};
use crate::redact::SecretString;
use form::Form;
use http::{HeaderValue, Method, StatusCode, header};
use lambda_http::{Body, Request, Response};
use std::time::{Duration, Instant};

/// Bodies above this are refused before parsing.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
const MAX_TARGET_BYTES: usize = 2048;
const MAX_SCOPE_BYTES: usize = 1024;
const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";
/// How long relying parties may cache the JWKS; key rotation publishes new keys at least this long
/// before they sign.
pub const JWKS_MAX_AGE_SECONDS: i64 = 300;
const JWKS_CACHE_CONTROL: &str = "public, max-age=300";

pub struct BrokerApi {
    pub exchange: ExchangeService,
    /// AWS requests sent, for the per-request `aws_calls` log field (exact on Lambda, where an
    /// execution environment serves one request at a time).
    pub calls: CallCounter,
    /// Every request is answered within this, inside the function's own timeout: past it, the
    /// caller gets 503 `temporarily_unavailable` and nothing is released.
    pub deadline: Duration,
}

/// Fits the template's 10 s function timeout, with room for the response.
pub const DEFAULT_REQUEST_DEADLINE: Duration = Duration::from_secs(8);
/// What a 503 tells the caller to wait before retrying.
const RETRY_AFTER_SECONDS: &str = "1";

impl BrokerApi {
    pub fn new(exchange: ExchangeService) -> Self {
        Self::with_call_counter(exchange, CallCounter::default())
    }

    pub fn with_call_counter(exchange: ExchangeService, calls: CallCounter) -> Self {
        Self {
            exchange,
            calls,
            deadline: DEFAULT_REQUEST_DEADLINE,
        }
    }

    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    pub async fn handle(&self, request: Request) -> Response<Body> {
        let started = Instant::now();
        let calls_before = self.calls.total();
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let request_id = request_id(&request);
        let route = async {
            match (path.as_str(), &method) {
                ("/token", &Method::POST) => self.token(&request, &request_id).await,
                ("/.well-known/jwks.json", &Method::GET) => self.jwks().await,
                (METADATA_PATH, &Method::GET) => Ok(self.metadata()),
                ("/introspect", &Method::POST) => self.introspect(&request, &request_id).await,
                ("/revoke", &Method::POST) => self.revoke(&request, &request_id).await,
                ("/token" | "/introspect" | "/revoke", _) | ("/.well-known/jwks.json" | METADATA_PATH, _) => {
                    Err(BrokerError::MethodNotAllowed)
                }
                _ => Err(BrokerError::NotFound),
            }
        };
        // Dropping the work at the deadline is safe: every write is one atomic transaction, and
        // nothing is returned unless it landed.
        let result = tokio::time::timeout(self.deadline, route)
            .await
            .unwrap_or(Err(BrokerError::DeadlineExceeded));
        let mut response = result.unwrap_or_else(|err| error_response(&err, &request_id));
        set_request_id_header(&mut response, &request_id);
        // Strings as `&str`, not `%`: recorded directly rather than through a formatter (same
        // output, two microseconds less per request).
        tracing::info!(
            method = method.as_str(),
            path = path.as_str(),
            request_id = request_id.as_str(),
            status = response.status().as_u16(),
            latency_ms = started.elapsed().as_millis() as u64,
            aws_calls = self.calls.total().saturating_sub(calls_before),
            "request"
        );
        response
    }

    async fn token(&self, request: &Request, request_id: &str) -> Result<Response<Body>> {
        let exchange_request = match parse_token_request(request) {
            Ok(mut parsed) => {
                parsed.request_id = request_id.to_string();
                parsed
            }
            Err(refused) => {
                self.exchange
                    .audit_refusal(
                        crate::domain::AuditAction::TokenExchange,
                        &refused.error,
                        refused.subject_token.as_ref(),
                        None,
                        request_id,
                    )
                    .await;
                return Err(refused.error);
            }
        };
        let issued = self.exchange.exchange(exchange_request).await?;
        Ok(json_text_response(
            StatusCode::OK,
            token_response::body(&issued),
            "no-store",
        ))
    }

    /// A form for `/introspect` or `/revoke` (`token` required); a refusal is audited like any.
    async fn presented_token(
        &self,
        request: &Request,
        action: crate::domain::AuditAction,
        bearer: Option<&SecretString>,
        request_id: &str,
    ) -> Result<SecretString> {
        match Form::read(request).and_then(|mut form| form.presented_token()) {
            Ok(token) => Ok(token),
            Err(err) => {
                self.exchange
                    .audit_refusal(action, &err, None, bearer, request_id)
                    .await;
                Err(err)
            }
        }
    }

    /// RFC 7662. The caller authenticates with its own workload token (`Authorization: Bearer`).
    async fn introspect(&self, request: &Request, request_id: &str) -> Result<Response<Body>> {
        let bearer = bearer_token(request);
        let token = self
            .presented_token(
                request,
                crate::domain::AuditAction::Introspect,
                bearer.as_ref(),
                request_id,
            )
            .await?;
        let body = self.exchange.introspect(bearer.as_ref(), &token, request_id).await?;
        Ok(json_response(StatusCode::OK, &body, "no-store"))
    }

    /// RFC 7009: a broker JWT revokes itself (possession is proof); a bare lease id revokes only
    /// with its holder's own workload token as Bearer. The answer is 200 whether or not anything
    /// was revoked, so a caller learns nothing about tokens that are not theirs.
    async fn revoke(&self, request: &Request, request_id: &str) -> Result<Response<Body>> {
        let bearer = bearer_token(request);
        let token = self
            .presented_token(request, crate::domain::AuditAction::Revoke, bearer.as_ref(), request_id)
            .await?;
        self.exchange.revoke(bearer.as_ref(), &token, request_id).await?;
        let mut response = Response::new(Body::Empty);
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(response)
    }

    /// RFC 8414 authorization server metadata.
    fn metadata(&self) -> Response<Body> {
        let issuer = &self.exchange.settings.broker_issuer;
        let body = serde_json::json!({
            "issuer": issuer,
            "token_endpoint": format!("{issuer}/token"),
            "introspection_endpoint": format!("{issuer}/introspect"),
            "revocation_endpoint": format!("{issuer}/revoke"),
            "introspection_endpoint_auth_methods_supported": ["bearer_workload_token"],
            // A JWT needs none (possession); a lease id needs its holder's workload token.
            "revocation_endpoint_auth_methods_supported": ["none", "bearer_workload_token"],
            "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
            "grant_types_supported": [GRANT_TYPE_TOKEN_EXCHANGE],
            "response_types_supported": [],
            "token_endpoint_auth_methods_supported": ["none"],
            "subject_token_types_supported": [TOKEN_TYPE_JWT, TOKEN_TYPE_ID_TOKEN],
            "requested_token_types_supported": [TOKEN_TYPE_JWT, TOKEN_TYPE_SECRET, TOKEN_TYPE_AWS_CREDENTIALS],
            "scopes_supported": [],
        });
        json_response(StatusCode::OK, &body, "public, max-age=300")
    }

    async fn jwks(&self) -> Result<Response<Body>> {
        let jwks = self.exchange.signer.public_jwks().await?;
        let body = serde_json::to_value(&jwks).map_err(|e| BrokerError::Internal(e.to_string()))?;
        Ok(json_response(StatusCode::OK, &body, JWKS_CACHE_CONTROL))
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value, cache_control: &'static str) -> Response<Body> {
    json_text_response(status, body.to_string(), cache_control)
}

/// A JSON body already serialized.
fn json_text_response(status: StatusCode, body: String, cache_control: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::Text(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache_control));
    if cache_control == "no-store" {
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    }
    response
}

/// The one place errors become responses: fixed text and the request id to the client, details
/// (with the same request id) to the log.
pub fn error_response(err: &BrokerError, request_id: &str) -> Response<Body> {
    let client = err.client_error();
    if client.status.is_server_error() {
        tracing::error!(error = %err, request_id, "request failed");
    } else {
        tracing::info!(error = %err, reason = err.reason_code(), request_id, "request refused");
    }
    let body = serde_json::json!({
        "error": client.error,
        "error_description": client.description,
        "request_id": request_id,
    });
    let mut response = json_response(client.status, &body, "no-store");
    if client.status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
    }
    if client.status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
    }
    if client.status == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST, GET"));
    }
    response
}

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// API Gateway's id for the request (also in its access log), else a fresh time-ordered one.
fn request_id(request: &Request) -> String {
    use lambda_http::RequestExt;
    use lambda_http::request::RequestContext;
    let from_gateway = match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => ctx.request_id.as_deref(),
        _ => None,
    };
    request_id_or_new(from_gateway)
}

/// `from_gateway` when it is a usable id (non-empty, printable ASCII, at most 128 bytes), else a
/// fresh UUIDv7.
fn request_id_or_new(from_gateway: Option<&str>) -> String {
    match from_gateway {
        Some(id) if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) => id.to_string(),
        _ => crate::domain::id_text(uuid::Uuid::now_v7()),
    }
}

fn set_request_id_header(response: &mut Response<Body>, request_id: &str) {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
}

/// The caller's credential from `Authorization: Bearer <token>`, held redacted.
fn bearer_token(request: &Request) -> Option<SecretString> {
    let value = request.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| SecretString::new(token.to_string()))
}

/// A token request refused while parsing, with the subject token if one was presented (its
/// fingerprint goes into the refusal's audit event).
#[derive(Debug)]
pub struct RefusedRequest {
    pub error: BrokerError,
    pub subject_token: Option<SecretString>,
}

/// Parse and validate an RFC 8693 token request. Repeated parameters are refused (RFC 6749 3.2
/// forbids them); unknown parameters are ignored as RFC 6749 requires.
pub fn parse_token_request(request: &Request) -> std::result::Result<ExchangeRequest, RefusedRequest> {
    let mut form = Form::read(request).map_err(|error| RefusedRequest {
        error,
        subject_token: None,
    })?;
    // Read first, so every later refusal can name the token it refused (by fingerprint). Held
    // once: the request takes it only when the whole form is valid.
    let (mut subject_token, repeated) = match form.single("subject_token") {
        Ok(token) => (token.map(|token| SecretString::new(token.into_owned())), None),
        Err(error) => (None, Some(error)),
    };
    parse_form(form, repeated, &mut subject_token).map_err(|error| RefusedRequest { error, subject_token })
}

fn parse_form(
    mut form: Form,
    subject_token_repeated: Option<BrokerError>,
    subject_token: &mut Option<SecretString>,
) -> Result<ExchangeRequest> {
    use RequestRejection as R;
    let bad = |r: RequestRejection| BrokerError::BadRequest(r);
    let mut single = |name: &str| form.single(name);

    match single("grant_type")?.as_deref() {
        None => return Err(bad(R::MissingGrantType)),
        Some(GRANT_TYPE_TOKEN_EXCHANGE) => {}
        Some(_) => return Err(bad(R::UnsupportedGrantType)),
    }
    if let Some(error) = subject_token_repeated {
        return Err(error);
    }
    if subject_token.is_none() {
        return Err(bad(R::MissingSubjectToken));
    }
    match single("subject_token_type")?.as_deref() {
        None => return Err(bad(R::MissingSubjectTokenType)),
        Some(TOKEN_TYPE_JWT | TOKEN_TYPE_ID_TOKEN) => {}
        Some(_) => return Err(bad(R::UnsupportedSubjectTokenType)),
    }
    if single("actor_token")?.is_some() || single("actor_token_type")?.is_some() {
        return Err(bad(R::ActorToken));
    }
    let requested = match single("requested_token_type")?.as_deref() {
        None | Some(TOKEN_TYPE_JWT) => RequestedCredential::Jwt,
        Some(TOKEN_TYPE_SECRET) => RequestedCredential::Secret,
        Some(TOKEN_TYPE_AWS_CREDENTIALS) => RequestedCredential::AwsCredentials,
        Some(_) => return Err(bad(R::UnsupportedRequestedTokenType)),
    };
    let requested_ttl_seconds = match single("requested_expires_in")? {
        None => None,
        Some(raw) => match raw.parse::<i64>() {
            Ok(v) if (1..=43_200).contains(&v) => Some(v),
            _ => return Err(bad(R::BadExpiresIn)),
        },
    };
    let scope = match single("scope")? {
        None => Vec::new(),
        Some(raw) => parse_scope(&raw)?,
    };
    let mut targets = form.all("audience");
    targets.extend(form.all("resource"));
    let target = match targets.as_slice() {
        [] => return Err(bad(R::MissingTarget)),
        [one] if !one.is_empty() && one.len() <= MAX_TARGET_BYTES => one.to_string(),
        [_] => return Err(bad(R::BadTarget)),
        _ => return Err(bad(R::SeveralTargets)),
    };
    let Some(subject_token) = subject_token.take() else {
        return Err(bad(R::MissingSubjectToken));
    };
    Ok(ExchangeRequest {
        subject_token,
        requested,
        target,
        scope,
        requested_ttl_seconds,
        request_id: String::new(),
    })
}

/// RFC 6749 3.3: space-delimited scope-tokens of NQCHAR (%x21 / %x23-5B / %x5D-7E).
fn parse_scope(raw: &str) -> Result<Vec<String>> {
    if raw.len() > MAX_SCOPE_BYTES {
        return Err(BrokerError::BadRequest(RequestRejection::ScopeTooLong));
    }
    let mut scopes: Vec<String> = Vec::new();
    for token in raw.split(' ') {
        let valid = !token.is_empty()
            && token
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b));
        if !valid {
            return Err(BrokerError::BadRequest(RequestRejection::ScopeMalformed));
        }
        if !scopes.iter().any(|s| s == token) {
            scopes.push(token.to_string());
        }
    }
    Ok(scopes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_cache_header_matches_the_overlap_key_rotation_allows_for() {
        assert_eq!(JWKS_CACHE_CONTROL, format!("public, max-age={JWKS_MAX_AGE_SECONDS}"));
    }

    fn form(body: &str) -> Request {
        http::Request::builder()
            .method("POST")
            .uri("/token")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::Text(body.to_string()))
            .unwrap()
    }

    const BASE: &str = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange\
        &subject_token=a.b.c&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt";

    fn code(body: &str) -> &'static str {
        parse_token_request(&form(body)).unwrap_err().error.client_error().error
    }

    #[test]
    fn parses_a_complete_request() {
        let r = parse_token_request(&form(&format!(
            "{BASE}&audience=https%3A%2F%2Fapi&scope=read%20write%20read&requested_expires_in=60"
        )))
        .unwrap();
        assert_eq!(r.target, "https://api");
        assert_eq!(r.scope, vec!["read", "write"]);
        assert_eq!(r.requested_ttl_seconds, Some(60));
        assert_eq!(r.subject_token.expose(), "a.b.c");
    }

    #[test]
    fn refuses_bad_requests_with_the_right_code() {
        assert_eq!(code("grant_type=password&audience=x"), "unsupported_grant_type");
        assert_eq!(code("audience=x"), "invalid_request");
        assert_eq!(code(BASE), "invalid_request");
        assert_eq!(code(&format!("{BASE}&audience=a&audience=b")), "invalid_target");
        assert_eq!(code(&format!("{BASE}&audience=a&resource=b")), "invalid_target");
        assert_eq!(code(&format!("{BASE}&audience=a&scope=bad%22quote")), "invalid_scope");
        assert_eq!(code(&format!("{BASE}&audience=a&grant_type=x")), "invalid_request");
        assert_eq!(
            code(&format!("{BASE}&audience=a&requested_token_type=urn%3Aother")),
            "invalid_request"
        );
        assert_eq!(
            code(&format!("{BASE}&audience=a&requested_expires_in=-5")),
            "invalid_request"
        );
        assert_eq!(code(&format!("{BASE}&audience=a&actor_token=x")), "invalid_request");
        assert_eq!(code("%%%not-form"), "invalid_request");
    }

    #[test]
    fn refuses_wrong_content_type_and_oversized_bodies() {
        let mut r = form(BASE);
        r.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        assert_eq!(
            parse_token_request(&r).unwrap_err().error.client_error().error,
            "invalid_request"
        );
        let big = format!("{BASE}&audience={}", "a".repeat(MAX_BODY_BYTES));
        let err = parse_token_request(&form(&big)).unwrap_err().error;
        assert_eq!(err.client_error().status, StatusCode::PAYLOAD_TOO_LARGE);
    }
}
