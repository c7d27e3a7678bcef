//! `Patient/$emergency-summary`: one call, one document Bundle, never the wrong person, never a
//! stale form.

use crate::both_backends;
use crate::helpers::*;
use serde_json::{json, Value};

both_backends!(
    summary_shows_only_current_decisions,
    demographic_lookup_never_guesses,
    summary_respects_consent_and_break_glass,
    summary_states_the_cpr_decision_in_words,
    conflicting_cpr_decisions_of_two_organisations_are_shown,
    cpr_decision_against_respect_recommendation_is_a_conflict,
    deceased_person_summary_says_deceased,
    summary_dates_are_in_london_time,
    preferred_place_reason_not_recorded_is_shown,
    refuted_conditions_and_inactive_contacts_are_not_shown
);

const SECTION_SYSTEM: &str = "https://fhir.epaccs.nhs.example/CodeSystem/emergency-summary-section";
const CONFLICT_URL: &str = "https://fhir.epaccs.nhs.example/StructureDefinition/decision-conflict";
const OBSERVABLES: &str = "https://fhir.epaccs.nhs.example/CodeSystem/epaccs-observables";

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
    assert!(places.get("entry").is_none());
    assert_eq!(places["code"]["coding"][0]["code"], "preferred-place");
    // The section's code names the section; it used to be 450475007 "For attempted CPR",
    // whatever the decision.
    assert_eq!(
        section(&r.body, "CPR")["code"],
        json!({"coding": [{"system": SECTION_SYSTEM, "code": "cpr-decision", "display": "CPR decision"}]})
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

fn summary_path(n: u32) -> String {
    format!(
        "/Patient/$emergency-summary?identifier=https://fhir.nhs.uk/Id/nhs-number|{}",
        nhs(n)
    )
}

/// The summary's top line (the Composition's narrative).
fn top(doc: &Value) -> String {
    doc["entry"][0]["resource"]["text"]["div"]
        .as_str()
        .expect("Composition.text")
        .to_string()
}

fn div(sec: &Value) -> String {
    assert_eq!(sec["text"]["status"], "generated");
    let d = sec["text"]["div"].as_str().expect("div").to_string();
    assert!(d.starts_with("<div xmlns=\"http://www.w3.org/1999/xhtml\">"));
    d
}

/// The `decision-conflict` extensions of an element: (type code, the entries' ids).
fn conflicts(element: &Value) -> Vec<(String, Vec<String>)> {
    element["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["url"] == CONFLICT_URL)
        .map(|e| {
            let parts = e["extension"].as_array().expect("parts");
            let kind = parts
                .iter()
                .find(|p| p["url"] == "type")
                .and_then(|p| p["valueCoding"]["code"].as_str())
                .expect("type")
                .to_string();
            let mut ids: Vec<String> = parts
                .iter()
                .filter(|p| p["url"] == "entry")
                .map(|p| {
                    p["valueReference"]["reference"]
                        .as_str()
                        .expect("reference")
                        .rsplit('/')
                        .next()
                        .unwrap_or("")
                        .to_string()
                })
                .collect();
            ids.sort();
            (kind, ids)
        })
        .collect()
}

fn cpr_decision(pid: &str, code: &str, when: &str, by: &str) -> Value {
    let mut o = observation(pid, code);
    o["effectiveDateTime"] = json!(when);
    o["performer"] = json!([{"display": by}]);
    o
}

async fn with_consent(app: &TestApp, n: u32, family: &str) -> (Api, String) {
    let gp = app.client("gp-system", "A81001", "gp").await;
    let pid = gp.create_id(&patient(&nhs(n), family, "A81001")).await;
    gp.create(&consent(&pid, GIVEN, "2026-01-01")).await;
    (gp, pid)
}

/// Hazard "ambiguous CPR status": the summary says the decision in words, for each decision
/// and for none, and its section code names the section.
async fn summary_states_the_cpr_decision_in_words(b: Backend) {
    let app = TestApp::spawn(b).await;
    let crew = app.client("ambulance", "RX801", "ambulance").await;

    // Not for CPR, with an earlier decision of the same decider that it replaces.
    let (gp, pid) = with_consent(&app, 1, "Smith").await;
    gp.create(&cpr_decision(
        &pid,
        "450475007",
        "2025-11-02",
        "Dr A Smith (GP, Riverside Practice)",
    ))
    .await;
    let mut dnacpr = cpr_decision(
        &pid,
        "450476008",
        "2026-03-02",
        "Dr A Smith (GP, Riverside Practice)",
    );
    dnacpr["extension"] = json!([{"url": "https://fhir.epaccs.nhs.example/StructureDefinition/planned-review-date", "valueDate": "2026-06-02"}]);
    let dnacpr = gp.create_id(&dnacpr).await;
    let r = crew.get(&summary_path(1)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let cpr = section(&r.body, "CPR");
    let text = div(cpr);
    assert!(
        text.contains("NOT FOR CARDIOPULMONARY RESUSCITATION (NOT FOR CPR): decided 2 Mar 2026 by Dr A Smith (GP, Riverside Practice); review by 2 Jun 2026"),
        "{text}"
    );
    assert!(
        !text.contains("FOR ATTEMPTED") && !text.contains("CONFLICT"),
        "{text}"
    );
    assert_eq!(refs(cpr), vec![dnacpr]);
    assert_eq!(cpr["code"]["coding"][0]["system"], SECTION_SYSTEM);
    assert_eq!(cpr["code"]["coding"][0]["code"], "cpr-decision");
    // No section is coded with a value.
    for s in r.body["entry"][0]["resource"]["section"]
        .as_array()
        .expect("sections")
    {
        let c = s["code"]["coding"][0]["code"]
            .as_str()
            .expect("section code");
        assert!(
            !["450475007", "450476008", "1382601000000107"].contains(&c),
            "{c}"
        );
    }
    let line = top(&r.body);
    let n = nhs(1);
    let spaced = format!(
        "Alex Smith, NHS number {} {} {}",
        &n[..3],
        &n[3..6],
        &n[6..]
    );
    assert!(line.contains(&spaced), "{line}");
    assert!(line.contains("born 6 May 1941"), "{line}");
    assert!(
        line.contains("NOT FOR CARDIOPULMONARY RESUSCITATION"),
        "{line}"
    );
    assert!(
        !line.contains("CONFLICT") && !line.contains("DECEASED"),
        "{line}"
    );

    // For attempted CPR.
    let (gp, pid) = with_consent(&app, 2, "Jones").await;
    gp.create(&cpr_decision(&pid, "450475007", "2026-03-02", "Dr A Smith"))
        .await;
    let r = crew.get(&summary_path(2)).await;
    let text = div(section(&r.body, "CPR"));
    assert!(
        text.contains(
            "FOR ATTEMPTED CPR (cardiopulmonary resuscitation): decided 2 Mar 2026 by Dr A Smith"
        ),
        "{text}"
    );
    assert!(!text.contains("NOT FOR"), "{text}");
    assert!(top(&r.body).contains("FOR ATTEMPTED CPR"));

    // No decision.
    with_consent(&app, 3, "Brown").await;
    let r = crew.get(&summary_path(3)).await;
    let cpr = section(&r.body, "CPR");
    assert!(div(cpr).contains("No CPR decision recorded: follow usual resuscitation guidance"));
    assert!(top(&r.body).contains("No CPR decision recorded: follow usual resuscitation guidance"));
    assert!(cpr.get("entry").is_none());
}

/// Hazard "conflicting CPR decisions": two organisations' current decisions disagree. The
/// summary resolves nothing: CONFLICT in the top line and the section, both decisions with
/// their deciders and dates, and the extension naming both.
async fn conflicting_cpr_decisions_of_two_organisations_are_shown(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (gp, pid) = with_consent(&app, 1, "Conflict").await;
    gp.create(&json!({"resourceType": "CareTeam", "status": "active", "subject": {"reference": format!("Patient/{pid}")},
        "participant": [{"member": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "HOS01"}}}]})).await;
    let hospice = app.client("hospice", "HOS01", "hospice").await;
    let not_for = gp
        .create_id(&cpr_decision(
            &pid,
            "450476008",
            "2026-03-02",
            "Dr A Smith (GP, Riverside Practice)",
        ))
        .await;
    let for_cpr = hospice
        .create_id(&cpr_decision(
            &pid,
            "450475007",
            "2026-04-01",
            "Dr B Jones (Consultant, St Example Hospice)",
        ))
        .await;
    let crew = app.client("ambulance", "RX801", "ambulance").await;
    let r = crew.get(&summary_path(1)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let line = top(&r.body);
    assert!(
        line.starts_with("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>CONFLICT"),
        "{line}"
    );
    let cpr = section(&r.body, "CPR");
    let text = div(cpr);
    assert!(text.contains("CONFLICT"), "{text}");
    for expected in [
        "NOT FOR CARDIOPULMONARY RESUSCITATION (NOT FOR CPR): decided 2 Mar 2026 by Dr A Smith (GP, Riverside Practice)",
        "FOR ATTEMPTED CPR (cardiopulmonary resuscitation): decided 1 Apr 2026 by Dr B Jones (Consultant, St Example Hospice)",
    ] {
        assert!(text.contains(expected), "{expected} missing: {text}");
    }
    let mut both = vec![not_for.clone(), for_cpr.clone()];
    both.sort();
    let mut shown = refs(cpr);
    shown.sort();
    assert_eq!(shown, both);
    let expected = vec![("cpr-decisions-disagree".to_string(), both.clone())];
    assert_eq!(conflicts(cpr), expected);
    assert_eq!(conflicts(&r.body["entry"][0]["resource"]), expected);
    // Both are in the document.
    for id in &both {
        assert!(r.body["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| e["resource"]["id"] == id.as_str()));
    }
}

fn respect_with(pid: &str, date: &str, recommendations: &str) -> Value {
    let mut f = respect_form(pid, date);
    f["section"] = json!([
        {"title": "3. What matters to me", "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Being at home with my cat</div>"}},
        {"title": "4. Clinical recommendations for emergency care and treatment", "text": {"status": "generated",
            "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>{recommendations}</p></div>")}}]);
    f
}

/// Hazard "conflicting CPR decisions": the CPR decision against the current ReSPECT form's CPR
/// recommendation. And with no decision, the form's recommendation is stated rather than
/// "follow usual resuscitation guidance".
async fn cpr_decision_against_respect_recommendation_is_a_conflict(b: Backend) {
    let app = TestApp::spawn(b).await;
    let crew = app.client("ambulance", "RX801", "ambulance").await;
    let (gp, pid) = with_consent(&app, 1, "Against").await;
    let decision = gp
        .create_id(&cpr_decision(&pid, "450476008", "2026-03-02", "Dr A Smith"))
        .await;
    let form = gp
        .create_id(&respect_with(
            &pid,
            "2026-02-01",
            "Focus on life-sustaining treatment &amp; escalation. CPR attempts recommended",
        ))
        .await;
    let r = crew.get(&summary_path(1)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(top(&r.body).contains("CONFLICT"), "{}", top(&r.body));
    let mut both = vec![decision.clone(), form.clone()];
    both.sort();
    let expected = vec![("cpr-decision-respect-disagree".to_string(), both)];
    let cpr = section(&r.body, "CPR");
    assert!(
        div(cpr).contains("CONFLICT: the CPR decision disagrees with the current ReSPECT form"),
        "{}",
        div(cpr)
    );
    assert_eq!(conflicts(cpr), expected);
    let respect = section(&r.body, "ReSPECT");
    let text = div(respect);
    assert!(text.contains("CONFLICT"), "{text}");
    assert!(
        text.contains("ReSPECT form of 1 Feb 2026 by Dr Example, GMC 7654321"),
        "{text}"
    );
    assert!(
        text.contains("Focus on life-sustaining treatment &amp; escalation"),
        "{text}"
    );
    assert!(
        text.contains("What matters to me: Being at home with my cat"),
        "{text}"
    );
    assert!(
        text.contains("CPR recommendation on this form: CPR attempts recommended"),
        "{text}"
    );
    assert_eq!(conflicts(respect), expected);
    assert_eq!(conflicts(&r.body["entry"][0]["resource"]), expected);

    // A form that agrees with the decision: no conflict.
    let (gp, pid) = with_consent(&app, 2, "Agree").await;
    gp.create(&cpr_decision(&pid, "450476008", "2026-03-02", "Dr A Smith"))
        .await;
    gp.create(&respect_with(
        &pid,
        "2026-03-02",
        "Focus on comfort. CPR attempts NOT recommended",
    ))
    .await;
    let r = crew.get(&summary_path(2)).await;
    assert!(!r.text.contains("CONFLICT"), "{}", top(&r.body));
    assert!(conflicts(&r.body["entry"][0]["resource"]).is_empty());

    // A form and no decision: the form's recommendation is stated, not "usual guidance".
    let (gp, pid) = with_consent(&app, 3, "FormOnly").await;
    gp.create(&respect_with(
        &pid,
        "2026-03-02",
        "Focus on comfort. CPR attempts NOT recommended",
    ))
    .await;
    let r = crew.get(&summary_path(3)).await;
    let text = div(section(&r.body, "CPR"));
    assert!(text.contains("No separate CPR decision recorded"), "{text}");
    assert!(text.contains("CPR attempts NOT recommended"), "{text}");
    assert!(!text.contains("usual resuscitation guidance"), "{text}");
    assert!(top(&r.body).contains("CPR attempts NOT recommended"));
}

/// Hazard "deceased person's record still active": the top line says DECEASED with the date,
/// and no section presents its content as a current recommendation.
async fn deceased_person_summary_says_deceased(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let mut p = patient(&nhs(1), "Died", "A81001");
    // 23:30 UTC on 14 July is 00:30 BST on 15 July.
    p["deceasedDateTime"] = json!("2026-07-14T23:30:00Z");
    let pid = gp.create_id(&p).await;
    gp.create(&consent(&pid, GIVEN, "2026-01-01")).await;
    gp.create(&cpr_decision(&pid, "450476008", "2026-03-02", "Dr A Smith"))
        .await;
    let crew = app.client("ambulance", "RX801", "ambulance").await;
    let r = crew.get(&summary_path(1)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let line = top(&r.body);
    assert!(
        line.starts_with("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>DECEASED (15 Jul 2026): this person has died."),
        "{line}"
    );
    assert!(!line.contains("NOT FOR CARDIOPULMONARY"), "{line}");
    let dead = section(&r.body, "Deceased");
    assert!(div(dead).contains("This person has died (15 Jul 2026)"));
    assert_eq!(dead["code"]["coding"][0]["code"], "deceased");
    for s in r.body["entry"][0]["resource"]["section"]
        .as_array()
        .expect("sections")
    {
        assert!(
            div(s).contains("This person has died (15 Jul 2026)"),
            "{}",
            s["title"]
        );
    }
    assert!(div(section(&r.body, "CPR")).contains("Recorded before death, not for action"));
}

/// Hazard "date/time-zone confusion": an instant in British Summer Time is shown as the London
/// date, not the UTC one.
async fn summary_dates_are_in_london_time(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (gp, pid) = with_consent(&app, 1, "Summer").await;
    // 23:30 UTC on 30 June is 00:30 BST on 1 July.
    gp.create(&cpr_decision(
        &pid,
        "450476008",
        "2026-06-30T23:30:00Z",
        "Dr A Smith",
    ))
    .await;
    let crew = app.client("ambulance", "RX801", "ambulance").await;
    let r = crew.get(&summary_path(1)).await;
    let text = div(section(&r.body, "CPR"));
    assert!(text.contains("decided 1 Jul 2026 by Dr A Smith"), "{text}");
    assert!(!text.contains("30 Jun"), "{text}");
    // In winter (GMT) the same clock time stays on its day.
    let (gp, pid) = with_consent(&app, 2, "Winter").await;
    gp.create(&cpr_decision(
        &pid,
        "450476008",
        "2026-11-30T23:30:00Z",
        "Dr A Smith",
    ))
    .await;
    let r = crew.get(&summary_path(2)).await;
    assert!(div(section(&r.body, "CPR")).contains("decided 30 Nov 2026"));
}

/// A preferred place of death with a recorded reason shows the reason, not an alert; the
/// preferred place of care shows its first and second choice.
async fn preferred_place_reason_not_recorded_is_shown(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (gp, pid) = with_consent(&app, 1, "Places").await;
    let ppd = gp.create_id(&json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": OBSERVABLES, "code": "preferred-place-of-death"}]},
        "subject": {"reference": format!("Patient/{pid}")}, "effectiveDateTime": "2026-03-02",
        "dataAbsentReason": {"coding": [{"system": "http://snomed.info/sct", "code": "766391000000108"}]}})).await;
    let ppc = gp.create_id(&json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": OBSERVABLES, "code": "preferred-place-of-care"}]},
        "subject": {"reference": format!("Patient/{pid}")}, "effectiveDateTime": "2026-03-02",
        "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "110481000000108"}]},
        "component": [{"code": {"coding": [{"system": OBSERVABLES, "code": "second-choice"}]},
            "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "108401000000102", "display": "Hospice"}]}}]})).await;
    let crew = app.client("ambulance", "RX801", "ambulance").await;
    let r = crew.get(&summary_path(1)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let places = section(&r.body, "Preferred place");
    let text = div(places);
    assert!(
        text.contains("Preferred place of death: not recorded because declined discussion (recorded 2 Mar 2026)"),
        "{text}"
    );
    assert!(
        text.contains("Preferred place of care: 1st choice home; 2nd choice Hospice"),
        "{text}"
    );
    assert!(!text.contains("ALERT"), "{text}");
    let mut shown = refs(places);
    shown.sort();
    let mut expected = vec![ppd, ppc];
    expected.sort();
    assert_eq!(shown, expected);
}

/// Refuted, entered-in-error and resolved Conditions are not shown as current; an inactive
/// RelatedPerson is not listed as a contact; LPA holders are listed with their numbers.
async fn refuted_conditions_and_inactive_contacts_are_not_shown(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (gp, pid) = with_consent(&app, 1, "Filters").await;
    let subject = json!({"reference": format!("Patient/{pid}")});
    let condition = |text: &str, clinical: Option<&str>, verification: &str| {
        let mut c = json!({"resourceType": "Condition", "subject": subject, "code": {"text": text},
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": verification}]}});
        if let Some(cs) = clinical {
            c["clinicalStatus"] = json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": cs}]});
        }
        c
    };
    let current = gp
        .create_id(&condition("Heart failure", Some("active"), "confirmed"))
        .await;
    let refuted = gp
        .create_id(&condition("Lung cancer", Some("active"), "refuted"))
        .await;
    let wrong = gp
        .create_id(&condition("Stroke", None, "entered-in-error"))
        .await;
    let resolved = gp
        .create_id(&condition("Pneumonia", Some("resolved"), "confirmed"))
        .await;
    let daughter = gp.create_id(&json!({"resourceType": "RelatedPerson", "active": true, "patient": subject,
        "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "DAU"}]}],
        "name": [{"family": "Ashworth", "given": ["Clare"]}], "telecom": [{"system": "phone", "value": "07700 900123"}]})).await;
    let former = gp.create_id(&json!({"resourceType": "RelatedPerson", "active": false, "patient": subject,
        "name": [{"family": "Gone", "given": ["Former"]}], "telecom": [{"system": "phone", "value": "07700 900999"}]})).await;
    let lpa = gp.create_id(&json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "816381000000105"}]}, "subject": subject,
        "effectiveDateTime": "2026-03-02", "focus": [{"reference": format!("RelatedPerson/{daughter}")}], "valueBoolean": true})).await;
    let crew = app.client("ambulance", "RX801", "ambulance").await;
    let r = crew.get(&summary_path(1)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let other = section(&r.body, "Conditions");
    assert_eq!(refs(other), vec![current]);
    let text = div(other);
    assert!(text.contains("Heart failure"), "{text}");
    for (id, words) in [
        (&refuted, "Lung cancer"),
        (&wrong, "Stroke"),
        (&resolved, "Pneumonia"),
    ] {
        assert!(
            !r.text.contains(id.as_str()) && !r.text.contains(words),
            "{words} shown"
        );
    }
    let people = section(&r.body, "Lasting power");
    let mut shown = refs(people);
    shown.sort();
    let mut expected = vec![lpa, daughter];
    expected.sort();
    assert_eq!(shown, expected);
    let text = div(people);
    assert!(
        text.contains("LPA for health and welfare, with authority for life-sustaining treatment decisions: Clare Ashworth (daughter): telephone 07700 900123"),
        "{text}"
    );
    assert!(
        !r.text.contains(&former) && !text.contains("Former Gone"),
        "{text}"
    );
}
