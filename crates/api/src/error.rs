//! `ApiError`: the only place an OperationOutcome is built.
//!
//! | variant | status | issue code |
//! |---|---|---|
//! | `BadRequest` | 400 | `invalid` |
//! | `Invalid` | 400 | per issue (`structure`, `value`...) |
//! | `NoToken` | 401 | `login` (+ `WWW-Authenticate: Bearer realm="epaccs"`) |
//! | `Unauthorized` | 401 | `login` (+ `WWW-Authenticate: Bearer ... error="invalid_token"`) |
//! | `Forbidden` | 403 | `forbidden` |
//! | `InsufficientScope` | 403 | `forbidden` (+ `WWW-Authenticate: Bearer ... error="insufficient_scope"`) |
//! | `Withheld` | 403 | `suppressed` |
//! | `NotFound` | 404 | `not-found` |
//! | `MethodNotAllowed` | 405 | `not-supported` |
//! | `Conflict` | 409 | `conflict` |
//! | `Gone` | 410 | `deleted` |
//! | `PreconditionFailed` | 412 | `conflict` |
//! | `PreconditionRequired` | 428 | `business-rule` |
//! | `PayloadTooLarge` | 413 | `too-long` |
//! | `UriTooLong` | 414 | `too-long` |
//! | `UnsupportedMediaType` | 415 | `not-supported` |
//! | `Unprocessable` | 422 | per issue (`processing`, `invariant`, `too-long`...) |
//! | `HeadersTooLarge` | 431 | `too-long` |
//! | `Unavailable` | 503 | `transient` (+ `Retry-After`) |
//! | `Internal` | 500 | `exception` (never echoes internals) |

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use epaccs_fhir::validate::{Issue, IssueSeverity, ValidationError};
use epaccs_store::StoreError;
use serde_json::{json, Value};

/// The one public text of a read the sharing rules refuse (the reason is in the audit trail).
pub const WITHHELD: &str = "withheld by the sharing rules; in an emergency, request access with purpose of use BTG and a reason";
/// The one public text of anything else the sharing rules refuse: a write, or a search of the
/// audit trail (the reason is in the audit trail).
pub const REFUSED: &str = "refused by the sharing rules; the reason is recorded in the audit trail";

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("the resource is not valid")]
    Invalid(Vec<Issue>),
    /// No bearer credentials at all (no header, or another scheme): RFC 6750 §3.1 answers
    /// with the scheme only, no error code.
    #[error("{0}")]
    NoToken(String),
    /// A bearer token that was refused.
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// The token's scopes do not cover the interaction (403, RFC 6750 `insufficient_scope`).
    #[error("{0}")]
    InsufficientScope(String),
    #[error("{0}")]
    Withheld(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    PreconditionFailed(String),
    /// The change needs `If-Match` (RFC 6585).
    #[error("{0}")]
    PreconditionRequired(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UriTooLong(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the resource cannot be processed")]
    Unprocessable(Vec<Issue>),
    #[error("{0}")]
    HeadersTooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

/// Builds an OperationOutcome from issues.
pub fn operation_outcome(issues: &[Issue]) -> Value {
    let issues: Vec<Value> = issues
        .iter()
        .map(|i| {
            let severity = match i.severity {
                IssueSeverity::Error => "error",
                IssueSeverity::Warning => "warning",
                IssueSeverity::Information => "information",
            };
            let mut v = json!({"severity": severity, "code": i.code, "diagnostics": i.message});
            if let Some(p) = &i.path {
                v["expression"] = json!([p]);
            }
            v
        })
        .collect();
    json!({"resourceType": "OperationOutcome", "issue": issues})
}

/// An informational or warning OperationOutcome (for `Prefer: return=OperationOutcome` and
/// bundle entries).
pub fn outcome_info(
    severity: IssueSeverity,
    code: &'static str,
    message: impl Into<String>,
) -> Value {
    operation_outcome(&[Issue {
        severity,
        code,
        path: None,
        message: message.into(),
    }])
}

impl ApiError {
    fn issues(&self) -> Vec<Issue> {
        let one = |code: &'static str, msg: &str| vec![Issue::error(code, None, msg.to_string())];
        match self {
            ApiError::BadRequest(m) => one("invalid", m),
            ApiError::Invalid(issues) | ApiError::Unprocessable(issues) => issues.clone(),
            ApiError::NoToken(m) | ApiError::Unauthorized(m) => one("login", m),
            ApiError::Forbidden(m) | ApiError::InsufficientScope(m) => one("forbidden", m),
            ApiError::Withheld(m) => one("suppressed", m),
            ApiError::NotFound(m) => one("not-found", m),
            ApiError::MethodNotAllowed(m) => one("not-supported", m),
            ApiError::Conflict(m) => one("conflict", m),
            ApiError::Gone(m) => one("deleted", m),
            ApiError::PreconditionFailed(m) => one("conflict", m),
            ApiError::PreconditionRequired(m) => one("business-rule", m),
            ApiError::PayloadTooLarge(m)
            | ApiError::UriTooLong(m)
            | ApiError::HeadersTooLarge(m) => one("too-long", m),
            ApiError::UnsupportedMediaType(m) => one("not-supported", m),
            ApiError::Unavailable(m) => one("transient", m),
            ApiError::Internal(_) => {
                one("exception", "internal error; the incident has been logged")
            }
        }
    }

    /// The OperationOutcome of this error (also used for bundle entries).
    pub fn outcome(&self) -> Value {
        operation_outcome(&self.issues())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::NoToken(_) | ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::InsufficientScope(_) | ApiError::Withheld(_) => {
                StatusCode::FORBIDDEN
            }
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::PreconditionRequired(_) => StatusCode::PRECONDITION_REQUIRED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut b = HttpResponse::build(self.status_code());
        b.insert_header((header::CONTENT_TYPE, crate::respond::FHIR_JSON_UTF8));
        match self {
            ApiError::NoToken(_) => {
                b.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"epaccs\""));
            }
            ApiError::InsufficientScope(_) => {
                b.insert_header((
                    header::WWW_AUTHENTICATE,
                    "Bearer realm=\"epaccs\", error=\"insufficient_scope\"",
                ));
            }
            ApiError::Unauthorized(m) => {
                let m = m.replace('"', "'");
                b.insert_header((header::WWW_AUTHENTICATE, format!("Bearer realm=\"epaccs\", error=\"invalid_token\", error_description=\"{m}\"")));
            }
            ApiError::Unavailable(_) => {
                b.insert_header((header::RETRY_AFTER, "5"));
            }
            ApiError::Internal(m) => tracing::error!(error = %m, "internal error"),
            _ => {}
        }
        b.body(self.outcome().to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound("resource not found".into()),
            StoreError::Gone { version_id, .. } => {
                ApiError::Gone(format!("the resource was deleted (version {version_id})"))
            }
            // The rules' reason ("no consent to share is in force", "the person's consent
            // refuses this access") would tell the caller the person's consent state: it stays
            // in the audit record (the gate's log), and every caller gets the one public text.
            // Callers that may not learn that a withheld record exists never get here: the
            // store answers them as if nothing were there.
            StoreError::Withheld { .. } => ApiError::Withheld(WITHHELD.into()),
            StoreError::Forbidden { .. } => ApiError::Forbidden(REFUSED.into()),
            StoreError::NotOwner(m) => ApiError::Forbidden(m),
            StoreError::PreconditionFailed(m) => ApiError::PreconditionFailed(m),
            StoreError::PreconditionRequired(m) => ApiError::PreconditionRequired(m),
            StoreError::Conflict(m) => ApiError::Conflict(m),
            StoreError::Unprocessable(issues) => ApiError::Unprocessable(issues),
            StoreError::BadRequest(m) => ApiError::BadRequest(m),
            StoreError::Unavailable(m) => ApiError::Unavailable(m),
            StoreError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        match e {
            ValidationError::Malformed(m) => {
                ApiError::BadRequest(format!("the body is not valid JSON: {m}"))
            }
            ValidationError::WrongType(m) | ValidationError::Unstorable(m) => {
                ApiError::BadRequest(m)
            }
            ValidationError::Invalid(issues) => ApiError::Unprocessable(issues),
        }
    }
}

impl From<epaccs_fhir::query::QueryError> for ApiError {
    fn from(e: epaccs_fhir::query::QueryError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}
