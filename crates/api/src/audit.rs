//! The audit trail over FHIR: `GET /AuditEvent?patient=&agent=&date=` for privacy officers.

use crate::error::ApiError;
use crate::extract::{query_pairs, Caller};
use crate::respond::{self, bundle};
use crate::state::AppState;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use epaccs_core::Interaction;
use epaccs_store::audit::AuditQuery;
use serde_json::{json, Value};

fn parse_query(pairs: &[(String, String)]) -> Result<AuditQuery, ApiError> {
    let mut q = AuditQuery {
        count: epaccs_fhir::query::DEFAULT_COUNT,
        ..Default::default()
    };
    for (k, v) in pairs {
        match k.as_str() {
            "_id" => q.id = Some(v.clone()),
            "patient" | "entity" => {
                // `id`, `Patient/id` or the absolute URL.
                let id = v.rsplit_once("Patient/").map_or(v.as_str(), |(_, id)| id);
                q.patient = Some(id.to_string());
            }
            // A client id or an SDS user id, bare or as `system|value`.
            "agent" | "agent:identifier" | "agent.identifier" => q.agent = Some(v.rsplit('|').next().unwrap_or(v).to_string()),
            "date" => {
                let mut ds = epaccs_fhir::query::parse_dates("date", v)?;
                if ds.len() != 1 {
                    return Err(ApiError::BadRequest(format!("date '{v}': give one date per parameter (repeat it to AND)")));
                }
                q.dates.append(&mut ds);
            }
            "subtype" | "type" => {
                let code = v.rsplit('|').next().unwrap_or(v);
                match code {
                    "110127" | "110113" => q.break_glass = Some(true),
                    "rest" => q.break_glass = Some(false),
                    _ => return Err(ApiError::BadRequest(format!("AuditEvent {k} '{v}' is not searchable here (use 110113, 110127 or rest)"))),
                }
            }
            "outcome" => q.outcome = Some(v.clone()),
            "_count" => q.count = v.parse::<usize>().map_err(|_| ApiError::BadRequest("_count must be a whole number".into()))?.clamp(1, epaccs_fhir::query::MAX_COUNT),
            "_cursor" => {
                let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(v).map_err(|_| ApiError::BadRequest("bad cursor".into()))?;
                let (rec, id): (i64, String) = serde_json::from_slice(&raw).map_err(|_| ApiError::BadRequest("bad cursor".into()))?;
                q.before = Some((rec, id));
            }
            "_format" | "_pretty" => {}
            other => return Err(ApiError::BadRequest(format!("'{other}' is not an AuditEvent search parameter here (patient, agent, date, type, subtype, outcome, _count)"))),
        }
    }
    Ok(q)
}

pub async fn search(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let pairs = query_pairs(req.query_string());
    let b = caller
        .audited(&state, "search-type", Some("AuditEvent"), async {
            caller.require("AuditEvent", Interaction::Search)?;
            let q = parse_query(&pairs)?;
            let gate = caller.gate.clone();
            let (rows, next) = state.store.search_audit(gate, q).await?;
            let base = &state.base_url;
            let entries: Vec<Value> = rows
                .iter()
                .filter_map(|r| serde_json::from_str::<Value>(r).ok())
                .map(|v| {
                    let id = v.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
                    json!({"fullUrl": format!("{base}/AuditEvent/{id}"), "resource": v, "search": {"mode": "match"}})
                })
                .collect();
            let mut links = vec![("self", format!("{base}/AuditEvent?{}", req.query_string()))];
            if let Some(n) = next {
                let c = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&n).unwrap_or_default());
                let mut p: Vec<(String, String)> = pairs.iter().filter(|(k, _)| k != "_cursor").cloned().collect();
                p.push(("_cursor".into(), c));
                let qs: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(p).finish();
                links.push(("next", format!("{base}/AuditEvent?{qs}")));
            }
            Ok(bundle("searchset", None, links, entries))
        })
        .await?;
    Ok(respond::json(StatusCode::OK, &b))
}

pub async fn read(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let v = caller
        .audited(&state, "read", Some("AuditEvent"), async {
            caller.require("AuditEvent", Interaction::Read)?;
            let q = AuditQuery {
                id: Some(id.clone()),
                count: 1,
                ..Default::default()
            };
            let gate = caller.gate.clone();
            let (rows, _) = state.store.search_audit(gate, q).await?;
            rows.into_iter()
                .next()
                .ok_or_else(|| ApiError::NotFound(format!("AuditEvent/{id} not found")))
        })
        .await?;
    Ok(HttpResponse::Ok()
        .content_type(respond::FHIR_JSON_UTF8)
        .body(v))
}

/// Audit records are never changed or deleted.
pub async fn immutable() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed("the audit trail is append-only: AuditEvents cannot be created, changed or deleted by clients".into()))
}
