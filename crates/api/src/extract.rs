//! Extractors: the authenticated caller, FHIR bodies, and conditional-request headers.

use crate::error::ApiError;
use crate::state::AppState;
use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use epaccs_access::audit::{self, Outcome};
use epaccs_access::Gate;
use epaccs_core::{Interaction, Principal};
use futures::future::LocalBoxFuture;
use futures::StreamExt;
use std::sync::Arc;

/// The authenticated caller of this request, with its gate through the sharing layer.
pub struct Caller {
    pub gate: Arc<Gate>,
    /// Path and query as received, for the audit record.
    pub target: String,
}

impl Caller {
    pub fn principal(&self) -> &Principal {
        self.gate.principal()
    }

    /// Refuses the request unless the token's scopes allow `what` on `resource_type`.
    pub fn require(&self, resource_type: &str, what: Interaction) -> Result<(), ApiError> {
        if self.principal().scopes.allows(resource_type, what) {
            Ok(())
        } else {
            Err(ApiError::InsufficientScope(format!("the access token's scopes do not allow {what:?} on {resource_type} (insufficient_scope)")))
        }
    }

    /// The audit record of this request, from what the gate decided.
    pub fn audit_record(
        &self,
        interaction: &str,
        resource_type: Option<&str>,
        result: &Result<(), &ApiError>,
    ) -> audit::AuditRecord {
        let (outcome, description) = match result {
            Ok(()) => (Outcome::Success, None),
            Err(e @ (ApiError::Internal(_) | ApiError::Unavailable(_))) => {
                (Outcome::SeriousFailure, Some(e.to_string()))
            }
            // The caller was told one uniform text; the trail keeps the rules' own reasons.
            Err(e @ (ApiError::Withheld(_) | ApiError::Forbidden(_))) => {
                let reasons = self.gate.refusal_reasons();
                let d = if reasons.is_empty() {
                    e.to_string()
                } else {
                    format!("{e} ({})", reasons.join("; "))
                };
                (Outcome::MinorFailure, Some(d))
            }
            Err(e) => (Outcome::MinorFailure, Some(e.to_string())),
        };
        let req = audit::Request {
            principal: self.principal(),
            interaction,
            resource_type,
            query: &self.target,
            outcome,
            description,
        };
        audit::record(&req, &self.gate.log())
    }

    /// Runs `work`, then writes the audit record durably before any response leaves. Used by
    /// every read; writes put their audit record in the write's own transaction instead.
    pub async fn audited<T>(
        &self,
        state: &AppState,
        interaction: &str,
        resource_type: Option<&str>,
        work: impl std::future::Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        let result = work.await;
        let rec = self.audit_record(interaction, resource_type, &result.as_ref().map(|_| ()));
        state.store.append_audit(rec).await.map_err(|e| {
            ApiError::Unavailable(format!(
                "the access could not be audited, so it is refused: {e}"
            ))
        })?;
        result
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string);
        let target = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::Internal("no application state".into()))?;
            let no_token = || ApiError::NoToken("a bearer access token is required".into());
            let auth = auth.ok_or_else(no_token)?;
            let (scheme, token) = auth.split_once(' ').unwrap_or((auth.as_str(), ""));
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(no_token());
            }
            let token = Some(token.trim())
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    ApiError::Unauthorized(
                        "the Authorization header must be 'Bearer <token>'".into(),
                    )
                })?;
            let principal = state.tokens.verify(token).await.map_err(|e| match e {
                epaccs_auth::AuthError::Unavailable(m) => ApiError::Unavailable(m),
                other => {
                    // No verified caller, so no AuditEvent (see the README's sharing layer);
                    // the refusal is logged for security monitoring, never the token.
                    tracing::info!(target: "epaccs::auth", reason = %other, path = %target.split('?').next().unwrap_or_default(), "bearer token refused");
                    ApiError::Unauthorized(other.to_string())
                }
            })?;
            Ok(Caller {
                gate: Arc::new(Gate::new(principal, state.rules.clone())),
                target,
            })
        })
    }
}

/// The kinds of body a FHIR endpoint accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Fhir,
    JsonPatch,
}

/// A request body, read within the size limit, with its media type checked.
pub struct Body {
    pub bytes: web::Bytes,
    pub kind: BodyKind,
}

impl FromRequest for Body {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = req
            .app_data::<web::Data<AppState>>()
            .map(|s| s.limits.max_body_bytes)
            .unwrap_or(4 << 20);
        let ctype = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let mime = ctype.split(';').next().unwrap_or("").trim().to_string();
        let declared_len = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|h| h.to_str().ok())
            .and_then(|s| s.parse::<usize>().ok());
        let mut payload = payload.take();
        Box::pin(async move {
            let kind = match mime.as_str() {
                "application/fhir+json" | "application/json" | "application/json+fhir" => BodyKind::Fhir,
                "application/json-patch+json" => BodyKind::JsonPatch,
                "" => return Err(ApiError::UnsupportedMediaType("a Content-Type header is required: application/fhir+json".into())),
                other => return Err(ApiError::UnsupportedMediaType(format!("Content-Type {other} is not supported; use application/fhir+json (or application/json-patch+json for PATCH)"))),
            };
            if declared_len.is_some_and(|n| n > limit) {
                return Err(ApiError::PayloadTooLarge(format!(
                    "the body is larger than the limit of {limit} bytes"
                )));
            }
            let mut buf = web::BytesMut::new();
            while let Some(chunk) = payload.next().await {
                let chunk = chunk
                    .map_err(|e| ApiError::BadRequest(format!("could not read the body: {e}")))?;
                if buf.len() + chunk.len() > limit {
                    return Err(ApiError::PayloadTooLarge(format!(
                        "the body is larger than the limit of {limit} bytes"
                    )));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(Body {
                bytes: buf.freeze(),
                kind,
            })
        })
    }
}

/// Parses an `If-Match` / ETag value: `W/"3"` or `"3"`.
pub fn parse_etag(v: &str) -> Result<i64, ApiError> {
    let t = v.trim();
    let t = t.strip_prefix("W/").unwrap_or(t);
    t.trim_matches('"').parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "'{v}' is not a valid version ETag; expected W/\"<version>\""
        ))
    })
}

pub fn if_match(req: &HttpRequest) -> Result<Option<i64>, ApiError> {
    req.headers()
        .get(header::IF_MATCH)
        .map(|h| {
            h.to_str()
                .map_err(|_| ApiError::BadRequest("If-Match is not valid text".into()))
                .and_then(parse_etag)
        })
        .transpose()
}

/// What `Prefer: return=` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    Minimal,
    Representation,
    OperationOutcome,
}

/// `Prefer` header: return preference and strict/lenient handling.
#[derive(Debug, Clone, Copy)]
pub struct Prefer {
    pub ret: Return,
    pub strict: bool,
}

pub fn prefer(req: &HttpRequest) -> Prefer {
    let mut p = Prefer {
        ret: Return::Representation,
        strict: false,
    };
    for h in req.headers().get_all("prefer") {
        for part in h.to_str().unwrap_or("").split([',', ';']) {
            match part.trim().replace(' ', "").as_str() {
                "return=minimal" => p.ret = Return::Minimal,
                "return=representation" => p.ret = Return::Representation,
                "return=OperationOutcome" => p.ret = Return::OperationOutcome,
                "handling=strict" => p.strict = true,
                "handling=lenient" => p.strict = false,
                _ => {}
            }
        }
    }
    p
}

/// Query pairs of a URL query string (percent-decoded).
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}
