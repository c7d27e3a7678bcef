//! The ReSPECT form lifecycle, kept inside the write's own transaction so that at most one form
//! per person is ever current.
//!
//! - A ReSPECT Composition (type 1382601000000107) written as `final`/`amended` gets a
//!   DocumentReference index (NRL-style: type, category 734163000, subject, custodian by ODS code,
//!   `content.attachment.url` = the Composition, `date` the instant it was indexed, and
//!   `context.period.start` the form's own date).
//! - Currency is decided over **all** of the person's forms, whoever wrote them and whatever
//!   the writer may read (`resources::person_resources`, a view that never leaves the store):
//!   the form with the latest date of its own is current, ties going to the later arrival. An
//!   older form that arrives late is indexed as `superseded`; a newer one supersedes every other
//!   current index, and its index `relatesTo: replaces` them. The service makes those changes on
//!   its own account (`resources::server_update`), each with a Provenance saying why.
//! - A form's date is read when it is first indexed; a later amendment of the same Composition
//!   does not reorder the forms.
//! - A Composition marked `entered-in-error` takes its index with it. The previous form is not
//!   reinstated automatically: a clinician must confirm which form stands.
//!
//! The group-commit writer runs writes one at a time, so two forms posted at once are applied in
//! sequence.

use crate::resources::{self, Put, Stored};
use crate::{DbConn, StoreError};
use epaccs_access::Gate;
use epaccs_core::{codes, OdsCode};
use epaccs_fhir::date;
use epaccs_fhir::registry::{kind_of, PatientLink};
use serde_json::{json, Value};

fn is_respect(v: &Value, element: &str) -> bool {
    v.get(element)
        .and_then(|t| t.get("coding"))
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.get("code").and_then(Value::as_str) == Some(codes::RESPECT_FORM))
        })
}

/// One ReSPECT index of the person, parsed.
struct Index {
    stored: Stored,
    status: String,
    url: String,
    /// The form's own date (low end of its range), then the arrival of the index.
    order: (i64, i64),
}

fn order_of(v: &Value, stored_last_updated: i64) -> (i64, i64) {
    let form = v
        .pointer("/context/period/start")
        .and_then(Value::as_str)
        .and_then(date::parse_range)
        .map_or(i64::MIN, |r| r.low);
    let arrival = v
        .get("date")
        .and_then(Value::as_str)
        .and_then(date::parse_range)
        .map_or(stored_last_updated, |r| r.low);
    (form, arrival)
}

/// Every ReSPECT index of the person (the system view).
fn indexes(conn: &mut DbConn, patient: &str) -> Result<Vec<Index>, StoreError> {
    Ok(
        resources::person_resources(conn, patient, "DocumentReference")?
            .into_iter()
            .filter_map(|s| {
                let v: Value = serde_json::from_str(&s.content).ok()?;
                if !is_respect(&v, "type") {
                    return None;
                }
                let status = v.get("status").and_then(Value::as_str)?.to_string();
                let url = v
                    .pointer("/content/0/attachment/url")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let order = order_of(&v, s.last_updated);
                Some(Index {
                    stored: s,
                    status,
                    url,
                    order,
                })
            })
            .collect(),
    )
}

fn set_status(
    conn: &mut DbConn,
    gate: &Gate,
    s: &Stored,
    status: &str,
    reason: &str,
) -> Result<(), StoreError> {
    resources::server_update(conn, gate, s, |d| d["status"] = json!(status), reason)
}

/// Called after a Composition is written.
pub(crate) fn after_composition_write(
    conn: &mut DbConn,
    gate: &Gate,
    written: &Stored,
) -> Result<(), StoreError> {
    let v: Value =
        serde_json::from_str(&written.content).map_err(|e| StoreError::Internal(e.to_string()))?;
    if !is_respect(&v, "type") {
        return Ok(());
    }
    let Some(patient) = written.patient_key.clone() else {
        return Ok(());
    };
    let url = format!("Composition/{}", written.id);
    let status = v.get("status").and_then(Value::as_str).unwrap_or_default();
    let all = indexes(conn, &patient)?;
    match status {
        "final" | "amended" => {
            if all
                .iter()
                .any(|d| d.url == url && d.status != "entered-in-error")
            {
                return Ok(());
            }
            let now = date::now_micros();
            let form_date = v.get("date").and_then(Value::as_str);
            let order = (
                form_date
                    .and_then(date::parse_range)
                    .map_or(i64::MIN, |r| r.low),
                now,
            );
            let current: Vec<&Index> = all.iter().filter(|d| d.status == "current").collect();
            // The new form stands unless a current form is at least as recent by its own date.
            let newest_current = current.iter().map(|d| d.order).max();
            let stands =
                newest_current.is_none_or(|o| order.0 > o.0 || (order.0 == o.0 && order.1 >= o.1));
            let mut index = json!({
                "resourceType": "DocumentReference",
                "status": if stands { "current" } else { "superseded" },
                "type": {"coding": [{"system": codes::SNOMED, "code": codes::RESPECT_FORM, "display": "ReSPECT form"}]},
                "category": [{"coding": [{"system": codes::SNOMED, "code": codes::CARE_PLAN_CATEGORY}]}],
                "subject": v.get("subject").cloned().unwrap_or_else(|| json!({"reference": format!("Patient/{patient}")})),
                "date": date::format_instant(now),
                "custodian": {"identifier": {"system": OdsCode::SYSTEM, "value": gate.principal().org.as_str()}},
                "content": [{"attachment": {"contentType": "application/fhir+json", "url": url}}]
            });
            if let Some(d) = form_date {
                index["context"] = json!({"period": {"start": d}});
            }
            let kind = kind_of("DocumentReference")
                .ok_or_else(|| StoreError::Internal("unknown type".into()))?;
            if stands && !current.is_empty() {
                index["relatesTo"] = Value::Array(current.iter().map(|o| json!({"code": "replaces", "target": {"reference": format!("DocumentReference/{}", o.stored.id)}})).collect());
            }
            let rows = crate::outbox::params().index(kind.name, &index);
            let created = resources::create_internal(
                conn,
                gate,
                Put {
                    kind,
                    body: index,
                    index: rows,
                    link: PatientLink::Patient(patient),
                    method: "POST",
                },
            )?;
            if stands {
                let reason = format!(
                    "superseded by a more recent ReSPECT form ({url}, indexed as DocumentReference/{})",
                    created.stored.id
                );
                for old in current {
                    set_status(conn, gate, &old.stored, "superseded", &reason)?;
                }
            }
        }
        "entered-in-error" => {
            for d in all.iter().filter(|d| d.url == url) {
                set_status(
                    conn,
                    gate,
                    &d.stored,
                    "entered-in-error",
                    &format!("{url} was marked entered in error"),
                )?;
            }
        }
        _ => {}
    }
    Ok(())
}
