//! Response builders: resources with their headers, bundles, and `Prefer` handling.

use crate::error::outcome_info;
use crate::extract::Return;
use actix_web::http::{header, StatusCode};
use actix_web::HttpResponse;
use epaccs_fhir::date;
use epaccs_fhir::validate::IssueSeverity;
use epaccs_store::Stored;
use serde_json::{json, Value};

pub const FHIR_JSON_UTF8: &str = "application/fhir+json; charset=utf-8";

pub fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}

/// A resource response with ETag, Last-Modified and, for writes, Location.
pub fn resource(
    s: &Stored,
    status: StatusCode,
    base: &str,
    location: bool,
    ret: Return,
) -> HttpResponse {
    let mut b = HttpResponse::build(status);
    b.insert_header((header::ETAG, etag(s.version_id)));
    b.insert_header((
        header::LAST_MODIFIED,
        date::format_http_date(s.last_updated),
    ));
    if location {
        b.insert_header((
            header::LOCATION,
            format!(
                "{base}/{}/{}/_history/{}",
                s.resource_type, s.id, s.version_id
            ),
        ));
    }
    match ret {
        Return::Representation => b.content_type(FHIR_JSON_UTF8).body(s.content.clone()),
        Return::Minimal => b.finish(),
        Return::OperationOutcome => b.content_type(FHIR_JSON_UTF8).body(
            outcome_info(
                IssueSeverity::Information,
                "informational",
                format!(
                    "{}/{} version {} stored",
                    s.resource_type, s.id, s.version_id
                ),
            )
            .to_string(),
        ),
    }
}

/// Any JSON value as a FHIR response.
pub fn json(status: StatusCode, v: &Value) -> HttpResponse {
    HttpResponse::build(status)
        .content_type(FHIR_JSON_UTF8)
        .body(v.to_string())
}

/// Parses stored JSON (written by this server, so always valid).
pub fn parse(s: &Stored) -> Value {
    serde_json::from_str(&s.content).unwrap_or(Value::Null)
}

/// A Bundle with the given type, entries and links.
pub fn bundle(
    kind: &str,
    total: Option<usize>,
    links: Vec<(&str, String)>,
    entries: Vec<Value>,
) -> Value {
    let mut b = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"lastUpdated": date::format_instant(date::now_micros())},
        "type": kind,
    });
    if let Some(t) = total {
        b["total"] = json!(t);
    }
    if !links.is_empty() {
        b["link"] = Value::Array(
            links
                .into_iter()
                .map(|(rel, url)| json!({"relation": rel, "url": url}))
                .collect(),
        );
    }
    b["entry"] = Value::Array(entries);
    b
}

/// A Bundle entry. The resource is moved in: `json!` would serialize it all over again.
pub fn entry(full_url: String, resource: Value, search_mode: Option<&str>) -> Value {
    let mut m = serde_json::Map::with_capacity(3);
    m.insert("fullUrl".into(), Value::String(full_url));
    m.insert("resource".into(), resource);
    if let Some(mode) = search_mode {
        m.insert("search".into(), json!({ "mode": mode }));
    }
    Value::Object(m)
}

pub fn full_url(base: &str, s: &Stored) -> String {
    format!("{base}/{}/{}", s.resource_type, s.id)
}

/// `_summary` / `_elements` applied to a resource for a search result; marks it SUBSETTED.
pub fn subset(mut v: Value, summary: epaccs_fhir::query::Summary, elements: &[String]) -> Value {
    use epaccs_fhir::query::Summary;
    let Some(map) = v.as_object_mut() else {
        return v;
    };
    let keep_always = ["resourceType", "id", "meta"];
    let subsetted = match summary {
        Summary::Data => {
            map.remove("text");
            true
        }
        Summary::True => {
            const SUMMARY: &[&str] = &[
                "identifier",
                "active",
                "name",
                "telecom",
                "gender",
                "birthDate",
                "deceasedBoolean",
                "deceasedDateTime",
                "address",
                "generalPractitioner",
                "managingOrganization",
                "link",
                "status",
                "category",
                "code",
                "subject",
                "patient",
                "effectiveDateTime",
                "effectivePeriod",
                "issued",
                "valueCodeableConcept",
                "valueQuantity",
                "valueString",
                "valueBoolean",
                "valueInteger",
                "dateTime",
                "scope",
                "type",
                "date",
                "title",
                "author",
                "period",
                "intent",
                "relatesTo",
                "custodian",
                "participant",
                "lifecycleStatus",
                "clinicalStatus",
                "verificationStatus",
                "medicationCodeableConcept",
                "authoredOn",
                "target",
            ];
            map.retain(|k, _| keep_always.contains(&k.as_str()) || SUMMARY.contains(&k.as_str()));
            true
        }
        Summary::False | Summary::Count if !elements.is_empty() => {
            map.retain(|k, _| keep_always.contains(&k.as_str()) || elements.iter().any(|e| e == k));
            true
        }
        _ => false,
    };
    if subsetted {
        let tag = json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED", "display": "Resource encoded in summary mode"});
        let meta = map.entry("meta").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            match m.get_mut("tag").and_then(Value::as_array_mut) {
                Some(tags) => tags.push(tag),
                None => {
                    m.insert("tag".into(), json!([tag]));
                }
            }
        }
    }
    v
}
