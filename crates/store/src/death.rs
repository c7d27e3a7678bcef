//! Death closes the record's actions. When a person's `Patient.deceased[x]` is set, or an actual
//! place of death is recorded (which also sets `Patient.deceasedDateTime` when the Patient does
//! not say so yet), in the same transaction:
//!
//! - register enrolment ends: the register Flag (1403151000000103) becomes `inactive` and every
//!   open EpisodeOfCare `finished`, with `period.end` the date of death;
//! - plans stop being actionable: active or on-hold CarePlans become `completed`;
//! - every record-locator pointer of the person is re-checked, and the locator withdraws the
//!   pointers of a deceased person;
//! - subscribers are told of each change (each is an ordinary new version, announced by the
//!   outbox).
//!
//! Everything stays readable and in history; nothing is deleted. The changes are the service's
//! own (`resources::server_update`), made over the person's whole record whoever wrote it.

use crate::resources::{self, Stored};
use crate::{DbConn, StoreError};
use epaccs_access::Gate;
use epaccs_core::codes;
use epaccs_fhir::date;
use serde_json::{json, Value};

/// The local code of the actual place of death observable.
const ACTUAL_PLACE_OF_DEATH: &str = "actual-place-of-death";

/// Whether a Patient resource says the person has died, and when (if it says).
pub fn deceased(patient: &Value) -> Option<Option<String>> {
    if let Some(dt) = patient.get("deceasedDateTime").and_then(Value::as_str) {
        return Some(Some(dt.to_string()));
    }
    (patient.get("deceasedBoolean").and_then(Value::as_bool) == Some(true)).then_some(None)
}

fn has_code(v: &Value, element: &str, system: &str, code: &str) -> bool {
    v.get(element)
        .and_then(|c| c.get("coding"))
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("code").and_then(Value::as_str) == Some(code)
                    && c.get("system").and_then(Value::as_str) == Some(system)
            })
        })
}

/// Called after every write of a Patient or an Observation.
pub(crate) fn after_write(
    conn: &mut DbConn,
    gate: &Gate,
    written: &Stored,
) -> Result<(), StoreError> {
    if written.deleted {
        return Ok(());
    }
    let Some(key) = written.patient_key.clone() else {
        return Ok(());
    };
    // Most writes say nothing of death: look before parsing (creates are a hot path).
    let content = written.content.as_str();
    if !content.contains("deceased") && !content.contains(ACTUAL_PLACE_OF_DEATH) {
        return Ok(());
    }
    let died_on = match written.resource_type.as_str() {
        "Patient" => {
            let v: Value = serde_json::from_str(&written.content)
                .map_err(|e| StoreError::Internal(e.to_string()))?;
            match deceased(&v) {
                Some(when) => when,
                None => return Ok(()),
            }
        }
        "Observation" => {
            let v: Value = serde_json::from_str(&written.content)
                .map_err(|e| StoreError::Internal(e.to_string()))?;
            let status = v.get("status").and_then(Value::as_str).unwrap_or_default();
            if !has_code(&v, "code", codes::EPACCS_OBSERVABLES, ACTUAL_PLACE_OF_DEATH)
                || matches!(
                    status,
                    "entered-in-error" | "cancelled" | "preliminary" | "registered"
                )
            {
                return Ok(());
            }
            let when = v
                .get("effectiveDateTime")
                .and_then(Value::as_str)
                .map(str::to_string);
            record_on_patient(conn, gate, &key, when.clone())?;
            when
        }
        _ => return Ok(()),
    };
    close(conn, gate, &key, died_on.as_deref())
}

/// Sets `Patient.deceased[x]` when the Patient does not say the person has died yet.
fn record_on_patient(
    conn: &mut DbConn,
    gate: &Gate,
    key: &str,
    when: Option<String>,
) -> Result<(), StoreError> {
    for p in resources::person_resources(conn, key, "Patient")? {
        let v: Value = serde_json::from_str(&p.content).unwrap_or(Value::Null);
        if deceased(&v).is_some() {
            continue;
        }
        resources::server_update(
            conn,
            gate,
            &p,
            |v| {
                if let Some(m) = v.as_object_mut() {
                    match &when {
                        Some(dt) => m.insert("deceasedDateTime".into(), json!(dt)),
                        None => m.insert("deceasedBoolean".into(), json!(true)),
                    };
                }
            },
            "an actual place of death was recorded",
        )?;
    }
    Ok(())
}

/// The end of a period opened at `start`, closed by a death on `died_on` (never before it
/// started).
fn period_end(start: Option<&str>, died_on: &str) -> String {
    let s = start.and_then(date::parse_range).map(|r| r.low);
    let d = date::parse_range(died_on).map(|r| r.low);
    match (start, s, d) {
        (Some(start), Some(s), Some(d)) if s > d => start.to_string(),
        _ => died_on.to_string(),
    }
}

fn close(
    conn: &mut DbConn,
    gate: &Gate,
    key: &str,
    died_on: Option<&str>,
) -> Result<(), StoreError> {
    let today = date::format_instant(date::now_micros());
    let died_on = died_on.unwrap_or(&today);
    let reason = "the person has died: the record's actions are closed";
    let closing = |status: &'static str| {
        move |v: &mut Value| {
            v["status"] = json!(status);
            let start = v
                .pointer("/period/start")
                .and_then(Value::as_str)
                .map(str::to_string);
            if v.get("period").is_none_or(|p| !p.is_object()) {
                v["period"] = json!({});
            }
            v["period"]["end"] = json!(period_end(start.as_deref(), died_on));
        }
    };
    for f in resources::person_resources(conn, key, "Flag")? {
        let v: Value = serde_json::from_str(&f.content).unwrap_or(Value::Null);
        if v.get("status").and_then(Value::as_str) == Some("active")
            && has_code(&v, "code", codes::SNOMED, codes::ON_PALLIATIVE_REGISTER)
        {
            resources::server_update(conn, gate, &f, closing("inactive"), reason)?;
        }
    }
    for e in resources::person_resources(conn, key, "EpisodeOfCare")? {
        let v: Value = serde_json::from_str(&e.content).unwrap_or(Value::Null);
        if matches!(
            v.get("status").and_then(Value::as_str),
            Some("planned" | "waitlist" | "active" | "onhold")
        ) {
            resources::server_update(conn, gate, &e, closing("finished"), reason)?;
        }
    }
    for p in resources::person_resources(conn, key, "CarePlan")? {
        let v: Value = serde_json::from_str(&p.content).unwrap_or(Value::Null);
        if matches!(
            v.get("status").and_then(Value::as_str),
            Some("active" | "on-hold")
        ) {
            resources::server_update(conn, gate, &p, closing("completed"), reason)?;
        }
    }
    crate::outbox::refresh_locator(conn, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deceased_and_period_end() {
        assert_eq!(deceased(&json!({"deceasedBoolean": false})), None);
        assert_eq!(deceased(&json!({})), None);
        assert_eq!(deceased(&json!({"deceasedBoolean": true})), Some(None));
        assert_eq!(
            deceased(&json!({"deceasedDateTime": "2026-12-01"})),
            Some(Some("2026-12-01".into()))
        );
        assert_eq!(period_end(Some("2026-01-01"), "2026-12-01"), "2026-12-01");
        assert_eq!(period_end(Some("2026-12-02"), "2026-12-01"), "2026-12-02");
        assert_eq!(period_end(None, "2026-12-01"), "2026-12-01");
    }
}
