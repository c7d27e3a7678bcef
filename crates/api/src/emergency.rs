//! `Patient/$emergency-summary` for ambulance crews, 111 and out-of-hours, and
//! `Patient/[id]/$everything`.

use crate::error::ApiError;
use crate::extract::{query_pairs, Caller};
use crate::respond::{self, bundle, full_url};
use crate::state::AppState;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use epaccs_core::{codes, Interaction, NhsNumber};
use epaccs_fhir::date;
use epaccs_fhir::validate::Issue;
use epaccs_store::resources;
use epaccs_store::{StoreError, Stored};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// Extension marking the planned review date of a plan or decision.
pub const REVIEW_DATE_URL: &str =
    "https://fhir.epaccs.nhs.example/StructureDefinition/planned-review-date";
/// Extension on a summary section: the review date has passed.
pub const REVIEW_OVERDUE_URL: &str =
    "https://fhir.epaccs.nhs.example/StructureDefinition/review-overdue";

fn codes_of(v: &Value, element: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |cc: &Value| {
        for c in cc
            .get("coding")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(code) = c.get("code").and_then(Value::as_str) {
                out.push(code.to_string());
            }
        }
    };
    match v.get(element) {
        Some(Value::Array(a)) => a.iter().for_each(&mut push),
        Some(cc) => push(cc),
        None => {}
    }
    out
}

fn status(v: &Value) -> &str {
    v.get("status").and_then(Value::as_str).unwrap_or("")
}

fn effective(v: &Value) -> i64 {
    [
        "effectiveDateTime",
        "date",
        "dateTime",
        "authoredOn",
        "recordedDate",
        "issued",
    ]
    .iter()
    .find_map(|k| {
        v.get(*k)
            .and_then(Value::as_str)
            .and_then(date::parse_range)
    })
    .or_else(|| {
        v.get("effectivePeriod")
            .and_then(|p| p.get("start"))
            .and_then(Value::as_str)
            .and_then(date::parse_range)
    })
    .map_or(i64::MIN, |r| r.low)
}

/// The planned review date, if the resource carries one and it has passed.
fn overdue(v: &Value) -> Option<String> {
    let review = v
        .get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(REVIEW_DATE_URL))
        .and_then(|e| e.get("valueDate").or_else(|| e.get("valueDateTime")))
        .and_then(Value::as_str)?;
    let r = date::parse_range(review)?;
    (r.high <= date::now_micros()).then(|| review.to_string())
}

const INACTIVE: &[&str] = &[
    "entered-in-error",
    "cancelled",
    "superseded",
    "inactive",
    "revoked",
    "stopped",
    "completed",
    "preliminary",
    "draft",
    "rejected",
];

struct Summary<'a> {
    items: Vec<(&'a Stored, Value)>,
}

impl<'a> Summary<'a> {
    fn live(&self, ty: &str) -> impl Iterator<Item = &(&'a Stored, Value)> + '_ {
        let ty = ty.to_string();
        self.items
            .iter()
            .filter(move |(s, v)| s.resource_type == ty && !INACTIVE.contains(&status(v)))
    }

    fn with_code(&self, ty: &str, wanted: &[&str]) -> Vec<&(&'a Stored, Value)> {
        let mut v: Vec<_> = self
            .live(ty)
            .filter(|(_, v)| {
                let mut c = codes_of(v, "code");
                c.extend(codes_of(v, "valueCodeableConcept"));
                c.extend(codes_of(v, "type"));
                c.iter().any(|code| wanted.contains(&code.as_str()))
            })
            .collect();
        v.sort_by_key(|(_, v)| std::cmp::Reverse(effective(v)));
        v
    }
}

/// The current ReSPECT form: final, not entered-in-error, and not replaced by a later form (a
/// DocumentReference index marked superseded, or one that another `relatesTo: replaces` names).
fn current_respect<'s, 'a>(s: &'s Summary<'a>) -> Option<&'s (&'a Stored, Value)> {
    let superseded: Vec<String> = s
        .items
        .iter()
        .filter(|(st, _)| st.resource_type == "DocumentReference")
        .flat_map(|(_, v)| {
            let mut gone = Vec::new();
            let index_dead = matches!(status(v), "superseded" | "entered-in-error");
            for c in v
                .get("content")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(url) = c
                    .get("attachment")
                    .and_then(|a| a.get("url"))
                    .and_then(Value::as_str)
                {
                    if index_dead {
                        gone.push(url.rsplit('/').next().unwrap_or(url).to_string());
                    }
                }
            }
            for r in v
                .get("relatesTo")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if r.get("code").and_then(Value::as_str) == Some("replaces") {
                    if let Some(t) = r
                        .get("target")
                        .and_then(|t| t.get("reference"))
                        .and_then(Value::as_str)
                    {
                        gone.push(t.rsplit('/').next().unwrap_or(t).to_string());
                    }
                }
            }
            gone
        })
        .collect();
    s.with_code("Composition", &[codes::RESPECT_FORM])
        .into_iter()
        .find(|(st, v)| matches!(status(v), "final" | "amended") && !superseded.contains(&st.id))
}

fn section(
    title: &str,
    code: Option<&str>,
    entries: &[&(&Stored, Value)],
    empty_reason: &str,
    base: &str,
) -> Value {
    let mut text = String::new();
    let mut overdue_since = None;
    for (_, v) in entries {
        if let Some(d) = overdue(v) {
            overdue_since = Some(d);
        }
    }
    let mut sec = json!({"title": title});
    if let Some(c) = code {
        sec["code"] = json!({"coding": [{"system": codes::SNOMED, "code": c}]});
    }
    if entries.is_empty() {
        sec["emptyReason"] = json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/list-empty-reason", "code": "unavailable"}], "text": empty_reason});
        text.push_str(empty_reason);
    } else {
        sec["entry"] = Value::Array(
            entries
                .iter()
                .map(|(s, _)| json!({ "reference": full_url(base, s) }))
                .collect(),
        );
        let latest = entries
            .iter()
            .map(|(s, _)| s.last_updated)
            .max()
            .unwrap_or(0);
        text.push_str(&format!(
            "{} item(s); last updated {}",
            entries.len(),
            date::format_instant(latest)
        ));
    }
    if let Some(d) = overdue_since {
        text.push_str(&format!(
            ". REVIEW OVERDUE: planned review date {d} has passed"
        ));
        sec["extension"] = json!([{"url": REVIEW_OVERDUE_URL, "valueDate": d}]);
    }
    sec["text"] = json!({"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{}</div>", html_escape(&text))});
    sec
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The resource types an emergency summary draws on besides the Patient (read on its own).
const SUMMARY_TYPES: &[&str] = &[
    "Observation",
    "Composition",
    "DocumentReference",
    "RelatedPerson",
    "CareTeam",
    "CarePlan",
    "Goal",
    "MedicationRequest",
    "Procedure",
    "Condition",
    "Flag",
    "Consent",
    "EpisodeOfCare",
];

/// The summary as a serialized document Bundle.
fn build_document(
    state: &AppState,
    patient: &Stored,
    items: &[Stored],
) -> Result<String, ApiError> {
    let base = &state.base_url;
    let parsed: Vec<(&Stored, Value)> = items.iter().map(|s| (s, respond::parse(s))).collect();
    let s = Summary { items: parsed };
    let cpr = s.with_code("Observation", &[codes::FOR_CPR, codes::NOT_FOR_CPR]);
    let respect: Vec<_> = current_respect(&s).into_iter().collect();
    let mut advance = s.with_code(
        "Observation",
        &[codes::HAS_ADRT, codes::HAS_ADRT_LIFE_SUSTAINING],
    );
    advance.extend(s.with_code("Observation", &[codes::HAS_ADVANCE_STATEMENT]));
    let mut lpa: Vec<_> = s.live("RelatedPerson").collect();
    lpa.extend(s.with_code(
        "Observation",
        &[codes::HAS_LPA_WELFARE, codes::HAS_LPA_LIFE_SUSTAINING],
    ));
    let places = s.with_code(
        "Observation",
        &[
            &codes::PREFERRED_PLACE_OF_DEATH[..],
            &[
                "517111000000103",
                "517131000000106",
                "766391000000108",
                "517161000000101",
            ],
        ]
        .concat(),
    );
    let mut meds = s.with_code(
        "MedicationRequest",
        &[
            codes::ANTICIPATORY_MEDS_BOX,
            codes::ANTICIPATORY_MEDS_PRESCRIPTION,
        ],
    );
    meds.extend(
        s.live("MedicationRequest")
            .filter(|m| !meds.iter().any(|x| x.0.id == m.0.id))
            .collect::<Vec<_>>(),
    );
    meds.extend(s.with_code(
        "Procedure",
        &[
            codes::ANTICIPATORY_MEDS_BOX,
            codes::ANTICIPATORY_MEDS_PRESCRIPTION,
        ],
    ));
    let team: Vec<_> = s.live("CareTeam").collect();
    let plans: Vec<_> = s.live("CarePlan").collect();
    let mut other: Vec<_> = s.live("Condition").collect();
    other.extend(s.live("Flag"));
    other.extend(s.with_code("Observation", &[codes::AKPS]));
    other.extend(s.with_code("Observation", &codes::PROGNOSIS));

    let p = respond::parse(patient);
    let deceased = p
        .get("deceasedDateTime")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            p.get("deceasedBoolean")
                .and_then(Value::as_bool)
                .filter(|b| *b)
                .map(|_| "yes".to_string())
        });
    let mut sections = vec![
        section(
            "CPR decision",
            Some(codes::FOR_CPR),
            &cpr.iter().take(1).copied().collect::<Vec<_>>(),
            "No CPR decision recorded: follow usual resuscitation guidance",
            base,
        ),
        section(
            "ReSPECT recommendations (current form only)",
            Some(codes::RESPECT_FORM),
            &respect,
            "No current ReSPECT form",
            base,
        ),
        section(
            "Advance decisions (ADRT first, then advance statements)",
            Some(codes::HAS_ADRT),
            &advance,
            "No advance decision or statement recorded",
            base,
        ),
        section(
            "Lasting power of attorney and personal contacts",
            Some(codes::HAS_LPA_WELFARE),
            &lpa,
            "No LPA holder or personal contact recorded",
            base,
        ),
        section(
            "Preferred place of care and death",
            None,
            &places,
            "ALERT: preferred place of death not recorded",
            base,
        ),
        section(
            "Anticipatory medicines and where they are kept",
            Some(codes::ANTICIPATORY_MEDS_BOX),
            &meds,
            "No anticipatory medicines recorded",
            base,
        ),
        section(
            "Key worker and 24-hour contacts",
            None,
            &team,
            "No care team recorded",
            base,
        ),
        section(
            "Care plans",
            Some(codes::EOL_CARE_PLAN),
            &plans,
            "No care plan recorded",
            base,
        ),
        section(
            "Conditions, register and status",
            None,
            &other,
            "Nothing further recorded",
            base,
        ),
    ];
    if let Some(d) = &deceased {
        sections.insert(0, json!({"title": "Deceased", "text": {"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">This person has died ({})</div>", html_escape(d))}}));
    }
    let latest = items
        .iter()
        .map(|s| s.last_updated)
        .chain([patient.last_updated])
        .max()
        .unwrap_or(0);
    let now = date::format_instant(date::now_micros());
    let mut composition = json!({
        "resourceType": "Composition",
        "id": uuid::Uuid::new_v4().to_string(),
        "status": "final",
        "type": {"coding": [{"system": codes::SNOMED, "code": "861421000000109", "display": "End of life care coordination summary"}]},
        "subject": {"reference": full_url(base, patient)},
        "date": now,
        "author": [{"display": "epaccs emergency summary service"}],
        "title": "Emergency summary",
        "extension": [{"url": "https://fhir.epaccs.nhs.example/StructureDefinition/record-last-updated", "valueInstant": date::format_instant(latest)}],
    });
    // Values are moved, never embedded with `json!` (which would serialize each one again).
    composition["section"] = Value::Array(sections);
    let composition_url = format!(
        "urn:uuid:{}",
        composition["id"].as_str().unwrap_or_default()
    );
    // The resources each section names, once each, in section order.
    let mut order: Vec<(&str, &str)> = Vec::new();
    for group in [
        &cpr, &respect, &advance, &lpa, &places, &meds, &team, &plans, &other,
    ] {
        for &&(st, _) in group.iter() {
            let key = (st.resource_type.as_str(), st.id.as_str());
            if !order.contains(&key) {
                order.push(key);
            }
        }
    }
    // The resources go out as stored (`RawValue`): parsed above only to choose them, never
    // serialized again.
    let stored: std::collections::HashMap<(&str, &str), &Stored> = s
        .items
        .iter()
        .map(|(st, _)| ((st.resource_type.as_str(), st.id.as_str()), *st))
        .collect();
    let composition = serde_json::value::to_raw_value(&composition)
        .map_err(|e| ApiError::Internal(format!("composition: {e}")))?;
    let mut entry = vec![
        DocumentEntry {
            full_url: composition_url,
            resource: &composition,
        },
        DocumentEntry {
            full_url: full_url(base, patient),
            resource: raw(patient)?,
        },
    ];
    for key in &order {
        if let Some(st) = stored.get(key) {
            entry.push(DocumentEntry {
                full_url: full_url(base, st),
                resource: raw(st)?,
            });
        }
    }
    let document = Document {
        resource_type: "Bundle",
        id: uuid::Uuid::new_v4().to_string(),
        meta: json!({"lastUpdated": now}),
        kind: "document",
        identifier: json!({"system": "urn:ietf:rfc:3986", "value": format!("urn:uuid:{}", uuid::Uuid::new_v4())}),
        timestamp: &now,
        entry,
    };
    serde_json::to_string(&document).map_err(|e| ApiError::Internal(format!("summary: {e}")))
}

/// A stored resource as it will be sent (written by this server, so always valid JSON).
fn raw(st: &Stored) -> Result<&RawValue, ApiError> {
    serde_json::from_str::<&RawValue>(&st.content)
        .map_err(|e| ApiError::Internal(format!("stored {}: {e}", st.resource_type)))
}

/// The summary's document Bundle, serialized with its resources as stored.
#[derive(Serialize)]
struct Document<'a> {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    id: String,
    meta: Value,
    #[serde(rename = "type")]
    kind: &'static str,
    identifier: Value,
    timestamp: &'a str,
    entry: Vec<DocumentEntry<'a>>,
}

#[derive(Serialize)]
struct DocumentEntry<'a> {
    #[serde(rename = "fullUrl")]
    full_url: String,
    resource: &'a RawValue,
}

enum Lookup {
    Nhs(NhsNumber),
    Demographics {
        family: String,
        birth: date::Range,
        postcode: String,
    },
}

fn parse_lookup(pairs: &[(String, String)]) -> Result<Lookup, ApiError> {
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if let Some(ident) = get("identifier") {
        let (system, value) = ident
            .split_once('|')
            .unwrap_or((NhsNumber::SYSTEM, ident.as_str()));
        if system != NhsNumber::SYSTEM {
            return Err(ApiError::BadRequest(format!(
                "identifier system must be {}",
                NhsNumber::SYSTEM
            )));
        }
        let n = NhsNumber::parse(value).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        return Ok(Lookup::Nhs(n));
    }
    match (get("family"), get("birthdate"), get("address-postalcode")) {
        (Some(f), Some(b), Some(p)) => {
            if !date::is_date(&b) || b.len() != 10 {
                return Err(ApiError::BadRequest("birthdate must be a full date, YYYY-MM-DD".into()));
            }
            let birth = date::parse_range(&b).ok_or_else(|| ApiError::BadRequest("birthdate is not a valid date".into()))?;
            Ok(Lookup::Demographics { family: epaccs_fhir::search::normalize(&f), birth, postcode: epaccs_fhir::search::normalize(&p) })
        }
        _ => Err(ApiError::BadRequest(
            "give identifier=https://fhir.nhs.uk/Id/nhs-number|<NHS number>, or all of family, birthdate and address-postalcode".into(),
        )),
    }
}

pub async fn summary(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let pairs = query_pairs(req.query_string());
    let doc = caller
        .audited(&state, "operation", Some("Patient"), async {
            caller.require("Patient", Interaction::Read)?;
            let lookup = parse_lookup(&pairs)?;
            let gate = caller.gate.clone();
            let store = &state.store;
            let not_found = |e| match e {
                StoreError::NotFound => ApiError::NotFound("no record matches these details".into()),
                other => ApiError::from(other),
            };
            let candidates = match &lookup {
                Lookup::Nhs(n) => store.patients_by_nhs(n).await,
                Lookup::Demographics { family, birth, postcode } => store.patients_by_demographics(family, *birth, postcode).await,
            }
            .map_err(not_found)?;
            let one = match candidates.as_slice() {
                [] => return Err(not_found(StoreError::NotFound)),
                [one] => one,
                _ => {
                    return Err(StoreError::Unprocessable(vec![Issue::error(
                        "multiple-matches",
                        None,
                        "more than one person matches these details: no clinical data is returned. Give the NHS number, or more detail, to identify the person",
                    )])
                    .into())
                }
            };
            let patient = store.read(gate.clone(), "Patient", one).await.map_err(not_found)?;
            let (items, _) = store.compartment(gate, one, SUMMARY_TYPES).await.map_err(not_found)?;
            build_document(&state, &patient, &items)
        })
        .await?;
    Ok(HttpResponse::Ok()
        .content_type(respond::FHIR_JSON_UTF8)
        .body(doc))
}

pub async fn everything(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let pairs = query_pairs(req.query_string());
    let b = caller
        .audited(&state, "operation", Some("Patient"), async {
            caller.require("Patient", Interaction::Read)?;
            let mut since = None;
            let mut types: Vec<String> = Vec::new();
            let mut count = epaccs_fhir::query::MAX_COUNT;
            let mut after: Option<String> = None;
            for (k, v) in &pairs {
                match k.as_str() {
                    "_since" => since = Some(date::parse_range(v).ok_or_else(|| ApiError::BadRequest("_since is not a FHIR instant".into()))?.low),
                    "_type" => {
                        for t in v.split(',') {
                            crate::rest::kind(t)?;
                            types.push(t.to_string());
                        }
                    }
                    "_count" => count = v.parse::<usize>().map_err(|_| ApiError::BadRequest("_count must be a whole number".into()))?.clamp(1, epaccs_fhir::query::MAX_COUNT),
                    "_cursor" => after = Some(v.clone()),
                    "_format" | "_pretty" => {}
                    other => return Err(ApiError::BadRequest(format!("'{other}' is not a $everything parameter (_since, _type, _count)"))),
                }
            }
            let gate = caller.gate.clone();
            let pid = id.clone();
            let (mut items, withheld) = state
                .store
                .with_conn(move |c| {
                    resources::read(c, &gate, "Patient", &pid)?;
                    let t: Vec<&str> = types.iter().map(String::as_str).collect();
                    resources::compartment(c, &gate, &pid, &t, since)
                })
                .await?;
            if let Some(a) = &after {
                let pos = items.iter().position(|s| format!("{}/{}", s.resource_type, s.id) == *a).map_or(0, |p| p + 1);
                items.drain(..pos);
            }
            let next = (items.len() > count).then(|| format!("{}/{}", items[count - 1].resource_type, items[count - 1].id));
            items.truncate(count);
            let base = &state.base_url;
            let mut entries: Vec<Value> = items.iter().map(|s| respond::entry(full_url(base, s), respond::parse(s), Some("match"))).collect();
            if withheld > 0 && caller.gate.may_know_withheld() {
                entries.push(json!({"resource": {"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "suppressed",
                    "diagnostics": format!("{withheld} resource(s) withheld by the sharing rules")}]}, "search": {"mode": "outcome"}}));
            }
            let self_url = format!("{base}/Patient/{id}/$everything");
            let mut links = vec![("self", if req.query_string().is_empty() { self_url.clone() } else { format!("{self_url}?{}", req.query_string()) })];
            if let Some(n) = next {
                let mut p: Vec<(String, String)> = pairs.iter().filter(|(k, _)| k != "_cursor").cloned().collect();
                p.push(("_cursor".into(), n));
                let qs: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(p).finish();
                links.push(("next", format!("{self_url}?{qs}")));
            }
            Ok(bundle("searchset", None, links, entries))
        })
        .await?;
    Ok(respond::json(StatusCode::OK, &b))
}
