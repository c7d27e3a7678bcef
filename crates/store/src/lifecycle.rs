//! The ReSPECT form lifecycle, kept inside the write's own transaction so that at most one form
//! per person is ever current.
//!
//! - A ReSPECT Composition (type 1382601000000107) written as `final`/`amended` gets a
//!   DocumentReference index (NRL-style: type, category 734163000, subject, custodian by ODS code,
//!   `content.attachment.url` = the Composition). Every other `current` ReSPECT index of the same
//!   person becomes `superseded`, and the new index `relatesTo: replaces` the one it replaced.
//! - A Composition marked `entered-in-error` takes its index with it. The previous form is not
//!   reinstated automatically: a clinician must confirm which form stands.
//!
//! The group-commit writer runs writes one at a time, so two forms posted at once are applied in
//! sequence and the second supersedes the first.

use crate::resources::{self, Put, Stored, WriteOp};
use crate::{DbConn, StoreError};
use epaccs_access::Gate;
use epaccs_core::{codes, Interaction, OdsCode};
use epaccs_fhir::query::{Filter, TokenValue};
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

fn respect_indexes(
    conn: &mut DbConn,
    gate: &Gate,
    patient: &str,
    status: Option<&str>,
) -> Result<Vec<Stored>, StoreError> {
    let mut filters = vec![
        Filter::Reference {
            param: "patient".into(),
            values: vec![epaccs_fhir::query::RefValue {
                target_type: Some("Patient".into()),
                id: patient.to_string(),
            }],
        },
        Filter::Token {
            param: "type".into(),
            values: vec![TokenValue {
                system: Some(codes::SNOMED.into()),
                code: Some(codes::RESPECT_FORM.into()),
            }],
            not: false,
        },
    ];
    if let Some(s) = status {
        filters.push(Filter::Token {
            param: "status".into(),
            values: vec![TokenValue {
                system: None,
                code: Some(s.into()),
            }],
            not: false,
        });
    }
    let q = epaccs_fhir::query::Query {
        filters,
        count: Some(1000),
        ..Default::default()
    };
    Ok(crate::search::search(conn, gate, "DocumentReference", &q)?.matches)
}

/// Rewrites one of this person's resources through the normal update path (gated, indexed,
/// versioned, announced).
fn change(
    conn: &mut DbConn,
    gate: &Gate,
    s: &Stored,
    f: impl FnOnce(&mut Value),
) -> Result<(), StoreError> {
    let mut v: Value =
        serde_json::from_str(&s.content).map_err(|e| StoreError::Internal(e.to_string()))?;
    f(&mut v);
    let kind =
        kind_of(&s.resource_type).ok_or_else(|| StoreError::Internal("unknown type".into()))?;
    let index = crate::outbox::params().index(kind.name, &v);
    let link = epaccs_fhir::registry::patient_link(kind, &v);
    let put = Put {
        kind,
        body: v,
        index,
        link,
        method: "PUT",
    };
    resources::apply(
        conn,
        gate,
        WriteOp::Update {
            id: s.id.clone(),
            put,
            if_match: Some(s.version_id),
            upsert: false,
        },
    )?;
    Ok(())
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
    // The index is kept in the writer's name, through the writer's gate, which sees only what
    // the token's scopes name: a token that could not search and change DocumentReferences
    // would leave an earlier form current unseen, so it may not write a form.
    let scopes = &gate.principal().scopes;
    let needed = [
        Interaction::Search,
        Interaction::Create,
        Interaction::Update,
    ];
    if !needed
        .iter()
        .all(|i| scopes.allows("DocumentReference", *i))
    {
        let reason = "a ReSPECT form keeps its DocumentReference index: the token must also search, create and update DocumentReference".to_string();
        gate.record(
            Some(patient),
            "DocumentReference/*".into(),
            epaccs_access::Decision::Deny {
                reveal: false,
                reason: reason.clone(),
            },
        );
        return Err(StoreError::Forbidden {
            reveal: false,
            reason,
        });
    }
    let url = format!("Composition/{}", written.id);
    let points_here = |d: &Stored| d.content.contains(&format!("\"{url}\""));
    let status = v.get("status").and_then(Value::as_str).unwrap_or_default();
    let all = respect_indexes(conn, gate, &patient, None)?;
    match status {
        "final" | "amended" => {
            if all
                .iter()
                .any(|d| points_here(d) && d.content.contains("\"status\":\"current\""))
            {
                return Ok(());
            }
            let current = respect_indexes(conn, gate, &patient, Some("current"))?;
            for old in &current {
                change(conn, gate, old, |d| d["status"] = json!("superseded"))?;
            }
            let mut index = json!({
                "resourceType": "DocumentReference",
                "status": "current",
                "type": {"coding": [{"system": codes::SNOMED, "code": codes::RESPECT_FORM, "display": "ReSPECT form"}]},
                "category": [{"coding": [{"system": codes::SNOMED, "code": codes::CARE_PLAN_CATEGORY}]}],
                "subject": v.get("subject").cloned().unwrap_or_else(|| json!({"reference": format!("Patient/{patient}")})),
                "date": v.get("date").cloned().unwrap_or(Value::Null),
                "custodian": {"identifier": {"system": OdsCode::SYSTEM, "value": gate.principal().org.as_str()}},
                "content": [{"attachment": {"contentType": "application/fhir+json", "url": url}}]
            });
            if index["date"].is_null() {
                if let Some(m) = index.as_object_mut() {
                    m.remove("date");
                }
            }
            if !current.is_empty() {
                index["relatesTo"] = Value::Array(current.iter().map(|o| json!({"code": "replaces", "target": {"reference": format!("DocumentReference/{}", o.id)}})).collect());
            }
            let kind = kind_of("DocumentReference")
                .ok_or_else(|| StoreError::Internal("unknown type".into()))?;
            let rows = crate::outbox::params().index(kind.name, &index);
            let put = Put {
                kind,
                body: index,
                index: rows,
                link: PatientLink::Patient(patient),
                method: "POST",
            };
            resources::apply(
                conn,
                gate,
                WriteOp::Create {
                    put,
                    if_none_exist: None,
                    id: None,
                },
            )?;
        }
        "entered-in-error" => {
            for d in all.iter().filter(|d| points_here(d)) {
                change(conn, gate, d, |x| x["status"] = json!("entered-in-error"))?;
            }
        }
        _ => {}
    }
    Ok(())
}
