//! `Patient/$emergency-summary`: one call, one document Bundle, never the wrong person, never a
//! stale form.

use crate::both_backends;
use crate::helpers::*;
use serde_json::{json, Value};

both_backends!(
    summary_shows_only_current_decisions,
    demographic_lookup_never_guesses,
    summary_respects_consent_and_break_glass
);

const RESPECT: &str = "1382601000000107";

fn respect_form(pid: &str, date: &str) -> Value {
    json!({"resourceType": "Composition", "status": "final",
        "type": {"coding": [{"system": "http://snomed.info/sct", "code": RESPECT}]},
        "subject": {"reference": format!("Patient/{pid}")}, "date": date,
        "author": [{"display": "Dr Example, GMC 7654321"}], "title": "ReSPECT form",
        "section": [{"title": "4. Clinical recommendations", "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Focus on comfort</div>"}}]})
}

fn index(pid: &str, composition: &str, status: &str, replaces: Option<&str>) -> Value {
    let mut d = json!({"resourceType": "DocumentReference", "status": status,
        "type": {"coding": [{"system": "http://snomed.info/sct", "code": RESPECT}]},
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "734163000"}]}],
        "subject": {"reference": format!("Patient/{pid}")},
        "content": [{"attachment": {"contentType": "application/fhir+json", "url": format!("Composition/{composition}")}}]});
    if let Some(r) = replaces {
        d["relatesTo"] = json!([{"code": "replaces", "target": {"reference": format!("DocumentReference/{r}")}}]);
    }
    d
}

fn section<'a>(doc: &'a Value, title_start: &str) -> &'a Value {
    doc["entry"][0]["resource"]["section"]
        .as_array()
        .expect("sections")
        .iter()
        .find(|s| {
            s["title"]
                .as_str()
                .is_some_and(|t| t.starts_with(title_start))
        })
        .unwrap_or_else(|| panic!("no section {title_start}"))
}

fn refs(sec: &Value) -> Vec<String> {
    sec["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    e["reference"]
                        .as_str()
                        .unwrap_or("")
                        .rsplit('/')
                        .next()
                        .unwrap_or("")
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn summary_shows_only_current_decisions(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let p = gp.create(&patient(&nhs(1), "Summary", "A81001")).await;
    let pid = p["id"].as_str().expect("id").to_string();
    gp.create(&consent(&pid, GIVEN, "2026-01-01")).await;

    let mut wrong = observation(&pid, "450475007");
    wrong["status"] = json!("entered-in-error");
    wrong["effectiveDateTime"] = json!("2026-11-01T10:00:00Z");
    let wrong = gp.create_id(&wrong).await;
    let mut cpr = observation(&pid, "450476008");
    cpr["performer"] = json!([{"display": "Dr Example"}]);
    let cpr = gp.create_id(&cpr).await;

    let old_form = gp.create_id(&respect_form(&pid, "2025-01-01")).await;
    let old_index = gp
        .create_id(&index(&pid, &old_form, "superseded", None))
        .await;
    let new_form = gp.create_id(&respect_form(&pid, "2026-06-01")).await;
    let new_index = gp
        .create_id(&index(&pid, &new_form, "current", Some(&old_index)))
        .await;

    let statement = gp.create_id(&observation(&pid, "816281000000101")).await;
    let adrt = gp.create_id(&observation(&pid, "816301000000100")).await;
    gp.create(&json!({"resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": {"reference": format!("Patient/{pid}")},
        "extension": [{"url": "https://fhir.epaccs.nhs.example/StructureDefinition/planned-review-date", "valueDate": "2026-01-31"}]})).await;

    let crew = app.client("ambulance", "RX801", "ambulance").await;
    let r = crew
        .get(&format!(
            "/Patient/$emergency-summary?identifier=https://fhir.nhs.uk/Id/nhs-number|{}",
            nhs(1)
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["type"], "document");
    assert_eq!(r.body["resourceType"], "Bundle");
    assert_eq!(r.body["identifier"]["system"], "urn:ietf:rfc:3986");
    assert!(r.body["timestamp"].is_string() && r.body["id"].is_string());
    assert_eq!(r.body["meta"]["lastUpdated"], r.body["timestamp"]);
    assert_eq!(
        r.body["entry"][0]["resource"]["resourceType"],
        "Composition"
    );
    assert_eq!(r.body["entry"][1]["resource"]["id"], pid.as_str());
    assert_eq!(refs(section(&r.body, "CPR")), vec![cpr.clone()]);
    assert!(
        !r.text.contains(&wrong),
        "entered-in-error CPR decision shown"
    );
    assert_eq!(refs(section(&r.body, "ReSPECT")), vec![new_form.clone()]);
    assert!(
        !r.text.contains(&format!("Composition/{old_form}")),
        "superseded ReSPECT form shown"
    );
    assert_eq!(
        refs(section(&r.body, "Advance decisions")),
        vec![adrt, statement],
        "ADRT must come before advance statements"
    );
    let plans = section(&r.body, "Care plans");
    assert!(plans["text"]["div"]
        .as_str()
        .expect("div")
        .contains("REVIEW OVERDUE"));
    assert_eq!(
        plans["extension"],
        json!([{"url": "https://fhir.epaccs.nhs.example/StructureDefinition/review-overdue", "valueDate": "2026-01-31"}])
    );
    let places = section(&r.body, "Preferred place");
    assert!(places["text"]["div"]
        .as_str()
        .expect("div")
        .contains("not recorded"));
    assert_eq!(places["text"]["status"], "generated");
    assert_eq!(
        places["emptyReason"]["coding"][0],
        json!({"system": "http://terminology.hl7.org/CodeSystem/list-empty-reason", "code": "unavailable"})
    );
    assert!(places.get("entry").is_none() && places.get("code").is_none());
    assert_eq!(
        section(&r.body, "CPR")["code"],
        json!({"coding": [{"system": "http://snomed.info/sct", "code": "450475007"}]})
    );
    let composition = &r.body["entry"][0]["resource"];
    assert_eq!(composition["status"], "final");
    assert_eq!(composition["type"]["coding"][0]["code"], "861421000000109");
    assert_eq!(
        composition["subject"]["reference"],
        r.body["entry"][1]["fullUrl"]
    );
    assert_eq!(
        r.body["entry"][0]["fullUrl"],
        format!("urn:uuid:{}", composition["id"].as_str().expect("id"))
    );
    assert!(composition["extension"][0]["valueInstant"].is_string());
    // Everything referenced is in the bundle.
    for s in r.body["entry"][0]["resource"]["section"]
        .as_array()
        .expect("sections")
    {
        for id in refs(s) {
            assert!(
                r.body["entry"]
                    .as_array()
                    .expect("entries")
                    .iter()
                    .any(|e| e["resource"]["id"] == id.as_str()),
                "{id} missing"
            );
        }
    }

    // A newer form replaces the one just shown: the very next summary (summaries are served
    // from memory when nothing has changed) must show only the newest.
    let newest = gp.create_id(&respect_form(&pid, "2026-11-01")).await;
    gp.create(&index(&pid, &newest, "current", Some(&new_index)))
        .await;
    let again = crew
        .get(&format!(
            "/Patient/$emergency-summary?identifier=https://fhir.nhs.uk/Id/nhs-number|{}",
            nhs(1)
        ))
        .await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(
        refs(section(&again.body, "ReSPECT")),
        vec![newest],
        "a replaced ReSPECT form was shown as current"
    );
}

async fn demographic_lookup_never_guesses(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let p = gp.create(&patient(&nhs(1), "O'Brien", "A81001")).await;
    let pid = p["id"].as_str().expect("id").to_string();
    gp.create(&consent(&pid, GIVEN, "2026-01-01")).await;
    // A near namesake: must never match "O'Brien".
    let other = gp.create(&patient(&nhs(2), "O'Brienne", "A81001")).await;
    gp.create(&consent(
        other["id"].as_str().expect("id"),
        GIVEN,
        "2026-01-01",
    ))
    .await;
    let crew = app.client("nhs111", "NHS11", "urgent-care").await;

    let q = "/Patient/$emergency-summary?family=obrien&birthdate=1941-05-06&address-postalcode=ls1%204ap";
    let r = crew.get(q).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["entry"][1]["resource"]["id"], pid.as_str());

    // A second person with the same name, birth date and postcode: no clinical data at all.
    let twin = gp.create(&patient(&nhs(3), "O'Brien", "A81001")).await;
    gp.create(&observation(twin["id"].as_str().expect("id"), "450476008"))
        .await;
    let r = crew.get(q).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.body["resourceType"], "OperationOutcome");
    assert_eq!(r.body["issue"][0]["code"], "multiple-matches");
    assert!(!r.text.contains(&pid) && !r.text.contains("450476008"));
    // The NHS number still identifies one person.
    let r = crew
        .get(&format!(
            "/Patient/$emergency-summary?identifier=https://fhir.nhs.uk/Id/nhs-number|{}",
            nhs(1)
        ))
        .await;
    assert_eq!(r.body["entry"][1]["resource"]["id"], pid.as_str());

    assert_eq!(
        crew.get(&format!(
            "/Patient/$emergency-summary?identifier=https://fhir.nhs.uk/Id/nhs-number|{}",
            nhs(9)
        ))
        .await
        .status,
        404
    );
    assert_eq!(
        crew.get(
            "/Patient/$emergency-summary?identifier=https://fhir.nhs.uk/Id/nhs-number|9990000019"
        )
        .await
        .status,
        400
    );
    assert_eq!(
        crew.get("/Patient/$emergency-summary?family=obrien")
            .await
            .status,
        400
    );
    assert_eq!(
        crew.get(
            "/Patient/$emergency-summary?family=obrien&birthdate=1941&address-postalcode=ls14ap"
        )
        .await
        .status,
        400
    );
}

async fn summary_respects_consent_and_break_glass(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let p = gp.create(&patient(&nhs(1), "Private", "A81001")).await;
    let pid = p["id"].as_str().expect("id").to_string();
    gp.create(&observation(&pid, "450476008")).await;
    let path = format!(
        "/Patient/$emergency-summary?identifier=https://fhir.nhs.uk/Id/nhs-number|{}",
        nhs(1)
    );
    let crew = app.client("ambulance", "RX801", "ambulance").await;
    let r = crew.get(&path).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(!r.text.contains("450476008"));
    let home = app.client("care-home", "CH001", "care-home").await;
    assert_eq!(home.get(&path).await.status, 404);
    let btg = app.client_with("ambulance", json!({"purpose_of_use": {"code": "BTG"}, "break_glass_reason": "cardiac arrest, no family present"})).await;
    let r = btg.get(&path).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("450476008"));
    let po = app.client("privacy", "PO001", "privacy-officer").await;
    assert_eq!(
        po.get(&format!("/AuditEvent?patient={pid}&subtype=110127"))
            .await
            .entries(None)
            .len(),
        1
    );
}
