//! `GET /metadata`: the CapabilityStatement, generated from what is registered.

use crate::state::AppState;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use epaccs_fhir::registry::KINDS;
use serde_json::{json, Value};

/// The parameters `GET /AuditEvent` takes (name, type, FHIR SearchParameter id).
const AUDIT_SEARCH: &[(&str, &str, &str)] = &[
    ("patient", "reference", "AuditEvent-patient"),
    ("entity", "reference", "AuditEvent-entity"),
    ("agent", "reference", "AuditEvent-agent"),
    ("date", "date", "AuditEvent-date"),
    ("type", "token", "AuditEvent-type"),
    ("subtype", "token", "AuditEvent-subtype"),
    ("outcome", "token", "AuditEvent-outcome"),
];

pub fn statement(state: &AppState) -> Value {
    let params = state.store.params();
    let resources: Vec<Value> = KINDS
        .iter()
        .map(|k| {
            let mut search: Vec<Value> = params
                .for_type(k.name)
                .iter()
                .map(|p| json!({"name": p.code, "definition": p.url, "type": p.kind.as_str(), "documentation": p.description}))
                .collect();
            search.push(json!({"name": "_id", "type": "token"}));
            if k.name == "AuditEvent" {
                // The audit trail has its own search (`api/src/audit.rs`), over its own columns.
                search.extend(AUDIT_SEARCH.iter().map(|(name, kind, url)| {
                    json!({"name": name, "type": kind, "definition": format!("http://hl7.org/fhir/SearchParameter/{url}")})
                }));
            } else {
                search.push(json!({"name": "_lastUpdated", "type": "date"}));
            }
            let interactions: Vec<Value> = if k.client_writable {
                ["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"]
                    .iter()
                    .map(|c| json!({"code": c}))
                    .collect()
            } else {
                ["read", "search-type"].iter().map(|c| json!({"code": c})).collect()
            };
            let mut r = json!({
                "type": k.name,
                "interaction": interactions,
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": k.client_writable,
                "conditionalCreate": k.client_writable,
                "conditionalRead": "not-supported",
                "conditionalUpdate": k.client_writable,
                "conditionalDelete": "not-supported",
                "searchParam": search,
            });
            if k.client_writable && params.for_type(k.name).iter().any(|p| p.kind == epaccs_fhir::search::ParamType::Reference) {
                r["searchInclude"] = json!(params.for_type(k.name).iter().filter(|p| p.kind == epaccs_fhir::search::ParamType::Reference).map(|p| format!("{}:{}", k.name, p.code)).collect::<Vec<_>>());
            }
            if k.name == "Patient" {
                r["operation"] = json!([
                    {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"},
                    {"name": "emergency-summary", "definition": format!("{}/OperationDefinition/emergency-summary", state.base_url)}
                ]);
            }
            if k.client_writable {
                let ops = r.get("operation").and_then(Value::as_array).cloned().unwrap_or_default();
                let mut ops = ops;
                ops.push(json!({"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}));
                r["operation"] = json!(ops);
            }
            r
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "id": "epaccs",
        "status": "active",
        "date": "2026-11-22",
        "publisher": "epaccs",
        "kind": "instance",
        "software": {"name": "epaccs", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "EPaCCS shared end-of-life care record", "url": state.base_url},
        "fhirVersion": epaccs_fhir::FHIR_VERSION,
        "format": ["json", "application/fhir+json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "security": {
                "cors": false,
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}]}],
                "extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [{"url": "token", "valueUri": state.tokens.token_url()}]
                }],
                "description": "SMART Backend Services (client_credentials with private_key_jwt). Every interaction is gated by the person's consent and audited."
            },
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
        }]
    })
}

pub async fn metadata(state: web::Data<AppState>) -> HttpResponse {
    crate::respond::json(StatusCode::OK, &statement(&state))
}
