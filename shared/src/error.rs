//! The one error type of the broker, with its single mapping to OAuth error responses (RFC 6749
//! section 5.2, RFC 8693 section 2.2.2), HTTP status codes, and retryability.
//!
//! Client-facing text is fixed per variant and written by us; it never contains a token, a key or
//! an AWS error message. AWS errors keep only their service, operation and error code.

use http::StatusCode;
use std::borrow::Cow;

/// Why a request was refused before any token was looked at (RFC 6749 5.2, RFC 8693 2.2.2,
/// RFC 7009/7662 form rules). Fixed descriptions; each has a stable audit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestRejection {
    WrongContentType,
    TooLarge,
    RepeatedParameter,
    MissingGrantType,
    UnsupportedGrantType,
    MissingSubjectToken,
    MissingSubjectTokenType,
    UnsupportedSubjectTokenType,
    ActorToken,
    UnsupportedRequestedTokenType,
    BadExpiresIn,
    MissingTarget,
    BadTarget,
    SeveralTargets,
    ScopeTooLong,
    ScopeMalformed,
    MissingToken,
}

impl RequestRejection {
    /// Status, OAuth error code and description.
    fn answer(self) -> (StatusCode, &'static str, &'static str) {
        let bad = StatusCode::BAD_REQUEST;
        match self {
            Self::WrongContentType => (
                bad,
                "invalid_request",
                "content type must be application/x-www-form-urlencoded",
            ),
            Self::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "request body is too large",
            ),
            Self::RepeatedParameter => (bad, "invalid_request", "a request parameter was repeated"),
            Self::MissingGrantType => (bad, "invalid_request", "grant_type is required"),
            Self::UnsupportedGrantType => (
                bad,
                "unsupported_grant_type",
                "grant_type must be urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            Self::MissingSubjectToken => (bad, "invalid_request", "subject_token is required"),
            Self::MissingSubjectTokenType => (bad, "invalid_request", "subject_token_type is required"),
            Self::UnsupportedSubjectTokenType => (bad, "invalid_request", "unsupported subject_token_type"),
            Self::ActorToken => (bad, "invalid_request", "actor_token (delegation) is not supported"),
            Self::UnsupportedRequestedTokenType => (bad, "invalid_request", "unsupported requested_token_type"),
            Self::BadExpiresIn => (
                bad,
                "invalid_request",
                "requested_expires_in must be an integer in 1..=43200",
            ),
            Self::MissingTarget => (bad, "invalid_request", "audience or resource is required"),
            Self::BadTarget => (bad, "invalid_target", "the target is empty or too long"),
            Self::SeveralTargets => (bad, "invalid_target", "exactly one audience or resource is supported"),
            Self::ScopeTooLong => (bad, "invalid_scope", "scope is too long"),
            Self::ScopeMalformed => (bad, "invalid_scope", "scope is malformed"),
            Self::MissingToken => (bad, "invalid_request", "token is required"),
        }
    }

    /// Stable machine-readable reason for audit records.
    pub fn code(self) -> &'static str {
        match self {
            Self::WrongContentType => "request_wrong_content_type",
            Self::TooLarge => "request_too_large",
            Self::RepeatedParameter => "request_repeated_parameter",
            Self::MissingGrantType => "request_missing_grant_type",
            Self::UnsupportedGrantType => "request_unsupported_grant_type",
            Self::MissingSubjectToken => "request_missing_subject_token",
            Self::MissingSubjectTokenType => "request_missing_subject_token_type",
            Self::UnsupportedSubjectTokenType => "request_unsupported_subject_token_type",
            Self::ActorToken => "request_actor_token",
            Self::UnsupportedRequestedTokenType => "request_unsupported_requested_token_type",
            Self::BadExpiresIn => "request_bad_expires_in",
            Self::MissingTarget => "request_missing_target",
            Self::BadTarget => "request_bad_target",
            Self::SeveralTargets => "request_several_targets",
            Self::ScopeTooLong => "request_scope_too_long",
            Self::ScopeMalformed => "request_scope_malformed",
            Self::MissingToken => "request_missing_token",
        }
    }
}

/// Why a subject token was not accepted. Fixed descriptions; never the token itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRejection {
    Malformed,
    TooLarge,
    UnsupportedAlgorithm,
    UntrustedIssuer,
    UnknownKey,
    KeyAlgorithmMismatch,
    BadSignature,
    Expired,
    NotYetValid,
    IssuedInFuture,
    MissingClaim,
    WrongIssuer,
    WrongAudience,
    Replayed,
    MissingJti,
    /// A broker token presented as subject token whose `jti` is on the deny list.
    Revoked,
    /// The header lists `crit` extensions; the broker understands none (RFC 7515 4.1.11).
    CriticalExtension,
    /// `exp`, `nbf` or `iat` is not a NumericDate the broker can represent (not a number, negative,
    /// or past year 9999).
    InvalidTimeClaim,
    /// The token's subject was revoked by an operator and the block has not been lifted.
    SubjectRevoked,
    /// The token's issuer was disabled (found by the release's own check, past any cache).
    IssuerDisabled,
}

impl TokenRejection {
    pub fn description(self) -> &'static str {
        match self {
            Self::Malformed => "subject_token is not a well-formed JWT",
            Self::TooLarge => "subject_token is too large",
            Self::UnsupportedAlgorithm => "subject_token algorithm is not allowed",
            Self::UntrustedIssuer => "subject_token issuer is not trusted",
            Self::UnknownKey => "subject_token signing key is unknown to its issuer",
            Self::KeyAlgorithmMismatch => "subject_token algorithm does not match its signing key",
            Self::BadSignature => "subject_token signature is invalid",
            Self::Expired => "subject_token has expired",
            Self::NotYetValid => "subject_token is not yet valid (nbf)",
            Self::IssuedInFuture => "subject_token was issued in the future (iat)",
            Self::MissingClaim => "subject_token lacks a required claim (iss, sub, aud, exp)",
            Self::WrongIssuer => "subject_token issuer does not match",
            Self::WrongAudience => "subject_token audience is not accepted by the broker",
            Self::Replayed => "subject_token has already been exchanged",
            Self::MissingJti => "subject_token lacks the jti its issuer requires for one-time use",
            Self::Revoked => "subject_token has been revoked",
            Self::CriticalExtension => {
                "subject_token header has critical extensions (crit) the broker does not support"
            }
            Self::InvalidTimeClaim => "subject_token has an exp, nbf or iat claim that is not a valid NumericDate",
            Self::SubjectRevoked => "the subject has been revoked; an operator must lift the revocation",
            Self::IssuerDisabled => "subject_token issuer is not trusted",
        }
    }

    /// Stable machine-readable reason for audit records and metrics.
    pub fn code(self) -> &'static str {
        match self {
            Self::Malformed => "token_malformed",
            Self::TooLarge => "token_too_large",
            Self::UnsupportedAlgorithm => "token_alg_not_allowed",
            Self::UntrustedIssuer => "token_untrusted_issuer",
            Self::UnknownKey => "token_unknown_kid",
            Self::KeyAlgorithmMismatch => "token_alg_key_mismatch",
            Self::BadSignature => "token_bad_signature",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::IssuedInFuture => "token_iat_in_future",
            Self::MissingClaim => "token_missing_claim",
            Self::WrongIssuer => "token_wrong_issuer",
            Self::WrongAudience => "token_wrong_audience",
            Self::Replayed => "token_replayed",
            Self::MissingJti => "token_missing_jti",
            Self::Revoked => "token_revoked",
            Self::CriticalExtension => "token_crit_unsupported",
            Self::InvalidTimeClaim => "token_invalid_time_claim",
            Self::SubjectRevoked => "subject_revoked",
            Self::IssuerDisabled => "issuer_disabled",
        }
    }
}

/// Why policy refused an authenticated subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyDenial {
    NoGrant,
    EnvironmentMismatch,
    ApprovalExpired,
    GrantRevoked,
    ScopeNotGranted,
    /// The grant's CEL condition is not true for this token and request.
    ConditionNotSatisfied,
}

impl PolicyDenial {
    pub fn description(self) -> &'static str {
        match self {
            Self::NoGrant => "no grant allows this subject to obtain a token for this target",
            Self::EnvironmentMismatch => "the matching grant is for another environment than the target",
            Self::ApprovalExpired => "the matching grant's approval has expired",
            Self::GrantRevoked => "the matching grant has been revoked",
            Self::ScopeNotGranted => "the requested scope is not allowed by any matching grant",
            Self::ConditionNotSatisfied => {
                "no grant allows this subject: its token or request does not satisfy the grant's condition expression"
            }
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::NoGrant => "policy_no_grant",
            Self::EnvironmentMismatch => "policy_environment_mismatch",
            Self::ApprovalExpired => "policy_approval_expired",
            Self::GrantRevoked => "policy_grant_revoked",
            Self::ScopeNotGranted => "policy_scope_not_granted",
            Self::ConditionNotSatisfied => "policy_condition_not_satisfied",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Malformed request: the text is a fixed description written by the broker.
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// Refused while parsing, before any token was looked at.
    #[error("bad request: {}", .0.code())]
    BadRequest(RequestRejection),
    #[error("invalid target: {0}")]
    InvalidTarget(&'static str),
    #[error("invalid scope: {0}")]
    InvalidScope(&'static str),
    #[error("subject token rejected: {}", .0.code())]
    TokenRejected(TokenRejection),
    #[error("policy denied: {}", .0.code())]
    PolicyDenied(PolicyDenial),
    /// Every grant for this subject and target has a claim condition the token does not meet:
    /// the first unmet claim of the first such grant (its name only, never the expected values).
    #[error("policy denied: claim {0} not satisfied")]
    ClaimNotSatisfied(String),
    /// The request's own deadline passed (AWS or an IdP too slow); nothing was released.
    #[error("request deadline exceeded")]
    DeadlineExceeded,
    /// The caller's own credential is missing or invalid (401).
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    /// The caller is known but not allowed (403).
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    /// An AWS call failed. Only the error code is kept: messages can echo request data.
    #[error("aws {service}.{operation} failed: {code}")]
    Aws {
        service: &'static str,
        operation: &'static str,
        code: String,
        retryable: bool,
    },
    /// The issuer's JWKS could not be fetched or parsed.
    #[error("jwks unavailable: {0}")]
    JwksUnavailable(&'static str),
    /// A secret's rotation hook (the owning system) was unreachable or refused: `Unreachable` or
    /// `HTTP<status>`. Retried by a later run.
    #[error("rotation hook failed: {0}")]
    RotationHookFailed(String),
    /// Stored data that does not parse: a bug or a hand-edited item.
    #[error("corrupt record: {0}")]
    CorruptRecord(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("internal: {0}")]
    Internal(String),
}

/// What a client is told: an OAuth error code, a fixed description and an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: Cow<'static, str>,
}

impl BrokerError {
    pub fn client_error(&self) -> ClientError {
        if let Self::ClaimNotSatisfied(claim) = self {
            return ClientError {
                status: StatusCode::BAD_REQUEST,
                error: "invalid_request",
                description: Cow::Owned(format!(
                    "no grant allows this subject: its token does not satisfy the grant's condition on claim {}",
                    printable_claim_name(claim)
                )),
            };
        }
        let (status, error, description) = match self {
            Self::InvalidRequest(d) => (StatusCode::BAD_REQUEST, "invalid_request", *d),
            Self::BadRequest(r) => r.answer(),
            Self::ClaimNotSatisfied(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "no grant allows this subject",
            ),
            Self::DeadlineExceeded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the broker is temporarily unable to serve this request; retry later",
            ),
            Self::InvalidTarget(d) => (StatusCode::BAD_REQUEST, "invalid_target", *d),
            Self::InvalidScope(d) => (StatusCode::BAD_REQUEST, "invalid_scope", *d),
            // RFC 8693 2.2.2: an invalid or unacceptable subject token is invalid_request.
            Self::TokenRejected(r) => (StatusCode::BAD_REQUEST, "invalid_request", r.description()),
            Self::PolicyDenied(PolicyDenial::ScopeNotGranted) => (
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                PolicyDenial::ScopeNotGranted.description(),
            ),
            Self::PolicyDenied(d) => (StatusCode::BAD_REQUEST, "invalid_request", d.description()),
            Self::Unauthenticated(d) => (StatusCode::UNAUTHORIZED, "invalid_token", *d),
            Self::Forbidden(d) => (StatusCode::FORBIDDEN, "access_denied", *d),
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "method not allowed on this endpoint",
            ),
            Self::JwksUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the subject token issuer's keys could not be retrieved; retry later",
            ),
            Self::Aws { retryable: true, .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the broker is temporarily unable to serve this request; retry later",
            ),
            Self::Aws { .. }
            | Self::RotationHookFailed(_)
            | Self::CorruptRecord(_)
            | Self::Config(_)
            | Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal error"),
        };
        ClientError {
            status,
            error,
            description: Cow::Borrowed(description),
        }
    }

    /// Stable reason code for the audit record of a refusal.
    pub fn reason_code(&self) -> &'static str {
        match self {
            Self::TokenRejected(r) => r.code(),
            Self::PolicyDenied(d) => d.code(),
            Self::BadRequest(r) => r.code(),
            Self::ClaimNotSatisfied(_) => "policy_claim_not_satisfied",
            Self::InvalidTarget(_) => "invalid_target",
            Self::InvalidScope(_) => "invalid_scope",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            _ => "invalid_request",
        }
    }

    /// Whether retrying the same work later may succeed (drives batch item failures and DLQs).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Aws { retryable, .. } => *retryable,
            Self::JwksUnavailable(_) | Self::RotationHookFailed(_) | Self::Internal(_) | Self::DeadlineExceeded => true,
            _ => false,
        }
    }

    /// Whether this is the caller's fault (logged at info) rather than ours (logged at error).
    pub fn is_client_error(&self) -> bool {
        self.client_error().status.is_client_error()
    }

    /// Build from any AWS SDK error, keeping only its code.
    pub fn aws<E>(service: &'static str, operation: &'static str, err: &aws_sdk_dynamodb::error::SdkError<E>) -> Self
    where
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
    {
        use aws_sdk_dynamodb::error::SdkError;
        let (code, retryable) = match err {
            SdkError::ServiceError(ctx) => {
                let code = ctx.err().code().unwrap_or("Unknown").to_string();
                let status = ctx.raw().status().as_u16();
                let retryable = status >= 500 || is_throttling(&code);
                (code, retryable)
            }
            SdkError::TimeoutError(_) => ("TimeoutError".to_string(), true),
            SdkError::DispatchFailure(_) => ("DispatchFailure".to_string(), true),
            SdkError::ResponseError(_) => ("ResponseError".to_string(), true),
            SdkError::ConstructionFailure(_) => ("ConstructionFailure".to_string(), false),
            _ => ("Unknown".to_string(), true),
        };
        Self::Aws {
            service,
            operation,
            code,
            retryable,
        }
    }

    /// The AWS error code, if this is an AWS error.
    pub fn aws_code(&self) -> Option<&str> {
        match self {
            Self::Aws { code, .. } => Some(code),
            _ => None,
        }
    }
}

fn is_throttling(code: &str) -> bool {
    matches!(
        code,
        "ThrottlingException"
            | "Throttling"
            | "ProvisionedThroughputExceededException"
            | "RequestLimitExceeded"
            | "TransactionConflictException"
            | "LimitExceededException"
            | "KMSInternalException"
            | "DependencyTimeoutException"
            | "InternalServerError"
    )
}

/// A claim name as RFC 6749 allows in `error_description` (%x20-21 / %x23-5B / %x5D-7E), at most
/// 64 characters: claim names come from grants (operators), but are shown to callers.
fn printable_claim_name(claim: &str) -> String {
    let clean: String = claim
        .chars()
        .filter(|c| matches!(*c as u32, 0x20..=0x21 | 0x23..=0x5B | 0x5D..=0x7E))
        .take(64)
        .collect();
    format!("'{clean}'")
}

pub type Result<T, E = BrokerError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_rejections_are_invalid_request_per_rfc8693() {
        let e = BrokerError::TokenRejected(TokenRejection::Expired).client_error();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.error, "invalid_request");
        assert_eq!(e.description, "subject_token has expired");
    }

    #[test]
    fn a_claim_denial_names_the_claim_in_printable_text_only() {
        let e = BrokerError::ClaimNotSatisfied("repository_owner\"\\\u{7}".into()).client_error();
        assert_eq!(e.error, "invalid_request");
        assert!(e.description.ends_with("claim 'repository_owner'"), "{}", e.description);
    }

    #[test]
    fn internal_errors_never_expose_details() {
        let e = BrokerError::Internal("secret detail at line 42".into()).client_error();
        assert_eq!(e.error, "server_error");
        assert_eq!(e.description, "internal error");
        let e = BrokerError::Aws {
            service: "kms",
            operation: "Sign",
            code: "AccessDeniedException".into(),
            retryable: false,
        }
        .client_error();
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.description.contains("AccessDenied"));
    }

    #[test]
    fn rotation_hook_failures_are_retried_and_never_shown() {
        let e = BrokerError::RotationHookFailed("HTTP503".into());
        assert!(e.is_retryable());
        assert!(e.aws_code().is_none(), "not an AWS error");
        assert_eq!(e.client_error().description, "internal error");
    }

    #[test]
    fn throttling_is_retryable_and_unavailable() {
        let e = BrokerError::Aws {
            service: "dynamodb",
            operation: "Query",
            code: "ThrottlingException".into(),
            retryable: true,
        };
        assert!(e.is_retryable());
        assert_eq!(e.client_error().status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.client_error().error, "temporarily_unavailable");
    }
}
