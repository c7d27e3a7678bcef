//! The sharing layer over HTTP: consent-gated access by role, withdrawal, leakage attempts,
//! break-glass, deny provisions, and the audit trail.

use crate::both_backends;
use crate::helpers::*;
use reqwest::Method;
use serde_json::{json, Value};

both_backends!(
    role_by_consent_matrix,
    withdrawal_is_honoured_on_the_next_request,
    no_leaks_through_search_includes_chains_history,
    break_glass_is_audited_and_alerted,
    deny_provisions_and_forbidden_writes,
    every_request_is_audited,
    a_writing_organisation_keeps_its_relationship,
);

struct World {
    app: TestApp,
    gp: Api,
    patient: String,
    obs: String,
}

/// A person registered with GP practice A81001, a hospice (HOS01) in their care team, and a CPR
/// decision written by the GP.
async fn world(b: Backend, consent_code: Option<&str>) -> World {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let p = gp.create(&patient(&nhs(1), "Matrix", "A81001")).await;
    let pid = p["id"].as_str().expect("id").to_string();
    gp.create(&json!({"resourceType": "CareTeam", "status": "active", "subject": {"reference": format!("Patient/{pid}")},
        "participant": [{"member": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "HOS01"}}}]})).await;
    let o = gp.create(&observation(&pid, "450476008")).await;
    if let Some(code) = consent_code {
        gp.create(&consent(&pid, code, "2026-01-01")).await;
    }
    World {
        app,
        gp,
        patient: pid,
        obs: o["id"].as_str().expect("id").to_string(),
    }
}

async fn role_by_consent_matrix(b: Backend) {
    // (client, org, role) and the expected read status with no consent / given / withdrawn.
    let rows: &[(&str, &str, &str, [u16; 3])] = &[
        ("gp", "A81001", "gp", [200, 200, 200]),
        ("hospice-team", "HOS01", "hospice", [403, 200, 403]),
        ("hospice-other", "HOS99", "hospice", [403, 403, 403]),
        ("community-other", "COM99", "community", [403, 403, 403]),
        ("ambulance", "RX801", "ambulance", [403, 200, 403]),
        ("nhs111", "NHS11", "urgent-care", [403, 200, 403]),
        ("acute", "RR801", "acute", [403, 403, 403]),
        ("care-home", "CH001", "care-home", [404, 404, 404]),
        ("privacy", "PO001", "privacy-officer", [404, 404, 404]),
        ("admin", "AD001", "admin", [404, 404, 404]),
    ];
    for (state, consent_code) in [(0usize, None), (1, Some(GIVEN)), (2, Some(WITHDRAWN))] {
        let w = world(b, consent_code).await;
        if state == 2 {
            // Withdrawal after an earlier consent.
            w.gp.create(&consent(&w.patient, GIVEN, "2025-01-01")).await;
        }
        for (client, org, role, expected) in rows {
            let api = w.app.client(client, org, role).await;
            for path in [
                format!("/Observation/{}", w.obs),
                format!("/Patient/{}", w.patient),
            ] {
                let r = api.get(&path).await;
                assert_eq!(
                    r.status, expected[state],
                    "{client} ({role}) reading {path} with consent state {state}: {}",
                    r.text
                );
                if r.status != 200 {
                    r.outcome();
                    assert!(
                        !r.text.contains("Matrix") && !r.text.contains("450476008"),
                        "refusal leaked data: {}",
                        r.text
                    );
                }
            }
        }
    }
}

async fn withdrawal_is_honoured_on_the_next_request(b: Backend) {
    let w = world(b, Some(GIVEN)).await;
    let crew = w.app.client("ambulance", "RX801", "ambulance").await;
    let path = format!("/Observation/{}", w.obs);
    assert_eq!(crew.get(&path).await.status, 200);
    w.gp.create(&consent(&w.patient, WITHDRAWN, "2026-06-01"))
        .await;
    assert_eq!(
        crew.get(&path).await.status,
        403,
        "withdrawal not honoured at once"
    );
    let s = crew
        .get(&format!("/Observation?patient=Patient/{}", w.patient))
        .await;
    assert_eq!(s.entries(Some("match")).len(), 0);
    // Consent given again (by LPA) restores access, again at once.
    w.gp.create(&consent(&w.patient, "883001000000106", "2026-07-01"))
        .await;
    assert_eq!(crew.get(&path).await.status, 200);
}

async fn no_leaks_through_search_includes_chains_history(b: Backend) {
    // P has no consent; Q has consent given. Both have a CPR decision by the GP.
    let w = world(b, None).await;
    let q = w.gp.create(&patient(&nhs(2), "Visible", "A81001")).await;
    let qid = q["id"].as_str().expect("id").to_string();
    w.gp.create(&consent(&qid, GIVEN, "2026-01-01")).await;
    let qobs = w.gp.create(&observation(&qid, "450476008")).await;
    let qobs = qobs["id"].as_str().expect("id").to_string();
    let crew = w.app.client("ambulance", "RX801", "ambulance").await;
    let home = w.app.client("care-home", "CH001", "care-home").await;

    let ids = |r: &Resp, mode: &str| -> Vec<String> {
        r.entries(Some(mode))
            .iter()
            .map(|e| {
                format!(
                    "{}/{}",
                    e["resourceType"].as_str().unwrap_or(""),
                    e["id"].as_str().unwrap_or("")
                )
            })
            .collect()
    };

    // Plain search and _total.
    let r = crew
        .get("/Observation?code=450476008&_total=accurate")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(ids(&r, "match"), vec![format!("Observation/{qobs}")]);
    assert_eq!(r.body["total"], 1);
    // A search on content says nothing of withheld rows: the note would tell whether a person
    // the crew may not see has a CPR decision. A search naming the person tells the crew (which
    // may break glass) that more exists, without any of it.
    assert!(r.entries(Some("outcome")).is_empty(), "{}", r.text);
    assert!(!r.text.contains(&w.obs) && !r.text.contains(&w.patient));
    let named = crew
        .get(&format!("/Observation?patient=Patient/{}", w.patient))
        .await;
    assert_eq!(named.entries(Some("outcome")).len(), 1, "{}", named.text);
    assert!(named.entries(Some("match")).is_empty());
    // A care home may not break glass: it learns nothing.
    let r = home
        .get("/Observation?code=450476008&_total=accurate")
        .await;
    assert_eq!(r.body["total"], 0);
    assert!(r.entries(Some("outcome")).is_empty(), "{}", r.text);

    // _include and _revinclude never pull in withheld resources.
    let r = crew
        .get("/Observation?code=450476008&_include=Observation:patient")
        .await;
    let inc = ids(&r, "include");
    assert_eq!(inc, vec![format!("Patient/{qid}")]);
    let r = crew
        .get(&format!(
            "/Patient?_id={},{}&_revinclude=Observation:patient&_revinclude=CareTeam:patient",
            w.patient, qid
        ))
        .await;
    assert_eq!(ids(&r, "match"), vec![format!("Patient/{qid}")]);
    assert_eq!(ids(&r, "include"), vec![format!("Observation/{qobs}")]);
    // The GP (writer) sees P's data through the same include.
    let r =
        w.gp.get(&format!(
            "/Patient?_id={}&_revinclude=Observation:patient",
            w.patient
        ))
        .await;
    assert_eq!(ids(&r, "include"), vec![format!("Observation/{}", w.obs)]);

    // Chained parameters.
    let r = crew
        .get(&format!(
            "/Observation?patient.identifier=https://fhir.nhs.uk/Id/nhs-number|{}&_total=accurate",
            nhs(1)
        ))
        .await;
    assert_eq!(r.body["total"], 0);
    assert!(ids(&r, "match").is_empty());
    let r = crew
        .get(&format!(
            "/Observation?patient.identifier=https://fhir.nhs.uk/Id/nhs-number|{}",
            nhs(2)
        ))
        .await;
    assert_eq!(ids(&r, "match"), vec![format!("Observation/{qobs}")]);

    // History, vread and $everything.
    assert_eq!(
        crew.get(&format!("/Observation/{}/_history", w.obs))
            .await
            .status,
        403
    );
    assert_eq!(
        home.get(&format!("/Observation/{}/_history", w.obs))
            .await
            .status,
        404
    );
    assert_eq!(
        crew.get(&format!("/Observation/{}/_history/1", w.obs))
            .await
            .status,
        403
    );
    let r = crew.get("/Observation/_history").await;
    assert_eq!(ids(&r, "match").len(), 0);
    let hist: Vec<String> = r.body["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["fullUrl"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(hist.iter().all(|u| !u.contains(&w.obs)), "{hist:?}");
    assert!(hist.iter().any(|u| u.contains(&qobs)));
    assert_eq!(
        crew.get(&format!("/Patient/{}/$everything", w.patient))
            .await
            .status,
        403
    );
    let r = crew.get(&format!("/Patient/{qid}/$everything")).await;
    assert_eq!(r.status, 200);
    assert!(!r.text.contains(&w.obs));

    // POST _search behaves the same.
    let r = crew
        .send(
            Method::POST,
            "/Observation/_search",
            Some((
                "application/x-www-form-urlencoded",
                format!("patient=Patient/{}", w.patient),
            )),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(ids(&r, "match").is_empty());
}

async fn break_glass_is_audited_and_alerted(b: Backend) {
    let w = world(b, None).await;
    w.app.client("ambulance", "RX801", "ambulance").await;
    let reason = "unconscious at home, family report a DNACPR form";
    let crew = w
        .app
        .client_with("ambulance", json!({"subject_id": "555000111222", "subject_name": "Paramedic Test", "purpose_of_use": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "BTG"}, "break_glass_reason": reason}))
        .await;
    let r = crew.get(&format!("/Observation/{}", w.obs)).await;
    assert_eq!(r.status, 200, "{}", r.text);

    let po = w.app.client("privacy", "PO001", "privacy-officer").await;
    let alerts = po
        .get(&format!("/AuditEvent?patient={}&subtype=110127", w.patient))
        .await;
    assert_eq!(alerts.status, 200, "{}", alerts.text);
    let events = alerts.entries(None);
    assert_eq!(events.len(), 1, "{}", alerts.text);
    let e = &events[0];
    assert_eq!(e["type"]["code"], "110113");
    assert!(e["subtype"]
        .as_array()
        .expect("subtype")
        .iter()
        .any(|s| s["code"] == "110127"));
    assert_eq!(e["purposeOfEvent"][0]["coding"][0]["code"], "BTG");
    assert_eq!(e["purposeOfEvent"][0]["text"], reason);
    assert_eq!(e["agent"][0]["who"]["identifier"]["value"], "555000111222");
    assert!(e.to_string().contains(&w.patient));
    // Who looked at this record: every access, by patient and by agent.
    let all = po.get(&format!("/AuditEvent?patient={}", w.patient)).await;
    assert!(all.entries(None).len() >= 2);
    let by_agent = po.get("/AuditEvent?agent=555000111222").await;
    assert_eq!(by_agent.entries(None).len(), 1);
    // The same searches in their other FHIR spellings.
    let by_url = po
        .get(&format!(
            "/AuditEvent?patient={}/Patient/{}",
            w.app.base, w.patient
        ))
        .await;
    assert_eq!(by_url.entries(None).len(), all.entries(None).len());
    let by_identifier = po
        .get("/AuditEvent?agent:identifier=https://fhir.nhs.uk/Id/sds-user-id|555000111222")
        .await;
    assert_eq!(by_identifier.entries(None).len(), 1);
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert!(!po
        .get(&format!("/AuditEvent?date={today}"))
        .await
        .entries(None)
        .is_empty());
    assert!(po
        .get("/AuditEvent?date=lt2000-01-01")
        .await
        .entries(None)
        .is_empty());

    // Nobody else reads the audit trail, and nobody changes it.
    let gp_audit = w.gp.get("/AuditEvent").await;
    assert_eq!(gp_audit.status, 403);
    let id = e["id"].as_str().expect("id");
    assert_eq!(po.get(&format!("/AuditEvent/{id}")).await.status, 200);
    assert_eq!(
        po.put(&format!("/AuditEvent/{id}"), e, &[]).await.status,
        405
    );
    assert_eq!(po.delete(&format!("/AuditEvent/{id}")).await.status, 405);
    assert_eq!(po.post("/AuditEvent", e).await.status, 405);
    let mut conn = epaccs_store::DatabaseUrl::parse(&w.app.db_url)
        .expect("url")
        .connect(false)
        .expect("connect");
    let tamper = epaccs_store::db::execute(
        &mut conn,
        &epaccs_store::db::Sql::new("UPDATE audit_event SET outcome = '0'"),
    );
    assert!(
        tamper.is_err(),
        "the database let the audit trail be changed"
    );
    let erase = epaccs_store::db::execute(
        &mut conn,
        &epaccs_store::db::Sql::new("DELETE FROM audit_event"),
    );
    assert!(
        erase.is_err(),
        "the database let the audit trail be deleted"
    );

    // Break-glass is refused to roles that may not break glass.
    w.app.client("care-home", "CH001", "care-home").await;
    let home = w
        .app
        .client_with(
            "care-home",
            json!({"purpose_of_use": {"code": "BTG"}, "break_glass_reason": "worried"}),
        )
        .await;
    assert_eq!(
        home.get(&format!("/Observation/{}", w.obs)).await.status,
        404
    );
}

async fn deny_provisions_and_forbidden_writes(b: Backend) {
    let w = world(b, None).await;
    let mut c = consent(&w.patient, GIVEN, "2026-02-01");
    c["provision"] = json!({"type": "permit", "provision": [{"type": "deny",
        "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]},
                   "reference": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "HOS01"}}}],
        "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}]}]});
    w.gp.create(&c).await;
    let plan = w.gp.create(&json!({"resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": {"reference": format!("Patient/{}", w.patient)}})).await;
    let hospice = w.app.client("hospice-team", "HOS01", "hospice").await;
    assert_eq!(
        hospice.get(&format!("/Observation/{}", w.obs)).await.status,
        403,
        "deny provision ignored"
    );
    assert_eq!(
        hospice
            .get(&format!("/CarePlan/{}", plan["id"].as_str().expect("id")))
            .await
            .status,
        200
    );
    let crew = w.app.client("ambulance", "RX801", "ambulance").await;
    assert_eq!(
        crew.get(&format!("/Observation/{}", w.obs)).await.status,
        200
    );

    // Writes: roles that may not write, and writers with no relationship.
    let r = crew
        .post("/Observation", &observation(&w.patient, "450475007"))
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    r.outcome();
    let stranger = w.app.client("hospice-other", "HOS99", "hospice").await;
    assert_eq!(
        stranger
            .post("/Observation", &observation(&w.patient, "450475007"))
            .await
            .status,
        403
    );
    let mut obs = w.gp.get(&format!("/Observation/{}", w.obs)).await.body;
    obs["status"] = json!("entered-in-error");
    assert_eq!(
        stranger
            .put(&format!("/Observation/{}", w.obs), &obs, &[])
            .await
            .status,
        403
    );
    assert_eq!(
        stranger
            .delete(&format!("/Observation/{}", w.obs))
            .await
            .status,
        403
    );
    // A deny provision refuses writes of its class too; other classes are recorded as usual.
    let r = hospice
        .post("/Observation", &observation(&w.patient, "450475007"))
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = hospice.post("/CarePlan", &json!({"resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": {"reference": format!("Patient/{}", w.patient)}})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let still = w.gp.get(&format!("/Observation/{}", w.obs)).await;
    assert_eq!(still.body["meta"]["versionId"], "1");
}

async fn every_request_is_audited(b: Backend) {
    let w = world(b, Some(GIVEN)).await;
    let po = w.app.client("privacy", "PO001", "privacy-officer").await;
    let crew = w.app.client("ambulance", "RX801", "ambulance").await;
    let count = |r: &Resp| r.entries(None).len();
    let before = count(&po.get("/AuditEvent?agent=ambulance&_count=1000").await);
    assert_eq!(before, 0);
    // A scripted session: reads, searches, a refused write, a missing resource, an operation.
    let script: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/Patient/{}", w.patient), None),
        (Method::GET, format!("/Observation/{}", w.obs), None),
        (
            Method::GET,
            format!("/Observation?patient=Patient/{}", w.patient),
            None,
        ),
        (Method::GET, "/Observation/not-there".to_string(), None),
        (
            Method::POST,
            "/Observation".to_string(),
            Some(observation(&w.patient, "450475007")),
        ),
        (
            Method::GET,
            format!("/Patient/{}/_history", w.patient),
            None,
        ),
        (
            Method::GET,
            format!(
                "/Patient/$emergency-summary?identifier=https://fhir.nhs.uk/Id/nhs-number|{}",
                nhs(1)
            ),
            None,
        ),
        (
            Method::GET,
            format!("/Patient/{}/$everything", w.patient),
            None,
        ),
    ];
    for (m, path, body) in &script {
        let r = crew
            .send(
                m.clone(),
                path,
                body.as_ref()
                    .map(|b| ("application/fhir+json", b.to_string())),
                &[],
            )
            .await;
        assert!(r.status < 500, "{path}: {}", r.text);
    }
    let after = po.get("/AuditEvent?agent=ambulance&_count=1000").await;
    assert_eq!(
        count(&after),
        script.len(),
        "one AuditEvent per request: {}",
        after.text
    );
    let outcomes: Vec<String> = after
        .entries(None)
        .iter()
        .map(|e| e["outcome"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| *o == "4").count(),
        2,
        "the refused write and the missing resource are failures: {outcomes:?}"
    );
}

/// An organisation that has written to a person's record keeps a legitimate relationship after
/// it leaves the care team; one that only belonged to the team does not. (Writes by an
/// organisation that has written before skip recomputing the sharing facts: both the first and
/// a repeat write are made here.)
async fn a_writing_organisation_keeps_its_relationship(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let pid = gp.create_id(&patient(&nhs(1), "Writer", "A81001")).await;
    let member = |ods: &str| json!({"member": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": ods}}});
    let mut team = json!({"resourceType": "CareTeam", "status": "active",
        "subject": {"reference": format!("Patient/{pid}")},
        "participant": [member("HOS01"), member("HOS02")]});
    let team_id = gp.create_id(&team).await;
    gp.create(&consent(&pid, GIVEN, "2026-01-01")).await;
    let gp_obs = gp.create_id(&observation(&pid, "450476008")).await;
    let writer = app.client("hospice-writer", "HOS01", "hospice").await;
    let reader = app.client("hospice-reader", "HOS02", "hospice").await;
    // A first write, then a repeat one.
    writer.create(&observation(&pid, "1234567")).await;
    writer.create(&observation(&pid, "7654321")).await;
    let path = format!("/Observation/{gp_obs}");
    assert_eq!(writer.get(&path).await.status, 200);
    assert_eq!(reader.get(&path).await.status, 200);

    team["id"] = json!(team_id);
    // The hospices leave the team; the GP practice stays in it.
    team["participant"] = json!([member("A81001")]);
    let r = gp.put(&format!("/CareTeam/{team_id}"), &team, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        writer.get(&path).await.status,
        200,
        "the organisation that wrote to the record keeps its relationship"
    );
    assert_eq!(
        reader.get(&path).await.status,
        403,
        "membership of the team alone ended with it"
    );
}
