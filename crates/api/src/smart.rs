//! SMART discovery, the token endpoint and the server's JWKS.

use crate::state::AppState;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use std::collections::HashMap;

pub async fn configuration(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "issuer": state.base_url,
        "jwks_uri": format!("{}/.well-known/jwks.json", state.base_url),
        "token_endpoint": state.tokens.token_url(),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384", "RS512"],
        "scopes_supported": [
            "system/*.read", "system/*.write", "system/*.*", "system/*.rs", "system/*.cruds",
            "system/Patient.read", "system/Patient.rs", "system/Patient.write", "system/Patient.cruds", "system/AuditEvent.read", "system/AuditEvent.rs"
        ],
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
        "response_types_supported": ["token"],
        "code_challenge_methods_supported": []
    }))
}

pub async fn jwks(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.tokens.jwks())
}

/// `POST /auth/token` (application/x-www-form-urlencoded). Errors are RFC 6749 JSON, not
/// OperationOutcomes: this is an OAuth endpoint.
pub async fn token(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let oauth_error = |status: StatusCode, code: &str, desc: &str| {
        HttpResponse::build(status)
            .insert_header(("Cache-Control", "no-store"))
            .insert_header(("Pragma", "no-cache"))
            .json(json!({"error": code, "error_description": desc}))
    };
    let ctype = req
        .headers()
        .get("content-type")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !ctype.starts_with("application/x-www-form-urlencoded") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the token request must be application/x-www-form-urlencoded",
        );
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    match state.tokens.issue(&form).await {
        Ok(t) => HttpResponse::Ok()
            .insert_header(("Cache-Control", "no-store"))
            .insert_header(("Pragma", "no-cache"))
            .json(t),
        Err(e) => {
            let status = match e.code() {
                "invalid_client" => StatusCode::UNAUTHORIZED,
                "temporarily_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            tracing::info!(error = e.code(), reason = %e, "token request refused");
            let mut resp = oauth_error(status, e.code(), &e.to_string());
            if status == StatusCode::SERVICE_UNAVAILABLE {
                // As every 503 of the service: when to try again (RFC 9110 §10.2.3).
                resp.headers_mut().insert(
                    actix_web::http::header::RETRY_AFTER,
                    actix_web::http::header::HeaderValue::from_static("5"),
                );
            }
            resp
        }
    }
}
