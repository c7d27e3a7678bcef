//! The end-of-life record's clinical rules: the ReSPECT lifecycle and profiled content.

use crate::both_backends;
use crate::helpers::*;
use serde_json::{json, Value};

both_backends!(
    respect_forms_supersede_atomically,
    concurrent_forms_leave_one_current
);

const RESPECT: &str = "1382601000000107";

pub fn respect_form(pid: &str, date: &str, focus: &str) -> Value {
    json!({"resourceType": "Composition", "status": "final",
        "type": {"coding": [{"system": "http://snomed.info/sct", "code": RESPECT}]},
        "subject": {"reference": format!("Patient/{pid}")}, "date": date,
        "author": [{"display": "Dr Example"}], "title": "ReSPECT form",
        "section": [{"title": "4. Clinical recommendations for emergency care and treatment",
            "text": {"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{focus}</div>")}}]})
}

async fn current(gp: &Api, pid: &str) -> Vec<Value> {
    gp.get(&format!(
        "/DocumentReference?patient={pid}&type=http://snomed.info/sct|{RESPECT}&status=current"
    ))
    .await
    .entries(Some("match"))
}

async fn respect_forms_supersede_atomically(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let pid = gp.create_id(&patient(&nhs(1), "Respect", "A81001")).await;
    gp.create(&consent(&pid, GIVEN, "2026-01-01")).await;
    let a = gp
        .create_id(&respect_form(
            &pid,
            "2025-03-01",
            "Focus on life-sustaining treatment",
        ))
        .await;
    let now = current(&gp, &pid).await;
    assert_eq!(now.len(), 1);
    assert_eq!(
        now[0]["content"][0]["attachment"]["url"],
        format!("Composition/{a}")
    );
    assert_eq!(now[0]["custodian"]["identifier"]["value"], "A81001");
    let first_index = now[0]["id"].as_str().expect("id").to_string();

    let b_id = gp
        .create_id(&respect_form(&pid, "2026-09-01", "Focus on comfort"))
        .await;
    let now = current(&gp, &pid).await;
    assert_eq!(now.len(), 1, "two current ReSPECT forms");
    assert_eq!(
        now[0]["content"][0]["attachment"]["url"],
        format!("Composition/{b_id}")
    );
    assert_eq!(now[0]["relatesTo"][0]["code"], "replaces");
    assert_eq!(
        now[0]["relatesTo"][0]["target"]["reference"],
        format!("DocumentReference/{first_index}")
    );
    let old = gp.get(&format!("/DocumentReference/{first_index}")).await;
    assert_eq!(old.body["status"], "superseded");
    let replaced = gp
        .get(&format!(
            "/DocumentReference?relatesto=DocumentReference/{first_index}"
        ))
        .await;
    assert_eq!(replaced.entries(Some("match")).len(), 1);

    let crew = app.client("ambulance", "RX801", "ambulance").await;
    let summary = crew
        .get(&format!(
            "/Patient/$emergency-summary?identifier=https://fhir.nhs.uk/Id/nhs-number|{}",
            nhs(1)
        ))
        .await;
    assert!(summary.text.contains("Focus on comfort"));
    assert!(
        !summary.text.contains("life-sustaining treatment"),
        "a superseded form was shown as current"
    );

    // The newest form entered in error: it and its index drop out; the old one is not revived.
    let mut bad = gp.get(&format!("/Composition/{b_id}")).await.body;
    bad["status"] = json!("entered-in-error");
    assert_eq!(
        gp.put(&format!("/Composition/{b_id}"), &bad, &[])
            .await
            .status,
        200
    );
    assert!(current(&gp, &pid).await.is_empty());
    let summary = crew
        .get(&format!(
            "/Patient/$emergency-summary?identifier=https://fhir.nhs.uk/Id/nhs-number|{}",
            nhs(1)
        ))
        .await;
    assert!(
        !summary.text.contains("Focus on comfort")
            && !summary.text.contains("life-sustaining treatment")
    );
    assert!(summary.text.contains("No current ReSPECT form"));
    // History keeps everything.
    let hist = gp.get(&format!("/Composition/{b_id}/_history")).await;
    assert_eq!(hist.body["entry"].as_array().map(Vec::len), Some(2));
}

async fn concurrent_forms_leave_one_current(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let hospice = app.client("hospice", "HOS01", "hospice").await;
    let pid = gp.create_id(&patient(&nhs(1), "Race", "A81001")).await;
    gp.create(&json!({"resourceType": "CareTeam", "status": "active", "subject": {"reference": format!("Patient/{pid}")},
        "participant": [{"member": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "HOS01"}}}]})).await;
    for round in 0..4 {
        let f1 = respect_form(&pid, "2026-10-01", &format!("GP form {round}"));
        let f2 = respect_form(&pid, "2026-10-01", &format!("Hospice form {round}"));
        let (r1, r2) = tokio::join!(
            gp.post("/Composition", &f1),
            hospice.post("/Composition", &f2)
        );
        assert_eq!(
            (r1.status, r2.status),
            (201, 201),
            "{} {}",
            r1.text,
            r2.text
        );
        // Counted in the database, without any sharing filter: no consent is recorded, so
        // neither organisation sees the other's form.
        assert_eq!(
            app.current_respect_indexes(&pid).len(),
            1,
            "round {round}: more than one current form"
        );
    }
}
