//! Clinical safety and the sharing layer's write rules: consent that fails closed and follows
//! time, decisions that are owned, one current ReSPECT form over the whole record, death that
//! closes the record's actions, and shared reference data nobody can re-point. Each test names
//! the hazard it controls (docs/safety/hazard-log.md).

use crate::both_backends;
use crate::clinical::respect_form;
use crate::helpers::*;
use serde_json::{json, Value};

both_backends!(
    consent_without_a_status_code_is_refused,
    consent_follows_time_and_withdrawal_wins_when_unordered,
    root_deny_provisions_are_honoured,
    provisions_the_service_cannot_honour_are_refused,
    no_write_where_the_caller_may_not_read,
    who_may_record_consent_after_a_withdrawal,
    reference_data_cannot_be_repointed,
    one_current_form_whatever_the_writer_may_see,
    an_older_form_arriving_late_is_stored_superseded,
    amending_another_organisations_decision_needs_if_match_and_provenance,
    every_change_to_a_decision_writes_a_provenance,
    death_closes_the_records_actions,
    an_actual_place_of_death_records_the_death,
    the_servers_own_index_survives_a_read_modify_write,
    akps_and_cpr_status_values,
);

const ODS: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
const NOT_FOR_CPR: &str = "450476008";

/// A GP practice (A81001) with a patient whose care team includes the hospice HOS01.
async fn record(app: &TestApp, i: u32) -> (Api, Api, String) {
    let gp = app.client("gp-system", "A81001", "gp").await;
    let hospice = app.client("hospice", "HOS01", "hospice").await;
    let pid = gp.create_id(&patient(&nhs(i), "Safety", "A81001")).await;
    gp.create(&json!({"resourceType": "CareTeam", "status": "active", "subject": {"reference": format!("Patient/{pid}")},
        "participant": [{"member": {"identifier": {"system": ODS, "value": "HOS01"}}}]}))
        .await;
    (gp, hospice, pid)
}

fn cpr(pid: &str, code: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
        "subject": {"reference": format!("Patient/{pid}")},
        "effectiveDateTime": "2026-03-02T10:00:00Z",
        "performer": [{"display": "Dr A Smith"}]})
}

/// Hazard H05 (consent recorded ambiguously): a consent to share without one of the four
/// consent-status codes is refused, naming them.
async fn consent_without_a_status_code_is_refused(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (gp, _, pid) = record(&app, 1).await;
    let mut c = consent(&pid, GIVEN, "2026-01-01");
    c["category"] = json!([{"coding": [{"system": "http://snomed.info/sct", "code": "59284002"}]}]);
    let r = gp.post("/Consent", &c).await;
    assert_eq!(r.status, 422, "{}", r.text);
    let why = r.text.clone();
    for code in [GIVEN, WITHDRAWN, "882961000000101", "883001000000106"] {
        assert!(why.contains(code), "the refusal names {code}: {why}");
    }
    // ... and it did not open the record to a crew
    let crew = app.client("ambulance", "RX801", "ambulance").await;
    assert_ne!(crew.get(&format!("/Patient/{pid}")).await.status, 200);
}

/// Hazard H04 (withdrawn consent not honoured): consent order follows FHIR dateTime
/// semantics; a withdrawal that cannot be ordered against a consent wins; a consent dated in
/// the future is refused.
async fn consent_follows_time_and_withdrawal_wins_when_unordered(b: Backend) {
    let app = TestApp::spawn(b).await;
    let crew = app.client("ambulance", "RX801", "ambulance").await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let cases = [
        // a withdrawal dated the day of a consent given at 09:00 that day
        ("2026-01-10T09:00:00Z", "2026-01-10", false),
        // text order says the consent came later; in time the withdrawal did
        ("2026-01-11T01:00:00+14:00", "2026-01-10T12:00:00Z", false),
        // the withdrawal plainly before the consent: consent stands
        ("2026-01-10T09:00:00Z", "2026-01-09", true),
    ];
    for (i, (given, withdrawn, readable)) in cases.into_iter().enumerate() {
        let pid = gp
            .create_id(&patient(&nhs(10 + i as u32), "Order", "A81001"))
            .await;
        gp.create(&consent(&pid, GIVEN, given)).await;
        gp.create(&consent(&pid, WITHDRAWN, withdrawn)).await;
        let r = crew.get(&format!("/Patient/{pid}")).await;
        assert_eq!(
            r.status == 200,
            readable,
            "consent {given}, withdrawal {withdrawn}: {}",
            r.text
        );
    }
    let pid = gp.create_id(&patient(&nhs(20), "Future", "A81001")).await;
    gp.create(&consent(&pid, WITHDRAWN, "2026-01-01")).await;
    let r = gp
        .post("/Consent", &consent(&pid, GIVEN, "2099-01-01"))
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("future"), "{}", r.text);
    assert_ne!(crew.get(&format!("/Patient/{pid}")).await.status, 200);
}

/// Hazard H04: a deny provision at the root of a Consent is honoured.
async fn root_deny_provisions_are_honoured(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (gp, _, pid) = record(&app, 1).await;
    let mut c = consent(&pid, GIVEN, "2026-01-01");
    c["provision"] = json!({"type": "deny", "actor": [{
        "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]},
        "reference": {"identifier": {"system": ODS, "value": "RX801"}}}]});
    gp.create(&c).await;
    let denied = app.client("ambulance", "RX801", "ambulance").await;
    let other = app.client("ambulance-2", "RX802", "ambulance").await;
    assert_ne!(denied.get(&format!("/Patient/{pid}")).await.status, 200);
    assert_eq!(other.get(&format!("/Patient/{pid}")).await.status, 200);
}

/// Hazard H04: a provision shape the service would ignore is refused at write.
async fn provisions_the_service_cannot_honour_are_refused(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (gp, _, pid) = record(&app, 1).await;
    let shapes = [
        json!({"type": "permit", "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HRESCH"}]}),
        json!({"type": "deny", "provision": [{"type": "permit", "actor": [{"role": {"coding": [{"system": "https://fhir.epaccs.nhs.example/CodeSystem/sharing-role", "code": "gp"}]}}]}]}),
        json!({"type": "permit", "provision": [{"type": "deny", "actor": [{"role": {"coding": [{"system": "x", "code": "y"}]}, "reference": {"reference": "Practitioner/p1"}}]}]}),
        json!({"type": "permit", "provision": [{"type": "deny", "dataPeriod": {"start": "2020-01-01"}}]}),
    ];
    for p in shapes {
        let mut c = consent(&pid, GIVEN, "2026-01-01");
        c["provision"] = p.clone();
        let r = gp.post("/Consent", &c).await;
        assert_eq!(r.status, 422, "accepted {p}: {}", r.text);
    }
}

/// Hazards H04 and H08: an organisation refused a read may not delete or change the entry.
async fn no_write_where_the_caller_may_not_read(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (gp, hospice, pid) = record(&app, 1).await;
    gp.create(&consent(&pid, WITHDRAWN, "2026-01-01")).await;
    let dnacpr = gp.create_id(&cpr(&pid, NOT_FOR_CPR)).await;
    assert_ne!(
        hospice.get(&format!("/Observation/{dnacpr}")).await.status,
        200
    );
    let r = hospice.delete(&format!("/Observation/{dnacpr}")).await;
    assert_eq!(r.status, 403, "{}", r.text);
    let mut changed = gp.get(&format!("/Observation/{dnacpr}")).await.body;
    changed["status"] = json!("entered-in-error");
    let r = hospice
        .put(&format!("/Observation/{dnacpr}"), &changed, &[])
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let still = gp.get(&format!("/Observation/{dnacpr}")).await;
    assert_eq!(still.body["status"], "final");
    assert_eq!(still.body["meta"]["versionId"], "1");
}

/// Hazard H04: after a withdrawal, an organisation that it shut out cannot re-open the record
/// by recording its own consent; the GP practice can.
async fn who_may_record_consent_after_a_withdrawal(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (gp, hospice, pid) = record(&app, 1).await;
    gp.create(&consent(&pid, GIVEN, "2026-01-01")).await;
    gp.create(&consent(&pid, WITHDRAWN, "2026-02-01")).await;
    let r = hospice
        .post("/Consent", &consent(&pid, GIVEN, "2026-03-01"))
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let dnacpr = gp.create_id(&cpr(&pid, NOT_FOR_CPR)).await;
    assert_ne!(
        hospice.get(&format!("/Observation/{dnacpr}")).await.status,
        200
    );
    let r = gp
        .post("/Consent", &consent(&pid, GIVEN, "2026-03-01"))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        hospice.get(&format!("/Observation/{dnacpr}")).await.status,
        200
    );
}

/// Hazard H11 (record taken over through shared reference data): an Organization is written
/// by entitled roles, changed only by its writer or an admin, and its ODS code never changes.
async fn reference_data_cannot_be_repointed(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let rival = app.client("rival-gp", "B82002", "gp").await;
    let crew = app.client("ambulance", "RX801", "ambulance").await;
    let home = app.client("care-home", "CH001", "care-home").await;
    let org = json!({"resourceType": "Organization", "name": "Riverside Practice",
        "identifier": [{"system": ODS, "value": "A81001"}]});
    let oid = gp.create_id(&org).await;
    let mut p = patient(&nhs(1), "Takeover", "A81001");
    p["generalPractitioner"] = json!([{"reference": format!("Organization/{oid}")}]);
    let pid = gp.create_id(&p).await;
    gp.create(&consent(&pid, GIVEN, "2026-01-01")).await;

    let mut repointed = gp.get(&format!("/Organization/{oid}")).await.body;
    repointed["identifier"][0]["value"] = json!("B82002");
    let r = rival
        .put(&format!("/Organization/{oid}"), &repointed, &[])
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = gp
        .put(&format!("/Organization/{oid}"), &repointed, &[])
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("ODS"), "{}", r.text);
    assert_eq!(crew.post("/Organization", &org).await.status, 403);
    assert_eq!(home.post("/Organization", &org).await.status, 403);
    assert_eq!(
        home.delete(&format!("/Organization/{oid}")).await.status,
        403
    );
    assert_eq!(
        rival.delete(&format!("/Organization/{oid}")).await.status,
        403
    );
    // Another write to the record recomputes the sharing facts: the rival gained nothing.
    gp.create(&cpr(&pid, NOT_FOR_CPR)).await;
    assert_ne!(rival.get(&format!("/Patient/{pid}")).await.status, 200);
    assert_ne!(
        rival
            .post("/Consent", &consent(&pid, GIVEN, "2026-02-01"))
            .await
            .status,
        201
    );
    let org_now = gp.get(&format!("/Organization/{oid}")).await.body;
    assert_eq!(org_now["identifier"][0]["value"], "A81001");
}

/// Hazard H02 (superseded ReSPECT shown as current): two organisations post forms while consent
/// is withdrawn, and while a deny provision hides one from the other: exactly one form is
/// current, counted in the database without any sharing filter.
async fn one_current_form_whatever_the_writer_may_see(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (gp, hospice, pid) = record(&app, 1).await;
    gp.create(&consent(&pid, WITHDRAWN, "2026-01-01")).await;
    gp.create(&respect_form(&pid, "2026-03-01", "GP form"))
        .await;
    let h = hospice
        .create_id(&respect_form(&pid, "2026-06-01", "Hospice form"))
        .await;
    let current = app.current_respect_indexes(&pid);
    assert_eq!(current.len(), 1, "{current:#?}");
    assert_eq!(
        current[0]["content"][0]["attachment"]["url"],
        format!("Composition/{h}")
    );

    let (gp2, hospice2, pid2) = record(&app, 2).await;
    let mut c = consent(&pid2, GIVEN, "2026-01-01");
    c["provision"] = json!({"type": "permit", "provision": [{"type": "deny",
        "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]},
                   "reference": {"identifier": {"system": ODS, "value": "HOS01"}}}],
        "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "DocumentReference"}]}]});
    gp2.create(&c).await;
    let g = gp2
        .create_id(&respect_form(&pid2, "2026-07-01", "GP form"))
        .await;
    hospice2
        .create(&respect_form(&pid2, "2026-04-01", "Older hospice form"))
        .await;
    let current = app.current_respect_indexes(&pid2);
    assert_eq!(current.len(), 1, "{current:#?}");
    assert_eq!(
        current[0]["content"][0]["attachment"]["url"],
        format!("Composition/{g}")
    );
}

/// Hazard H02: an older form posted after a newer one leaves the newer one current.
async fn an_older_form_arriving_late_is_stored_superseded(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (gp, _, pid) = record(&app, 1).await;
    gp.create(&consent(&pid, GIVEN, "2026-01-01")).await;
    let newer = gp
        .create_id(&respect_form(&pid, "2026-06-01", "Focus on comfort"))
        .await;
    let older = gp
        .create_id(&respect_form(
            &pid,
            "2026-03-01",
            "Focus on life-sustaining treatment",
        ))
        .await;
    let current = app.current_respect_indexes(&pid);
    assert_eq!(current.len(), 1);
    assert_eq!(
        current[0]["content"][0]["attachment"]["url"],
        format!("Composition/{newer}")
    );
    let late: Vec<Value> = app
        .stored("DocumentReference", &pid)
        .into_iter()
        .filter(|d| d["content"][0]["attachment"]["url"] == format!("Composition/{older}"))
        .collect();
    assert_eq!(late.len(), 1);
    assert_eq!(late[0]["status"], "superseded");
    let crew = app.client("ambulance", "RX801", "ambulance").await;
    let summary = crew
        .get(&format!(
            "/Patient/$emergency-summary?identifier=https://fhir.nhs.uk/Id/nhs-number|{}",
            nhs(1)
        ))
        .await;
    assert!(
        summary.text.contains("Focus on comfort"),
        "{}",
        summary.text
    );
    assert!(!summary.text.contains("life-sustaining treatment"));
}

fn amendment_bundle(obs: &Value, id: &str, version: &str, reason: Option<&str>) -> Value {
    let mut prov = json!({"resourceType": "Provenance",
        "target": [{"reference": format!("Observation/{id}")}],
        "recorded": "2026-03-03T10:00:00Z",
        "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "UPDATE"}]},
        "agent": [{"who": {"identifier": {"system": "https://fhir.nhs.uk/Id/sds-user-id", "value": "555"}, "display": "Dr H Jones"},
                   "onBehalfOf": {"identifier": {"system": ODS, "value": "HOS01"}}}]});
    if let Some(r) = reason {
        prov["reason"] = json!([{"text": r}]);
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": obs, "request": {"method": "PUT", "url": format!("Observation/{id}"), "ifMatch": format!("W/\"{version}\"")}},
        {"fullUrl": "urn:uuid:7f1c0a55-2a40-4a4e-9d0e-5c1f2d3e4b5a", "resource": prov, "request": {"method": "POST", "url": "Provenance"}}
    ]})
}

/// Hazard H08 (one organisation overwriting another's decision): another organisation amends
/// a CPR decision only with If-Match (else 428) and a Provenance with a reason in the same
/// transaction (else 403).
async fn amending_another_organisations_decision_needs_if_match_and_provenance(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (gp, hospice, pid) = record(&app, 1).await;
    gp.create(&consent(&pid, GIVEN, "2026-01-01")).await;
    let id = gp.create_id(&cpr(&pid, NOT_FOR_CPR)).await;
    let mut changed = hospice.get(&format!("/Observation/{id}")).await.body;
    assert_eq!(changed["code"]["coding"][0]["code"], NOT_FOR_CPR);
    changed["note"] = json!([{"text": "Reviewed with the family at the hospice"}]);

    let r = hospice
        .put(&format!("/Observation/{id}"), &changed, &[])
        .await;
    assert_eq!(r.status, 428, "{}", r.text);
    assert!(r.text.contains("If-Match"), "{}", r.text);
    let r = hospice
        .put(
            &format!("/Observation/{id}"),
            &changed,
            &[("If-Match", "W/\"1\"")],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(r.text.contains("Provenance"), "{}", r.text);
    let r = hospice.delete(&format!("/Observation/{id}")).await;
    assert!(matches!(r.status, 403 | 428), "{}", r.text);
    // A Provenance without a reason is not an amendment.
    let r = hospice
        .post("/", &amendment_bundle(&changed, &id, "1", None))
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = hospice
        .post(
            "/",
            &amendment_bundle(
                &changed,
                &id,
                "1",
                Some("Reviewed with the person and family"),
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let now = gp.get(&format!("/Observation/{id}")).await;
    assert_eq!(now.body["meta"]["versionId"], "2");
    assert_eq!(
        now.body["note"][0]["text"],
        "Reviewed with the family at the hospice"
    );
    let everything = gp.get(&format!("/Patient/{pid}/$everything")).await;
    let provenances: Vec<Value> = everything
        .entries(None)
        .into_iter()
        .filter(|r| r["resourceType"] == "Provenance")
        .filter(|r| r["reason"][0]["text"] == "Reviewed with the person and family")
        .collect();
    assert_eq!(provenances.len(), 1, "{}", everything.text);
}

/// Hazard H08: every change to an owned decision writes a Provenance naming who, the
/// organisation, when and the activity.
async fn every_change_to_a_decision_writes_a_provenance(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (gp, _, pid) = record(&app, 1).await;
    let id = gp.create_id(&cpr(&pid, NOT_FOR_CPR)).await;
    let mut v = gp.get(&format!("/Observation/{id}")).await.body;
    v["note"] = json!([{"text": "Discussed again"}]);
    assert_eq!(
        gp.put(&format!("/Observation/{id}"), &v, &[]).await.status,
        200
    );
    assert_eq!(gp.delete(&format!("/Observation/{id}")).await.status, 200);
    let provenances: Vec<Value> = app
        .stored("Provenance", &pid)
        .into_iter()
        .filter(|p| {
            p["target"][0]["reference"]
                .as_str()
                .is_some_and(|t| t.starts_with(&format!("Observation/{id}/")))
        })
        .collect();
    let mut activities: Vec<String> = provenances
        .iter()
        .map(|p| {
            p["activity"]["coding"][0]["code"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    activities.sort();
    assert_eq!(activities, vec!["CREATE", "DELETE", "UPDATE"]);
    for p in &provenances {
        assert_eq!(p["agent"][0]["onBehalfOf"]["identifier"]["value"], "A81001");
        assert!(p["recorded"].as_str().is_some_and(|r| r.contains('T')));
    }
    // An ordinary observation writes none.
    gp.create(&observation(&pid, "511401000000102")).await;
    let all = app.stored("Provenance", &pid).len();
    assert_eq!(all, provenances.len());
}

/// Hazard H09 (deceased person's record still active): recording the death ends enrolment and
/// plans, keeping everything readable and in history.
async fn death_closes_the_records_actions(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (gp, _, pid) = record(&app, 1).await;
    let subject = json!({"reference": format!("Patient/{pid}")});
    let flag = gp
        .create_id(&json!({"resourceType": "Flag", "status": "active",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "1403151000000103"}]},
            "subject": subject, "period": {"start": "2026-01-05"}}))
        .await;
    let episode = gp
        .create_id(&json!({"resourceType": "EpisodeOfCare", "status": "active",
            "patient": subject, "period": {"start": "2026-01-05"}}))
        .await;
    let plan = gp
        .create_id(&json!({"resourceType": "CarePlan", "status": "active", "intent": "plan",
            "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "736373009"}]}],
            "subject": subject,
            "extension": [{"url": "https://fhir.epaccs.nhs.example/StructureDefinition/planned-review-date", "valueDate": "2026-12-01"}]}))
        .await;
    let mut p = gp.get(&format!("/Patient/{pid}")).await.body;
    p["deceasedDateTime"] = json!("2026-11-30T03:10:00Z");
    assert_eq!(
        gp.put(&format!("/Patient/{pid}"), &p, &[]).await.status,
        200
    );
    let f = gp.get(&format!("/Flag/{flag}")).await.body;
    assert_eq!(f["status"], "inactive");
    assert_eq!(f["period"]["end"], "2026-11-30T03:10:00Z");
    let e = gp.get(&format!("/EpisodeOfCare/{episode}")).await.body;
    assert_eq!(e["status"], "finished");
    assert_eq!(e["period"]["end"], "2026-11-30T03:10:00Z");
    let c = gp.get(&format!("/CarePlan/{plan}")).await.body;
    assert_eq!(c["status"], "completed");
    let hist = gp.get(&format!("/Flag/{flag}/_history")).await;
    assert_eq!(hist.body["entry"].as_array().map(Vec::len), Some(2));
    let register = gp
        .get(&format!("/Flag?subject=Patient/{pid}&status=active"))
        .await;
    assert!(register.entries(Some("match")).is_empty());
}

/// Hazard H09: an actual place of death closes the record too, and says so on the Patient.
async fn an_actual_place_of_death_records_the_death(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (gp, hospice, pid) = record(&app, 1).await;
    gp.create(&consent(&pid, GIVEN, "2026-01-01")).await;
    let flag = gp
        .create_id(&json!({"resourceType": "Flag", "status": "active",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "1403151000000103"}]},
            "subject": {"reference": format!("Patient/{pid}")}, "period": {"start": "2026-01-05"}}))
        .await;
    let r = hospice
        .post(
            "/Observation",
            &json!({"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "https://fhir.epaccs.nhs.example/CodeSystem/epaccs-observables", "code": "actual-place-of-death"}]},
                "subject": {"reference": format!("Patient/{pid}")},
                "effectiveDateTime": "2026-11-29",
                "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "876882001"}]}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let p = gp.get(&format!("/Patient/{pid}")).await.body;
    assert_eq!(p["deceasedDateTime"], "2026-11-29");
    assert_eq!(
        gp.get(&format!("/Flag/{flag}")).await.body["status"],
        "inactive"
    );
}

/// Hazard H10 (the service writes what it cannot read back): the ReSPECT index the service
/// writes is valid R4 (its date an instant) and its author can PUT it back unchanged.
async fn the_servers_own_index_survives_a_read_modify_write(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (gp, _, pid) = record(&app, 1).await;
    gp.create(&consent(&pid, GIVEN, "2026-01-01")).await;
    gp.create(&respect_form(&pid, "2026-03-02", "Focus on comfort"))
        .await;
    let index = app.current_respect_indexes(&pid).remove(0);
    let id = index["id"].as_str().expect("id").to_string();
    let read = gp.get(&format!("/DocumentReference/{id}")).await;
    let date = read.body["date"].as_str().expect("date");
    assert!(
        date.contains('T') && (date.ends_with('Z') || date.contains('+')),
        "DocumentReference.date is an instant: {date}"
    );
    assert_eq!(read.body["context"]["period"]["start"], "2026-03-02");
    let etag = read.header("etag").expect("etag");
    let r = gp
        .put(
            &format!("/DocumentReference/{id}"),
            &read.body,
            &[("If-Match", etag.as_str())],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// Hazard H03 (ambiguous CPR status): a CPR status can be recorded as not yet discussed, and an
/// AKPS of 40.5 is refused rather than read as 40.
async fn akps_and_cpr_status_values(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (gp, _, pid) = record(&app, 1).await;
    let mut akps = observation(&pid, "901671000000100");
    akps["valueInteger"] = json!(40);
    assert_eq!(gp.post("/Observation", &akps).await.status, 201);
    akps.as_object_mut().map(|m| m.remove("valueInteger"));
    akps["valueQuantity"] = json!({"value": 40.5});
    let r = gp.post("/Observation", &akps).await;
    assert_eq!(r.status, 422, "{}", r.text);
    let mut undiscussed = cpr(&pid, NOT_FOR_CPR);
    undiscussed["code"] = json!({"coding": [{"system": "https://fhir.epaccs.nhs.example/CodeSystem/epaccs-observables", "code": "cpr-not-yet-discussed"}]});
    let r = gp.post("/Observation", &undiscussed).await;
    assert_eq!(r.status, 201, "{}", r.text);
    gp.create(&consent(&pid, GIVEN, "2026-01-01")).await;
    let crew = app.client("ambulance", "RX801", "ambulance").await;
    let summary = crew
        .get(&format!(
            "/Patient/$emergency-summary?identifier=https://fhir.nhs.uk/Id/nhs-number|{}",
            nhs(1)
        ))
        .await;
    let top = summary.body["entry"][0]["resource"]["text"]["div"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        top.contains("NOT YET DISCUSSED") || top.contains("not yet discussed"),
        "{top}"
    );
    assert!(!top.contains("FOR ATTEMPTED CPR"), "{top}");
}
