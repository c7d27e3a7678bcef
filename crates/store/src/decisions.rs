//! Decisions are owned: a CPR decision, a ReSPECT form (Composition and its index), a Consent,
//! an ADRT, an advance statement and a lasting power of attorney belong to the organisation
//! that recorded them.
//!
//! - The authoring organisation (the writer of version 1) updates or deletes them as any write.
//! - Another organisation may amend them only with `If-Match` (else 428) and a reason given the
//!   FHIR way: a Provenance (activity, reason, agent) targeting the resource in the same
//!   transaction Bundle (else 403, saying what is needed).
//! - Every change to one of them writes a Provenance (who, organisation, when, activity,
//!   reason): the client's own, when it sent one, or one the service writes in the same
//!   transaction. It is patient data like any other: read with the record and in `$everything`.

use crate::db::{load, DbConn, Sql};
use crate::resources::{self, Put, Stored};
use crate::StoreError;
use diesel::sql_types::Text;
use diesel::QueryableByName;
use epaccs_access::Gate;
use epaccs_core::{codes, OdsCode};
use epaccs_fhir::date;
use epaccs_fhir::registry::{kind_of, PatientLink};
use serde_json::{json, Value};

/// Why another organisation changes an owned decision: from the Provenance it sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Amendment {
    /// The Provenance's reason, as text.
    pub reason: String,
}

/// The code system of the client identifiers named as Provenance agents.
pub const CLIENT_SYSTEM: &str = "https://fhir.epaccs.nhs.example/Id/client";

/// Observation codes that record a decision someone owns.
const OWNED_OBSERVATION_CODES: [&str; 8] = [
    codes::FOR_CPR,
    codes::NOT_FOR_CPR,
    codes::CPR_NOT_DISCUSSED,
    codes::HAS_ADVANCE_STATEMENT,
    codes::HAS_ADRT,
    codes::HAS_ADRT_LIFE_SUSTAINING,
    codes::HAS_LPA_WELFARE,
    codes::HAS_LPA_LIFE_SUSTAINING,
];

fn has_code(v: &Value, element: &str, wanted: &[&str]) -> bool {
    let concepts: Vec<&Value> = match v.get(element) {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(c) => vec![c],
        None => vec![],
    };
    concepts
        .into_iter()
        .filter_map(|c| c.get("coding").and_then(Value::as_array))
        .flatten()
        .filter_map(|c| c.get("code").and_then(Value::as_str))
        .any(|c| wanted.contains(&c))
}

/// Whether this resource records an owned decision.
pub fn is_owned_decision(ty: &str, v: &Value) -> bool {
    match ty {
        "Consent" => true,
        "Observation" => {
            has_code(v, "code", &OWNED_OBSERVATION_CODES)
                || has_code(
                    v,
                    "valueCodeableConcept",
                    &[codes::FOR_CPR, codes::NOT_FOR_CPR],
                )
        }
        "Composition" => has_code(v, "type", &[codes::RESPECT_FORM]),
        "DocumentReference" => has_code(
            v,
            "type",
            &[
                codes::RESPECT_FORM,
                codes::HAS_ADRT,
                codes::HAS_ADRT_LIFE_SUSTAINING,
                codes::HAS_ADVANCE_STATEMENT,
                codes::HAS_LPA_WELFARE,
            ],
        ),
        _ => false,
    }
}

#[derive(QueryableByName)]
struct OrgRow {
    #[diesel(sql_type = Text)]
    writer_org: String,
}

/// The organisation that recorded the first version.
fn author(conn: &mut DbConn, ty: &str, id: &str) -> Result<Option<String>, StoreError> {
    let mut sql = Sql::new("SELECT writer_org FROM resource_version WHERE res_type = ");
    sql.text(ty)
        .push(" AND id = ")
        .text(id)
        .push(" AND version_id = 1");
    Ok(load::<OrgRow>(conn, &sql)?.pop().map(|r| r.writer_org))
}

/// Decides a change (`new` is None for a delete) to `current` by the gate's organisation.
/// Returns whether the resource is an owned decision (so the change must be recorded).
pub(crate) fn check_change(
    conn: &mut DbConn,
    gate: &Gate,
    current: &Stored,
    new: Option<&Value>,
    if_match: Option<i64>,
    amendment: Option<&Amendment>,
) -> Result<bool, StoreError> {
    let ty = current.resource_type.as_str();
    let old: Value = serde_json::from_str(&current.content).unwrap_or(Value::Null);
    let owned = (!current.deleted && is_owned_decision(ty, &old))
        || new.is_some_and(|n| is_owned_decision(ty, n));
    if !owned {
        return Ok(false);
    }
    let org = gate.principal().org.as_str();
    let author = author(conn, ty, &current.id)?.unwrap_or_default();
    if author == org {
        return Ok(true);
    }
    let what = what_it_is(ty);
    if if_match.is_none() {
        return Err(StoreError::PreconditionRequired(format!(
            "this {what} was recorded by organisation {author}: another organisation may amend it only with If-Match naming the version it read, and a Provenance (activity, reason, agent) targeting it in the same transaction Bundle"
        )));
    }
    if amendment.is_none() {
        return Err(StoreError::NotOwner(format!(
                "this {what} was recorded by organisation {author}: another organisation may amend it only with a reason, given as a Provenance (activity, reason, agent) targeting {ty}/{} in the same transaction Bundle",
                current.id
        )));
    }
    Ok(true)
}

fn what_it_is(ty: &str) -> &'static str {
    match ty {
        "Consent" => "consent record",
        "Composition" => "ReSPECT form",
        "DocumentReference" => "document index",
        _ => "decision",
    }
}

/// Writes the Provenance of a change to an owned decision, unless the client sent its own
/// (`amendment`), in the same transaction. `activity` is a v3-DataOperation code (CREATE,
/// UPDATE, DELETE); `reason` says why when the service itself made the change.
pub(crate) fn record(
    conn: &mut DbConn,
    gate: &Gate,
    changed: &Stored,
    activity: &str,
    amendment: Option<&Amendment>,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    if amendment.is_some() {
        return Ok(());
    }
    let Some(key) = changed.patient_key.clone() else {
        return Ok(());
    };
    let p = gate.principal();
    let who = match &p.user_id {
        Some(u) => {
            json!({"identifier": {"system": epaccs_access::audit::SDS_USER_SYSTEM, "value": u},
                          "display": p.user_name.clone().unwrap_or_else(|| u.clone())})
        }
        None => json!({"identifier": {"system": CLIENT_SYSTEM, "value": p.client_id}}),
    };
    let mut body = json!({
        "resourceType": "Provenance",
        "target": [{"reference": format!("{}/{}/_history/{}", changed.resource_type, changed.id, changed.version_id)}],
        "recorded": date::format_instant(date::now_micros()),
        "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": activity}]},
        "agent": [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "author"}]},
            "who": who,
            "onBehalfOf": {"identifier": {"system": OdsCode::SYSTEM, "value": p.org.as_str()}}
        }]
    });
    if let Some(r) = reason {
        body["reason"] = json!([{"text": r}]);
    }
    let kind = kind_of("Provenance").ok_or_else(|| StoreError::Internal("unknown type".into()))?;
    let index = crate::outbox::params().index(kind.name, &body);
    let put = Put {
        kind,
        body,
        index,
        link: PatientLink::Patient(key),
        method: "POST",
    };
    resources::create_internal(conn, gate, put)?;
    Ok(())
}
