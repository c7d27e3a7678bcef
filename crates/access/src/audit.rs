//! AuditEvent records: one per request, written durably before the response is sent.

use crate::gate::LogEntry;
use crate::rules::Decision;
use epaccs_core::{Principal, Purpose};
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// The outcome codes of AuditEvent.outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Refused or not found: the request failed at the caller's end.
    MinorFailure,
    /// The service failed.
    SeriousFailure,
}

impl Outcome {
    pub fn code(self) -> &'static str {
        match self {
            Outcome::Success => "0",
            Outcome::MinorFailure => "4",
            Outcome::SeriousFailure => "8",
        }
    }
}

/// What the API knows about a finished request.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub principal: &'a Principal,
    /// restful-interaction code: read, vread, update, patch, delete, history-instance,
    /// history-type, create, search-type, batch, transaction, operation.
    pub interaction: &'a str,
    pub resource_type: Option<&'a str>,
    /// The path and query as received.
    pub query: &'a str,
    pub outcome: Outcome,
    pub description: Option<String>,
}

/// A finished AuditEvent with the columns the audit table indexes.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub id: String,
    pub recorded: i64,
    pub client_id: String,
    pub user_id: Option<String>,
    pub org: String,
    pub role: String,
    pub purpose: String,
    pub outcome: String,
    pub break_glass: bool,
    pub patients: Vec<String>,
    /// The AuditEvent as JSON text, serialized by the request's own thread so the single
    /// writer thread only stores it.
    pub content: String,
}

pub const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
pub const CLIENT_ID_SYSTEM: &str = "https://fhir.epaccs.nhs.example/Id/client-id";
pub const SDS_USER_SYSTEM: &str = "https://fhir.nhs.uk/Id/sds-user-id";

fn action_code(interaction: &str) -> &'static str {
    match interaction {
        "create" => "C",
        "update" | "patch" => "U",
        "delete" => "D",
        "batch" | "transaction" | "operation" => "E",
        _ => "R",
    }
}

/// Builds the AuditEvent for one request from what the gate decided.
pub fn record(req: &Request<'_>, log: &[LogEntry]) -> AuditRecord {
    // Time-ordered (UUID v7): new records land at the end of the id index instead of on a random
    // page of it, so each commit writes a few pages rather than one per record.
    let id = uuid::Uuid::now_v7().to_string();
    let recorded = epaccs_fhir::date::now_micros();
    let p = req.principal;
    let break_glass = log.iter().any(|e| e.decision == Decision::BreakGlass);
    let refused = log
        .iter()
        .any(|e| matches!(e.decision, Decision::Deny { .. }));
    let patients: BTreeSet<String> = log.iter().filter_map(|e| e.patient_key.clone()).collect();
    // Every resource touched, each once, with what was decided.
    let mut seen = BTreeSet::new();
    let mut entities: Vec<Value> = patients
        .iter()
        .map(|k| json!({"what": {"reference": format!("Patient/{k}")},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"}}))
        .collect();
    for e in log {
        if !seen.insert(e.resource.clone())
            || e.resource.starts_with("Patient/") && patients.contains(&e.resource[8..])
        {
            continue;
        }
        let decided = match &e.decision {
            Decision::Permit(_) => "permitted",
            Decision::BreakGlass => "permitted by break-glass",
            Decision::Deny { .. } => "withheld",
        };
        entities.push(json!({"what": {"reference": e.resource},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
            "description": decided}));
    }
    if entities.len() > 1000 {
        entities.truncate(1000);
    }
    if !req.query.is_empty() {
        entities.push(json!({"type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24", "display": "Query"},
            "description": req.query}));
    }
    let (type_, subtype) = if break_glass {
        (
            json!({"system": DCM, "code": "110113", "display": "Security Alert"}),
            json!([{"system": DCM, "code": "110127", "display": "Emergency Override Started"},
                   {"system": "http://hl7.org/fhir/restful-interaction", "code": req.interaction}]),
        )
    } else {
        (
            json!({"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"}),
            json!([{"system": "http://hl7.org/fhir/restful-interaction", "code": req.interaction}]),
        )
    };
    let mut user = json!({"requestor": true,
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient"}]},
        "who": {"identifier": {"system": CLIENT_ID_SYSTEM, "value": p.client_id}},
        "purposeOfUse": [{"coding": [{"system": Purpose::SYSTEM, "code": p.purpose.code()}]}],
        "role": [{"coding": [{"system": crate::facts::ROLE_SYSTEM, "code": p.role.as_str()}]}]});
    if let Some(u) = &p.user_id {
        user["who"] = json!({"identifier": {"system": SDS_USER_SYSTEM, "value": u}});
        if let Some(n) = &p.user_name {
            user["who"]["display"] = json!(n);
        }
        if let Some(r) = &p.user_role {
            let (system, code) = r.split_once('|').unwrap_or(("", r));
            let mut coding = json!({"code": code});
            if !system.is_empty() {
                coding["system"] = json!(system);
            }
            if let Some(a) = user["role"].as_array_mut() {
                a.push(json!({"coding": [coding]}));
            }
        }
    }
    let mut agents = vec![user];
    if p.user_id.is_some() {
        agents.push(json!({"requestor": false,
            "type": {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]},
            "who": {"identifier": {"system": CLIENT_ID_SYSTEM, "value": p.client_id}}}));
    }
    agents.push(json!({"requestor": false,
        "type": {"coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]},
        "who": {"identifier": {"system": epaccs_core::OdsCode::SYSTEM, "value": p.org.as_str()}}}));
    let mut purpose = json!([{"coding": [{"system": Purpose::SYSTEM, "code": p.purpose.code()}]}]);
    if let Some(reason) = &p.break_glass_reason {
        purpose[0]["text"] = json!(reason);
    }
    let mut desc = req.description.clone().unwrap_or_default();
    if refused && desc.is_empty() {
        desc = "some or all data withheld by the sharing rules".into();
    }
    let mut content = json!({
        "resourceType": "AuditEvent",
        "id": id,
        "meta": {"versionId": "1", "lastUpdated": epaccs_fhir::date::format_instant(recorded)},
        "type": type_,
        "subtype": subtype,
        "action": action_code(req.interaction),
        "recorded": epaccs_fhir::date::format_instant(recorded),
        "outcome": req.outcome.code(),
        "purposeOfEvent": purpose,
        "agent": agents,
        "source": {"site": "epaccs", "observer": {"display": "epaccs"},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]},
    });
    if !desc.is_empty() {
        content["outcomeDesc"] = json!(desc);
    }
    if !entities.is_empty() {
        content["entity"] = json!(entities);
    }
    AuditRecord {
        id,
        recorded,
        client_id: p.client_id.clone(),
        user_id: p.user_id.clone(),
        org: p.org.to_string(),
        role: p.role.to_string(),
        purpose: p.purpose.code().to_string(),
        outcome: req.outcome.code().to_string(),
        break_glass,
        patients: patients.into_iter().collect(),
        content: content.to_string(),
    }
}
