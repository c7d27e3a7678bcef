//! Pointers to the National Record Locator pattern (`EPACCS_NRL_URL`).
//!
//! For each current ReSPECT form index and end-of-life care plan, a DocumentReference pointer
//! (type 1382601000000107 or 736373009, category 734163000, subject by NHS number, custodian by ODS
//! code, content linking back to this service) is kept at the locator as
//! `PUT {nrl}/DocumentReference/epaccs-{type}-{id}`. A superseded form's pointer is updated to
//! `superseded` (the new one `relatesTo: replaces` it); an entered-in-error or deleted source,
//! or a person whose consent to share is no longer in force, has its pointer removed
//! (`DELETE`), and so has every pointer of a person who has died. The locator's gate sees a
//! record only while consent is in force, so a withdrawal always ends in deletion.

use super::{send, Delivery};
use epaccs_access::audit::{self, Outcome};
use epaccs_access::{Gate, Rules};
use epaccs_core::{codes, NhsNumber, OdsCode, Principal, Purpose, Role, Scopes};
use epaccs_store::outbox::{Event, Subscription, LOCATOR_CLIENT};
use epaccs_store::{resources, Store, StoreError};
use serde_json::{json, Value};
use std::sync::Arc;

fn principal() -> Option<Principal> {
    Some(Principal {
        client_id: LOCATOR_CLIENT.to_string(),
        org: OdsCode::parse("EPACCS").ok()?,
        role: Role::Admin,
        user_id: None,
        user_name: None,
        user_role: None,
        purpose: Purpose::Treat,
        break_glass_reason: None,
        scopes: Scopes::parse_strict("system/*.read").ok()?,
    })
}

fn pointer_id(ty: &str, id: &str) -> String {
    format!("epaccs-{ty}-{id}")
}

pub(crate) async fn deliver(
    store: &Store,
    rules: &Arc<Rules>,
    http: &reqwest::Client,
    sub: &Subscription,
    ev: &Event,
    base: &str,
) -> Result<Delivery, StoreError> {
    let Some(who) = principal() else {
        return Ok(Delivery::Suppressed);
    };
    if ev.event == "handshake" {
        return Ok(Delivery::Suppressed);
    }
    let gate = Arc::new(Gate::for_locator(who.clone(), rules.clone()));
    let g = gate.clone();
    let (ty, id) = (ev.res_type.clone(), ev.res_id.clone());
    // The pointer reflects the source as it is now, seen through the locator's gate.
    let found = store
        .with_conn(move |c| {
            let source = match resources::read(c, &g, &ty, &id) {
                Ok(s) => s,
                Err(
                    StoreError::NotFound | StoreError::Gone { .. } | StoreError::Withheld { .. },
                ) => return Ok(None),
                Err(e) => return Err(e),
            };
            let Some(pid) = source.patient_key.clone() else {
                return Ok(None);
            };
            let patient = resources::read(c, &g, "Patient", &pid)?;
            Ok(Some((source, patient)))
        })
        .await?;
    let url = format!(
        "{}/DocumentReference/{}",
        sub.endpoint.trim_end_matches('/'),
        pointer_id(&ev.res_type, &ev.res_id)
    );
    let Some((source, patient)) = found else {
        return Ok(send(http.delete(&url)).await);
    };
    let s: Value = serde_json::from_str(&source.content).unwrap_or(Value::Null);
    let p: Value = serde_json::from_str(&patient.content).unwrap_or(Value::Null);
    // A deceased person's pointers are withdrawn: nothing of theirs is actionable any more.
    if epaccs_store::death::deceased(&p).is_some() {
        return Ok(send(http.delete(&url)).await);
    }
    let status = s.get("status").and_then(Value::as_str).unwrap_or_default();
    let pointer_status = match (ev.res_type.as_str(), status) {
        ("DocumentReference", "current") | ("CarePlan", "active" | "on-hold") => "current",
        ("DocumentReference", "superseded") => "superseded",
        _ => return Ok(send(http.delete(&url)).await),
    };
    let nhs = p
        .get("identifier")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|i| i.get("system").and_then(Value::as_str) == Some(NhsNumber::SYSTEM))
        .and_then(|i| i.get("value").and_then(Value::as_str))
        .map(str::to_string);
    let Some(nhs) = nhs else {
        // A pointer is found by NHS number; without one there is nothing to publish.
        return Ok(Delivery::Suppressed);
    };
    let (type_code, target) = if ev.res_type == "DocumentReference" {
        let target = s
            .pointer("/content/0/attachment/url")
            .and_then(Value::as_str)
            .map(|u| format!("{base}/{u}"))
            .unwrap_or_default();
        (codes::RESPECT_FORM, target)
    } else {
        (
            codes::EOL_CARE_PLAN,
            format!("{base}/CarePlan/{}", source.id),
        )
    };
    let custodian = s
        .pointer("/custodian/identifier/value")
        .and_then(Value::as_str)
        .unwrap_or("EPACCS")
        .to_string();
    let mut pointer = json!({
        "resourceType": "DocumentReference",
        "id": pointer_id(&ev.res_type, &ev.res_id),
        "masterIdentifier": {"system": "https://fhir.epaccs.nhs.example/Id/record", "value": format!("{}/{}", ev.res_type, ev.res_id)},
        "status": pointer_status,
        "type": {"coding": [{"system": codes::SNOMED, "code": type_code}]},
        "category": [{"coding": [{"system": codes::SNOMED, "code": codes::CARE_PLAN_CATEGORY}]}],
        "subject": {"identifier": {"system": NhsNumber::SYSTEM, "value": nhs}},
        "custodian": {"identifier": {"system": OdsCode::SYSTEM, "value": custodian}},
        "content": [{"attachment": {"contentType": "application/fhir+json", "url": target}}],
    });
    if let Some(rel) = s.get("relatesTo").and_then(Value::as_array) {
        let mapped: Vec<Value> = rel
            .iter()
            .filter_map(|r| {
                let t = r.pointer("/target/reference").and_then(Value::as_str)?;
                let (rt, rid) = epaccs_fhir::registry::split_reference(t)?;
                Some(json!({"code": r.get("code").cloned().unwrap_or(json!("replaces")), "target": {"reference": format!("DocumentReference/{}", pointer_id(rt, rid))}}))
            })
            .collect();
        if !mapped.is_empty() {
            pointer["relatesTo"] = Value::Array(mapped);
        }
    }
    let result = send(
        http.put(&url)
            .header("content-type", "application/fhir+json")
            .body(pointer.to_string()),
    )
    .await;
    if matches!(result, Delivery::Delivered) {
        let rec = audit::record(
            &audit::Request {
                principal: &who,
                interaction: "notification",
                resource_type: Some(&ev.res_type),
                query: &url,
                outcome: Outcome::Success,
                description: Some("record locator pointer".into()),
            },
            &gate.log(),
        );
        return Ok(Delivery::Disclosed(Box::new(rec)));
    }
    Ok(result)
}
