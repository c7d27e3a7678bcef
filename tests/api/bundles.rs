//! Batch and transaction bundles.

use crate::both_backends;
use crate::helpers::*;
use serde_json::{json, Value};

both_backends!(
    transaction_is_atomic_and_rewrites_references,
    batch_entries_are_independent_and_gated
);

fn entry(method: &str, url: &str, resource: Option<Value>, full_url: Option<&str>) -> Value {
    let mut e = json!({"request": {"method": method, "url": url}});
    if let Some(r) = resource {
        e["resource"] = r;
    }
    if let Some(f) = full_url {
        e["fullUrl"] = json!(f);
    }
    e
}

async fn transaction_is_atomic_and_rewrites_references(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let n = nhs(1);
    let pu = "urn:uuid:6f1d3c52-8a8e-4a61-9d55-0b8f0b1f0a01";
    let mut obs = observation("x", "450476008");
    obs["subject"] = json!({"reference": pu});
    let mut c = consent("x", GIVEN, "2026-01-01");
    c["patient"] = json!({"reference": pu});
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        entry("GET", &format!("Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{n}"), None, None),
        entry("POST", "Observation", Some(obs.clone()), None),
        entry("POST", "Consent", Some(c), None),
        entry("POST", "Patient", Some(patient(&n, "Bundled", "A81001")), Some(pu)),
    ]});
    let r = gp.post("/", &tx).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["type"], "transaction-response");
    let entries = r.body["entry"].as_array().expect("entries");
    assert_eq!(entries.len(), 4);
    for e in &entries[1..] {
        assert_eq!(e["response"]["status"], "201 Created", "{e}");
    }
    let pid = entries[3]["resource"]["id"]
        .as_str()
        .expect("patient id")
        .to_string();
    assert_eq!(
        entries[1]["resource"]["subject"]["reference"],
        format!("Patient/{pid}")
    );
    // GET runs after the POSTs, so it finds the new Patient.
    assert_eq!(
        entries[0]["resource"]["entry"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(
        gp.get(&format!("/Observation?patient={pid}"))
            .await
            .entries(Some("match"))
            .len(),
        1
    );

    // ifNoneExist finds the existing person; the references follow it.
    let mut obs2 = observation("x", "450475007");
    obs2["subject"] = json!({"reference": "urn:uuid:00000000-0000-4000-8000-000000000002"});
    let mut p_entry = entry(
        "POST",
        "Patient",
        Some(patient(&n, "Bundled", "A81001")),
        Some("urn:uuid:00000000-0000-4000-8000-000000000002"),
    );
    p_entry["request"]["ifNoneExist"] =
        json!(format!("identifier=https://fhir.nhs.uk/Id/nhs-number|{n}"));
    let r = gp.post("/", &json!({"resourceType": "Bundle", "type": "transaction", "entry": [p_entry, entry("POST", "Observation", Some(obs2), None)]})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(
        r.body["entry"][1]["resource"]["subject"]["reference"],
        format!("Patient/{pid}")
    );

    // One bad entry rolls everything back, and the error names it.
    let n2 = nhs(2);
    let mut bad = observation(&pid, "450476008");
    bad["shoeSize"] = json!(9);
    let r = gp
        .post(
            "/",
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                entry("POST", "Patient", Some(patient(&n2, "Rollback", "A81001")), None),
                entry("POST", "Observation", Some(bad), None),
            ]}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.outcome().contains("entry 1"), "{}", r.text);
    let none = gp
        .get(&format!(
            "/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{n2}"
        ))
        .await;
    assert_eq!(
        none.entries(Some("match")).len(),
        0,
        "a rolled-back transaction left data behind"
    );

    // A stale ifMatch inside a transaction fails it.
    let mut upd = gp.get(&format!("/Patient/{pid}")).await.body;
    upd["gender"] = json!("male");
    let mut put = entry("PUT", &format!("Patient/{pid}"), Some(upd), None);
    put["request"]["ifMatch"] = json!("W/\"99\"");
    let r = gp
        .post(
            "/",
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": [put]}),
        )
        .await;
    assert_eq!(r.status, 412, "{}", r.text);

    // Limits and shape.
    let many: Vec<Value> = (0..101)
        .map(|_| entry("GET", "Patient", None, None))
        .collect();
    assert_eq!(
        gp.post(
            "/",
            &json!({"resourceType": "Bundle", "type": "batch", "entry": many})
        )
        .await
        .status,
        413
    );
    assert_eq!(
        gp.post(
            "/",
            &json!({"resourceType": "Bundle", "type": "collection"})
        )
        .await
        .status,
        400
    );
    assert_eq!(
        gp.post("/", &patient(&nhs(3), "Nope", "A81001"))
            .await
            .status,
        400
    );
}

async fn batch_entries_are_independent_and_gated(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let p = gp.create(&patient(&nhs(1), "Batch", "A81001")).await;
    let pid = p["id"].as_str().expect("id").to_string();
    let o = gp.create(&observation(&pid, "450476008")).await;
    let oid = o["id"].as_str().expect("id").to_string();
    let r = gp.post("/", &json!({"resourceType": "Bundle", "type": "batch", "entry": [
        entry("POST", "Patient", Some(patient(&nhs(2), "Good", "A81001")), None),
        entry("POST", "Patient", Some(json!({"resourceType": "Patient", "gender": "robot"})), None),
        entry("GET", &format!("Observation/{oid}"), None, None),
        entry("DELETE", "Patient", None, None),
    ]})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["type"], "batch-response");
    let e = r.body["entry"].as_array().expect("entries");
    assert_eq!(e[0]["response"]["status"], "201 Created");
    assert!(e[1]["response"]["status"]
        .as_str()
        .expect("status")
        .starts_with("422"));
    assert_eq!(
        e[1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert_eq!(e[2]["response"]["status"], "200 OK");
    assert!(e[3]["response"]["status"]
        .as_str()
        .expect("status")
        .starts_with("400"));
    assert_eq!(
        gp.get(&format!(
            "/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{}",
            nhs(2)
        ))
        .await
        .entries(Some("match"))
        .len(),
        1
    );

    // The sharing rules apply inside bundles: no consent, so the crew sees nothing.
    let crew = app.client("ambulance", "RX801", "ambulance").await;
    let r = crew
        .post(
            "/",
            &json!({"resourceType": "Bundle", "type": "batch", "entry": [
                entry("GET", &format!("Observation/{oid}"), None, None),
                entry("GET", &format!("Observation?patient={pid}"), None, None),
            ]}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body["entry"][0]["response"]["status"]
        .as_str()
        .expect("status")
        .starts_with("403"));
    assert_eq!(
        r.body["entry"][1]["resource"]["entry"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    assert!(!r.text.contains("450476008"));
    let r = crew.post("/", &json!({"resourceType": "Bundle", "type": "transaction", "entry": [entry("POST", "Observation", Some(observation(&pid, "450475007")), None)]})).await;
    assert_eq!(r.status, 403);
}
