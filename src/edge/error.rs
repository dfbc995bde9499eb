//! The one place where errors become HTTP responses.
//!
//! Handlers return `Result<Response, ApiError>`; [`ApiError::into_response`]
//! is the only code that builds an error body. The body is always
//! `{"error": {"code": "...", "message": "..."}}`, never a stack trace.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::domain::FieldError;
use crate::edge::auth::AuthError;
use crate::edge::limits::RateLimited;
use crate::ledger::LedgerError;

pub type Body = Full<Bytes>;

/// Every way a client request can fail, with its status and stable code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{}", .0.message())]
    Unauthorized(Unauthenticated),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    /// `allow`: the methods the path has, as the `Allow` header lists them.
    MethodNotAllowed { allow: String },
    #[error("{0}")]
    InvalidRequest(String),
    #[error("request body is larger than {limit_bytes} bytes")]
    PayloadTooLarge { limit_bytes: usize },
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    #[error("insufficient funds")]
    InsufficientFunds,
    #[error("the switch declined the transaction")]
    DeclinedBySwitch,
    #[error("transaction id was already used for a different request")]
    TransactionIdReused,
    #[error("account {account} is not in {currency}")]
    CurrencyMismatch { account: String, currency: String },
    #[error("account already exists")]
    AccountExists,
    #[error("transaction is still being processed")]
    TransactionInProgress { retry_after: Duration },
    #[error("too many requests; retry after {retry_after_s} s")]
    RateLimited {
        limit: u32,
        remaining: u32,
        reset_s: u64,
        retry_after_s: u64,
    },
    #[error("the gateway is at capacity; retry shortly")]
    Overloaded,
    /// `limits.redis.failure_mode = "closed"` and Redis did not answer.
    #[error("the rate limiter is unavailable; retry shortly")]
    RateLimitUnavailable,
    #[error("no switch is available to process the transaction")]
    NoSwitchAvailable,
    #[error("the ledger is unavailable")]
    LedgerUnavailable,
    #[error("the request did not finish within its deadline")]
    DeadlineExceeded,
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::InsufficientFunds
            | ApiError::DeclinedBySwitch
            | ApiError::TransactionIdReused
            | ApiError::CurrencyMismatch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::AccountExists | ApiError::TransactionInProgress { .. } => {
                StatusCode::CONFLICT
            }
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NoSwitchAvailable
            | ApiError::LedgerUnavailable
            | ApiError::Overloaded
            | ApiError::RateLimitUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, machine-readable code of the JSON body.
    pub fn code(&self) -> &'static str {
        self.error_code().as_str()
    }

    pub fn error_code(&self) -> ErrorCode {
        match self {
            ApiError::Unauthorized(_) => ErrorCode::Unauthorized,
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::NotFound => ErrorCode::NotFound,
            ApiError::MethodNotAllowed { .. } => ErrorCode::MethodNotAllowed,
            ApiError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            ApiError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            ApiError::RequestTimeout => ErrorCode::RequestTimeout,
            ApiError::UnsupportedMediaType => ErrorCode::UnsupportedMediaType,
            ApiError::InsufficientFunds => ErrorCode::InsufficientFunds,
            ApiError::DeclinedBySwitch => ErrorCode::DeclinedBySwitch,
            ApiError::TransactionIdReused => ErrorCode::TransactionIdReused,
            ApiError::CurrencyMismatch { .. } => ErrorCode::CurrencyMismatch,
            ApiError::AccountExists => ErrorCode::AccountExists,
            ApiError::TransactionInProgress { .. } => ErrorCode::TransactionInProgress,
            ApiError::RateLimited { .. } => ErrorCode::RateLimited,
            ApiError::Overloaded => ErrorCode::Overloaded,
            ApiError::RateLimitUnavailable => ErrorCode::RateLimitUnavailable,
            ApiError::NoSwitchAvailable => ErrorCode::NoSwitchAvailable,
            ApiError::LedgerUnavailable => ErrorCode::LedgerUnavailable,
            ApiError::DeadlineExceeded => ErrorCode::DeadlineExceeded,
            ApiError::Internal => ErrorCode::Internal,
        }
    }

    /// The JSON error body of docs/design.md ("Errors").
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.error_code(),
                message: self.to_string(),
            },
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let mut resp = json_response(self.status(), &self.body());
        let headers = resp.headers_mut();
        match &self {
            ApiError::MethodNotAllowed { allow } => {
                if let Ok(v) = HeaderValue::from_str(allow) {
                    headers.insert(header::ALLOW, v);
                }
            }
            ApiError::TransactionInProgress { retry_after } => {
                headers.insert(header::RETRY_AFTER, retry_after.as_secs().max(1).into());
            }
            ApiError::RateLimited {
                limit,
                remaining,
                reset_s,
                retry_after_s,
            } => {
                headers.insert(header::RETRY_AFTER, (*retry_after_s).max(1).into());
                headers.insert("ratelimit-limit", (*limit).into());
                headers.insert("ratelimit-remaining", (*remaining).into());
                headers.insert("ratelimit-reset", (*reset_s).into());
            }
            ApiError::Overloaded | ApiError::RateLimitUnavailable => {
                headers.insert(header::RETRY_AFTER, 1.into());
            }
            ApiError::Unauthorized(why) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(why.challenge()),
                );
            }
            ApiError::Forbidden(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(INSUFFICIENT_SCOPE),
                );
            }
            _ => {}
        }
        resp
    }
}

/// Why a request is not authenticated, as far as the client is told: the
/// body's message and the `WWW-Authenticate` challenge (RFC 6750 §3). A
/// missing token gets a bare challenge (§3.1: no error code); any token that
/// does not verify is `invalid_token`, saying only whether it expired, is not
/// valid yet, or is otherwise invalid: never which key, claim or check failed
/// (that is in the audit log and `switchboard_requests_denied_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthenticated {
    Missing,
    Expired,
    NotYetValid,
    Invalid,
    /// mTLS: the token's `sub` is not the client certificate's subject.
    ClientCertMismatch,
}

/// A 403's challenge (RFC 6750 §3.1: the token lacks the role).
const INSUFFICIENT_SCOPE: &str = concat!(
    r#"Bearer realm="switchboard", error="insufficient_scope", "#,
    r#"error_description="the token lacks the role this route needs""#
);

impl Unauthenticated {
    pub fn message(self) -> &'static str {
        match self {
            Unauthenticated::Missing => "a bearer token is required",
            Unauthenticated::Expired => "the bearer token has expired",
            Unauthenticated::NotYetValid => "the bearer token is not valid yet",
            Unauthenticated::Invalid => "the bearer token is invalid",
            Unauthenticated::ClientCertMismatch => {
                "the token's subject does not match the client certificate"
            }
        }
    }

    /// The `WWW-Authenticate` value; `error_description` is [`Self::message`].
    pub fn challenge(self) -> &'static str {
        macro_rules! invalid {
            ($description:literal) => {
                concat!(
                    r#"Bearer realm="switchboard", error="invalid_token", error_description=""#,
                    $description,
                    '"'
                )
            };
        }
        match self {
            Unauthenticated::Missing => r#"Bearer realm="switchboard""#,
            Unauthenticated::Expired => invalid!("the bearer token has expired"),
            Unauthenticated::NotYetValid => invalid!("the bearer token is not valid yet"),
            Unauthenticated::Invalid => invalid!("the bearer token is invalid"),
            Unauthenticated::ClientCertMismatch => {
                invalid!("the token's subject does not match the client certificate")
            }
        }
    }
}

impl From<&AuthError> for Unauthenticated {
    fn from(e: &AuthError) -> Self {
        match e {
            AuthError::Missing => Unauthenticated::Missing,
            AuthError::Expired => Unauthenticated::Expired,
            AuthError::NotYetValid => Unauthenticated::NotYetValid,
            AuthError::TooLarge
            | AuthError::Malformed
            | AuthError::BadSignature
            | AuthError::UnknownKid
            | AuthError::Algorithm
            | AuthError::Issuer
            | AuthError::Audience
            | AuthError::Lifetime
            | AuthError::Claims(_)
            | AuthError::NoKey
            | AuthError::KeyFile { .. } => Unauthenticated::Invalid,
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::InvalidRequest(e.to_string())
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::Unavailable(reason) => {
                tracing::error!(%reason, "ledger unavailable");
                ApiError::LedgerUnavailable
            }
            LedgerError::AccountNotFound | LedgerError::TransactionNotFound => ApiError::NotFound,
            LedgerError::AccountExists => ApiError::AccountExists,
            LedgerError::CurrencyMismatch { account, currency } => ApiError::CurrencyMismatch {
                account: account.to_string(),
                currency: currency.to_string(),
            },
            LedgerError::InvalidState(reason) => {
                tracing::error!(%reason, "ledger refused a state change");
                ApiError::Internal
            }
            LedgerError::LimitReached(why) => ApiError::InvalidRequest(why),
            // Only the reconciler fences its writes; never a request's answer.
            LedgerError::LeaseLost => {
                tracing::error!("a lease lost reached the HTTP layer");
                ApiError::Internal
            }
        }
    }
}

impl From<RateLimited> for ApiError {
    fn from(r: RateLimited) -> Self {
        ApiError::RateLimited {
            limit: r.info.limit,
            remaining: r.info.remaining,
            reset_s: r.info.reset_s,
            retry_after_s: r.retry_after_s,
        }
    }
}

/// Every error body: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Error, description = "Every error body. Never a stack trace.")]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    #[schema(inline)]
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    #[schema(inline)]
    pub code: ErrorCode,
    /// For people; may change.
    pub message: String,
}

/// Stable, machine-readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
    TransactionInProgress,
    AccountExists,
    InsufficientFunds,
    TransactionIdReused,
    DeclinedBySwitch,
    CurrencyMismatch,
    RateLimited,
    Internal,
    NoSwitchAvailable,
    LedgerUnavailable,
    Overloaded,
    RateLimitUnavailable,
    DeadlineExceeded,
}

impl ErrorCode {
    /// As serialized (`snake_case`): for metrics, logs and tests.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::TransactionInProgress => "transaction_in_progress",
            ErrorCode::AccountExists => "account_exists",
            ErrorCode::InsufficientFunds => "insufficient_funds",
            ErrorCode::TransactionIdReused => "transaction_id_reused",
            ErrorCode::DeclinedBySwitch => "declined_by_switch",
            ErrorCode::CurrencyMismatch => "currency_mismatch",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::NoSwitchAvailable => "no_switch_available",
            ErrorCode::LedgerUnavailable => "ledger_unavailable",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::RateLimitUnavailable => "rate_limit_unavailable",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
        }
    }
}

/// A JSON response. Our bodies are plain values and structs: serialising
/// them cannot fail.
pub fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_auth_errors() -> Vec<AuthError> {
        vec![
            AuthError::Missing,
            AuthError::TooLarge,
            AuthError::Malformed,
            AuthError::BadSignature,
            AuthError::UnknownKid,
            AuthError::Algorithm,
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::Issuer,
            AuthError::Audience,
            AuthError::Lifetime,
            AuthError::Claims("exp is required"),
            AuthError::NoKey,
            AuthError::KeyFile {
                file: "k.pem".into(),
                kid: Some("k1".into()),
                problem: "x".into(),
            },
        ]
    }

    #[test]
    fn a_401_says_why_in_rfc_6750_terms_and_nothing_more() {
        for e in all_auth_errors() {
            let why = Unauthenticated::from(&e);
            let resp = ApiError::Unauthorized(why).into_response();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
            let challenge = resp.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
            assert!(
                challenge.starts_with(r#"Bearer realm="switchboard""#),
                "{challenge}"
            );
            if matches!(e, AuthError::Missing) {
                assert_eq!(challenge, r#"Bearer realm="switchboard""#, "RFC 6750 3.1");
            } else {
                let description = format!(r#"error_description="{}""#, why.message());
                assert!(
                    challenge.contains(r#"error="invalid_token""#),
                    "{challenge}"
                );
                assert!(challenge.ends_with(&description), "{challenge}");
            }
            let lower = challenge.to_lowercase();
            for secret in [
                "kid",
                "key",
                "signature",
                "algorithm",
                "issuer",
                "audience",
                "claim",
            ] {
                assert!(!lower.contains(secret), "{e:?}: {challenge} says {secret}");
            }
        }
        let say = |e: AuthError| Unauthenticated::from(&e).message();
        assert!(say(AuthError::Expired).contains("expired"));
        assert!(say(AuthError::Missing).contains("required"));
        assert!(say(AuthError::BadSignature).contains("invalid"));
        assert_eq!(say(AuthError::BadSignature), say(AuthError::UnknownKid));
    }

    #[test]
    fn a_403_names_insufficient_scope() {
        let resp = ApiError::Forbidden("the token lacks the role this route needs").into_response();
        let challenge = resp.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(
            challenge.contains(r#"error="insufficient_scope""#),
            "{challenge}"
        );
    }
}
