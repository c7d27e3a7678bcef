//! AuditEvent records: one per request, written durably before the response is sent.

use crate::gate::LogEntry;
use crate::rules::Decision;
use epaccs_core::{Principal, Purpose};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
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

/// A finished AuditEvent with the columns the audit table indexes. Serializable: the store
/// journals it before copying it into the audit table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// The record's `Facts` as compact JSON, serialized by the request's own thread so the
    /// single writer thread only stores it; `render_stored` turns it into the AuditEvent.
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

// The AuditEvent as typed, borrowed structures: serialized straight to text, with no
// intermediate JSON tree (this runs on every request).

#[derive(Serialize)]
struct Coding<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<&'a str>,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    display: Option<&'a str>,
}

fn coding<'a>(system: &'a str, code: &'a str, display: Option<&'a str>) -> Coding<'a> {
    Coding {
        system: Some(system),
        code,
        display,
    }
}

#[derive(Serialize)]
struct Concept<'a> {
    coding: Vec<Coding<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
}

#[derive(Serialize)]
struct Identifier<'a> {
    system: &'a str,
    value: &'a str,
}

#[derive(Serialize)]
struct Who<'a> {
    identifier: Identifier<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    display: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Agent<'a> {
    requestor: bool,
    #[serde(rename = "type")]
    kind: Concept<'a>,
    who: Who<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    purpose_of_use: Vec<Concept<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    role: Vec<Concept<'a>>,
}

#[derive(Serialize)]
struct Reference<'a> {
    reference: &'a str,
}

#[derive(Serialize)]
struct Entity<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    what: Option<Reference<'a>>,
    #[serde(rename = "type")]
    kind: Coding<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<Coding<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Meta<'a> {
    version_id: &'a str,
    last_updated: &'a str,
}

#[derive(Serialize)]
struct Observer<'a> {
    display: &'a str,
}

#[derive(Serialize)]
struct Source<'a> {
    site: &'a str,
    observer: Observer<'a>,
    #[serde(rename = "type")]
    kind: [Coding<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AuditEvent<'a> {
    resource_type: &'a str,
    id: &'a str,
    meta: Meta<'a>,
    #[serde(rename = "type")]
    kind: Coding<'a>,
    subtype: Vec<Coding<'a>>,
    action: &'a str,
    recorded: &'a str,
    outcome: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome_desc: Option<&'a str>,
    purpose_of_event: [Concept<'a>; 1],
    agent: Vec<Agent<'a>>,
    source: Source<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    entity: Vec<Entity<'a>>,
}

const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const RESTFUL: &str = "http://hl7.org/fhir/restful-interaction";

/// What one AuditEvent says, as stored: only what varies between events, in short keys. The
/// FHIR AuditEvent (about 2 KB, mostly fixed codes) is rendered from it when the trail is read
/// (`render`), so a record costs a few hundred bytes on the single writer's commit path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Facts<'a> {
    #[serde(rename = "i")]
    pub interaction: Cow<'a, str>,
    #[serde(rename = "q", default, skip_serializing_if = "str::is_empty")]
    pub query: Cow<'a, str>,
    #[serde(rename = "o")]
    pub outcome: Cow<'a, str>,
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub description: Option<Cow<'a, str>>,
    #[serde(rename = "p")]
    pub purpose: Cow<'a, str>,
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub break_glass_reason: Option<Cow<'a, str>>,
    #[serde(rename = "bg", default, skip_serializing_if = "is_false")]
    pub break_glass: bool,
    #[serde(rename = "c")]
    pub client_id: Cow<'a, str>,
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Cow<'a, str>>,
    #[serde(rename = "un", default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<Cow<'a, str>>,
    #[serde(rename = "ur", default, skip_serializing_if = "Option::is_none")]
    pub user_role: Option<Cow<'a, str>>,
    pub org: Cow<'a, str>,
    pub role: Cow<'a, str>,
    /// Patient keys.
    #[serde(rename = "pt", default, skip_serializing_if = "Vec::is_empty")]
    pub patients: Vec<Cow<'a, str>>,
    /// Other resources touched, each once, with what was decided.
    #[serde(rename = "e", default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<(Cow<'a, str>, Decided)>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What the gate decided about one resource, as the audit trail records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decided {
    #[serde(rename = "p")]
    Permitted,
    #[serde(rename = "b")]
    BreakGlass,
    #[serde(rename = "w")]
    Withheld,
}

impl Decided {
    fn text(self) -> &'static str {
        match self {
            Decided::Permitted => "permitted",
            Decided::BreakGlass => "permitted by break-glass",
            Decided::Withheld => "withheld",
        }
    }
}

/// Builds the audit record for one request from what the gate decided.
pub fn record(req: &Request<'_>, log: &[LogEntry]) -> AuditRecord {
    let id = uuid::Uuid::now_v7().to_string();
    let recorded = epaccs_fhir::date::now_micros();
    let p = req.principal;
    let break_glass = log.iter().any(|e| e.decision == Decision::BreakGlass);
    let refused = log
        .iter()
        .any(|e| matches!(e.decision, Decision::Deny { .. }));
    let patients: BTreeSet<&str> = log
        .iter()
        .filter_map(|e| e.patient_key.as_deref())
        .collect();
    let mut seen = BTreeSet::new();
    let mut resources = Vec::new();
    for e in log {
        if !seen.insert(e.resource.as_str())
            || e.resource.starts_with("Patient/") && patients.contains(&e.resource[8..])
        {
            continue;
        }
        let decided = match &e.decision {
            Decision::Permit(_) => Decided::Permitted,
            Decision::BreakGlass => Decided::BreakGlass,
            Decision::Deny { .. } => Decided::Withheld,
        };
        resources.push((Cow::Borrowed(e.resource.as_str()), decided));
    }
    resources.truncate(1000usize.saturating_sub(patients.len()));
    let description = match req.description.as_deref() {
        Some(d) if !d.is_empty() => Some(Cow::Borrowed(d)),
        _ if refused => Some(Cow::Borrowed(
            "some or all data withheld by the sharing rules",
        )),
        _ => None,
    };
    let facts = Facts {
        interaction: Cow::Borrowed(req.interaction),
        query: Cow::Borrowed(req.query),
        outcome: Cow::Borrowed(req.outcome.code()),
        description,
        purpose: Cow::Borrowed(p.purpose.code()),
        break_glass_reason: p.break_glass_reason.as_deref().map(Cow::Borrowed),
        break_glass,
        client_id: Cow::Borrowed(&p.client_id),
        user_id: p.user_id.as_deref().map(Cow::Borrowed),
        user_name: p.user_name.as_deref().map(Cow::Borrowed),
        user_role: p.user_role.as_deref().map(Cow::Borrowed),
        org: Cow::Borrowed(p.org.as_str()),
        role: Cow::Borrowed(p.role.as_str()),
        patients: patients.iter().map(|k| Cow::Borrowed(*k)).collect(),
        resources,
    };
    let content = serde_json::to_string(&facts).unwrap_or_default();
    AuditRecord {
        client_id: p.client_id.clone(),
        user_id: p.user_id.clone(),
        org: p.org.to_string(),
        role: p.role.to_string(),
        purpose: p.purpose.code().to_string(),
        outcome: req.outcome.code().to_string(),
        break_glass,
        patients: patients.into_iter().map(str::to_string).collect(),
        content,
        id,
        recorded,
    }
}

/// The FHIR AuditEvent for a stored record. Records stored before the compact form are whole
/// AuditEvents already and are returned as they are.
pub fn render_stored(id: &str, recorded: i64, content: &str) -> Result<String, String> {
    if content.starts_with("{\"resourceType\"") {
        return Ok(content.to_string());
    }
    let facts: Facts<'_> = serde_json::from_str(content)
        .map_err(|e| format!("audit record {id} cannot be read: {e}"))?;
    Ok(render(id, recorded, &facts))
}

/// Renders the FHIR AuditEvent (R4) that a record's facts describe.
pub fn render(id: &str, recorded: i64, f: &Facts<'_>) -> String {
    let recorded_text = epaccs_fhir::date::format_instant(recorded);
    let patient_refs: Vec<String> = f.patients.iter().map(|k| format!("Patient/{k}")).collect();
    let mut entities: Vec<Entity<'_>> = patient_refs
        .iter()
        .map(|r| Entity {
            what: Some(Reference { reference: r }),
            kind: coding(ENTITY_TYPE, "1", Some("Person")),
            role: Some(coding(OBJECT_ROLE, "1", Some("Patient"))),
            description: None,
        })
        .collect();
    for (resource, decided) in &f.resources {
        entities.push(Entity {
            what: Some(Reference {
                reference: resource,
            }),
            kind: coding(ENTITY_TYPE, "2", Some("System Object")),
            role: None,
            description: Some(decided.text()),
        });
    }
    if !f.query.is_empty() {
        entities.push(Entity {
            what: None,
            kind: Coding {
                system: Some(ENTITY_TYPE),
                code: "2",
                display: None,
            },
            role: Some(coding(OBJECT_ROLE, "24", Some("Query"))),
            description: Some(&f.query),
        });
    }
    let interaction = coding(RESTFUL, &f.interaction, None);
    let (kind, subtype) = if f.break_glass {
        (
            coding(DCM, "110113", Some("Security Alert")),
            vec![
                coding(DCM, "110127", Some("Emergency Override Started")),
                interaction,
            ],
        )
    } else {
        (
            coding(
                "http://terminology.hl7.org/CodeSystem/audit-event-type",
                "rest",
                Some("RESTful Operation"),
            ),
            vec![interaction],
        )
    };
    let purpose = || Concept {
        coding: vec![coding(Purpose::SYSTEM, &f.purpose, None)],
        text: None,
    };
    let mut roles = vec![Concept {
        coding: vec![coding(crate::facts::ROLE_SYSTEM, &f.role, None)],
        text: None,
    }];
    let client = || Identifier {
        system: CLIENT_ID_SYSTEM,
        value: &f.client_id,
    };
    let who = match &f.user_id {
        Some(u) => {
            if let Some(r) = &f.user_role {
                let (system, code) = r.split_once('|').unwrap_or(("", r));
                roles.push(Concept {
                    coding: vec![Coding {
                        system: (!system.is_empty()).then_some(system),
                        code,
                        display: None,
                    }],
                    text: None,
                });
            }
            Who {
                identifier: Identifier {
                    system: SDS_USER_SYSTEM,
                    value: u,
                },
                display: f.user_name.as_deref(),
            }
        }
        None => Who {
            identifier: client(),
            display: None,
        },
    };
    let mut agents = vec![Agent {
        requestor: true,
        kind: Concept {
            coding: vec![coding(
                "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                "IRCP",
                Some("information recipient"),
            )],
            text: None,
        },
        who,
        purpose_of_use: vec![purpose()],
        role: roles,
    }];
    if f.user_id.is_some() {
        agents.push(Agent {
            requestor: false,
            kind: Concept {
                coding: vec![coding(DCM, "110150", Some("Application"))],
                text: None,
            },
            who: Who {
                identifier: client(),
                display: None,
            },
            purpose_of_use: vec![],
            role: vec![],
        });
    }
    agents.push(Agent {
        requestor: false,
        kind: Concept {
            coding: vec![coding(DCM, "110152", Some("Destination Role ID"))],
            text: None,
        },
        who: Who {
            identifier: Identifier {
                system: epaccs_core::OdsCode::SYSTEM,
                value: &f.org,
            },
            display: None,
        },
        purpose_of_use: vec![],
        role: vec![],
    });
    let mut purpose_of_event = purpose();
    purpose_of_event.text = f.break_glass_reason.as_deref();
    let event = AuditEvent {
        resource_type: "AuditEvent",
        id,
        meta: Meta {
            version_id: "1",
            last_updated: &recorded_text,
        },
        kind,
        subtype,
        action: action_code(&f.interaction),
        recorded: &recorded_text,
        outcome: &f.outcome,
        outcome_desc: f.description.as_deref(),
        purpose_of_event: [purpose_of_event],
        agent: agents,
        source: Source {
            site: "epaccs",
            observer: Observer { display: "epaccs" },
            kind: [coding(
                "http://terminology.hl7.org/CodeSystem/security-source-type",
                "4",
                Some("Application Server"),
            )],
        },
        entity: entities,
    };
    serde_json::to_string(&event).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Decision;
    use epaccs_core::{OdsCode, Role, Scopes};
    use serde_json::Value;

    fn principal(user: bool, reason: Option<&str>) -> Principal {
        let mut p = Principal {
            client_id: "crew-app".into(),
            org: OdsCode::parse("RX801").expect("ods code"),
            role: Role::Ambulance,
            user_id: None,
            user_name: None,
            user_role: None,
            purpose: Purpose::Treat,
            break_glass_reason: None,
            scopes: Scopes::default(),
        };
        if user {
            p.user_id = Some("555000111222".into());
            p.user_name = Some("Pat Paramedic".into());
            p.user_role = Some("https://fhir.nhs.uk/CodeSystem/role|R8000".into());
        }
        if let Some(r) = reason {
            p.purpose = Purpose::BreakGlass;
            p.break_glass_reason = Some(r.into());
        }
        p
    }

    fn build(p: &Principal, log: &[LogEntry], outcome: Outcome) -> (AuditRecord, Value) {
        let req = Request {
            principal: p,
            interaction: "read",
            resource_type: Some("Patient"),
            query: "/Patient/p1?_elements=name",
            outcome,
            description: None,
        };
        let rec = record(&req, log);
        let event = render_stored(&rec.id, rec.recorded, &rec.content).expect("readable record");
        let v: Value = serde_json::from_str(&event).expect("audit JSON");
        (rec, v)
    }

    #[test]
    fn an_ordinary_read_names_who_why_and_what() {
        let p = principal(false, None);
        let log = vec![LogEntry {
            patient_key: Some("p1".into()),
            resource: "Observation/o1".into(),
            decision: Decision::Deny {
                reveal: true,
                reason: "consent withdrawn".into(),
            },
        }];
        let (rec, v) = build(&p, &log, Outcome::MinorFailure);
        assert_eq!(v["resourceType"], "AuditEvent");
        assert_eq!(v["id"], rec.id.as_str());
        assert_eq!(v["type"]["code"], "rest");
        assert_eq!(v["subtype"][0]["code"], "read");
        assert_eq!(v["action"], "R");
        assert_eq!(v["outcome"], "4");
        assert_eq!(
            v["outcomeDesc"],
            "some or all data withheld by the sharing rules"
        );
        assert_eq!(v["agent"][0]["who"]["identifier"]["value"], "crew-app");
        assert_eq!(v["agent"][0]["role"][0]["coding"][0]["code"], "ambulance");
        assert_eq!(v["agent"][1]["who"]["identifier"]["value"], "RX801");
        assert_eq!(v["purposeOfEvent"][0]["coding"][0]["code"], "TREAT");
        assert_eq!(v["entity"][0]["what"]["reference"], "Patient/p1");
        assert_eq!(v["entity"][1]["what"]["reference"], "Observation/o1");
        assert_eq!(v["entity"][1]["description"], "withheld");
        assert_eq!(v["entity"][2]["role"]["code"], "24");
        assert_eq!(v["entity"][2]["description"], "/Patient/p1?_elements=name");
        assert_eq!(rec.patients, vec!["p1".to_string()]);
        assert!(!rec.break_glass);
        assert!(v.get("extension").is_none());
    }

    #[test]
    fn break_glass_is_marked_with_the_user_and_reason() {
        let p = principal(true, Some("unconscious, no NHS number"));
        let log = vec![LogEntry {
            patient_key: Some("p1".into()),
            resource: "Patient/p1".into(),
            decision: Decision::BreakGlass,
        }];
        let (rec, v) = build(&p, &log, Outcome::Success);
        assert!(rec.break_glass);
        assert_eq!(v["type"]["code"], "110113");
        assert_eq!(v["subtype"][0]["code"], "110127");
        assert_eq!(v["subtype"][1]["code"], "read");
        assert_eq!(v["purposeOfEvent"][0]["text"], "unconscious, no NHS number");
        assert_eq!(v["agent"][0]["who"]["identifier"]["value"], "555000111222");
        assert_eq!(v["agent"][0]["who"]["display"], "Pat Paramedic");
        assert_eq!(v["agent"][0]["role"][1]["coding"][0]["code"], "R8000");
        assert_eq!(v["agent"][1]["who"]["identifier"]["value"], "crew-app");
        assert_eq!(v["agent"][2]["who"]["identifier"]["value"], "RX801");
        // The patient is named once, as the patient, not again as an object.
        assert_eq!(v["entity"].as_array().map(Vec::len), Some(2));
        assert!(v.get("outcomeDesc").is_none());
    }

    #[test]
    fn stored_compactly_and_older_whole_events_read_back_unchanged() {
        let p = principal(false, None);
        let log = vec![LogEntry {
            patient_key: Some("4e582028-10cb-404f-887c-a49f0d495e16".into()),
            resource: "Patient/4e582028-10cb-404f-887c-a49f0d495e16".into(),
            decision: Decision::Permit(crate::rules::Basis::Consent),
        }];
        let (rec, v) = build(&p, &log, Outcome::Success);
        assert!(
            rec.content.len() < 300,
            "record is {} bytes",
            rec.content.len()
        );
        assert!(serde_json::to_string(&v).expect("json").len() > 1500);
        let whole = r#"{"resourceType":"AuditEvent","id":"old"}"#;
        assert_eq!(render_stored("old", 0, whole).as_deref(), Ok(whole));
        assert!(render_stored("bad", 0, "{not json").is_err());
    }
}
